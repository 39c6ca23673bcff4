"""What CampusHub's metrics (campushub.metrics) read from a spawner with profiles: the Slurm and Docker ones.

Such a spawner resolves user_options into a request with a profile slug and a GPU count (`request`,
`resolve(options)`, `accepted_options`, `all_profiles()`)."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

from tornado import web

from .. import metrics
from ..profiles import granting_group


class MeteredSpawner:
    @contextmanager
    def metered_spawn(self):
        """Around a spawn: its duration by profile and outcome (ready, failed, cancelled). A stop while the spawn
        is pending reaches start() as its cancellation: JupyterHub cancels the spawn before it calls stop(). It
        cancels start() at start_timeout too: that one failed."""
        began = time.monotonic()
        try:
            yield
        except BaseException as e:
            timed_out = time.monotonic() - began >= self.start_timeout
            cancelled = isinstance(e, asyncio.CancelledError) and not timed_out
            metrics.observe_spawn(
                self.profile_label(), "cancelled" if cancelled else "failed", time.monotonic() - began
            )
            raise
        metrics.observe_spawn(self.profile_label(), "ready", time.monotonic() - began)

    def profile_label(self) -> str:
        """This spawn's profile, for the spawn metric ('none' when the request cannot be told)."""
        try:
            return (self.request or self.resolve({})).profile
        except web.HTTPError:
            return "none"

    def running_request(self):
        """The running server's request: this spawn's, or for a server started before the hub's restart its
        last accepted options; None when they no longer resolve."""
        if self.request is not None:
            return self.request
        try:
            return self.resolve(self.accepted_options)
        except web.HTTPError:
            return None

    def metric_labels(self) -> tuple[str, str, int] | None:
        """What this running server counts as in campushub_running_servers and campushub_gpus_in_use:
        (profile, the group that grants it, GPUs); None when its request cannot be told."""
        request = self.running_request()
        if request is None:
            return None
        profile = {p.slug: p for p in self.all_profiles()}.get(request.profile)
        if profile is None:
            return None
        groups = {g.name: dict(g.properties or {}) for g in self.user.groups}
        return request.profile, granting_group(profile, admin=bool(self.user.admin), groups=groups), request.gpus
