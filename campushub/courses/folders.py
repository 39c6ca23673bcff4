"""The course's shared folders and the unix groups that guard them.

  <root>/                  root:course-<id>        0750  the course (students and staff) may enter
  <root>/materials/        root:course-<id>-staff  2775  staff write; the course reads
  <root>/exchange/         root:course-<id>-staff  0751  staff list; a student only passes through
  <root>/exchange/<user>/  <user>:course-<id>-staff 2750 the student writes; staff read (setgid: new
                                                         files belong to the staff group)

Unix groups: course-<id> (students and staff) and course-<id>-staff. Apply creates them with groupadd
and sets their members with gpasswd when they are local (/etc/group); on a cluster they come from the
directory service (LDAP/SSSD) and apply only checks that they exist and leaves their members to it.

Every folder is made as root with no symlink followed: each step opens the next folder by name, from
the one above, with O_NOFOLLOW; a folder found as a symlink or of the wrong kind is an error. The
parent of <root> is the admin's (it must exist); nothing below it is trusted.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import CourseError
from .manifest import Course

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Folder:
    relative: str  # below the root; "" is the root itself
    owner: str
    group: str
    mode: int

    def describe(self, root: Path) -> str:
        return f"{root / self.relative if self.relative else root} {self.owner}:{self.group} {self.mode:04o}"


def wanted_folders(course: Course) -> list[Folder]:
    m = course.manifest
    staff, everyone = m.staff_group, m.unix_group
    folders = [
        Folder("", "root", everyone, 0o750),
        Folder("materials", "root", staff, 0o2775),
        Folder("exchange", "root", staff, 0o751),
    ]
    folders += [Folder(f"exchange/{name}", name, staff, 0o2750) for name in sorted(course.usernames)]
    return folders


def wanted_unix_groups(course: Course) -> dict[str, set[str]]:
    m = course.manifest
    return {m.unix_group: set(course.usernames) | set(m.staff.all), m.staff_group: set(m.staff.all)}


def is_local_group(name: str) -> bool:
    try:
        with open("/etc/group") as f:
            return any(line.split(":", 1)[0] == name for line in f)
    except OSError:
        return False


def group_members(name: str) -> set[str] | None:
    try:
        return set(grp.getgrnam(name).gr_mem)
    except KeyError:
        return None


def account_problems(course: Course) -> list[str]:
    """Staff need a unix account; with folders, every student too (their exchange folder is theirs)."""
    from .manifest import _lines

    problems = []
    m = course.manifest
    lines = _lines(course.source.read_text()) if course.source else {}
    for kind in ("instructors", "tas"):
        for i, name in enumerate(getattr(m.staff, kind)):
            if not has_account(name):
                where = f"{course.source}:{lines.get(('staff', kind, i), 1)}: " if course.source else ""
                problems.append(f"{where}staff.{kind}[{i}]: {name} is an unknown user (no unix account of that "
                                "name on this host)")  # fmt: skip
    if m.folders is not None:
        for s in course.students:
            if not has_account(s.username):
                problems.append(f"{m.roster}:{s.line}: {s.username} has no unix account (their exchange folder "
                                "needs one)")  # fmt: skip
    return problems


def has_account(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# --- unix groups ------------------------------------------------------------------------------


def unix_group_changes(course: Course) -> list[str]:
    """What apply would do to the unix groups, one line each."""
    changes = []
    for name, members in wanted_unix_groups(course).items():
        current = group_members(name)
        if current is None:
            changes.append(f"create unix group {name} with {len(members)} member(s)")
        elif is_local_group(name):
            if current != members:
                add, drop = members - current, current - members
                changes.append(f"set the members of unix group {name}: +{len(add)} -{len(drop)}")
    return changes


def ensure_unix_groups(course: Course) -> list[str]:
    done = []
    for name, members in wanted_unix_groups(course).items():
        current = group_members(name)
        if current is None:
            run(["groupadd", name])
            done.append(f"created unix group {name}")
            current = set()
        if not is_local_group(name):
            continue  # the directory's: its members are the directory's
        if current != members:
            run(["gpasswd", "-M", ",".join(sorted(members)), name])
            done.append(f"set the members of unix group {name} ({len(members)})")
    return done


def remove_unix_groups(course: Course) -> list[str]:
    done = []
    for name in wanted_unix_groups(course):
        if group_members(name) is not None and is_local_group(name):
            run(["groupdel", name])
            done.append(f"removed unix group {name}")
    return done


def run(argv: list[str]) -> None:
    try:
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CourseError(f"{argv[0]} failed: {e}") from None
    if r.returncode != 0:
        raise CourseError(f"{' '.join(argv[:2])} ... failed: {(r.stderr or r.stdout).strip()}")


# --- folders ----------------------------------------------------------------------------------


def ids(folder: Folder) -> tuple[int, int]:
    try:
        return pwd.getpwnam(folder.owner).pw_uid, grp.getgrnam(folder.group).gr_gid
    except KeyError as e:
        raise CourseError(f"{folder.relative or 'the course folder'}: no such user or group: {e.args[0]}") from None


def open_root_parent(root: Path) -> int:
    parent = root.parent
    try:
        return os.open(parent, DIR_FLAGS)
    except FileNotFoundError:
        raise CourseError(
            f"folders.root: {parent} does not exist (create the shared folder for courses first)"
        ) from None
    except OSError as e:
        raise CourseError(f"folders.root: {parent}: {e.strerror}") from None


def open_below(dir_fd: int, name: str, where: str) -> int | None:
    """The folder `name` in `dir_fd`, opened without following a symlink; None when it is absent."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        kind = "a symlink or not a folder" if e.errno in (40, 20) else e.strerror  # ELOOP, ENOTDIR
        raise CourseError(f"{where}: {kind}: refused") from None


def folder_changes(course: Course) -> list[str]:
    """What apply would create or change among the folders, one line each."""
    root = course.manifest.folders.root
    changes = []
    for folder in wanted_folders(course):
        path = root / folder.relative if folder.relative else root
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            changes.append(f"create {folder.describe(root)}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            changes.append(f"{path} is not a folder (apply refuses)")
            continue
        try:
            uid, gid = ids(folder)
        except CourseError:
            changes.append(f"create {folder.describe(root)}")  # its group does not exist yet
            continue
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, folder.mode):
            changes.append(f"set {folder.describe(root)}")
    return changes


def ensure_folders(course: Course, say=None) -> list[str]:
    """Create or correct every folder; returns what changed."""
    root = course.manifest.folders.root
    done = []
    fds: dict[str, int] = {}
    parent = open_root_parent(root)
    try:
        folders = wanted_folders(course)
        for i, folder in enumerate(folders):
            if folder.relative:
                above, _, name = folder.relative.rpartition("/")
                dir_fd = fds[above]
            else:
                name, dir_fd = root.name, parent
            path = root / folder.relative if folder.relative else root
            fd = open_below(dir_fd, name, str(path))
            created = fd is None
            if created:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                fd = open_below(dir_fd, name, str(path))
            uid, gid = ids(folder)
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            if stat.S_IMODE(os.fstat(fd).st_mode) != folder.mode:
                os.fchmod(fd, folder.mode)  # after chown: chown clears the setgid bit
            if created or (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, folder.mode):
                done.append(("created " if created else "set ") + folder.describe(root))
            if folder.relative.count("/") < 1:
                fds[folder.relative] = fd  # root and its two folders are walked into
            else:
                os.close(fd)
            if say and len(folders) > 100 and (i + 1) % 50 == 0:
                say(f"  {i + 1}/{len(folders)} folders checked")
    finally:
        for fd in fds.values():
            os.close(fd)
        os.close(parent)
    return done
