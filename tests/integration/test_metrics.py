"""The hub's metrics, scraped by a real Prometheus (Debian's package) with the token of the site's
`prometheus` service, on the real Slurm cluster with the campus login: a spawn that gets ready, one
whose job fails, a refused login, and the series they leave, read back through Prometheus's query API.

The example alert rules (docs/prometheus) are checked with Prometheus's own promtool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.idp import set_user
from tests.cluster.slurm import free_port, wait_for

ROOT = Path(__file__).parents[2]
RULES = ROOT / "docs" / "prometheus" / "campushub-rules.yml"
READY_USER, FAILING_USER = "chub-alice", "chub-bob"
PROFILES = [
    {"slug": "cpu", "display_name": "CPU only", "everyone": True, "default": True},
    # granted by the campus group, which every test user's login gives (tests/cluster/idp.py)
    {"slug": "gpu-1", "display_name": "One GPU", "groups": ["campus"], "resources": {"gpus": 1}},
    {"slug": "broken", "display_name": "Broken environment", "everyone": True},
]
# the broken profile's job runs (its queue wait is seen), then fails while loading its environment
PROLOGUE = 'if [ "$CAMPUSHUB_PROFILE" = broken ]; then echo "no such module cuda/99" >&2; sleep 2; exit 3; fi'
TOKEN = "prometheus-scrapes-campushub-1234"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus package")
    return found


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics-hub")
    token_file = workdir / "prometheus-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    site = slurm_site(
        singleuser_env,
        spawner={"slurm": {"prologue": PROLOGUE}},
        profiles=PROFILES,
        metrics={"token_file": str(token_file)},
    )
    with running_hub(slurm, workdir, site) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(hub, tmp_path_factory):
    """A throwaway Prometheus scraping the hub's /hub/metrics every second with the service's token."""
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed: `make test` installs Debian's prometheus package")
    workdir = tmp_path_factory.mktemp("prometheus")
    credentials = workdir / "token"
    credentials.write_text(TOKEN)
    credentials.chmod(0o600)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "campushub",
                "metrics_path": "/hub/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(credentials)},
                "static_configs": [{"targets": [f"127.0.0.1:{hub.port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(workdir / "prometheus.log", "w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url, proc, workdir), 60, "Prometheus to start")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def ready(url: str, proc: subprocess.Popen, workdir: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def query(prometheus: str, expr: str) -> dict[tuple, float]:
    """An instant query through Prometheus's HTTP API: {sorted label pairs without __name__: value}."""
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return {
        tuple(sorted((k, v) for k, v in s["metric"].items() if k not in ("__name__", "job", "instance"))): float(
            s["value"][1]
        )
        for s in body["data"]["result"]
    }


def value_of(prometheus: str, expr: str) -> float | None:
    found = query(prometheus, expr)
    assert len(found) <= 1, found
    return next(iter(found.values()), None)


def eventually(prometheus: str, expr: str, expected: float, timeout: float = 30) -> None:
    """Wait for a fresh scrape to show `expr` == expected (Prometheus scrapes every second)."""
    seen = []

    def shows() -> bool:
        seen.append(value_of(prometheus, expr))
        return seen[-1] == expected

    try:
        wait_for(shows, timeout, f"{expr} == {expected}", 0.5)
    except Exception as e:
        raise AssertionError(f"{expr}: expected {expected}, last seen {seen[-3:]}") from e


def test_prometheus_scrapes_the_hub_with_the_services_token_only(hub, prometheus):
    eventually(prometheus, 'up{job="campushub"}', 1)
    targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    # JupyterHub's own metrics and CampusHub's come from the one endpoint
    assert value_of(prometheus, "count(jupyterhub_running_servers)") == 1
    assert value_of(prometheus, "count(campushub_refused_logins_total)") >= 8  # every reason, from 0
    # the token reads the metrics and nothing else
    metrics = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert metrics.status_code == 200 and "campushub_refused_logins_total" in metrics.text
    assert hub.api("GET", "/users", TOKEN).status_code == 403
    assert requests.get(f"{hub.url}/hub/metrics", timeout=10).status_code == 403  # no token, no metrics


def test_spawns_queue_wait_servers_gpus_and_refused_logins_reach_prometheus(hub, prometheus, unix_users):
    tokens = {user: hub.token(user) for user in (READY_USER, FAILING_USER)}

    hub.spawn_and_wait(READY_USER, tokens[READY_USER], profile="gpu-1")

    r = hub.spawn(FAILING_USER, tokens[FAILING_USER], profile="broken")
    if r.status_code == 202:  # still going after the hub's slow-spawn wait: its end comes as progress
        events = hub.progress(FAILING_USER, tokens[FAILING_USER])
        assert events[-1].get("failed"), events
    else:
        assert r.status_code == 500 and "ended (FAILED) before its server started" in r.text, r.text

    issuer = hub.site["auth"]["oidc"]["issuer"]
    set_user(issuer, "sub-mallory", preferred_username="chub-mallory", groups=["visitors"])
    _, page = hub.oidc_login("sub-mallory")
    assert page.status_code == 403, page.text[:300]

    spawns = "campushub_spawn_duration_seconds_count"
    eventually(prometheus, f'{spawns}{{profile="gpu-1",outcome="ready"}}', 1)
    eventually(prometheus, f'{spawns}{{profile="broken",outcome="failed"}}', 1)
    assert value_of(prometheus, f'sum({spawns}{{outcome="cancelled"}})') is None  # none was cancelled
    # a ready spawn took some seconds, and its job's wait in the gpu partition's queue was observed
    assert 0 < value_of(prometheus, 'campushub_spawn_duration_seconds_sum{profile="gpu-1",outcome="ready"}') < 120
    eventually(prometheus, 'campushub_slurm_queue_wait_seconds_count{partition="gpu"}', 2)  # both jobs ran
    assert value_of(prometheus, 'campushub_slurm_queue_wait_seconds_bucket{partition="gpu",le="+Inf"}') == 2

    assert query(prometheus, "campushub_running_servers") == {(("group", "campus"), ("profile", "gpu-1")): 1}
    assert query(prometheus, "campushub_gpus_in_use") == {(("group", "campus"), ("profile", "gpu-1")): 1}

    eventually(prometheus, 'campushub_refused_logins_total{reason="not_allowed"}', 1)
    assert value_of(prometheus, 'sum(campushub_refused_logins_total{reason!="not_allowed"})') == 0

    # the scheduler's runs by state, counted in its store: every state, none yet
    runs = query(prometheus, "campushub_scheduler_runs")
    assert {dict(k)["state"] for k in runs} >= {"pending", "running", "succeeded", "failed"}, runs
    assert set(runs.values()) == {0}

    # no user name in any CampusHub series
    names = requests.get(f"{prometheus}/api/v1/series", params={"match[]": '{__name__=~"campushub_.*"}'}, timeout=10)
    assert not [s for s in names.json()["data"] if any("chub-" in v for v in s.values())]

    # the server stops: its gauges go back to nothing
    hub.stop_server(READY_USER, tokens[READY_USER])
    eventually(prometheus, "count(campushub_running_servers)", None)


def test_the_example_alert_rules_pass_promtool():
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
