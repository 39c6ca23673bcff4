"""The difference between a course and the hub (`plan`), and carrying it out (`apply`).

`diff` is pure: the hub's state (users, the course's two groups), the roles file's course ids and what
Slurm's accounting lacks in, a list of `Step`s out. `apply` runs the steps in order, Slurm's beside the
hub's; each step is idempotent, so an apply killed halfway converges when run again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..profiles import ACCOUNT_PROPERTY, GROUP_PROPERTY
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
    slurm: list[str] | None = None  # what Slurm's accounting lacks (slurm_changes, dry run); None: not asked


@dataclass
class Step:
    """One change: what it is (for people) and how to make it."""

    area: str  # users, groups, grants, roles, folders, slurm
    text: str
    run: Callable[[Hub, Say], None] | None = field(default=None, repr=False)
    note: bool = False  # a line of information, not a change


def read_state(hub: Hub, course: Course, state_dir: Path, accounting=None) -> HubState:
    """The hub's side, and with `accounting` Slurm's, read at the same time."""
    m = course.manifest
    with ThreadPoolExecutor(1) as pool:
        slurm = pool.submit(slurm_changes, course, dry_run=True) if accounting else None
        users = set(hub.users())
        groups = {name: hub.group(name) for name in (m.students_group, m.staff_group)}
        return HubState(users, groups, course_ids(state_dir), slurm.result() if slurm else None)


def diff(course: Course, state: HubState, state_dir: Path, accounting=None) -> list[Step]:
    """`accounting`: Slurm's (`slurm_accounting`), whose course account and GPU limits apply then keeps."""
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
    wanted = {k: v for k, v in properties.items() if k not in (GROUP_PROPERTY, ACCOUNT_PROPERTY)}
    if m.profiles:
        wanted[GROUP_PROPERTY] = list(m.profiles)
    charged = accounting and has_quota(course)
    if charged:
        wanted[ACCOUNT_PROPERTY] = m.slurm_account
    elif ACCOUNT_PROPERTY in properties:
        wanted[ACCOUNT_PROPERTY] = properties[ACCOUNT_PROPERTY]  # set by an admin: left as it is
    if wanted != properties:
        parts = []
        if wanted.get(GROUP_PROPERTY, []) != properties.get(GROUP_PROPERTY, []):
            parts.append(
                f"grant profiles {list(m.profiles)} to {m.students_group} (was {properties.get(GROUP_PROPERTY, [])})"
            )
        if wanted.get(ACCOUNT_PROPERTY) != properties.get(ACCOUNT_PROPERTY):
            parts.append(f"charge {m.students_group}'s servers to Slurm account {m.slurm_account}")
        steps.append(Step("grants", "; ".join(parts) + ": in effect at the students' next spawn",
                          lambda hub, say, p=wanted: hub.set_properties(m.students_group, p)))  # fmt: skip

    staff_group = state.groups.get(m.staff_group)
    if course.id not in state.role_courses:
        ids = [*state.role_courses, course.id]

        def add_role(hub, say):
            write_course_ids(state_dir, ids)
            hub.sync_roles()

        steps.append(Step("roles", f"add role {m.staff_role} (access and admin of {m.students_group}'s servers, "
                          f"list and read its users) for group {m.staff_group}, in {state_dir}/course-roles.yaml: "
                          "in effect at once", add_role))  # fmt: skip
    elif staff_group is None or m.staff_role not in staff_group.get("roles", [m.staff_role]):
        # in the roles file but not in the hub yet (an apply stopped in between): the hub loads it now
        steps.append(Step("roles", f"put the role {m.staff_role} of {state_dir}/course-roles.yaml in effect "
                          f"for group {m.staff_group}", lambda hub, say: hub.sync_roles()))  # fmt: skip

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

    if has_quota(course):
        limits = f"max_gpus={m.gpu_quota.max_gpus}, max_gpus_per_student={m.gpu_quota.max_gpus_per_student}"
        if accounting:
            changes = state.slurm or []
            if changes:
                steps.append(Step("slurm", "; ".join(changes),
                                  lambda hub, say: [say(f"slurm: {line}") for line in slurm_changes(course)]))  # fmt: skip
        else:
            reason = getattr(accounting, "reason", "") or "not configured on this site"
            steps.append(Step("slurm", f"Slurm account {m.slurm_account} ({limits}): Slurm accounting: {reason}",
                              note=True))  # fmt: skip
    return steps


def has_quota(course: Course) -> bool:
    quota = course.manifest.gpu_quota
    return quota.max_gpus is not None or quota.max_gpus_per_student is not None


def slurm_accounting(course: Course):
    """Slurm's accounting, asked only for a course with a GPU quota (None without one)."""
    if not has_quota(course):
        return None
    from .quota import accounting_available

    return accounting_available()


def slurm_changes(course: Course, dry_run: bool = False) -> list[str]:
    """The course's Slurm account, its GPU limits and its members (the students), made so by sacctmgr."""
    from .quota import QuotaError, account_state, ensure_account, set_gpu_limit, set_members

    m = course.manifest
    try:
        state = account_state(m.slurm_account)  # read once: each sacctmgr call costs a quarter of a second
        changes = ensure_account(m.slurm_account, f"CampusHub course {m.id}", dry_run=dry_run, state=state)
        if changes and not dry_run:
            state = account_state(m.slurm_account)
        limits = m.gpu_quota.max_gpus_per_student, m.gpu_quota.max_gpus
        return [
            *changes,
            *set_gpu_limit(m.slurm_account, *limits, dry_run=dry_run, state=state),
            *set_members(m.slurm_account, course.usernames, dry_run=dry_run, state=state),
        ]
    except QuotaError as e:
        raise CourseError([f"Slurm account {m.slurm_account}: {e}"]) from None


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
    return "\n".join(lines)


def check_accounts(course: Course) -> None:
    problems = folders.account_problems(course)
    if problems:
        raise CourseError(problems)


def apply(hub: Hub, steps: list[Step], say: Say) -> list[str]:
    """Run the steps in order, Slurm's beside the hub's (neither waits for the other); returns what was done."""
    steps = [s for s in steps if not s.note and s.run is not None]
    done = []

    def run(step: Step) -> None:
        say(f"{step.area}: {step.text}")
        step.run(hub, say)

    with ThreadPoolExecutor(1) as pool:
        slurm = [(s, pool.submit(run, s)) for s in steps if s.area == "slurm"]
        for step in steps:
            if step.area != "slurm":
                run(step)
                done.append(step.text)
        for step, future in slurm:
            future.result()
            done.append(step.text)
    return done
