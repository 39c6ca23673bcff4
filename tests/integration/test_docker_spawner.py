"""Servers in containers: spawner.backend docker, through a real hub and a real Docker API.

The API is root's `podman system service` on a socket of the test's own (no Docker engine here); podman
on this machine needs the runc runtime and explicit ulimits, which the site file sets. The GPUs are fake:
two terminals (/dev/tty2, /dev/tty3) stand for the host's GPU devices. The image comes from
tests.cluster.images.ensure_image. A user opens TensorBoard (the image's jupyter-server-proxy entry) on a
run in their home through the hub's proxy, as the user; another user cannot.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.cluster.hub import RunningHub
from tests.cluster.idp import campus_login
from tests.cluster.images import ensure_image
from tests.cluster.podman_service import PodmanService
from tests.cluster.slurm import wait_for

GPUS = ["/dev/tty2", "/dev/tty3"]
MISSING = "localhost/campushub-test-missing:1"  # on the allow-list, never built
CRASHING = "localhost/campushub-test-crashing:1"
NOT_ALLOWED = "localhost/campushub-test-not-allowed:1"
VOLUME = "campushub-test-home-{username}"
USERS = ["dk-alice", "dk-bob", "dk-carol", "dk-dave", "dk-erin", "dk-grace"]
ADMIN = "dk-ops"
BIND_USER = "chub-frank"  # a unix account of tests/integration/conftest.py


def remove_test_containers(client) -> None:
    for found in client.containers(all=True, filters={"label": "campushub.user"}):
        user = found["Labels"].get("campushub.user", "")
        if user in (*USERS, BIND_USER):
            client.remove_container(found["Id"], force=True, v=True)
    for volume in (client.volumes() or {}).get("Volumes") or []:
        if volume["Name"].startswith("campushub-test-home-"):
            client.remove_volume(volume["Name"], force=True)


@pytest.fixture(scope="module")
def engine(root_required):
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: `make test` installs it")
    service = PodmanService().start()
    try:
        remove_test_containers(service.client())
        yield service
    finally:
        if not service.running():
            service.start()
        remove_test_containers(service.client())
        service.stop()
        shutil.rmtree(service.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def images(engine):
    """The single-user image, and one whose server exits at once (a real crash, for the fault test)."""
    image = ensure_image("cpu")
    with tempfile.TemporaryDirectory(prefix="campushub-crashing-") as ctx:
        Path(ctx, "jupyterhub-singleuser").write_text(
            "#!/bin/sh\necho 'starting the server'\necho 'ImportError: no module named jupyterhub_crash_test' >&2\nexit 3\n"
        )
        Path(ctx, "jupyterhub-singleuser").chmod(0o755)
        Path(ctx, "Containerfile").write_text(
            f"FROM {image}\nCOPY jupyterhub-singleuser /opt/crash/jupyterhub-singleuser\nENV PATH=/opt/crash:$PATH\n"
        )
        done = subprocess.run(
            ["podman", "build", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
             "--pull=never", "-t", CRASHING, ctx],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    subprocess.run(["podman", "rmi", "-f", MISSING], capture_output=True)
    return image


def home_of(engine, image: str) -> str:
    """Where the image's user works: its WORKDIR (its home), else the usual /home/jovyan."""
    return (engine.client().inspect_image(image).get("Config") or {}).get("WorkingDir") or "/home/jovyan"


def docker_site(engine, image) -> dict:
    return {
        "auth": {"admin_users": [ADMIN]},
        "scheduler": {"enabled": False},
        "culling": {"enabled": False},
        "spawner": {
            "backend": "docker",
            "start_timeout": 120,
            "http_timeout": 30,
            "docker": {
                "url": engine.url,
                "images": [image, CRASHING, MISSING],
                "default_image": image,
                "gpus": GPUS,
                "network": "host",
                "runtime": "runc",
                "ulimits": {"nofile": 1024, "nproc": 1024},
                "pull_policy": "never",
                "home_volume": VOLUME,
                "home_path": home_of(engine, image),
            },
        },
        "profiles": [
            {"slug": "cpu", "display_name": "CPU", "default": True, "everyone": True,
             "resources": {"cpus": 1, "memory": "512M"}},
            {"slug": "gpu", "display_name": "One GPU", "everyone": True,
             "resources": {"cpus": 2, "memory": "768M", "gpus": 1}},
            {"slug": "crash", "display_name": "Crashes", "everyone": True, "resources": {"image": CRASHING}},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def hub(engine, images, tmp_path_factory):
    running = RunningHub(tmp_path_factory.mktemp("docker-hub"), docker_site(engine, images)).start()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def tokens(hub):
    return {user: hub.token(user) for user in USERS}


def containers_of(engine, user: str) -> list[dict]:
    return engine.client().containers(all=True, filters={"label": f"campushub.user={user}"})


def inspect(engine, user: str) -> dict:
    (found,) = containers_of(engine, user)
    return engine.client().inspect_container(found["Id"])


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def spawn_failure(hub, user: str, token: str, **body) -> str:
    """The message of a spawn that fails: from the REST answer, or from the progress stream."""
    r = hub.spawn(user, token, **body)
    if r.status_code == 202:
        final = hub.progress(user, token, timeout=60)[-1]
        assert final.get("failed"), final
        return final["message"]
    assert r.status_code == 500, r.text
    return r.json()["message"]


def test_two_users_get_their_own_unprivileged_containers_with_limits_and_disjoint_gpus(hub, engine, tokens):
    # both at once: the pool is handed out under one lock
    for user in ("dk-alice", "dk-bob"):
        r = hub.spawn(user, tokens[user], user_options={"profile": "gpu"})
        assert r.status_code in (201, 202), r.text
    for user in ("dk-alice", "dk-bob"):
        wait_for(lambda u=user: (hub.server(u, tokens[u]) or {}).get("ready"), 90, f"{user}'s server")
    seen = {}
    for user in ("dk-alice", "dk-bob"):
        info = inspect(engine, user)
        host = info["HostConfig"]
        assert host["Memory"] == 768 * 2**20
        assert host["CpuQuota"] / host["CpuPeriod"] == 2
        assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
        assert not host.get("Privileged")
        devices = [d["PathOnHost"] for d in host["Devices"]]
        assert len(devices) == 1 and devices[0] in GPUS
        seen[user] = devices[0]
        # the server itself: a non-root user, no capabilities, no new privileges
        pid = info["State"]["Pid"]
        status = proc_status(pid)
        assert status["Uid"].split()[0] != "0"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        env = proc_environ(pid)
        assert env["CUDA_VISIBLE_DEVICES"] == "0"
        assert env["NVIDIA_VISIBLE_DEVICES"] == devices[0].removeprefix("/dev/tty")
        # it sees its own device and not the other one, nor the engine's socket
        root = Path(f"/proc/{pid}/root")
        assert (root / devices[0].lstrip("/")).exists()
        assert not (root / next(d for d in GPUS if d != devices[0]).lstrip("/")).exists()
        assert not any(m.get("Source", "").endswith(".sock") for m in info["Mounts"])
        # and the server answers through the proxy
        assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    assert seen["dk-alice"] != seen["dk-bob"]


def test_a_file_written_in_a_session_is_there_after_a_new_spawn(hub, engine, tokens):
    user, token = "dk-dave", tokens["dk-dave"]
    hub.spawn_and_wait(user, token)
    info = inspect(engine, user)
    assert info["HostConfig"]["Memory"] == 512 * 2**20  # the default profile's
    assert info["HostConfig"]["Devices"] in (None, [])
    r = hub.user_request("PUT", user, "api/contents/kept.txt", token,
                         json={"type": "file", "format": "text", "content": "kept across spawns"})  # fmt: skip
    assert r.status_code in (200, 201), r.text
    first = info["Id"]
    hub.stop_server(user, token)
    assert containers_of(engine, user) == []  # removed at stop; the home is a volume
    hub.spawn_and_wait(user, token)
    assert inspect(engine, user)["Id"] != first
    r = hub.user_get(user, "api/contents/kept.txt", token)
    assert r.status_code == 200 and r.json()["content"] == "kept across spawns"


# A run as a training script writes it: TensorBoard's own summary writer (no TensorFlow in the image).
WRITE_RUN = """
import os
from tensorboard.summary import Writer
writer = Writer(os.path.join(os.environ["HOME"], "tensorboard", "baseline"))
for step in range(5):
    writer.add_scalar("loss", 1.0 / (step + 1), step=step)
writer.close()
"""


def test_a_user_opens_tensorboard_on_their_runs_through_the_hub(hub, engine, tokens):
    user, token = "dk-grace", tokens["dk-grace"]
    hub.spawn_and_wait(user, token)
    info = inspect(engine, user)
    # the user writes a run into their home, in their container, as the server's own user
    client = engine.client()
    run = client.exec_create(info["Id"], ["python3", "-c", WRITE_RUN])
    output = client.exec_start(run["Id"]).decode(errors="replace")
    assert client.exec_inspect(run["Id"])["ExitCode"] == 0, output
    listed = hub.user_get(user, "api/contents/tensorboard/baseline", token)
    assert listed.status_code == 200, listed.text
    (events,) = listed.json()["content"]
    assert events["name"].startswith("events.out.tfevents."), events
    owner = client.exec_create(info["Id"], ["sh", "-c", 'stat -c %u "$HOME"/tensorboard/baseline/events.*'])
    assert client.exec_start(owner["Id"]).decode().strip() == proc_status(info["State"]["Pid"])["Uid"].split()[0]
    # the Lab's launcher offers TensorBoard (jupyter-server-proxy's entry from images/tensorboard.json)
    servers = hub.user_get(user, "server-proxy/servers-info", token)
    assert servers.status_code == 200, servers.text
    (entry,) = [s for s in servers.json()["server_processes"] if s["name"] == "tensorboard"]
    assert entry["launcher_entry"]["enabled"] and entry["launcher_entry"]["title"] == "TensorBoard"
    # the page, as the user's browser gets it: logged in at the hub, through the proxy, the server's OAuth
    browser = hub.login(user)
    page = browser.get(f"{hub.url}/user/{user}/tensorboard/", timeout=120)
    assert page.status_code == 200 and "<title>TensorBoard</title>" in page.text, (page.url, page.text[:500])

    # TensorBoard's data API through the proxy lists the run and its scalars
    def tags() -> dict:
        r = hub.user_get(user, "tensorboard/data/plugin/scalars/tags", token)
        assert r.status_code == 200, r.text[:500]
        return r.json()

    wait_for(lambda: "baseline" in tags(), 60, "TensorBoard to load the run")
    assert "loss" in tags()["baseline"]
    runs = hub.user_get(user, "tensorboard/data/runs", token)
    assert runs.status_code == 200 and runs.json() == ["baseline"], runs.text[:500]
    # a user reaches only their own server: another user's token, or none, gets no TensorBoard
    other = hub.user_get(user, "tensorboard/data/runs", tokens["dk-dave"], allow_redirects=False)
    assert other.status_code == 403, (other.status_code, other.text[:300])
    anonymous = requests.get(f"{hub.url}/user/{user}/tensorboard/", timeout=30, allow_redirects=False)
    assert anonymous.status_code == 302 and "/hub/" in anonymous.headers["location"], anonymous.status_code
    hub.stop_server(user, token)


def test_the_spawn_page_offers_the_granted_profiles(hub):
    s = hub.login("dk-erin")
    r = s.get(f"{hub.url}/hub/spawn/dk-erin", timeout=30)
    assert r.status_code == 200
    page = r.content.decode()
    assert "One GPU" in page and "2 CPU · 768M memory · 1 GPU" in page and "1 CPU · 2G memory" in page
    assert "runs in a container" in page and "up to" not in page  # no time limit under this backend
    assert hub.server("dk-erin", hub.token("dk-erin")) is None  # the page alone starts nothing


def test_an_image_not_on_the_allow_list_is_refused_and_no_container_is_made(hub, engine, tokens):
    user, token = "dk-erin", tokens["dk-erin"]
    r = hub.spawn(user, token, user_options={"image": NOT_ALLOWED})
    assert r.status_code == 400, r.text
    assert NOT_ALLOWED in r.json()["message"]
    assert hub.server(user, token) is None
    # nor is the refused option kept as the server's options, to come back at the next start
    servers = hub.api("GET", f"/users/{user}?include_stopped_servers", token).json()["servers"]
    assert NOT_ALLOWED not in str(servers.get("", {}).get("user_options")), servers
    assert containers_of(engine, user) == []
    images = [tag for found in engine.client().images() for tag in found.get("RepoTags") or []]
    assert not any(NOT_ALLOWED in tag for tag in images)


def test_an_image_missing_from_the_engine_fails_the_spawn_with_a_message(hub, engine, tokens):
    user, token = "dk-erin", tokens["dk-erin"]
    started = time.monotonic()
    message = spawn_failure(hub, user, token, user_options={"image": MISSING})
    assert time.monotonic() - started < 30
    assert f"The image {MISSING} is not on the container engine" in message
    assert hub.server(user, token) is None
    assert containers_of(engine, user) == []


def test_a_container_that_exits_before_its_server_starts_fails_at_once_with_its_log(hub, engine, tokens):
    user, token = "dk-erin", tokens["dk-erin"]
    started = time.monotonic()
    message = spawn_failure(hub, user, token, user_options={"profile": "crash"})
    assert time.monotonic() - started < 30  # not start_timeout (120 s)
    assert "exited (code 3) before its server started" in message
    assert "no module named jupyterhub_crash_test" in message  # the container's own log
    assert hub.server(user, token) is None
    assert containers_of(engine, user) == []


def test_the_hub_restarts_and_keeps_the_containers_and_the_gpu_allocation(hub, engine, tokens):
    running = {u: inspect(engine, u)["Id"] for u in ("dk-alice", "dk-bob")}
    hub.stop_hub()
    hub.start_hub()
    for user, container in running.items():
        assert inspect(engine, user)["Id"] == container
        assert hub.server(user, tokens[user])["ready"]
        assert hub.user_get(user, "api/status", tokens[user]).status_code == 200
    # both GPUs are in use: a third GPU user gets none of them
    user, token = "dk-carol", tokens["dk-carol"]
    message = spawn_failure(hub, user, token, user_options={"profile": "gpu"})
    assert "Only 0 of the 2 GPUs are free now" in message
    assert containers_of(engine, user) == []
    # released at stop: the third user gets the freed device
    bobs = [d["PathOnHost"] for d in inspect(engine, "dk-bob")["HostConfig"]["Devices"]]
    hub.stop_server("dk-bob", tokens["dk-bob"])
    hub.spawn_and_wait(user, token, user_options={"profile": "gpu"})
    assert [d["PathOnHost"] for d in inspect(engine, user)["HostConfig"]["Devices"]] == bobs


def test_the_metrics_count_containers_by_profile_and_spawns_by_outcome(hub, tokens):
    # after the restart above: carol's GPU spawn failed (no free GPU), then ran; alice's and carol's servers run
    admin = hub.token(ADMIN, hub.admin_password)
    r = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {admin}"}, timeout=10)
    assert r.status_code == 200, r.text
    lines = set(r.text.splitlines())
    assert 'campushub_running_servers{group="everyone",profile="gpu"} 2.0' in lines
    assert 'campushub_gpus_in_use{group="everyone",profile="gpu"} 2.0' in lines
    assert 'campushub_spawn_duration_seconds_count{outcome="ready",profile="gpu"} 1.0' in lines
    assert 'campushub_spawn_duration_seconds_count{outcome="failed",profile="gpu"} 1.0' in lines


def test_the_engine_out_of_reach_fails_the_spawn_with_a_message(hub, engine, tokens):
    user, token = "dk-bob", tokens["dk-bob"]
    engine.stop()
    try:
        started = time.monotonic()
        message = spawn_failure(hub, user, token)
        assert time.monotonic() - started < 30
        assert f"The container engine at {engine.url} cannot be reached" in message
        assert hub.server(user, token) is None
    finally:
        engine.start()
    # the API back: the running servers are there still, and spawns work again
    assert hub.server("dk-alice", tokens["dk-alice"])["ready"]
    hub.spawn_and_wait(user, token, user_options={"profile": "cpu"})


def test_bound_homes_run_the_server_as_the_users_own_account(engine, images, unix_users, tmp_path_factory):
    site = docker_site(engine, images)
    site["auth"] = campus_login()
    site["spawner"]["docker"]["homes"] = "bind"
    account = unix_users[BIND_USER]
    running = RunningHub(tmp_path_factory.mktemp("docker-bind-hub"), site).start()
    try:
        token = running.token(BIND_USER)
        running.spawn_and_wait(BIND_USER, token)
        info = inspect(engine, BIND_USER)
        status = proc_status(info["State"]["Pid"])
        assert status["Uid"].split()[0] == str(account.pw_uid) and status["Gid"].split()[0] == str(account.pw_gid)
        assert proc_environ(info["State"]["Pid"])["HOME"] == account.pw_dir
        r = running.user_request("PUT", BIND_USER, "api/contents/bound.txt", token,
                                 json={"type": "file", "format": "text", "content": "in my home"})  # fmt: skip
        assert r.status_code in (200, 201), r.text
        written = Path(account.pw_dir) / "bound.txt"
        assert written.read_text() == "in my home" and written.stat().st_uid == account.pw_uid
        running.stop_server(BIND_USER, token)
        assert containers_of(engine, BIND_USER) == []
    finally:
        running.close()
