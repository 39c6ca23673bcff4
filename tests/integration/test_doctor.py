"""`campushub doctor` on the real test cluster: it passes on a healthy site, and names each broken
thing with its fix. Each test breaks one thing (munge hidden, a controller nobody answers for, no sudo
rule, an empty environment, the hub's port closed to the user's jobs, a profile with too many GPUs, a
secret readable by all, a nearly full disk, a certificate about to expire or expired), runs the doctor
as an admin would (`campushub doctor --json`, a process of its own), and restores what it broke.

One hub runs for the module, for the hub API check; every other check reads only the site file.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.cluster.hub import deep_merge, running_hub, slurm_site
from tests.cluster.slurm import free_port, wait_for

ALICE, OPS = "chub-alice", "chub-ops"
GPU_PROFILE = {"slug": "gpu-2", "display_name": "Two GPUs", "everyone": True, "resources": {"gpus": 2}}
SUDOERS = Path("/etc/sudoers.d/campushub-doctor-test")


@pytest.fixture(scope="module")
def hub(slurm, unix_users, singleuser_env, tmp_path_factory):
    site = slurm_site(singleuser_env, profiles=[GPU_PROFILE])
    with running_hub(slurm, tmp_path_factory.mktemp("doctor-hub"), site) as running:
        yield running


def site_file(running, folder: Path, **changes) -> Path:
    """The running hub's site with `changes` merged over it, in a file of its own."""
    f = folder / "site.yaml"
    f.write_text(yaml.safe_dump(deep_merge(running.site, changes)))
    return f


def doctor(site: Path, *args: str, env: dict | None = None, text: bool = False):
    """(exit status, the checks by name or the printed text, seconds) of `campushub doctor` on `site`."""
    environment = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}  # SLURM_CONF: the test cluster's
    environment.update(env or {})
    began = time.monotonic()
    argv = [sys.executable, "-m", "campushub", "doctor", "--config", str(site), *args]
    r = subprocess.run(
        [*argv, *([] if text else ["--json"])], capture_output=True, text=True, env=environment, timeout=300
    )
    took = time.monotonic() - began
    assert r.returncode in (0, 1), r.stderr
    if text:
        return r.returncode, r.stdout, took
    return r.returncode, {c["check"]: c for c in json.loads(r.stdout)["checks"]}, took


def test_a_healthy_site_passes(hub):
    code, checks, took = doctor(hub.site_file, "--user", ALICE)
    assert code == 0, checks
    statuses = {name: c["status"] for name, c in checks.items()}
    assert statuses == {
        "munge": "OK", "slurm-controller": "OK", "sudo-rule": "OK", "node-environment": "OK",
        "hub-api-from-node": "OK", "gpus": "OK", "secret-files": "OK", "state-disk": "OK",
        "tls-certificate": "SKIP",
    }, checks  # fmt: skip
    assert "jupyterhub-singleuser 6." in checks["node-environment"]["found"]
    assert f"reaches http://127.0.0.1:{hub.hub_port}/hub/api/" in checks["hub-api-from-node"]["found"]
    print(f"doctor on the healthy site: {took:.1f} s")


def test_without_an_account_the_checks_acting_as_one_say_how_to_give_one(hub):
    code, checks, _ = doctor(hub.site_file, "--only", "sudo-rule,node-environment,hub-api-from-node")
    assert code == 0
    for name in ("sudo-rule", "node-environment", "hub-api-from-node"):
        assert checks[name]["status"] == "SKIP" and "give --user NAME" in checks[name]["found"], checks[name]


def test_munge_stopped(hub, slurm):
    slurm.munge_away()
    try:
        code, out, _ = doctor(hub.site_file, "--only", "munge,slurm-controller", text=True)
    finally:
        slurm.munge_back()
    assert code == 1, out
    lines = out.splitlines()
    assert lines[0].startswith("FAIL  munge: munge -n cannot make a credential (socket "), out
    assert "Fix: start munged" in lines[0]
    assert lines[1].startswith("FAIL  slurm-controller: ") and "Fix: start slurmctld" in lines[1]
    assert lines[-1] == "2 checks: 2 FAIL; fix what FAILs first"
    assert doctor(hub.site_file, "--only", "munge")[0] == 0  # munge back: passes again


@pytest.mark.parametrize("controller", ["nobody listens", "hangs"])
def test_the_controller_unreachable(hub, slurm, tmp_path, controller):
    """A slurm.conf naming a controller port where nobody listens, or where a socket takes connections and
    never answers: the doctor says so within its time limit, and skips what needs the controller."""
    port = free_port()
    conf = tmp_path / "slurm.conf"
    text = slurm.conf.read_text()
    conf.write_text("\n".join(f"SlurmctldPort={port}" if line.startswith("SlurmctldPort=") else line
                              for line in text.splitlines()) + "\n")  # fmt: skip
    conf.chmod(0o644)
    silent = socket.create_server(("127.0.0.1", port)) if controller == "hangs" else None
    try:
        code, checks, took = doctor(
            hub.site_file, "--user", ALICE, "--timeout", "4", "--only", "munge,slurm-controller,node-environment,gpus",
            env={"SLURM_CONF": str(conf)},
        )  # fmt: skip
    finally:
        if silent:
            silent.close()
    assert code == 1
    assert checks["munge"]["status"] == "OK"
    found = checks["slurm-controller"]
    assert found["status"] == "FAIL" and "start slurmctld" in found["fix"] and str(conf) in found["fix"], found
    if controller == "hangs":
        assert "did not finish within 4 s" in found["found"], found
    else:
        assert "DOWN" in found["found"], found
    for name in ("node-environment", "gpus"):
        assert checks[name]["status"] == "SKIP" and "slurm-controller" in checks[name]["found"]
    assert took < 30, f"the doctor took {took:.1f} s with a time limit of 4 s"
    print(f"doctor with the controller {controller}: {took:.1f} s")


def test_the_sudo_rule_missing(hub, tmp_path):
    """The hub runs as a service account (chub-ops here: the prefix first becomes it): without a sudoers
    rule it cannot act as users; with one it can."""
    site = site_file(
        hub, tmp_path, spawner={"slurm": {"submit_prefix": ["sudo", "-E", "-u", OPS, "sudo", "-E", "-u", "{username}"]}}
    )
    SUDOERS.unlink(missing_ok=True)
    code, checks, _ = doctor(site, "--user", ALICE, "--only", "sudo-rule,node-environment")
    assert code == 1
    found = checks["sudo-rule"]
    assert found["status"] == "FAIL" and "a password is required" in found["found"], found
    assert "add a sudoers rule" in found["fix"] and "NOPASSWD:SETENV" in found["fix"]
    assert checks["node-environment"]["status"] == "SKIP" and "sudo-rule" in checks["node-environment"]["found"]
    SUDOERS.write_text(f"{OPS} ALL=({ALICE}) NOPASSWD:SETENV: /usr/bin/sbatch, /usr/bin/squeue, /usr/bin/scancel\n")
    SUDOERS.chmod(0o440)
    try:
        code, checks, _ = doctor(site, "--user", ALICE, "--only", "sudo-rule")
    finally:
        SUDOERS.unlink()
    assert code == 0 and checks["sudo-rule"]["status"] == "OK", checks


def test_the_environment_missing_on_the_node(hub):
    empty = Path(tempfile.mkdtemp(prefix="campushub-empty-env-"))
    empty.chmod(0o755)
    try:
        site = site_file(hub, empty, spawner={"slurm": {"python_env": str(empty)}})
        code, checks, _ = doctor(site, "--user", ALICE, "--only", "node-environment")
    finally:
        shutil.rmtree(empty)
    assert code == 1
    found = checks["node-environment"]
    assert found["status"] == "FAIL" and f"no jupyterhub-singleuser on {socket.gethostname()}" in found["found"], found
    assert str(empty) in found["found"] and "spawner.slurm.python_env" in found["fix"]


def test_the_hub_api_unreachable(hub, tmp_path):
    # nothing listens at the site's hub port: the hub is not there at all
    site = site_file(hub, tmp_path, hub={"hub_port": free_port()})
    code, checks, _ = doctor(site, "--user", ALICE, "--only", "hub-api-from-node")
    assert code == 1
    found = checks["hub-api-from-node"]
    assert found["status"] == "FAIL" and "does not answer on this host" in found["found"], found
    assert "start the hub" in found["fix"]


@contextmanager
def closed_to(user: str, port: int):
    """Connections of `user`'s processes to port `port` on this host refused, as a firewall between the nodes
    and the hub host would (an iptables rule on the user's uid, removed at the end)."""
    rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-m", "owner", "--uid-owner", user,
            "-j", "REJECT", "--reject-with", "tcp-reset"]  # fmt: skip
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


def test_the_hub_api_closed_to_the_nodes(hub):
    with closed_to(ALICE, hub.hub_port):
        code, checks, _ = doctor(hub.site_file, "--user", ALICE, "--only", "hub-api-from-node")
    assert code == 1
    found = checks["hub-api-from-node"]
    assert found["status"] == "FAIL" and "a job on a node cannot reach" in found["found"], found
    assert "Connection refused" in found["found"] or "reset" in found["found"], found
    assert f"open port {hub.hub_port} from the nodes" in found["fix"]


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ({"gpus": 8}, "profile big asks for 8 GPUs, the largest node of partition gpu has 4 GPUs"),
        ({"gpus": 1, "gpu_type": "a100"}, "profile big asks for 1 a100 GPU, the largest node of partition gpu has 0 a100 GPUs"),
    ],
)  # fmt: skip
def test_a_profile_asking_more_gpus_than_the_nodes_have(hub, tmp_path, resources, says):
    big = {"slug": "big", "display_name": "Big", "everyone": True, "resources": resources}
    site = site_file(hub, tmp_path, profiles=[GPU_PROFILE, big])
    code, checks, _ = doctor(site, "--only", "gpus")
    assert code == 1
    found = checks["gpus"]
    assert found["status"] == "FAIL" and found["found"] == says, found
    assert "gres.conf" in found["fix"]


def test_a_profile_offering_more_gpus_than_a_node_has_warns(hub, tmp_path):
    choosy = {**GPU_PROFILE, "choices": {"gpus": {"min": 1, "max": 6}}}
    code, checks, _ = doctor(site_file(hub, tmp_path, profiles=[choosy]), "--only", "gpus")
    assert code == 0 and checks["gpus"]["status"] == "WARN", checks
    assert "offers up to 6 GPUs" in checks["gpus"]["found"]


def test_a_secret_file_readable_by_all(hub, tmp_path):
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "proxy_auth_token").write_text("token\n")
    (state / "proxy_auth_token").chmod(0o644)
    site = site_file(hub, tmp_path, auth={"oidc": {"client_secret_file": str(secret)}}, hub={"state_dir": str(state)})
    code, checks, _ = doctor(site, "--only", "secret-files")
    assert code == 1
    found = checks["secret-files"]
    assert found["status"] == "FAIL", found
    assert f"auth.oidc.client_secret_file: {secret} is readable by every user: chmod 600 it" in found["found"]
    assert f"hub.state_dir: {state / 'proxy_auth_token'} is readable by others" in found["found"]
    secret.chmod(0o600)
    (state / "proxy_auth_token").chmod(0o600)
    code, checks, _ = doctor(site, "--only", "secret-files")
    assert code == 0 and checks["secret-files"]["found"] == "2 secret files, none readable by others", checks


def test_a_nearly_full_state_disk(hub, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160M,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        site = site_file(hub, tmp_path, hub={"state_dir": str(disk / "state")})
        code, checks, _ = doctor(site, "--only", "state-disk")
        assert code == 0 and checks["state-disk"]["status"] == "WARN", checks  # 160 MiB free: under 1 GiB
        subprocess.run(["fallocate", "-l", "100M", str(disk / "filler")], check=True)
        code, checks, _ = doctor(site, "--only", "state-disk")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert code == 1
    found = checks["state-disk"]
    assert found["status"] == "FAIL" and found["found"].startswith("60.0 MiB free of 160.0 MiB (38%) at "), found
    assert "move hub.state_dir" in found["fix"]


# --- the certificate at hub.public_url ---------------------------------------------------------------


def certificate(folder: Path, days: float) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that ends `days` from now (in the past when negative)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextmanager
def tls_server(cert_file: Path, key_file: Path):
    """An HTTPS server on a free local port with this certificate: its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def tls_site(folder: Path, url: str) -> Path:
    """A demo site (no Slurm) whose users' address is `url`: the certificate check reads nothing else."""
    f = folder / "site.yaml"
    f.write_text(yaml.safe_dump({"hub": {"public_url": url, "state_dir": str(folder / "state")}}))
    return f


@pytest.mark.parametrize(
    ("days", "status", "says"),
    [
        (90, "OK", "is valid until"),
        (3, "WARN", "is valid until"),
        (-1, "FAIL", "has expired"),
    ],
)
def test_the_tls_certificate(tmp_path, days, status, says):
    cert_file, key_file = certificate(tmp_path, days)
    with tls_server(cert_file, key_file) as port:
        site = tls_site(tmp_path, f"https://127.0.0.1:{port}/")
        code, checks, _ = doctor(site, "--only", "tls-certificate", env={"SSL_CERT_FILE": str(cert_file)})
        untrusted = doctor(site, "--only", "tls-certificate")[1]["tls-certificate"]
    found = checks["tls-certificate"]
    assert (code, found["status"]) == ((1 if status == "FAIL" else 0), status), found
    assert f"the certificate of 127.0.0.1:{port} {says}" in found["found"], found
    if status != "OK":
        assert found["fix"].startswith("renew the certificate of 127.0.0.1"), found
    if status == "WARN":
        assert "(3 days)" in found["found"] or "(2 days)" in found["found"], found
    # the same certificate, from a CA the host does not trust
    assert untrusted["status"] == "FAIL" and ("not trusted" in untrusted["found"] or "expired" in untrusted["found"])


def test_the_tls_certificate_unreachable_or_http(tmp_path):
    port = free_port()
    code, checks, _ = doctor(tls_site(tmp_path, f"https://127.0.0.1:{port}/"), "--only", "tls-certificate")
    found = checks["tls-certificate"]
    assert code == 1 and found["status"] == "FAIL", found
    assert f"no TLS connection to 127.0.0.1:{port}: Connection refused" == found["found"], found
    assert "start the reverse proxy" in found["fix"]
    code, checks, _ = doctor(tls_site(tmp_path, "http://127.0.0.1:8000/"), "--only", "tls-certificate")
    assert code == 0 and checks["tls-certificate"]["status"] == "SKIP"
    assert "is http: no certificate to check" in checks["tls-certificate"]["found"]


def test_a_busy_partition_warns_that_the_job_did_not_start(hub, slurm):
    """Every CPU of the node taken by another user's job: the doctor's job cannot start within its time, which
    is not a fault of the site (a WARN, not a FAIL)."""
    env = {**os.environ, "SLURM_CONF": str(slurm.conf)}
    r = subprocess.run(
        ["runuser", "-u", "chub-bob", "--", "sbatch", "--parsable", "--partition=gpu", f"--cpus-per-task={slurm.cpus}",
         "--mem=1G", "--time=00:05:00", "--chdir=/tmp", "--output=/dev/null", "--wrap=sleep 300"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    job = r.stdout.strip()
    try:
        wait_for(lambda: slurm.job_state(job) == "RUNNING", 30, "the filling job to run")
        code, checks, took = doctor(hub.site_file, "--user", ALICE, "--timeout", "3", "--only", "node-environment")
    finally:
        slurm.cmd("scancel", job, check=False)
    found = checks["node-environment"]
    print(f"doctor with the partition busy: {took:.1f} s")
    assert code == 0 and found["status"] == "WARN", found
    assert "did not start within 9 s: the nodes of partition gpu are busy" in found["found"], found
    assert "Requested nodes are busy" in found["found"] and "squeue -p gpu" in found["fix"], found
