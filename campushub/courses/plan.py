"""The difference between a course and the hub (`plan`), and carrying it out (`apply`).

`diff` is pure: the hub's state (users, the course's two groups) and the roles file's course ids in,
a list of `Step`s out. `apply` runs the steps in order; each step is idempotent, so an apply killed
halfway converges when run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..profiles import GROUP_PROPERTY
from . import CourseError, folders
from .hubapi import Hub
from .manifest import Course
from .roles import course_ids, write_course_ids

Say = Callable[[str], None]


@dataclass
class HubState:
    users: set[str]
    groups: dict[str, dict | None]  # the course's groups by name: {"users": [...], "properties": {...}} or None
    role_courses: list[str]  # the course ids in the roles file


@dataclass
class Step:
    """One change: what it is (for people) and how to make it."""

    area: str  # users, groups, grants, roles, folders, slurm
    text: str
    run: Callable[[Hub, Say], None] | None = field(default=None, repr=False)
    restart: bool = False  # takes effect when the hub restarts
    note: bool = False  # a line of information, not a change


def read_state(hub: Hub, course: Course, state_dir: Path) -> HubState:
    m = course.manifest
    return HubState(
        users=set(hub.users()),
        groups={name: hub.group(name) for name in (m.students_group, m.staff_group)},
        role_courses=course_ids(state_dir),
    )


def diff(course: Course, state: HubState, state_dir: Path, slurm_accounting: bool = False) -> list[Step]:
    m = course.manifest
    steps: list[Step] = []
    students, staff = course.usernames, m.staff.all

    missing = [u for u in [*students, *staff] if u not in state.users]
    missing = list(dict.fromkeys(missing))
    if missing:
        steps.append(Step("users", f"create {len(missing)} hub user(s): {preview(missing)}",
                          lambda hub, say: hub.create_users(missing, say)))  # fmt: skip

    for group, members in ((m.students_group, students), (m.staff_group, staff)):
        current = state.groups.get(group)
        if current is None:
            text = f"create group {group} with {len(members)} member(s): {preview(members)}"
            steps.append(Step("groups", text, lambda hub, say, g=group, a=members: hub.create_group(g, a, say)))
            continue
        have = set(current.get("users", []))
        add = [u for u in members if u not in have]
        drop = sorted(have - set(members))
        if add:
            steps.append(Step("groups", f"add {len(add)} member(s) to {group}: {preview(add)}",
                              lambda hub, say, g=group, a=add: hub.add_members(g, a, say)))  # fmt: skip
        if drop:
            steps.append(Step("groups", f"remove {len(drop)} member(s) from {group} (accounts and homes stay): "
                              f"{preview(drop)}", lambda hub, say, g=group, d=drop: hub.remove_members(g, d, say)))  # fmt: skip

    properties = dict((state.groups.get(m.students_group) or {}).get("properties") or {})
    if properties.get(GROUP_PROPERTY, []) != list(m.profiles):
        before = properties.get(GROUP_PROPERTY, [])
        wanted = {**properties, GROUP_PROPERTY: list(m.profiles)}
        if not m.profiles:
            wanted.pop(GROUP_PROPERTY)
        steps.append(Step("grants", f"grant profiles {list(m.profiles)} to {m.students_group} (was {before}): "
                          "in effect at the students' next spawn",
                          lambda hub, say, p=wanted: hub.set_properties(m.students_group, p)))  # fmt: skip

    staff_group = state.groups.get(m.staff_group)
    if course.id in state.role_courses and staff_group is not None and "roles" in staff_group:
        if m.staff_role not in staff_group["roles"]:
            steps.append(Step("roles", f"the role {m.staff_role} is written but the hub has not loaded it yet: "
                              "restart the hub", note=True))  # fmt: skip
    if course.id not in state.role_courses:
        ids = [*state.role_courses, course.id]
        steps.append(Step("roles", f"add role {m.staff_role} (access and admin of {m.students_group}'s servers, "
                          f"list and read its users) for group {m.staff_group}, to {state_dir}/course-roles.yaml",
                          lambda hub, say: write_course_ids(state_dir, ids), restart=True))  # fmt: skip

    if m.folders is not None:
        set_groups = unix_groups(course)  # one call sets every group; each shows as its own line
        for line in folders.unix_group_changes(course):
            steps.append(Step("folders", line, set_groups))
        folder_lines = folders.folder_changes(course)
        if folder_lines:
            text = f"{len(folder_lines)} folder(s): " + "; ".join(folder_lines[:3])
            if len(folder_lines) > 3:
                text += f"; ... {len(folder_lines) - 3} more"
            steps.append(Step("folders", text, lambda hub, say: folders.ensure_folders(course, say)))

    quota = m.gpu_quota
    if quota.max_gpus is not None or quota.max_gpus_per_student is not None:
        limits = f"max_gpus={quota.max_gpus}, max_gpus_per_student={quota.max_gpus_per_student}"
        if slurm_accounting:
            steps.append(Step("slurm", f"Slurm account {m.slurm_account}: {limits}"))
        else:
            steps.append(Step("slurm", f"Slurm account {m.slurm_account} ({limits}): Slurm accounting: not "
                              "configured on this site", note=True))  # fmt: skip
    return steps


def unix_groups(course: Course):
    done = []

    def run(hub, say):
        if not done:
            folders.ensure_unix_groups(course)
            done.append(True)

    return run


def preview(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" ... and {len(names) - n} more" if len(names) > n else "")


def render(course: Course, steps: list[Step], url: str) -> str:
    m = course.manifest
    lines = [f"course {m.id} ({m.title}), {m.term.start} to {m.term.end}: {len(course.students)} student(s), "
             f"{len(m.staff.all)} staff, hub {url}"]  # fmt: skip
    changes = [s for s in steps if not s.note]
    if not changes:
        lines.append("  no changes: the hub matches the manifest")
    for s in steps:
        lines.append(f"  {'=' if s.note else '+'} {s.area}: {s.text}")
    if any(s.restart for s in changes):
        lines.append(f"  ! the role {m.staff_role} is new: it takes effect when the hub restarts "
                     "(restart the `campushub hub` process or its service; users' servers keep running)")  # fmt: skip
    return "\n".join(lines)


def check_accounts(course: Course) -> None:
    problems = folders.account_problems(course)
    if problems:
        raise CourseError(problems)


def apply(hub: Hub, steps: list[Step], say: Say) -> list[str]:
    """Run the steps in order; returns what was done."""
    done = []
    for step in steps:
        if step.note or step.run is None:
            continue
        say(f"{step.area}: {step.text}")
        step.run(hub, say)
        done.append(step.text)
    return done
