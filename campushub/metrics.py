"""CampusHub's Prometheus metrics, served by the hub with JupyterHub's own at /hub/metrics.

Every name starts with `campushub_`, and every label has a bounded set of values set by the admin
(profile slugs, Slurm partitions, hub groups that grant profiles, run states, refusal reasons): never
a user's name. docs/metrics.md describes them; the alert rules and the Grafana dashboard in docs/ use
only the names in METRIC_NAMES (a unit test checks).

- Events are counted where they happen, in the hub process: spawns (SlurmSpawner.start), the
  queue wait of a server job, refused logins (the campus authenticators).
- States are read when Prometheus scrapes: running servers and their GPUs from the hub's own spawners,
  scheduler runs by state from the scheduler's store (its database is the truth of its runs, and the
  hub can read it: one scrape target, one token, right across restarts of either process).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from .scheduler.models import RUN_STATES

log = logging.getLogger("campushub.metrics")

SPAWN_OUTCOMES = ("ready", "failed", "cancelled")
# Why a login was refused (campushub.auth.refuse): each refusal names one of these.
REFUSAL_REASONS = (
    "not_allowed",  # not in an allowed group (or GitHub organization or user list)
    "blocked",  # in blocked_users, or a name JupyterHub refuses
    "email_domain",  # the email or username claim is not at the allowed domain(s)
    "invalid_name",  # the username claim is missing or not a valid account name
    "other_identity",  # the name belongs to another identity, or the provider sent no subject
    "no_account",  # no unix account (users.accounts: directory), or it cannot be created
    "system_account",  # a uid outside users.min_uid..max_uid, or a nologin shell
    "other",  # any other refusal
)

# A server starts in seconds when a node is free, or waits hours in the queue for GPUs.
WAIT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)

SPAWN_DURATION = Histogram(
    "campushub_spawn_duration_seconds",
    "Seconds from a server's spawn request to its outcome (ready, failed, cancelled), by profile; "
    "the queue wait included.",
    ["profile", "outcome"],
    buckets=WAIT_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "campushub_slurm_queue_wait_seconds",
    "Seconds a server's Slurm job waited from its submission until Slurm ran it, by partition.",
    ["partition"],
    buckets=WAIT_BUCKETS,
)
REFUSED_LOGINS = Counter(
    "campushub_refused_logins", "Logins refused after the identity provider's answer, by reason.", ["reason"]
)
for _reason in REFUSAL_REASONS:
    REFUSED_LOGINS.labels(_reason)  # every reason from 0: a rate of refusals is defined from the start

RUNNING_SERVERS = "campushub_running_servers"
GPUS_IN_USE = "campushub_gpus_in_use"
SCHEDULER_RUNS = "campushub_scheduler_runs"

# The names as Prometheus shows them (a histogram as _bucket, _sum and _count; a counter as _total).
METRIC_NAMES = frozenset(
    {
        *(f"campushub_spawn_duration_seconds{s}" for s in ("_bucket", "_sum", "_count")),
        *(f"campushub_slurm_queue_wait_seconds{s}" for s in ("_bucket", "_sum", "_count")),
        "campushub_refused_logins_total",
        RUNNING_SERVERS,
        GPUS_IN_USE,
        SCHEDULER_RUNS,
    }
)


def observe_spawn(profile: str, outcome: str, seconds: float) -> None:
    SPAWN_DURATION.labels(profile, outcome).observe(seconds)


def observe_queue_wait(partition: str, seconds: float) -> None:
    QUEUE_WAIT.labels(partition).observe(seconds)


def count_refused_login(reason: str) -> None:
    REFUSED_LOGINS.labels(reason if reason in REFUSAL_REASONS else "other").inc()


class ServersCollector:
    """Running servers and their GPUs, by profile and granting group, read from the hub's spawners at
    each scrape. `spawners` gives every spawner of the hub; one that is ready and can say what it runs
    (`metric_labels()` -> (profile, group, gpus)) is counted."""

    def __init__(self, spawners: Callable[[], Iterable]):
        self.spawners = spawners

    def describe(self):
        yield GaugeMetricFamily(RUNNING_SERVERS, "", labels=["profile", "group"])
        yield GaugeMetricFamily(GPUS_IN_USE, "", labels=["profile", "group"])

    def collect(self):
        servers = GaugeMetricFamily(
            RUNNING_SERVERS,
            "Servers running, by profile and the hub group that grants it.",
            labels=["profile", "group"],
        )
        gpus = GaugeMetricFamily(
            GPUS_IN_USE, "GPUs held by running servers, by profile and granting group.", labels=["profile", "group"]
        )
        counts: Tally = Tally()
        held: Tally = Tally()
        for spawner in self.spawners():
            labels = getattr(spawner, "metric_labels", None)
            if not spawner.ready or labels is None:
                continue
            try:
                found = labels()
            except Exception:  # a scrape never fails for one server
                log.exception("Cannot tell the profile of a running server")
                continue
            if found is None:
                continue
            profile, group, count = found
            counts[profile, group] += 1
            held[profile, group] += count
        for key in sorted(counts):
            servers.add_metric(list(key), counts[key])
            gpus.add_metric(list(key), held[key])
        yield servers
        yield gpus


def hub_spawners() -> Iterable:
    """Every spawner of the running hub (nothing when no hub runs in this process)."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return []
    users = getattr(JupyterHub.instance(), "users", None) or {}
    return [spawner for user in list(users.values()) for spawner in list(user.spawners.values())]


class SchedulerRunsCollector:
    """Scheduler runs by state, counted in the scheduler's store at each scrape (a few ms: one indexed
    GROUP BY). Every state is shown, 0 when none is in it; if the store cannot be read, nothing is."""

    def __init__(self, url: str, password: str | None = None):
        self.url, self.password = url, password
        self._engine = None
        self._warned = 0.0

    def describe(self):  # registering reads nothing
        yield GaugeMetricFamily(SCHEDULER_RUNS, "", labels=["state"])

    def counts(self) -> dict[str, int]:
        from sqlalchemy import text

        from .scheduler.store import open_engine

        if self._engine is None:
            self._engine = open_engine(self.url, self.password)
        with self._engine.connect() as connection:
            rows = connection.execute(text("SELECT state, count(*) FROM runs GROUP BY state")).all()
        return {state: count for state, count in rows}

    def collect(self):
        try:
            found = self.counts()
        except Exception as e:
            if time.monotonic() - self._warned > 600:  # the service may not have made its tables yet
                log.warning("Cannot count the scheduler's runs: %s", e)
                self._warned = time.monotonic()
            return
        runs = GaugeMetricFamily(SCHEDULER_RUNS, "Runs of scheduled notebooks, by state.", labels=["state"])
        for state in sorted(set(RUN_STATES) | set(found)):
            runs.add_metric([state], found.get(state, 0))
        yield runs


_collectors: dict[str, object] = {}


def register(name: str, collector) -> None:
    """Put `collector` in the default registry under `name`, replacing one registered before under it."""
    old = _collectors.pop(name, None)
    if old is not None:
        REGISTRY.unregister(old)
    REGISTRY.register(collector)
    _collectors[name] = collector


def unregister(name: str) -> None:
    old = _collectors.pop(name, None)
    if old is not None:
        REGISTRY.unregister(old)
