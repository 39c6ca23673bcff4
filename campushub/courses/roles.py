"""The staff role of each course: JupyterHub scopes filtered to that course's students group.

JupyterHub 6 has no REST API for roles: roles come from its config (`load_roles`), read at start, and a
role that is no longer in the config is deleted at the next start. So `apply` writes the course's id
into <state_dir>/course-roles.yaml, and the hub config (campushub.hubconfig) turns every id there into
the role below, given to the group course-<id>-staff. The file holds ids only: the scopes are made
here, so the file cannot grant anything else.

For a new or retired course to take effect without a restart, the hub also serves
`POST /hub/api/campushub/course-roles` (campushub.courses.rolesapi): it makes the hub's database match the file
at once. It takes no body (the file, writable by root only, is the one source), and it asks for an
unfiltered `admin:groups`, which the course token holds anyway: such a token can already put anyone
into a staff group, so the endpoint gives it no new power.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..state import write_private

ROLES_FILE = "course-roles.yaml"
COURSE_ID = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
SYNC_PATH = "/campushub/course-roles"  # under the hub's API, /hub/api (campushub.courses.rolesapi)


def staff_scopes(course_id: str) -> list[str]:
    students = f"group=course-{course_id}-students"
    return [
        f"access:servers!{students}",  # open the students' servers (their JupyterLab)
        f"admin:servers!{students}",  # start and stop them
        f"list:users!{students}",
        f"read:users!{students}",
        f"read:groups!{students}",  # the roster, as the hub knows it
    ]


def staff_role(course_id: str) -> dict:
    return {
        "name": f"course-{course_id}-staff",
        "description": f"Staff of course {course_id}: its students' servers and user records, nothing else",
        "scopes": staff_scopes(course_id),
        "groups": [f"course-{course_id}-staff"],
    }


def roles_file(state_dir: Path) -> Path:
    return Path(state_dir) / ROLES_FILE


def course_ids(state_dir: Path) -> list[str]:
    """The courses whose staff roles the hub loads; a malformed file is an error, not silently empty."""
    path = roles_file(state_dir)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return []
    ids = data.get("courses", []) if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and COURSE_ID.match(i) for i in ids):
        raise ValueError(f"{path}: expected 'courses:' and a list of course ids")
    return sorted(set(ids))


def course_roles(state_dir: Path) -> list[dict]:
    return [staff_role(i) for i in course_ids(state_dir)]


def write_course_ids(state_dir: Path, ids: list[str]) -> None:
    """Replace the list atomically (a killed apply leaves the old file or the new, never half)."""
    path = roles_file(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "# Courses whose staff role the hub loads at start; written by `campushub course apply|retire`.\n"
    write_private(path, text + yaml.safe_dump({"courses": sorted(set(ids))}))
