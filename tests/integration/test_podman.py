"""A user's server in a rootless podman container inside its Slurm job, for real.

The image is CampusHub's own (images/, built as `make images` builds it), set up as a site sets it
up (docs/slurm.md, containers): root saves it once to an archive readable by all, and the user's
podman loads it into their own storage (rootless storage is per user), so the site file names the
image alone, with no runtime options. The per-user podman settings a site puts in
/etc/containers/containers.conf (this test writes them into the test user's ~/.config/containers
instead, so that the machine's own podman is left alone): because crun cannot set rlimits on this
machine, the runc runtime with explicit ulimits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from tests.cluster.hub import running_hub, slurm_site
from tests.cluster.images import ensure_image
from tests.cluster.slurm import processes, wait_for

USER = "chub-erin"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
"""


@pytest.fixture(scope="module")
def image(unix_users):
    reference = ensure_image("cpu")
    account = unix_users[USER]
    config = Path(account.pw_dir) / ".config" / "containers"
    folder = Path(tempfile.mkdtemp(prefix="campushub-image-"))  # readable by the user, unlike pytest's
    try:
        folder.chmod(0o755)
        archive = folder / "campushub-singleuser.tar"
        saved = subprocess.run(["podman", "save", "--format", "oci-archive", "-o", str(archive), reference],
                               capture_output=True, text=True, timeout=600)  # fmt: skip
        assert saved.returncode == 0, saved.stderr
        archive.chmod(0o644)
        subprocess.run(["runuser", "-u", USER, "--", "mkdir", "-p", str(config)], check=True)
        (config / "containers.conf").write_text(CONTAINERS_CONF)
        os.chown(config / "containers.conf", account.pw_uid, account.pw_gid)
        loaded = subprocess.run(
            ["runuser", "-l", USER, "-c", f"podman load -q -i {archive} && podman image exists {reference}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert loaded.returncode == 0, f"the user's podman did not load {reference}: {loaded.stderr}"
        yield reference
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["runuser", "-l", USER, "-c", "podman system reset --force"], capture_output=True)
        shutil.rmtree(config, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, image, tmp_path_factory):
    # the image alone: no runtime options, no mounts of the node's software
    site = slurm_site(singleuser_env, spawner={"slurm": {"container": {"runtime": "podman", "image": image}}})
    with running_hub(slurm, tmp_path_factory.mktemp("podman-hub"), site) as running:
        yield running


def container_server_pid(uid: int) -> int:
    """The server process of `uid` that runs in a mount namespace other than ours."""
    ours = os.readlink("/proc/self/ns/mnt")
    for pid, argv in processes():
        # python .../bin/campushub-singleuser jupyterhub-singleuser ARGS: the image's own environment's
        # server runs in that process (campushub_lab.startup)
        server = [os.path.basename(a) for a in argv[1:3]] == ["campushub-singleuser", "jupyterhub-singleuser"]
        if not server or "podman" in argv[0]:
            continue
        try:
            if Path(f"/proc/{pid}").stat().st_uid == uid and os.readlink(f"/proc/{pid}/ns/mnt") != ours:
                return pid
        except OSError:
            continue
    raise AssertionError("no containerized server process")


def test_the_server_runs_in_a_podman_container_in_the_job(hub, slurm, unix_users, singleuser_env):
    token = hub.token(USER)
    hub.spawn_and_wait(USER, token)
    (job,) = slurm.jobs_of(USER)
    assert job["state"] == "RUNNING"
    pid = container_server_pid(unix_users[USER].pw_uid)
    # its root is the image's, not the node's: the image's user and its single-user environment
    assert "campus:x:1000:" in Path(f"/proc/{pid}/root/etc/passwd").read_text()
    assert Path(f"/proc/{pid}/root/opt/campushub/singleuser/bin/campushub-singleuser").exists()
    assert not Path(f"/proc/{pid}/root{singleuser_env}").exists()
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
