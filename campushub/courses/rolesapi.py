"""The hub's side of the course roles: an API endpoint that puts the roles file in effect without a restart.

Loaded by the hub only (campushub.hubconfig); see campushub.courses.roles for why it exists and its scope.
"""

from __future__ import annotations

import re
from pathlib import Path

from jupyterhub import orm
from jupyterhub import roles as hub_roles
from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .roles import SYNC_PATH, course_roles, roles_file

STAFF_ROLE = re.compile(r"^course-[a-z][a-z0-9-]{0,23}-staff$")


def sync_roles(db, state_dir: Path) -> dict[str, list[str]]:
    """The hub's database made to hold exactly the staff roles of the roles file, each given to its staff
    group (created empty if it is missing, as `load_roles` does at start)."""
    wanted = {role["name"]: role for role in course_roles(state_dir)}
    added, removed = [], []
    for name, spec in wanted.items():
        if orm.Role.find(db, name) is None:
            added.append(name)
        role = hub_roles.create_role(db, {k: spec[k] for k in ("name", "description", "scopes")}, commit=False)
        for group_name in spec["groups"]:
            group = orm.Group.find(db, group_name)
            if group is None:
                group = orm.Group(name=group_name)
                db.add(group)
            hub_roles.grant_role(db, group, role, commit=False)
    for role in db.query(orm.Role).all():
        if STAFF_ROLE.match(role.name) and role.name not in wanted:
            db.delete(role)
            removed.append(role.name)
    db.commit()
    return {"courses": sorted(wanted), "added": added, "removed": removed}


class CourseRolesHandler(APIHandler):
    """POST /hub/api/campushub/course-roles: the course roles file, in effect now (see the module's text)."""

    def initialize(self, state_dir: Path):
        self.state_dir = state_dir

    @web.authenticated
    def post(self):
        if "admin:groups" not in self.expanded_scopes:
            raise web.HTTPError(403, "syncing course roles needs the scope admin:groups, unfiltered")
        try:
            result = sync_roles(self.db, self.state_dir)
        except ValueError as e:  # a malformed roles file: nothing changed
            self.db.rollback()
            raise web.HTTPError(500, str(e)) from None
        self.log.info("Course roles synced from %s: %s", roles_file(self.state_dir), result)
        self.write(result)


def handlers(state_dir: Path) -> list[tuple]:
    """For JupyterHub.extra_handlers (JupyterHub puts them under /hub)."""
    return [(f"/api{SYNC_PATH}", CourseRolesHandler, {"state_dir": state_dir})]
