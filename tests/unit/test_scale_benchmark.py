"""The scale benchmark's pure parts (the load's schedule, the hub's histograms, the figures and the report) and
its server process, run for real against a small stand-in for the hub's API."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from benchmarks.scale import (
    RESULTS_END,
    RESULTS_START,
    error_kind,
    from_records,
    histogram,
    histogram_delta,
    histogram_quantile,
    hub_log,
    main,
    open_loop_schedule,
    poll_offsets,
    results_block,
    start_servers,
    timing,
)
from tests.cluster.slurm import end_process, wait_for

INF = float("inf")


def test_logins_start_on_a_fixed_schedule_whatever_the_earlier_ones_do():
    starts = open_loop_schedule(10, 60)
    assert len(starts) == 600
    assert starts[:3] == [0.0, 0.1, 0.2] and starts[-1] == pytest.approx(59.9)
    assert open_loop_schedule(2.5, 2) == [0.0, 0.4, 0.8, 1.2, 1.6]
    for rate, seconds in ((0, 60), (10, 0), (-1, 5)):
        with pytest.raises(ValueError, match="must be positive"):
            open_loop_schedule(rate, seconds)


def test_browsers_first_polls_spread_over_one_interval():
    assert poll_offsets(4, 5.0) == [0.0, 1.25, 2.5, 3.75]
    assert len(set(poll_offsets(300, 5.0))) == 300 and max(poll_offsets(300, 5.0)) < 5.0


METRICS = """\
# HELP jupyterhub_proxy_add_duration_seconds Duration for adding user routes to proxy
# TYPE jupyterhub_proxy_add_duration_seconds histogram
jupyterhub_proxy_add_duration_seconds_bucket{le="0.01",status="success"} %d
jupyterhub_proxy_add_duration_seconds_bucket{le="0.05",status="success"} %d
jupyterhub_proxy_add_duration_seconds_bucket{le="0.1",status="success"} %d
jupyterhub_proxy_add_duration_seconds_bucket{le="+Inf",status="success"} %d
jupyterhub_proxy_add_duration_seconds_count{status="success"} %d
jupyterhub_proxy_add_duration_seconds_sum{status="success"} %f
jupyterhub_proxy_add_duration_seconds_bucket{le="0.01",status="failure"} 7
jupyterhub_proxy_add_duration_seconds_bucket{le="+Inf",status="failure"} 7
jupyterhub_proxy_add_duration_seconds_count{status="failure"} 7
jupyterhub_proxy_add_duration_seconds_sum{status="failure"} 0.01
"""


def test_the_route_add_histogram_between_two_readings_and_its_quantiles():
    name = "jupyterhub_proxy_add_duration_seconds"
    before = histogram(METRICS % (1, 1, 1, 1, 1, 0.005), name, status="success")
    assert before == {"buckets": [(0.01, 1), (0.05, 1), (0.1, 1), (INF, 1)], "sum": 0.005, "count": 1}
    after = histogram(METRICS % (1, 81, 101, 101, 101, 3.005), name, status="success")
    added = histogram_delta(before, after)
    assert added["buckets"] == [(0.01, 0), (0.05, 80), (0.1, 100), (INF, 100)]
    assert (added["count"], added["sum"]) == (100, pytest.approx(3.0))
    # the 50th of 100 lies 50/80 of the way through the bucket 0.01-0.05; the 95th 15/20 through 0.05-0.1
    assert histogram_quantile(0.5, added["buckets"]) == pytest.approx(0.01 + 0.04 * 50 / 80)
    assert histogram_quantile(0.95, added["buckets"]) == pytest.approx(0.05 + 0.05 * 15 / 20)
    # in the +Inf bucket: the highest finite bound, as Prometheus answers; nothing observed: no quantile
    assert histogram_quantile(0.99, [(0.1, 1), (INF, 10)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_errors_are_what_is_not_a_2xx_answer():
    assert [error_kind(x) for x in (200, 204, 302, 403, 503, "timeout")] == [None, None, "HTTP 302", "HTTP 403",
                                                                            "HTTP 503", "timeout"]  # fmt: skip
    samples = [{"seconds": 0.1}, {"seconds": 9.0, "error": "timeout"}, {"seconds": 0.3, "error": None},
               {"seconds": 0.2, "error": "HTTP 502"}, {"seconds": 0.2, "error": "timeout"}]  # fmt: skip
    t = timing(samples)
    assert (t["n"], t["errors"], t["max"]) == (5, {"timeout": 2, "HTTP 502": 1}, 0.3)
    assert t["p50"] == pytest.approx(0.2)
    assert timing([{"seconds": 1.0, "error": "timeout"}]) == {"n": 1, "errors": {"timeout": 1}}
    records = [[99.0, 0.1, 204], [100.0, 0.2, 204], [130.0, 0.5, 503], [160.0, 0.3, 204]]
    assert from_records(records, 100, 160) == [{"seconds": 0.2, "error": None}, {"seconds": 0.5, "error": "HTTP 503"}]


def a_run(proxy: str, login_p95: float, proxied_p95: float, errors: dict) -> dict:
    def part(p95, errs=None):
        return {"n": 600, "errors": errs or {}, "p50": p95 / 2, "p95": p95, "max": p95 * 2}

    usage = {n: {"cpu": 20.0, "rss": 200.0} for n in ("hub", "proxy", "servers", "idp", "load")}
    return {
        "proxy": proxy,
        "first_logins": {**part(0.4), "seconds": 50.0},
        "spawns": {**part(0.1), "seconds": 12.0},
        "route_add": {"n": 300, "mean": 0.004, "p50": 0.003, "p95": 0.009},
        "first_requests": part(0.01),
        "load": {"logins": part(login_p95, errors), "proxied": part(proxied_p95), "activity": part(0.02),
                 "token_checks": part(0.01), "usage": {**usage, "machine_busy": 80.0}},
        "stops": {**part(0.05), "seconds": 8.0},
        "left_running": 0,
        "hub_log_errors": 0,
        "stalls": [1.2, 0.3],
    }  # fmt: skip


def test_the_report_puts_both_proxies_side_by_side_and_says_which_targets_are_met():
    res = {"date": "2026-11-23 21:00 UTC", "host": "box", "cpus": 2, "python": "3.11", "jupyterhub": "6.1.1",
           "campushub": "0.1", "users": 1000, "servers": 300, "login_rate": 10, "load_seconds": 60,
           "poll_interval": 5, "concurrency": 10, "accounts_seconds": 0.05, "load": [[1, 1, 1], [2, 2, 2]],
           "minutes": 9.5,
           "runs": [a_run("chp", 0.6, 0.012, {}), a_run("traefik", 1.4, 0.080, {"timeout": 2, "HTTP 502": 1})]}  # fmt: skip
    block = results_block(res)
    assert block.startswith(RESULTS_START) and block.endswith(RESULTS_END)
    assert "| | chp | traefik |" in block
    assert "| **login p50 / p95**, s | 0.30 / **0.60** | 0.70 / **1.40** |" in block
    assert "| **proxied p50 / p95**, ms | 6.0 / **12.0** | 40.0 / **80.0** |" in block
    assert "| **errors, all kinds** | **0** | **3** |" in block
    assert "| route add (hub's histogram): mean / p50 / p95, ms | 4.0 / 3.0 / 9.0 | 4.0 / 3.0 / 9.0 |" in block
    assert "| hub's event loop stalls it warned of (whole run): n, longest s | 2, 1.20 | 2, 1.20 |" in block
    # 80% of 2 cores busy, 5 x 20% of one core the benchmark's own processes
    assert "| of which other processes on the machine, % of one core | 60 | 60 |" in block
    chp, traefik = (line for line in block.splitlines() if line.startswith("- "))
    assert chp.count("**met**") == 3
    assert "0 errors (3): **not met**" in traefik and "(1.40 s): **not met**" in traefik
    assert "(80.0 ms): **not met**" in traefik


def test_the_hub_log_tells_errors_and_stalls():
    text = """[I 2026-11-23 20:41:45.900 JupyterHub log:192] 200 GET /hub/home (ada@127.0.0.1) 7.48ms
[W 2026-11-23 20:41:47.734 JupyterHub metrics:500] Event loop was unresponsive for at least 1.76s!
[E 2026-11-23 20:41:48.001 JupyterHub base:1] Unhandled error
[W 2026-11-23 20:42:47.100 JupyterHub metrics:500] Event loop was unresponsive for at least 0.25s!
"""
    assert hub_log(text) == {"hub_log_errors": 1, "stalls": [1.76, 0.25]}


def test_bad_arguments_are_named(capsys):
    for argv, message in (
        (["--proxy", "chp,nginx"], "'chp,nginx': name one or more of chp, traefik"),
        (["--servers", "20", "--users", "10"], "--servers must be between 1 and --users"),
        (["--load-seconds", "0"], "must be positive"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


class StandIn(BaseHTTPRequestHandler):
    """The hub's API as the servers use it: who a token is, and their activity reports."""

    activity: list[dict] = []

    def do_GET(self):
        token = self.headers.get("Authorization", "")
        scopes = {"token ada-browser": ["access:servers!user=ada"], "token bob-browser": ["access:servers!user=bob"]}
        if self.path != "/hub/api/user" or token not in scopes:
            self.send_response(403)
            self.end_headers()
            return
        self.reply(200, {"name": token.split()[1].split("-")[0], "scopes": scopes[token]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.activity.append({"path": self.path, "token": self.headers["Authorization"], **body})
        self.reply(204, None)

    def reply(self, status, body):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    server.shutdown()
    server.server_close()


@pytest.fixture
def servers(tmp_path):
    proc, url = start_servers(tmp_path)
    yield url
    end_process(proc, 10)


def test_a_server_answers_like_a_single_user_server_reports_activity_and_closes_its_port(stand_in, servers):
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/", "JUPYTERHUB_USER": "ada", "JUPYTERHUB_SERVER_NAME": "",
           "JUPYTERHUB_API_URL": stand_in, "JUPYTERHUB_API_TOKEN": "ada-server-token",
           "JUPYTERHUB_ACTIVITY_URL": f"{stand_in}/users/ada/activity", "JUPYTERHUB_ACTIVITY_INTERVAL": "1"}  # fmt: skip
    r = requests.post(f"{servers}/server", params={"user": "ada"}, json={"env": env}, timeout=5)
    port = r.json()["port"]
    assert requests.get(f"{servers}/server", params={"user": "ada"}, timeout=5).json() == {"port": port}
    ada = f"http://127.0.0.1:{port}/user/ada/"
    check = requests.get(ada, allow_redirects=False, timeout=5)  # the hub's readiness check
    assert (check.status_code, check.headers["Location"]) == (302, "/user/ada/lab")
    assert check.headers["X-JupyterHub-Version"]
    assert requests.get(f"{ada}api", timeout=5).json()["version"]
    assert requests.get(f"http://127.0.0.1:{port}/user/bob/api", timeout=5).status_code == 404
    for token, status in (
        ("ada-browser", 200),
        ("bob-browser", 403),
        ("nobody", 403),
        ("nobody", 403),
        ("ada-browser", 200),
    ):
        r = requests.get(f"{ada}api/status", headers={"Authorization": f"token {token}"}, timeout=5)
        assert r.status_code == status, token
    assert requests.get(f"{ada}api/kernels", timeout=5).status_code == 403  # no token at all
    assert requests.get(f"{ada}api/kernels", headers={"Authorization": "token ada-browser"}, timeout=5).json() == []

    wait_for(lambda: StandIn.activity, 10, "an activity report")
    report = StandIn.activity[0]
    assert (report["path"], report["token"]) == ("/hub/api/users/ada/activity", "token ada-server-token")
    assert report["last_activity"] == report["servers"][""]["last_activity"]
    stats = requests.get(f"{servers}/stats", timeout=5).json()
    assert stats["servers"] == 1 and stats["activity"][0][2] == 204
    # each token the hub knows is asked about once (then cached), one it refused each time
    assert [outcome for _, _, outcome in stats["token_checks"]] == [200, 200, 403, 403]

    assert requests.delete(f"{servers}/server", params={"user": "ada"}, timeout=5).status_code == 204
    assert requests.get(f"{servers}/server", params={"user": "ada"}, timeout=5).status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(ada, timeout=5)
    reports = len(StandIn.activity)
    time.sleep(1.5)
    assert len(StandIn.activity) == reports, "a stopped server reports no more activity"
