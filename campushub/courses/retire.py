"""Retiring a course at term end: stop its servers, archive its folders (materials and every student's
exchange folder) with a manifest of sha256 checksums, verify the archive, then remove the staff role,
the grants, the groups (memberships) and the course folders, and write a report.

Without `--yes` nothing changes: the steps are printed. Students' hub accounts and homes stay; with
`--purge-homes` the homes of students in no other course are deleted, and only once the archive has
been read back and every checksum matched.

The archive is read as root with no symlink followed: every folder is opened from the one above with
O_NOFOLLOW, and a file is opened with O_NOFOLLOW and checked to be a regular file before it is read,
so a student cannot point root at a file outside their folder. Symlinks are kept as symlinks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import pwd
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import CourseError
from .folders import DIR_FLAGS, open_below, open_root_parent
from .hubapi import Hub
from .manifest import Course
from .plan import slurm_accounting
from .quota import QuotaError, remove_account
from .roles import course_ids, write_course_ids

Say = Callable[[str], None]
CHECKSUMS = "SHA256SUMS"


def walk(dir_fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result, int | str | None]]:
    """(relative path, stat, an open fd of a regular file or a symlink's target) of everything below dir_fd."""
    for name in sorted(os.listdir(dir_fd)):
        path = f"{prefix}/{name}" if prefix else name
        st = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                yield path, os.fstat(fd), None
                yield from walk(fd, path)
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                continue  # replaced by a symlink or a fifo meanwhile: not read
            try:
                fst = os.fstat(fd)
                if stat.S_ISREG(fst.st_mode):
                    yield path, fst, fd
            finally:
                os.close(fd)
        elif stat.S_ISLNK(st.st_mode):
            yield path, st, os.readlink(name, dir_fd=dir_fd)


def write_archive(course: Course, target: Path, say: Say) -> dict[str, str]:
    """The course folder as a tar.gz with a SHA256SUMS member; returns {path: sha256}."""
    root = course.manifest.folders.root
    sums: dict[str, str] = {}
    parent = open_root_parent(root)
    try:
        root_fd = open_below(parent, root.name, str(root))
        if root_fd is None:
            raise CourseError(f"{root} does not exist: nothing to archive")
        tmp = target.with_name(target.name + ".partial")
        with tarfile.open(tmp, "w:gz") as tar:
            count = 0
            try:
                for path, st, fd in walk(root_fd, ""):
                    name = f"{course.id}/{path}"
                    info = tarfile.TarInfo(name)
                    info.mode, info.uid, info.gid, info.mtime = (
                        stat.S_IMODE(st.st_mode),
                        st.st_uid,
                        st.st_gid,
                        st.st_mtime,
                    )
                    info.uname, info.gname = owner_names(st)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = fd
                        tar.addfile(info)
                    else:
                        data = read_all(fd)
                        info.size = len(data)
                        sums[name] = hashlib.sha256(data).hexdigest()
                        tar.addfile(info, io.BytesIO(data))
                        count += 1
                        if count % 50 == 0:
                            say(f"  {count} files archived")
            finally:
                os.close(root_fd)
            listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()
            info = tarfile.TarInfo(CHECKSUMS)
            info.size, info.mode, info.mtime = len(listing), 0o644, dt.datetime.now().timestamp()
            tar.addfile(info, io.BytesIO(listing))
        os.replace(tmp, target)
    finally:
        os.close(parent)
    return sums


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def owner_names(st: os.stat_result) -> tuple[str, str]:
    import grp

    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = ""
    return user, group


def verify_archive(target: Path) -> int:
    """Read the archive back: every file's sha256 must match SHA256SUMS. Returns the number of files."""
    with tarfile.open(target, "r:gz") as tar:
        member = tar.extractfile(CHECKSUMS)
        if member is None:
            raise CourseError(f"{target}: no {CHECKSUMS}: the archive is not verified")
        listed = dict(reversed(line.split("  ", 1)) for line in member.read().decode().splitlines())
        found = {}
        for info in tar:
            if info.isfile() and info.name != CHECKSUMS:
                found[info.name] = hashlib.sha256(tar.extractfile(info).read()).hexdigest()
    if found != listed:
        bad = sorted(set(found.items()) ^ set(listed.items()))
        raise CourseError(f"{target}: the archive does not match its checksums ({len(bad)} difference(s)): "
                          "nothing was removed")  # fmt: skip
    return len(found)


def retire(course: Course, hub: Hub, state_dir: Path, archive_dir: Path, *, yes: bool, purge_homes: bool,
           say: Say) -> list[str]:  # fmt: skip
    """Retire the course; without `yes`, only say what would be done. Returns the report's lines."""
    m = course.manifest
    users = hub.users()
    students_group = hub.group(m.students_group)
    members = sorted((students_group or {}).get("users", []))
    students = sorted(set(members) | set(course.usernames))
    running = [(u, name) for u in students if u in users for name in (users[u].get("servers") or {})]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = archive_dir / f"course-{m.id}-{stamp}.tar.gz"
    other_courses = other_course_members(hub, m.students_group) if purge_homes else set()
    homes = [u for u in students if u not in other_courses and home_of(u)] if purge_homes else []

    plan = [f"stop {len(running)} running server(s) of the course's students"]
    if m.folders is not None:
        plan.append(f"archive {m.folders.root} (materials and every student's exchange folder) to {archive}, "
                    "with sha256 checksums, and verify it")  # fmt: skip
    accounting = slurm_accounting(course)
    if accounting:
        plan.append(f"remove Slurm account {m.slurm_account} (its GPU limits and its members' associations)")
    plan += [
        f"remove the role {m.staff_role} ({state_dir}/course-roles.yaml and the hub's)",
        f"remove the grants and memberships: delete groups {m.students_group} ({len(members)} member(s)) "
        f"and {m.staff_group}",
    ]
    if m.folders is not None:
        plan.append(f"remove {m.folders.root} and the unix groups {m.unix_group}, {m.staff_group}, once archived")
    plan.append(f"students' hub accounts stay; homes: {'delete ' + str(len(homes)) if purge_homes else 'stay'}")
    if not yes:
        return ["retire (dry run: nothing changed; --yes retires):", *(f"  - {line}" for line in plan)]

    report = [f"course {m.id} ({m.title}) retired at {stamp}"]
    for user, name in running:
        hub.stop_server(user, name)
    report.append(f"stopped {len(running)} server(s)")
    files = 0
    if m.folders is not None:
        archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        say(f"archiving {m.folders.root} to {archive} ...")
        if open_exists(m.folders.root):
            write_archive(course, archive, say)
            files = verify_archive(archive)
            report.append(f"archived {files} file(s) to {archive}; verified against {CHECKSUMS}")
        else:
            report.append(f"{m.folders.root} did not exist: nothing archived")
    if accounting:
        try:
            report += remove_account(m.slurm_account)
        except QuotaError as e:  # e.g. a job a student submitted from a terminal still runs under it
            report.append(f"Slurm account {m.slurm_account} stays: {e}; retire again once its jobs have ended")
    remaining = [i for i in course_ids(state_dir) if i != m.id]
    write_course_ids(state_dir, remaining)
    hub.sync_roles()
    report.append(f"removed the role {m.staff_role}")
    for group in (m.students_group, m.staff_group):
        hub.delete_group(group)
    report.append(f"deleted groups {m.students_group} and {m.staff_group} (grants and memberships)")
    if m.folders is not None and open_exists(m.folders.root):
        remove_tree(m.folders.root)
        from .folders import remove_unix_groups

        report += remove_unix_groups(course)
        report.append(f"removed {m.folders.root}")
    if purge_homes and not files:
        report.append("homes stay: no archive of the course's work was made and verified, so none is deleted")
    elif purge_homes:
        for user in homes:
            home = home_of(user)
            if home:
                shutil.rmtree(home)
        report.append(f"deleted {len(homes)} home(s) (after the archive was verified)")
    else:
        report.append("students' accounts and homes stay")
    report_file = archive_dir / f"course-{m.id}-{stamp}.report.json"
    archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    report_file.write_text(json.dumps({"course": m.id, "title": m.title, "retired": stamp,
                                       "archive": str(archive) if files else None, "files": files,
                                       "students": students, "staff": m.staff.all, "report": report}, indent=2))  # fmt: skip
    report.append(f"report: {report_file}")
    return report


def open_exists(root: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(root).st_mode)
    except FileNotFoundError:
        return False


def remove_tree(root: Path) -> None:
    # shutil.rmtree works with dir fds and never follows a symlink (it only unlinks them)
    if os.path.islink(root):
        raise CourseError(f"{root} is a symlink: refused")
    shutil.rmtree(root)


def home_of(user: str) -> Path | None:
    try:
        home = Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        return None
    return home if home != Path("/") and home.is_dir() and not home.is_symlink() else None


def other_course_members(hub: Hub, own_group: str) -> set[str]:
    found: set[str] = set()
    offset = 0
    while True:
        page = hub.call("GET", "/groups", params={"offset": offset, "limit": 200})
        for group in page:
            name = group["name"]
            if name.startswith("course-") and name.endswith("-students") and name != own_group:
                found |= set(group.get("users", []))
        if len(page) < 200:
            return found
        offset += 200
