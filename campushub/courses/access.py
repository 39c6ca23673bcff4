"""Staff reach their students' servers: the server side of the staff role.

The staff role holds `access:servers!group=course-<id>-students`. The hub resolves such a group filter,
but a single-user server cannot: it compares the caller's scopes with its own access scopes
(JUPYTERHUB_OAUTH_ACCESS_SCOPES) and JupyterHub documents that a `!group=` filter is not matched to a
server's owner there (jupyterhub/services/auth.py, check_scopes). So, at each spawn, the server of a
member of course groups also accepts `access:servers!group=<that group>`: the same scope the staff's
tokens carry. (Spawner.oauth_client_allowed_scopes cannot do it: JupyterHub 6.1 writes a callable one
into the server's environment as JSON and fails.) Membership is read at spawn: a student dropped from a course stays reachable by its staff
until their running server stops (retire stops them).
"""

from __future__ import annotations

import re

STUDENTS_GROUP = re.compile(r"^course-[a-z][a-z0-9-]{0,23}-students$")


def course_access_scopes(spawner) -> list[str]:
    """Spawner.pre_spawn_hook: the course groups' scopes that also open this server join its access scopes.
    (A browser's token for the server is made by the hub, which resolves the group filter itself.)"""
    scopes = [
        f"access:servers!group={group.name}"
        for group in sorted(spawner.user.groups, key=lambda g: g.name)
        if STUDENTS_GROUP.match(group.name)
    ]
    base = [s for s in spawner.oauth_access_scopes if not s.startswith("access:servers!group=course-")]
    spawner.oauth_access_scopes = base + scopes
    return scopes
