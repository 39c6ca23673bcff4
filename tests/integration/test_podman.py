"""A user's server in a rootless podman container inside its Slurm job, for real.

The image is CampusHub's own (images/, built as `make images` builds it), set up as a site sets it
up (docs/slurm.md, containers): root copies it once into a shared, read-only image store, and each
user's podman reads that store (`additionalimagestores`), so nobody pulls or loads anything and the
site file names the image alone, with no runtime options. The per-user podman settings a site puts
in /etc/containers (this test writes them into the test user's ~/.config/containers instead, so that
the machine's own podman is left alone): the shared store, and, because crun cannot set rlimits on
this machine, the runc runtime with explicit ulimits.
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
from tests.cluster.slurm import wait_for

USER = "chub-erin"
STORAGE_CONF = """[storage]
driver = "overlay"

[storage.options]
additionalimagestores = ["{store}"]
"""
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
"""


def shared_store(image: str) -> Path:
    """The image copied into a read-only image store readable by all (what the site does once per image)."""
    store = Path(tempfile.mkdtemp(prefix="campushub-image-store-"))
    store.chmod(0o755)
    archive = store.parent / f"{store.name}.tar"
    try:
        saved = subprocess.run(["podman", "save", "--format", "oci-archive", "-o", str(archive), image],
                               capture_output=True, text=True, timeout=600)  # fmt: skip
        assert saved.returncode == 0, saved.stderr
        loaded = subprocess.run(
            ["podman", "--root", str(store), "--storage-driver", "overlay", "load", "-i", str(archive)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
        # podman load names an oci-archive's image by the name saved with it
        tagged = subprocess.run(["podman", "--root", str(store), "--storage-driver", "overlay", "images",
                                 "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True)  # fmt: skip
        assert image in tagged.stdout.split(), tagged.stdout
    finally:
        archive.unlink(missing_ok=True)
    subprocess.run(["chmod", "-R", "a+rX", str(store)], check=True)
    return store


@pytest.fixture(scope="module")
def image(unix_users):
    reference = ensure_image("cpu")
    store = shared_store(reference)
    account = unix_users[USER]
    config = Path(account.pw_dir) / ".config" / "containers"
    try:
        for line in ("mkdir -p ~/.config/containers",):
            subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", line], check=True)
        (config / "storage.conf").write_text(STORAGE_CONF.format(store=store))
        (config / "containers.conf").write_text(CONTAINERS_CONF)
        for name in ("storage.conf", "containers.conf"):
            os.chown(config / name, account.pw_uid, account.pw_gid)
        seen = subprocess.run(
            ["runuser", "-l", USER, "-c", f"podman image exists {reference}"], capture_output=True, text=True
        )
        assert seen.returncode == 0, f"the user's podman does not see {reference}: {seen.stderr}"
        yield reference
    finally:
        subprocess.run(["runuser", "-l", USER, "-c", "podman system reset --force"], capture_output=True)
        shutil.rmtree(config, ignore_errors=True)
        subprocess.run(["podman", "--root", str(store), "--storage-driver", "overlay", "system", "reset", "--force"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, image, tmp_path_factory):
    # the image alone: no runtime options, no mounts of the node's software
    site = slurm_site(singleuser_env, spawner={"slurm": {"container": {"runtime": "podman", "image": image}}})
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
