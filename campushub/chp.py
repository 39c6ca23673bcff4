"""configurable-http-proxy as the hub talks to it (proxy.kind: chp). Apart from campushub.proxy, which the CLI
imports: this imports JupyterHub."""

from __future__ import annotations

from jupyterhub.proxy import ConfigurableHTTPProxy


class ServerActivityCHP(ConfigurableHTTPProxy):
    """CHP's routes without CHP's time of each route's last request.

    Every last_activity_interval, JupyterHub reads the routes and, for each route that carries that time, looks
    its user and server up in the database, one by one, and writes both rows: at 300 running servers this held
    the hub's event loop for 1.8-3.2 s once a minute, and logins waited (docs/benchmarks.md, campus scale).
    The time is not needed: each server reports its own activity every culling.activity_interval (kernels,
    terminals and every API request, which a browser with the Lab open makes), as with traefik, whose routes
    carry no time; the idle culler reads that."""

    async def get_all_routes(self):
        routes = await super().get_all_routes()
        for route in routes.values():
            route["data"].pop("last_activity", None)
        return routes
