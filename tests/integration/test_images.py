"""The single-user image (images/), built as `make images` builds it and run with podman, for real.

Checked: the server runs as a non-root user under tini (PID 1), also as a uid chosen at run time;
the image's HEALTHCHECK passes on a running server; the CampusHub Lab extension and
jupyter-server-proxy are enabled; TensorBoard opens through the proxy (the Lab launcher's entry);
and the image holds no compilers or build tools, private keys, pip caches or leftover wheels.
podman here needs runc and explicit ulimits (docs/slurm.md, containers). The GPU image (several GB) only
with CAMPUSHUB_TEST_GPU_IMAGE=1: built and checked by images/check-gpu (make check-image-gpu).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.cluster.images import ensure_image, image_size
from tests.cluster.slurm import free_port, wait_for

PODMAN_RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image(root_required, request):
    reference = ensure_image("cpu")
    size = image_size(reference)
    line = f"image {reference}: {size / 1e6:.0f} MB"
    request.config.pluginmanager.getplugin("terminalreporter").write_line(line)
    return reference


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def in_image(image: str, script: str) -> subprocess.CompletedProcess:
    """A shell script run in a throwaway container of the image, as its user."""
    return subprocess.run(
        [*PODMAN_RUN, "--rm", "--network=none", "--entrypoint", "/bin/sh", image, "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class Server:
    def __init__(self, name: str, port: int, token: str):
        self.name, self.port, self.token = name, port, token
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, timeout: float = 30) -> requests.Response:
        return requests.get(f"{self.url}/{path}", headers={"Authorization": f"token {self.token}"}, timeout=timeout)

    def up(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
        if state not in ("running", "created", "configured"):
            raise AssertionError(f"the container is {state}: {podman('logs', self.name).stderr[-3000:]}")
        try:
            return self.get("api/status").status_code == 200
        except requests.ConnectionError:
            return False


@contextmanager
def server(image: str, *options: str):
    """The image's default command (a JupyterLab, no hub) on a free port of the host network."""
    name, port, token = f"campushub-image-test-{secrets.token_hex(4)}", free_port(), secrets.token_hex(16)
    started = subprocess.run(
        [*PODMAN_RUN, "--detach", "--name", name, "--network=host", *options, image,
         "campushub-start", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    running = Server(name, port, token)
    try:
        try:
            wait_for(running.up, 120, "the image's server to answer")
        except TimeoutError:
            raise AssertionError(podman("logs", name).stderr[-3000:]) from None
        yield running
    finally:
        podman("rm", "--force", "--time", "5", name)


def process_tree(name: str) -> tuple[int, list[int]]:
    """The container's PID 1 (host pid) and its children's host pids."""
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return pid, [int(c) for c in children]


def ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
    return uid, gid


def argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def test_the_server_runs_as_a_non_root_user_under_tini(image):
    with server(image) as running:
        init, children = process_tree(running.name)
        assert argv(init)[0] == "/usr/bin/tini", argv(init)
        assert ids(init) != (0, 0) and ids(init)[0] == 1000
        (child,) = children
        assert "jupyter-lab" in " ".join(argv(child)) and ids(child) == (1000, 100)
        # the image's own health check agrees with what we see
        health = podman("healthcheck", "run", running.name)
        assert health.returncode == 0, health.stdout + health.stderr


def test_any_uid_chosen_at_run_time_gets_a_working_server(image):
    with server(image, "--user", "43210:43210") as running:
        _, (child,) = process_tree(running.name)
        assert ids(child) == (43210, 43210)
        # HOME is writable by that uid: a notebook saved through the server lands there
        saved = requests.put(
            f"{running.url}/api/contents/saved.ipynb",
            headers={"Authorization": f"token {running.token}"},
            json={"type": "notebook", "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}},
            timeout=30,
        )
        assert saved.status_code == 201, saved.text
        owner = subprocess.run(
            ["podman", "exec", running.name, "stat", "-c", "%u", "/home/campus/saved.ipynb"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert owner.stdout.strip() == "43210", owner.stderr


def test_the_lab_extension_and_the_proxy_are_enabled(image):
    done = in_image(image, "jupyter server extension list 2>&1; echo ---; jupyter labextension list 2>&1")
    assert done.returncode == 0, done.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # without the colours
    server_part, lab_part = plain.split("---", 1)
    for extension in ("campushub_lab", "jupyter_server_proxy"):
        assert re.search(rf"{extension}\s+enabled", server_part), server_part
        assert f"{extension} " in server_part and "X " + extension not in server_part
    # the launcher's TensorBoard tile comes from jupyter-server-proxy's labextension
    assert re.search(r"@jupyterhub/jupyter-server-proxy .*enabled", lab_part), lab_part
    if (REPO / "extensions" / "campushub-lab" / "package.json").exists():  # the Lab front-end, once it is there
        assert re.search(r"campushub-lab .*enabled", lab_part), lab_part


def test_tensorboard_opens_through_the_server_proxy(image):
    with server(image) as running:
        servers = running.get("server-proxy/servers-info")
        assert servers.status_code == 200, servers.text
        (entry,) = [s for s in servers.json()["server_processes"] if s["name"] == "tensorboard"]
        assert entry["launcher_entry"]["enabled"] and entry["launcher_entry"]["title"] == "TensorBoard"
        page = running.get("tensorboard/", timeout=120)
        assert page.status_code == 200 and "<title>TensorBoard</title>" in page.text, page.text[:500]
        # its data API answers through the proxy too (relative URLs, as the page uses them)
        env = running.get("tensorboard/data/environment")
        assert env.status_code == 200 and "data_location" in env.json(), env.text[:500]
        # without the server's token the proxy refuses
        anonymous = requests.get(f"{running.url}/tensorboard/", timeout=30, allow_redirects=False)
        assert anonymous.status_code in (302, 403), anonymous.status_code


BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "make", "ld", "as", "cpp", "clang", "gfortran", "apt-get")
NO_BUILD_TOOLS_EXPECTED = {"apt-get"}  # Debian's base keeps apt (no package lists, nothing to install from)


def test_the_image_holds_no_build_tools_keys_or_caches(image):
    mounted = podman("image", "mount", image)
    assert mounted.returncode == 0, mounted.stderr
    root = Path(mounted.stdout.strip())
    try:
        found_tools = [
            f"{d}/{tool}"
            for tool in BUILD_TOOLS
            if tool not in NO_BUILD_TOOLS_EXPECTED
            for d in ("usr/bin", "usr/local/bin", "bin", "opt/campushub/singleuser/bin")
            if (root / d / tool).exists()
        ]
        assert not found_tools, found_tools
        assert not list((root / "usr/lib/gcc").glob("*/*/cc1")), "a C compiler's backend is in the image"
        problems = []
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file():
                if path.is_dir() and path.name in ("pip", "wheels") and path.parent.name == ".cache":
                    problems.append(f"pip cache {path}")
                continue
            rel = path.relative_to(root)
            if path.name.startswith(("id_rsa", "id_ed25519", "id_ecdsa", "id_dsa")) or path.name.startswith(
                "ssh_host_"
            ):
                problems.append(f"ssh key {rel}")
            elif path.suffix in (".pem", ".key") and path.stat().st_size < 100_000:
                if b"PRIVATE KEY" in path.read_bytes():
                    problems.append(f"private key {rel}")
            elif path.suffix == ".whl" and rel.parent != Path("usr/share/python-wheels"):  # ensurepip's own
                problems.append(f"leftover wheel {rel}")
        assert not problems, problems
        assert not (root / "root/.cache").exists() and not (root / "home/campus/.cache").exists()
        config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
        assert not [e for e in config.get("Env", []) if re.search(r"TOKEN|SECRET|PASSWORD", e.split("=")[0])]
        assert config["User"] == "1000:100" and config["Entrypoint"][0] == "/usr/bin/tini"
    finally:
        podman("image", "unmount", image)


def test_the_servers_modules_are_compiled_in_the_image(image):
    # a server would compile them at each start otherwise (it may not write them: any uid, no bytecode writing)
    mounted = podman("image", "mount", image)
    assert mounted.returncode == 0, mounted.stderr
    root = Path(mounted.stdout.strip())
    try:
        (site,) = (root / "opt/campushub/singleuser/lib").glob("python3*/site-packages")
        for module in ("jupyter_server/serverapp.py", "jupyterlab/labapp.py", "jupyterhub/singleuser/mixins.py",
                       "campushub_lab/startup.py", "tornado/web.py"):  # fmt: skip
            source = site / module
            assert source.exists(), module
            compiled = list((source.parent / "__pycache__").glob(f"{source.stem}.cpython-*.pyc"))
            assert compiled, f"{module} is not compiled in the image"
    finally:
        podman("image", "unmount", image)


@pytest.mark.skipif(
    os.environ.get("CAMPUSHUB_TEST_GPU_IMAGE") != "1",
    reason="the GPU image is several GB: CAMPUSHUB_TEST_GPU_IMAGE=1 builds and checks it (or make check-image-gpu)",
)
def test_the_gpu_image_loads_cuda_as_a_non_root_user_and_starts_the_server(root_required):
    reference = ensure_image("gpu")
    done = subprocess.run([str(REPO / "images" / "check-gpu"), reference], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CUDA runtime 12." in done.stdout and "all checks passed" in done.stderr
