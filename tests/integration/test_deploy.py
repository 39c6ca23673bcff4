"""The Ansible playbook on real hosts: three Debian 12 machines booted with systemd (tests/cluster/machines.py),
deployed over SSH, then used: a user logs in through the hub on the first, and the server runs as a Slurm
job on the compute host, as the user, through the proxy. Then a second run changes nothing, an upgrade
restarts the hub but not the proxy with no request cut, and a bad inventory stops before any change."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from tests.cluster.deploy import BIN, inventory, recap, run_playbook, wheelhouse
from tests.cluster.hub import HubClient
from tests.cluster.idp import CAMPUS_GROUP, IdentityProvider
from tests.cluster.machines import SUBNET, Machines
from tests.cluster.slurm import wait_for

HUB, CONTROLLER, NODE = "chub-hub", "chub-ctl", "chub-node1"
USER, UID = "ada", 3101
WHEELS = "/srv/campushub-wheels"
CLIENT_SECRET = "deploy-test-secret"


class DeployedHub(HubClient):
    def __init__(self, url: str, site: dict, machine):
        super().__init__(url, site)
        self.machine = machine

    def log_tail(self, lines: int = 40) -> str:
        return self.machine.run(f"journalctl -u campushub-hub -n {lines} --no-pager", check=False).stdout

    def main_pid(self, unit: str) -> int:
        return int(self.machine.run(f"systemctl show -p MainPID --value {unit}").stdout.strip())


@pytest.fixture(scope="module")
def site(root_required):
    """Three hosts (hub, controller, compute node; homes shared by the hub host and the node, as over NFS),
    the campus identity provider on this machine's address on their network, and the inventory's parts."""
    folder = Path(tempfile.mkdtemp(prefix="campushub-deploy-"))
    homes = folder / "home"
    homes.mkdir()
    wheels = wheelhouse(folder / "wheels")
    binds = {name: [f"{homes}:/home"] for name in (HUB, NODE)}
    machines = Machines([HUB, CONTROLLER, NODE], folder=folder / "machines", binds=binds,
                        bind_ro={name: [f"{wheels}:{WHEELS}"] for name in (HUB, NODE)})  # fmt: skip
    idp = None
    try:
        machines.start()
        # the user's account, the same on every host (as a directory service would give it); the controller
        # holds the jobs of a uid it cannot resolve
        machines[NODE].run(f"useradd --uid {UID} --create-home --shell /bin/bash {USER}")
        for name in (HUB, CONTROLLER):
            machines[name].run(f"useradd --uid {UID} --no-create-home --shell /bin/bash {USER}")
        # two GPUs on the node for the playbook to find (device nodes named as NVIDIA's driver names them)
        machines[NODE].run("for i in 0 1; do mknod -m 0666 /dev/nvidia$i c 1 3; done")
        idp = IdentityProvider(host=f"{SUBNET}.1")  # this machine, on the hosts' network
        variables = {
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(machines.ssh_key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "campushub_public_url": f"http://{machines[HUB].address}:8000/",
            "campushub_site": {
                "auth": {
                    "kind": "oidc",
                    "oidc": {"issuer": idp.url, "client_id": "campushub-deploy", "allowed_groups": [CAMPUS_GROUP]},
                },
                "spawner": {"slurm": {"memory": "1G", "walltime": "01:00:00", "startup_check_interval": 0.5}},
            },
            "campushub_oidc_client_secret": CLIENT_SECRET,
            "campushub_check_command": str(BIN / "campushub"),
            "campushub_pip_find_links": WHEELS,
            "campushub_pip_no_index": True,
            # the hosts are containers on a host whose cgroups they do not own
            "slurm_proctrack_type": "proctrack/linuxproc",
            "slurm_task_plugin": "task/none",
        }
        hosts = {m: machines[m].address for m in (HUB, CONTROLLER, NODE)}
        groups = {"campushub_hub": [HUB], "slurm_controller": [CONTROLLER], "slurm_compute": [NODE]}
        yield {"machines": machines, "folder": folder, "variables": variables, "hosts": hosts, "groups": groups}
    finally:
        if idp:
            idp.close()
        machines.stop()
        shutil.rmtree(folder, ignore_errors=True)


def playbook(site, name: str, variables: dict | None = None, groups: dict | None = None, host_vars=None):
    data = inventory(site["hosts"], groups or site["groups"], variables or site["variables"], host_vars)
    return run_playbook(data, site["folder"], name)


def untouched(site) -> list[str]:
    """What a run would have made first on each host, if it changed anything."""
    m = site["machines"]
    return [
        m[HUB].run("test -e /etc/campushub && echo hub || true").stdout.strip(),
        m[CONTROLLER].run("test -e /etc/slurm/slurm.conf && echo controller || true").stdout.strip(),
        m[NODE].run("test -e /opt/campushub && echo node || true").stdout.strip(),
    ]


@pytest.mark.parametrize(
    "case",
    ["no controller", "node named twice", "refused site file"],
)
def test_bad_inventory_stops_before_any_change(site, case):
    variables, groups, host_vars = site["variables"], dict(site["groups"]), None
    if case == "no controller":
        groups.pop("slurm_controller")
        reason = "exactly one host in slurm_controller (it has 0)"
    elif case == "node named twice":
        groups["slurm_compute"] = [NODE, CONTROLLER]
        host_vars = {CONTROLLER: {"slurm_node_name": NODE}}
        reason = "a compute node is named twice"
    else:
        variables = copy.deepcopy(variables)
        variables["campushub_site"]["spawner"]["slurm"]["memory"] = "lots"
        reason = "spawner.slurm.memory"
    out = playbook(site, f"bad-{case.replace(' ', '-')}", variables, groups, host_vars)
    assert out.returncode != 0, out.stdout[-3000:]
    assert reason in out.stdout, out.stdout[-3000:]
    assert not any(c.get("changed") for c in recap(out.stdout).values()), out.stdout[-3000:]
    assert untouched(site) == ["", "", ""]


@pytest.fixture(scope="module")
def deployed(site):
    out = playbook(site, "first")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    m = site["machines"]
    return DeployedHub(f"http://{m[HUB].address}:8000", site["variables"]["campushub_site"], m[HUB])


def test_units_are_active_on_each_host(site, deployed):
    m = site["machines"]
    expected = {
        HUB: ["munge", "campushub-proxy", "campushub-hub"],
        CONTROLLER: ["munge", "slurmctld"],
        NODE: ["munge", "slurmd"],
    }
    for host, units in expected.items():
        states = m[host].run(f"systemctl is-active {' '.join(units)}", check=False).stdout.split()
        assert states == ["active"] * len(units), f"{host}: {dict(zip(units, states, strict=False))}"
    # one MUNGE key on the whole cluster, private to munge
    keys = {m[h].run("sha256sum /etc/munge/munge.key").stdout.split()[0] for h in expected}
    assert len(keys) == 1
    assert m[NODE].run("stat -c '%U %a' /etc/munge/munge.key").stdout.split() == ["munge", "400"]
    # the node is in the controller's partition, idle, with the two GPUs found on it
    assert m[CONTROLLER].run("sinfo -h -N -o '%N %P %t %G'").stdout.split() == [NODE, "campus*", "idle", "gpu:2"]
    assert m[NODE].run("grep -v '^#' /etc/slurm/gres.conf").stdout.split("\n")[:2] == [
        f"NodeName={NODE} Name=gpu File=/dev/nvidia0",
        f"NodeName={NODE} Name=gpu File=/dev/nvidia1",
    ]
    # the hub's secrets were made once, private to its account
    modes = m[HUB].run("stat -c '%n %U %a' /var/lib/campushub/jupyterhub_cookie_secret "
                       "/var/lib/campushub/proxy_auth_token /etc/campushub/oidc_client_secret").stdout.split("\n")  # fmt: skip
    assert all(line.split()[1:] == ["campushub", "600"] for line in modes if line), modes


def test_a_second_run_changes_nothing(site, deployed):
    out = playbook(site, "second")
    assert out.returncode == 0, out.stdout[-4000:]
    counts = recap(out.stdout)
    assert set(counts) >= {HUB, CONTROLLER, NODE}, out.stdout[-2000:]
    changed = {host: c["changed"] for host, c in counts.items() if c["changed"]}
    assert changed == {}, out.stdout[-6000:]


def test_a_user_logs_in_and_the_server_runs_on_the_node(site, deployed):
    m = site["machines"]
    token = deployed.token(USER)
    deployed.spawn_and_wait(USER, token, timeout=300)
    job = m[CONTROLLER].run("squeue -h -o '%u %N %T'").stdout.split()
    assert job == [USER, NODE, "RUNNING"], job
    owners = m[NODE].run("ps -o user= -C jupyterhub-singleuser,campushub-singleuser,python3 | sort -u").stdout.split()
    assert USER in owners, owners
    r = deployed.user_get(USER, "api/status", token)
    assert r.status_code == 200, r.text[:300]
    # and the deployed hub host passes its own checks, the node's environment and its way to the hub included
    doctor = m[HUB].run(
        f"/opt/campushub/hub/bin/campushub doctor --config /etc/campushub/campushub.yaml --user {USER}", check=False
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr


def test_upgrade_restarts_the_hub_not_the_proxy_and_cuts_no_request(site, deployed):
    token = deployed.token(USER)
    if not (deployed.server(USER, token) or {}).get("ready"):
        deployed.spawn_and_wait(USER, token, timeout=300)
    hub_pid, proxy_pid = deployed.main_pid("campushub-hub"), deployed.main_pid("campushub-proxy")
    with deployed.asking(USER, "api/status", token, interval=0.1) as answers:
        variables = copy.deepcopy(site["variables"])
        variables["campushub_site"]["branding"] = {"name": "Campus AI Hub"}
        out = playbook(site, "upgrade", variables)
        assert out.returncode == 0, out.stdout[-4000:]
        wait_for(lambda: deployed.main_pid("campushub-hub") not in (0, hub_pid), 60, "the hub to restart")
        wait_for(lambda: requests.get(f"{deployed.url}/hub/login", timeout=5).status_code == 200, 60, "the hub")
    assert deployed.main_pid("campushub-proxy") == proxy_pid
    assert set(answers) == {200} and len(answers) > 10, [a for a in answers if a != 200][:5]
    assert "Campus AI Hub" in requests.get(f"{deployed.url}/hub/login", timeout=10).text
    assert (deployed.server(USER, token) or {}).get("ready"), deployed.log_tail()
    assert deployed.user_get(USER, "api/status", token).status_code == 200
