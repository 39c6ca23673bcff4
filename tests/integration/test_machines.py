"""The harness of the deployment tests: two real hosts with systemd, on a bridge, reachable over SSH."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.cluster.machines import BRIDGE, MARK, Machines, cgroup_roots, mounts

NAMES = ["chub-m1", "chub-m2"]


@pytest.fixture(scope="module")
def shared(root_required):
    folder = Path(tempfile.mkdtemp(prefix="campushub-shared-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hosts(root_required, shared):
    for tool in ("systemd-nspawn", "debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: `make test` installs it")
    machines = Machines(NAMES, binds={name: [f"{shared}:/srv/shared"] for name in NAMES})
    with machines:
        yield machines


def test_systemd_is_pid_1_and_the_system_runs(hosts):
    for host in hosts:
        assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"
        state = host.run("systemctl is-system-running", check=False).stdout.strip()
        assert state in ("running", "degraded"), host.run("systemctl --failed --no-legend", check=False).stdout
        assert host.unit_active("ssh.service")


def test_hosts_reach_each_other_by_name_and_this_machine(hosts):
    one, two = hosts[NAMES[0]], hosts[NAMES[1]]
    assert f"from {two.name} ({two.address})" in one.run(f"ping -c 1 -W 2 {two.name}").stdout
    assert f"from {one.name} ({one.address})" in two.run(f"ping -c 1 -W 2 {one.name}").stdout
    one.run("ping -c 1 -W 2 10.231.0.1")


def test_ssh_with_the_harness_key(hosts):
    for host in hosts:
        result = subprocess.run([*host.ssh_command(), "hostname"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.name


def test_a_bound_folder_is_shared(hosts, shared):
    hosts[NAMES[0]].run("echo written-on-m1 > /srv/shared/note")
    assert hosts[NAMES[1]].run("cat /srv/shared/note").stdout == "written-on-m1\n"
    assert (shared / "note").read_text() == "written-on-m1\n"


def test_each_host_has_its_own_identity(hosts):
    host_keys = {h.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1] for h in hosts}
    machine_ids = {h.run("cat /etc/machine-id").stdout.strip() for h in hosts}
    assert len(host_keys) == len(NAMES)
    assert len(machine_ids) == len(NAMES) and "" not in machine_ids


def test_the_inventory_names_every_host(hosts):
    inventory = hosts.inventory({"controller": [NAMES[0]], "compute": [NAMES[1]]}, {"site": "test"})
    for host in hosts:
        assert f"{host.name} ansible_host={host.address} ansible_user=root" in inventory
    assert "[compute]\nchub-m2\n" in inventory


def test_stop_leaves_nothing(hosts):
    """Last in the module: it stops the hosts the other tests share."""
    folder = hosts.folder
    processes = [h.process for h in hosts]
    hosts.stop()
    assert all(p.poll() is not None for p in processes)
    assert not any(f"CAMPUSHUB_MACHINES_RUN={folder}".encode() in environ(pid) for pid in pids())
    assert not [point for source, point in mounts() if source == MARK or point.startswith(str(folder))]
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert not [root for root in cgroup_roots() if root.exists()]
    assert not folder.exists()


def pids() -> list[str]:
    return [pid for pid in os.listdir("/proc") if pid.isdigit()]


def environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
