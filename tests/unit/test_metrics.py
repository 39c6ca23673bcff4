"""CampusHub's metrics: the hub config that serves them, their labels, and the alert rules and dashboard
in docs/ that use them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import UTC
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from campushub import metrics
from campushub.auth import account_hook, unix_name
from campushub.hubconfig import hub_config
from campushub.profiles import Profile, granting_group
from campushub.site import SiteError, parse_site
from campushub.spawners.metered import MeteredSpawner

DOCS = Path(__file__).parents[2] / "docs"
RULES = DOCS / "prometheus" / "campushub-rules.yml"
DASHBOARD = DOCS / "grafana" / "campushub.json"
# PromQL words that are not metric names
PROMQL = {
    "sum", "by", "without", "rate", "increase", "delta", "histogram_quantile", "and", "or", "unless", "count",
    "max", "min", "avg", "on", "ignoring", "group_left", "group_right", "le", "bool", "offset",
}  # fmt: skip
LABELS = {"profile", "partition", "reason", "state", "outcome", "group", "job", "instance"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (words outside {...} and [...] that are not PromQL's own)."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return words - PROMQL - LABELS


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def panel_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert all(panel["targets"] for panel in dashboard["panels"])
    return exprs


def test_metric_names_of_an_expression():
    assert metric_names('sum by (profile, le) (rate(campushub_x_bucket{outcome="ready"}[5m])) > 3') == {
        "campushub_x_bucket"
    }


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_the_rules_and_dashboard_use_is_one_campushub_or_prometheus_defines(source):
    exprs = rule_exprs() if source == "rules" else panel_exprs()
    used = set().union(*map(metric_names, exprs))
    assert used - {"up"} <= metrics.METRIC_NAMES, used - {"up"} - metrics.METRIC_NAMES


def family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        name = name.removesuffix(suffix)
    return name


def test_the_dashboard_shows_every_campushub_metric():
    shown = {family(n) for n in set().union(*map(metric_names, panel_exprs()))}
    assert shown >= {family(n) for n in metrics.METRIC_NAMES}


def test_the_names_the_code_exports_are_the_names_it_declares():
    registry = CollectorRegistry()
    for collector in (metrics.SPAWN_DURATION, metrics.QUEUE_WAIT, metrics.REFUSED_LOGINS):
        registry.register(collector)
    registry.register(metrics.ServersCollector(lambda: [running("gpu-1", "ml101", 2)]))
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    declared = metrics.METRIC_NAMES - {metrics.SCHEDULER_RUNS}
    # observations are needed before a histogram's series show
    metrics.observe_spawn("cpu", "ready", 3)
    metrics.observe_queue_wait("gpu", 1)
    exported |= {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    assert {n for n in exported if n.startswith("campushub_") and not n.endswith("_created")} == declared


def running(profile: str, group: str, gpus: int, ready: bool = True):
    return SimpleNamespace(ready=ready, metric_labels=lambda: (profile, group, gpus))


def test_running_servers_and_gpus_are_summed_by_profile_and_group():
    collector = metrics.ServersCollector(
        lambda: [
            running("gpu-1", "ml101", 1),
            running("gpu-1", "ml101", 1),
            running("gpu-2", "researchers", 2),
            running("gpu-2", "researchers", 2, ready=False),  # still starting: not counted
            SimpleNamespace(ready=True),  # another backend's spawner: not counted
        ]
    )
    servers, gpus = collector.collect()
    assert {tuple(s.labels.values()): s.value for s in servers.samples} == {
        ("gpu-1", "ml101"): 2,
        ("gpu-2", "researchers"): 1,
    }
    assert {tuple(s.labels.values()): s.value for s in gpus.samples} == {
        ("gpu-1", "ml101"): 2,
        ("gpu-2", "researchers"): 2,
    }


def test_the_granting_group_is_everyone_the_first_granting_group_or_admin():
    everyone = Profile(slug="cpu", display_name="CPU", everyone=True)
    by_groups = Profile(slug="gpu-1", display_name="GPU", groups=["researchers", "staff"])
    groups = {"zeta": {"campushub_profiles": ["gpu-1"]}, "researchers": {}, "physics": {}}
    assert granting_group(everyone, admin=False, groups=groups) == "everyone"
    assert granting_group(by_groups, admin=False, groups=groups) == "researchers"
    assert granting_group(by_groups, admin=False, groups={"zeta": groups["zeta"], "physics": {}}) == "zeta"
    assert granting_group(by_groups, admin=True, groups={"physics": {}}) == "admin"


def test_scheduler_runs_are_counted_by_state_in_the_store(tmp_path):
    from datetime import datetime

    from campushub.scheduler.models import Run, Schedule
    from campushub.scheduler.store import open_store

    url = f"sqlite:///{tmp_path / 'scheduler.sqlite'}"
    assert list(metrics.SchedulerRunsCollector(url).collect()) == []  # no store yet: nothing, the scrape goes on
    sessions = open_store(url)
    now = datetime.now(UTC)
    with sessions() as db:
        schedule = Schedule(owner="ada", name="n", notebook="n.ipynb", cron="0 2 * * *", timezone="UTC", timeout=60)
        db.add(schedule)
        db.flush()
        for state in ("succeeded", "succeeded", "failed", "running"):
            db.add(Run(schedule_id=schedule.id, owner="ada", state=state, trigger="schedule", due=now))
        db.commit()
    (runs,) = metrics.SchedulerRunsCollector(url).collect()
    assert {s.labels["state"]: s.value for s in runs.samples} == {
        **dict.fromkeys(metrics.RUN_STATES, 0),
        "succeeded": 2,
        "failed": 1,
        "running": 1,
    }


@pytest.mark.parametrize(
    "refusal, reason",
    [
        (lambda: unix_name(""), "invalid_name"),
        (lambda: unix_name("Ada Lovelace"), "invalid_name"),
        (lambda: unix_name("ada@elsewhere.example", "campus.example"), "email_domain"),
        (lambda: account_hook("directory", 1000, 60000)(None, None, {"name": "chub-nobody-here"}), "no_account"),
        (lambda: account_hook("directory", 1000, 60000)(None, None, {"name": "root"}), "system_account"),
    ],
)
def test_each_refusal_names_a_bounded_reason(refusal, reason):
    with pytest.raises(Exception) as e:
        refusal()
    assert e.value.status_code == 403
    assert e.value.refusal == reason and reason in metrics.REFUSAL_REASONS


def test_an_unknown_reason_is_counted_as_other():
    before = metrics.REFUSED_LOGINS.labels("other")._value.get()
    metrics.count_refused_login("chub-ada")  # never a label of its own
    assert metrics.REFUSED_LOGINS.labels("other")._value.get() == before + 1


def site_with_token(tmp_path, text: str, mode: int = 0o600):
    token = tmp_path / "prometheus-token"
    token.write_text(text)
    token.chmod(mode)
    return parse_site(
        {"hub": {"state_dir": str(tmp_path / "state")}, "metrics": {"token_file": str(token)}, "scheduler": {}}
    )


def test_the_token_file_makes_a_prometheus_service_that_may_read_metrics_only(tmp_path):
    c = hub_config(site_with_token(tmp_path, "a-token-of-prometheus\n"))
    assert {"name": "prometheus", "api_token": "a-token-of-prometheus"} in c.JupyterHub.services
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "prometheus"]
    assert role["scopes"] == ["read:metrics"] and role["services"] == ["prometheus"]
    assert c.JupyterHub.authenticate_prometheus is True


def test_without_a_token_file_there_is_no_prometheus_service(tmp_path):
    c = hub_config(parse_site({"hub": {"state_dir": str(tmp_path / "state")}}))
    assert "prometheus" not in {s["name"] for s in c.JupyterHub.services}


@pytest.mark.parametrize(
    "text, mode, problem",
    [
        ("short\n", 0o600, "holds fewer than 16 characters"),
        ("a-token-of-prometheus\n", 0o644, "is readable by every user"),
        ("\n", 0o600, "is empty"),
    ],
)
def test_a_weak_or_open_token_file_is_refused(tmp_path, text, mode, problem):
    with pytest.raises(SiteError, match=f"metrics.token_file: .*{problem}"):
        hub_config(site_with_token(tmp_path, text, mode))


class Metered(MeteredSpawner):
    """A spawner's metered part alone: its request's profile, its start's time limit."""

    request = SimpleNamespace(profile="metered-test")
    start_timeout = 60


def spawns_by_outcome() -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(metrics.SPAWN_DURATION)
    name = "campushub_spawn_duration_seconds_count"
    return {
        o: registry.get_sample_value(name, {"profile": "metered-test", "outcome": o}) or 0
        for o in ("ready", "failed", "cancelled")
    }


@pytest.mark.parametrize(
    "ends, outcome",
    [
        ("ready", "ready"),
        ("raises", "failed"),
        ("stopped", "cancelled"),  # the user's stop of a pending spawn: JupyterHub cancels start()
        ("timed out", "failed"),  # past start_timeout JupyterHub cancels start() too
    ],
)
def test_a_spawn_is_counted_by_how_it_ends(ends, outcome):
    spawner = Metered()
    if ends == "timed out":
        spawner.start_timeout = 0

    async def start():
        with spawner.metered_spawn():
            if ends == "raises":
                raise RuntimeError("the job failed")
            if ends in ("stopped", "timed out"):
                await asyncio.sleep(60)

    async def spawn():
        task = asyncio.create_task(start())
        await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await task

    before = spawns_by_outcome()
    asyncio.run(spawn())
    after = spawns_by_outcome()
    assert {o: after[o] - before[o] for o in after} == {o: float(o == outcome) for o in after}
