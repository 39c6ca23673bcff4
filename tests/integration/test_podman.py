"""A user's server in a rootless podman container inside its Slurm job, for real.

No registry is reachable here, so the image is made on the spot: an empty root file system
(symlinks into /usr) imported into the user's own podman storage, with the node's /usr and the
single-user environment mounted read-only through `container.options`. podman on this machine
needs the runc runtime and explicit ulimits (crun fails on setrlimit here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import requests

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.slurm import wait_for

USER = "chub-erin"
IMAGE = "localhost/campushub-test-lab:1"


def empty_rootfs(tar_path: Path) -> None:
    with tarfile.open(tar_path, "w") as tar:
        for name in ("usr", "etc", "home", "proc", "sys", "dev", "run", "tmp", "var/tmp", "opt"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name.endswith("tmp") else 0o755
            tar.addfile(info)
        for name, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


@pytest.fixture(scope="module")
def image(unix_users):
    folder = Path(tempfile.mkdtemp(prefix="campushub-image-"))  # readable by the user, unlike pytest's
    try:
        folder.chmod(0o755)
        tar_path = folder / "rootfs.tar"
        empty_rootfs(tar_path)
        tar_path.chmod(0o644)
        done = subprocess.run(
            ["runuser", "-l", USER, "-c", f"podman import {tar_path} {IMAGE}"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return IMAGE


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, image, tmp_path_factory):
    env = str(singleuser_env)
    container = {
        "runtime": "podman",
        "image": image,
        "options": [
            "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--volume", "/usr:/usr:ro", "--volume", f"{env}:{env}:ro", "--env", f"PATH={env}/bin:/usr/bin:/bin",
        ],
    }  # fmt: skip
    site = slurm_site(singleuser_env, spawner={"slurm": {"container": container}})
    with running_hub(slurm, tmp_path_factory.mktemp("podman-hub"), site) as running:
        yield running


def container_server_pid(uid: int) -> int:
    """The jupyterhub-singleuser process of `uid` that runs in a mount namespace other than ours."""
    ours = os.readlink("/proc/self/ns/mnt")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_text().split("\0")
            # python .../bin/jupyterhub-singleuser ARGS (campushub-singleuser has exec'd it)
            server = len(argv) > 1 and os.path.basename(argv[1]) == "jupyterhub-singleuser"
            if entry.stat().st_uid != uid or not server or "podman" in argv[0]:
                continue
            if os.readlink(entry / "ns" / "mnt") != ours:
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError("no containerized server process")


def test_the_server_runs_in_a_podman_container_in_the_job(hub, slurm, unix_users):
    token = hub.token(USER)
    hub.spawn_and_wait(USER, token)
    (job,) = slurm.jobs_of(USER)
    assert job["state"] == "RUNNING"
    pid = container_server_pid(unix_users[USER].pw_uid)
    # its root is the image's, not the node's (whose /etc has debian_version)
    assert not Path(f"/proc/{pid}/root/etc/debian_version").exists() and Path("/etc/debian_version").exists()
    assert hub.user_get(USER, "api/status", token).status_code == 200
    # the user's home is the same folder inside: a file saved through the server lands there, theirs
    saved = requests.put(
        f"{hub.url}/user/{USER}/api/contents/made-in-podman.txt",
        headers={"Authorization": f"token {token}"},
        json={"type": "file", "format": "text", "content": "hello"},
        timeout=30,
    )
    assert saved.status_code in (200, 201), saved.text
    made = Path(unix_users[USER].pw_dir) / "made-in-podman.txt"
    assert made.read_text() == "hello" and made.stat().st_uid == unix_users[USER].pw_uid
    hub.stop_server(USER, token)
    wait_for(lambda: slurm.job_state(job["id"]) != "RUNNING", 60, "the job to end")
    # Whether the container itself ends with the job depends on Slurm's process tracking: conmon
    # leaves the job's process tree, so proctrack/linuxproc (this test cluster) may miss it, while
    # proctrack/cgroup with podman's --cgroups=disabled keeps it in the job (docs/slurm.md).
