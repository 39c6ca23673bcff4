"""`campushub doctor`: checks, on the hub host, what usually breaks a hub, each result with its fix.

Each check is a small function of a `Doctor` (the site, the account to act as, the time limit) that
returns a `Result`: OK, WARN, FAIL or SKIP, what was found, and for anything but OK the fix in one
sentence. Every external command runs without a shell, with a time limit and with only what Slurm's
commands need of the environment (`command_env`): a hanging controller or node cannot hang the doctor.
The checks of Slurm run only when spawner.backend is slurm; those that act as a user (the sudo rule,
the node's environment, the hub API from a node) need an account (`--user`).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .gpus import parse_nodes
from .hubconfig import public_url, secret_files, secret_problems
from .profiles import gpu_words, needs_gpus
from .site import Site
from .slurmenv import command_env
from .state import StateDir

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"

MiB = 1024**2
GiB = 1024**3
# the state folder's disk: the hub's SQLite database stops writing when it is full
DISK_FAIL_BYTES = 100 * MiB
DISK_WARN_BYTES = 1 * GiB
DISK_WARN_FRACTION = 0.05
# the public certificate: warn this many days before it expires
CERT_WARN_DAYS = 14
# seconds any one command (or connection) may take; a job on a node gets NODE_FACTOR times as long
DEFAULT_TIMEOUT = 20.0
NODE_FACTOR = 3
# what the doctor's own jobs ask of Slurm
PROBE_JOB = [
    "--nodes=1",
    "--ntasks=1",
    "--cpus-per-task=1",
    "--mem=256M",
    "--time=00:02:00",
    "--job-name=campushub-doctor",
]
PROBE_MARK = "campushub-doctor:"
# srun's words when its job could not start at once (--immediate)
BUSY_WORDS = ("Requested nodes are busy", "Immediate execution impossible")


@dataclass
class Result:
    check: str
    status: str
    found: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.found}"
        return f"{text} Fix: {self.fix}" if self.fix and self.status != OK else text


@dataclass
class Ran:
    """What a command did: its exit status (None when it did not run or finish), its output, and why not."""

    rc: int | None
    out: str = ""
    err: str = ""
    problem: str = ""

    @property
    def said(self) -> str:
        """Its last line of error output (or of output), for a message."""
        lines = (self.err.strip() or self.out.strip()).splitlines()
        return self.problem or (lines[-1].strip() if lines else f"exit status {self.rc}")


def run(argv: list[str], timeout: float, env: dict[str, str], input: str | None = None) -> Ran:
    """Run a command without a shell in a session of its own; past `timeout` its whole group is killed."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )  # fmt: skip
    except FileNotFoundError:
        return Ran(None, problem=f"{argv[0]} is not installed (not found on PATH)")
    except OSError as e:
        return Ran(None, problem=f"cannot run {argv[0]}: {e.strerror}")
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        return Ran(None, problem=f"{argv[0]} did not finish within {timeout:g} s")
    return Ran(proc.returncode, out, err)


def disk_status(free: int, total: int) -> str:
    """FAIL below DISK_FAIL_BYTES free; WARN below DISK_WARN_BYTES or DISK_WARN_FRACTION of the disk."""
    if free < DISK_FAIL_BYTES:
        return FAIL
    if free < DISK_WARN_BYTES or (total and free < DISK_WARN_FRACTION * total):
        return WARN
    return OK


def cert_status(not_after: float, now: float) -> str:
    """FAIL when expired, WARN within CERT_WARN_DAYS."""
    if not_after <= now:
        return FAIL
    return WARN if not_after - now < CERT_WARN_DAYS * 86400 else OK


def size_words(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def non_interactive(prefix: list[str]) -> list[str]:
    """The submit prefix with `-n` after each sudo: a missing rule fails at once instead of asking a password."""
    words = []
    for word in prefix:
        words.append(word)
        if os.path.basename(word) == "sudo":
            words.append("-n")
    return words


def slurm_conf() -> Path:
    return Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")


def munge_socket(conf: Path) -> str | None:
    """The munge socket Slurm uses: AuthInfo's socket=PATH in slurm.conf, or None (munge's default)."""
    try:
        text = conf.read_text()
    except OSError:
        return None
    found = re.search(r"^\s*AuthInfo\s*=\s*\S*?\bsocket=([^,\s]+)", text, re.IGNORECASE | re.MULTILINE)
    return found.group(1) if found else None


def hub_api_url(site: Site) -> str:
    """Where servers on the nodes call the hub API (as JupyterHub computes it)."""
    hub = site.hub
    if hub.hub_connect_url:  # JupyterHub keeps its scheme and host, and puts its own path there
        parts = urlsplit(hub.hub_connect_url)
        base = f"{parts.scheme}://{parts.netloc}"
    else:
        ip = socket.gethostname() if hub.hub_ip in ("0.0.0.0", "::", "") else hub.hub_ip
        base = f"http://[{ip}]:{hub.hub_port}" if ":" in ip else f"http://{ip}:{hub.hub_port}"
    return f"{base}{hub.base_url}hub/api/"


# --- the doctor ----------------------------------------------------------------------------------


@dataclass
class Doctor:
    site: Site
    user: pwd.struct_passwd | None = None
    timeout: float = DEFAULT_TIMEOUT
    env: dict[str, str] = field(default_factory=command_env)
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def slurm(self):
        return self.site.spawner.slurm

    def failed(self, *checks: str) -> str | None:
        """The first of these checks that ran and did not pass, if any."""
        return next((c for c in checks if c in self.results and self.results[c].status == FAIL), None)

    def as_user(self, argv: list[str]) -> list[str]:
        prefix = [w.replace("{username}", self.user.pw_name) for w in self.slurm.submit_prefix]
        return [*non_interactive(prefix), *argv]

    def on_node(self, script: str) -> Ran:
        """`script` run by /bin/sh in a small job on a node of the partition, as the user, through the prefix."""
        s = self.slurm
        extra = [f"--account={s.account}"] if s.account else []
        extra += [f"--qos={s.qos}"] if s.qos else []
        wait = int(self.timeout * NODE_FACTOR)
        argv = [
            "srun", f"--partition={s.partition}", *PROBE_JOB, *extra, f"--immediate={max(1, wait - 5)}",
            f"--chdir={self.user.pw_dir}", "/bin/sh", "-c", script,
        ]  # fmt: skip
        return run(self.as_user(argv), wait, self.env)

    def not_started(self, name: str, ran: Ran) -> Result | None:
        """A WARN when the job on a node could not start in time (the partition is busy, not broken)."""
        if not any(words in ran.err for words in BUSY_WORDS):
            return None
        p = self.slurm.partition
        return Result(
            name, WARN, f"the doctor's job did not start within {int(self.timeout * NODE_FACTOR)} s: the nodes of "
            f"partition {p} are busy ({ran.said}); not checked",
            f"run the doctor again when a CPU of partition {p} is free (squeue -p {p} shows what runs)",
        )  # fmt: skip

    def node_script(self, *lines: str) -> str:
        """A node's shell lines after the site's prologue and python_env, as a server's job has them."""
        head = [self.slurm.prologue] if self.slurm.prologue else []
        if self.slurm.python_env:
            head.append(f'export PATH={shlex.quote(str(self.slurm.python_env / "bin"))}:"$PATH"')
        return "\n".join([*head, *lines]) + "\n"

    def needs(self, name: str, slurm: bool = False, user: bool = False, after: tuple[str, ...] = ()) -> Result | None:
        """A SKIP when the check cannot run here, else None."""
        if slurm and self.site.spawner.backend != "slurm":
            return Result(name, SKIP, f"spawner.backend is {self.site.spawner.backend}: Slurm is not used")
        if user and self.user is None:
            return Result(name, SKIP, "no account to act as: give --user NAME, a user who may run jobs")
        if failed := self.failed(*after):
            return Result(name, SKIP, f"needs what the check {failed} found broken: fix that first")
        return None

    def check(self, names: list[str] | None = None) -> list[Result]:
        for name, check in CHECKS.items():
            if names is None or name in names:
                try:
                    self.results[name] = check(self)
                except Exception as e:  # a check that cannot run says why, and the others still run
                    self.results[name] = Result(
                        name, FAIL, f"the check could not run: {type(e).__name__}: {e}",
                        "run the doctor on the hub host as the hub's account, with the hub's environment",
                    )  # fmt: skip
        return list(self.results.values())


# --- the checks ----------------------------------------------------------------------------------


def check_munge(d: Doctor) -> Result:
    name = "munge"
    if skip := d.needs(name, slurm=True):
        return skip
    sock = munge_socket(slurm_conf())
    opts = [f"--socket={sock}"] if sock else []
    where = f" (socket {sock}, from AuthInfo in {slurm_conf()})" if sock else ""
    fix = (
        "start munged (systemctl start munge) with the cluster's key (/etc/munge/munge.key, owned by munge, "
        "mode 0400, the same on every host)"
    )
    encoded = run(["munge", "-n", *opts], d.timeout, d.env)
    if encoded.rc != 0:
        return Result(name, FAIL, f"munge -n cannot make a credential{where}: {encoded.said}", fix)
    decoded = run(["unmunge", *opts], d.timeout, d.env, input=encoded.out)
    if decoded.rc != 0:
        return Result(name, FAIL, f"unmunge cannot read munge's own credential{where}: {decoded.said}", fix)
    return Result(name, OK, f"munge -n | unmunge works{where}")


def check_controller(d: Doctor) -> Result:
    name = "slurm-controller"
    if skip := d.needs(name, slurm=True):
        return skip
    fix = (
        f"start slurmctld on the controller host, or correct SlurmctldHost and SlurmctldPort in {slurm_conf()} "
        "(SLURM_CONF), and open that port from the hub host"
    )
    ping = run(["scontrol", "ping"], d.timeout, d.env)
    said = " ".join(ping.out.split())
    if ping.rc != 0 or " is UP" not in ping.out:
        return Result(name, FAIL, f"scontrol ping: {said or ping.said}", fix)
    nodes = run(["sinfo", "-h", "-p", d.slurm.partition, "-o", "%D %T"], d.timeout, d.env)
    if nodes.rc != 0:
        return Result(name, FAIL, f"{said}, but sinfo fails: {nodes.said}", fix)
    if not nodes.out.strip():
        return Result(
            name, FAIL, f"{said}, but partition {d.slurm.partition} has no nodes",
            "correct spawner.slurm.partition, or add nodes to that partition in slurm.conf",
        )  # fmt: skip
    states = ", ".join(" ".join(line.split()) for line in nodes.out.strip().splitlines())
    return Result(name, OK, f"{said}; partition {d.slurm.partition}: {states} (nodes, state)")


def check_sudo(d: Doctor) -> Result:
    name = "sudo-rule"
    if skip := d.needs(name, slurm=True, user=True):
        return skip
    me = pwd.getpwuid(os.geteuid()).pw_name
    for tool in ("squeue", "sbatch"):
        argv = d.as_user([tool, "--version"])
        ran = run(argv, d.timeout, d.env)
        if ran.rc != 0 or not ran.out.startswith("slurm"):
            sudo = any(os.path.basename(w) == "sudo" for w in argv)
            fix = (
                f"add a sudoers rule that lets {me} run sbatch, squeue, scancel, mkdir and tail as users, "
                "NOPASSWD:SETENV (docs/slurm.md), and install the sudo package"
                if sudo
                else "make spawner.slurm.submit_prefix run commands as the user without asking a password"
            )
            return Result(name, FAIL, f"{shlex.join(argv)} (as {me}): {ran.said}", fix)
    return Result(name, OK, f"{me} runs sbatch and squeue as {d.user.pw_name} through the submit prefix")


def check_node_env(d: Doctor) -> Result:
    name = "node-environment"
    if skip := d.needs(name, slurm=True, user=True, after=("slurm-controller", "sudo-rule")):
        return skip
    runtime = d.slurm.container.runtime
    if runtime != "none":
        return Result(name, SKIP, f"servers run in the {runtime} image {d.slurm.container.image}: not checked")
    where = d.slurm.python_env or "the job's PATH (spawner.slurm.python_env is unset)"
    script = d.node_script(
        "for tool in jupyterhub-singleuser campushub-singleuser; do",
        f'  command -v "$tool" >/dev/null 2>&1 || {{ echo "{PROBE_MARK} no $tool on $(hostname)"; exit 3; }}',
        "done",
        f'echo "{PROBE_MARK} $(hostname) $(jupyterhub-singleuser --version 2>&1 | tail -n 1)"',
    )
    ran = d.on_node(script)
    if busy := d.not_started(name, ran):
        return busy
    said = [line.removeprefix(PROBE_MARK).strip() for line in ran.out.splitlines() if line.startswith(PROBE_MARK)]
    if ran.rc == 3 and said:
        return Result(
            name, FAIL, f"{said[-1]} in {where}",
            "install the single-user environment (images/README.md), readable by every user, on every node at "
            "spawner.slurm.python_env, or point python_env at it",
        )  # fmt: skip
    if ran.rc != 0 or not said:
        return Result(
            name, FAIL, f"srun as {d.user.pw_name} in partition {d.slurm.partition}: {ran.said}",
            "run the same srun by hand as that user: Slurm's message names the cause (association, partition, "
            "a node down, the job waiting in the queue)",
        )  # fmt: skip
    node, _, version = said[-1].partition(" ")
    from jupyterhub import __version__ as hub_version

    if version.split(".")[0] != hub_version.split(".")[0]:
        return Result(
            name, FAIL, f"jupyterhub-singleuser on {node} is {version or 'unknown'}, the hub is {hub_version}",
            f"install JupyterHub {hub_version.split('.')[0]}.x in the single-user environment",
        )  # fmt: skip
    return Result(name, OK, f"jupyterhub-singleuser {version} and campushub-singleuser on {node} ({where})")


PROBE_HUB_API = """\
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        print("MARK", r.status, json.loads(r.read(4096)).get("version", "?"))
except Exception as e:
    print("MARK", "error", e)
    sys.exit(4)
""".replace("MARK", PROBE_MARK)


def hub_api_answer(url: str, timeout: float) -> str | None:
    """None when the hub's API answers at `url` as JupyterHub does, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            version = json.loads(r.read(4096)).get("version")
            return None if version else "it answers, but not as JupyterHub's API"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return str(getattr(e, "reason", None) or e)


def check_hub_api(d: Doctor) -> Result:
    name = "hub-api-from-node"
    if skip := d.needs(name, slurm=True):
        return skip
    url = hub_api_url(d.site)
    if problem := hub_api_answer(url, d.timeout):
        return Result(
            name, FAIL, f"the hub API at {url} does not answer on this host: {problem}",
            "start the hub (campushub hub), or correct hub.hub_ip, hub.hub_port or hub.hub_connect_url",
        )  # fmt: skip
    if skip := d.needs(name, user=True, after=("slurm-controller", "sudo-rule")):
        skip.found = f"the hub API answers at {url} on this host; from a node: {skip.found}"
        return skip
    script = d.node_script(f"exec python3 -c {shlex.quote(PROBE_HUB_API)} {shlex.quote(url)} {d.timeout:g}")
    ran = d.on_node(script)
    if busy := d.not_started(name, ran):
        return busy
    said = [line.removeprefix(PROBE_MARK).strip() for line in ran.out.splitlines() if line.startswith(PROBE_MARK)]
    if ran.rc == 0 and said:
        loopback = " (a loopback address: only nodes on the hub host reach it)" if "127.0.0.1" in url else ""
        return Result(name, OK, f"a job on a node reaches {url}{loopback}")
    reason = said[-1].removeprefix("error").strip() if said else ran.said
    return Result(
        name, FAIL, f"a job on a node cannot reach {url}: {reason}",
        "set hub.hub_ip (or hub.hub_connect_url) to an address of the hub host that the nodes reach, and open "
        f"port {urlsplit(url).port or 80} from the nodes to the hub host",
    )  # fmt: skip


def check_gpus(d: Doctor) -> Result:
    name = "gpus"
    if skip := d.needs(name, slurm=True, after=("slurm-controller",)):
        return skip
    asking = [p for p in d.site.profiles if needs_gpus(p)]
    if not asking:
        return Result(name, SKIP, "no profile asks for GPUs")
    ran = run(["scontrol", "--details", "--oneliner", "show", "node"], d.timeout, d.env)
    if ran.rc != 0:
        return Result(name, FAIL, f"scontrol show node: {ran.said}", "see the check slurm-controller")
    failed, warned, fine = [], [], []
    for p in asking:
        partition = p.resources.partition or d.slurm.partition
        kind = p.resources.gpu_type
        most = parse_nodes(ran.out, partition).most_per_node(kind)
        least = p.choices.gpus.min if p.choices.gpus else p.resources.gpus
        upto = p.choices.gpus.max if p.choices.gpus else p.resources.gpus
        has = f"the largest node of partition {partition} has {gpu_words(most, kind)}"
        if least > most or p.resources.gpus > most:
            failed.append(f"profile {p.slug} asks for {gpu_words(max(least, p.resources.gpus), kind)}, {has}")
        elif upto > most:
            warned.append(f"profile {p.slug} offers up to {gpu_words(upto, kind)}, {has} (the form offers {most})")
        else:
            fine.append(p.slug)
    fix = (
        "lower the profile's resources.gpus and choices.gpus, or correct its gpu_type or partition, to what "
        "Slurm's nodes have (Gres= in slurm.conf, gres.conf)"
    )
    if failed:
        return Result(name, FAIL, "; ".join(failed + warned), fix)
    if warned:
        return Result(name, WARN, "; ".join(warned), fix)
    return Result(name, OK, f"the nodes have the GPUs of every profile that asks for some ({', '.join(fine)})")


def check_secrets(d: Doctor) -> Result:
    name = "secret-files"
    problems = secret_problems(d.site)
    if problems:
        return Result(
            name, FAIL, "; ".join(problems),
            "make each file named readable by the hub's account alone (chmod 600) and hold its secret",
        )  # fmt: skip
    state = Path(d.site.hub.state_dir)
    count = len(secret_files(d.site)) + sum((state / n).is_file() for n in StateDir.SECRETS)
    return Result(name, OK, f"{count} secret file{'' if count == 1 else 's'}, none readable by others")


def check_disk(d: Doctor) -> Result:
    name = "state-disk"
    path = Path(d.site.hub.state_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    status = disk_status(usage.free, usage.total)
    share = usage.free / usage.total * 100 if usage.total else 0
    found = f"{size_words(usage.free)} free of {size_words(usage.total)} ({share:.0f}%) at {path}"
    fix = (
        "free space on that disk, or move hub.state_dir to a larger one: the hub's database stops taking "
        "writes (logins, spawns) when the disk is full"
    )
    return Result(name, status, found, fix if status != OK else "")


def check_tls(d: Doctor) -> Result:
    name = "tls-certificate"
    url = public_url(d.site)
    if not d.site.hub.public_url:
        return Result(name, SKIP, f"hub.public_url is not set: users reach {url} (no certificate to check)")
    parts = urlsplit(url)
    if parts.scheme != "https":
        return Result(name, SKIP, f"hub.public_url {url} is http: no certificate to check")
    host, port = parts.hostname, parts.port or 443
    renew = f"renew the certificate of {host} (certbot renew, or your CA) and reload the reverse proxy"
    try:
        with socket.create_connection((host, port), timeout=d.timeout) as sock:
            with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
                cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as e:
        if e.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return Result(name, FAIL, f"the certificate of {host}:{port} has expired", renew)
        return Result(
            name, FAIL, f"the certificate of {host}:{port} is not trusted: {e.verify_message}",
            f"serve a certificate for {host} from a CA that browsers trust, with its whole chain",
        )  # fmt: skip
    except (OSError, ssl.SSLError) as e:
        return Result(
            name, FAIL, f"no TLS connection to {host}:{port}: {getattr(e, 'strerror', None) or e}",
            "start the reverse proxy that serves hub.public_url, or correct hub.public_url",
        )  # fmt: skip
    not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    status = cert_status(not_after, time.time())
    day = datetime.fromtimestamp(not_after, UTC).strftime("%Y-%m-%d %H:%M UTC")
    days = (not_after - time.time()) / 86400
    found = f"the certificate of {host}:{port} is valid until {day} ({days:.0f} days)"
    return Result(name, status, found, f"{renew} before {day}" if status != OK else "")


# in the order they run: a check that needs another's success comes after it
CHECKS: dict[str, Callable[[Doctor], Result]] = {
    "munge": check_munge,
    "slurm-controller": check_controller,
    "sudo-rule": check_sudo,
    "node-environment": check_node_env,
    "hub-api-from-node": check_hub_api,
    "gpus": check_gpus,
    "secret-files": check_secrets,
    "state-disk": check_disk,
    "tls-certificate": check_tls,
}


def summary(results: list[Result]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARN, FAIL, SKIP)}
    words = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = "fix what FAILs first" if counts[FAIL] else "nothing fails"
    return f"{len(results)} checks: {words}; {verdict}"


def report(results: list[Result], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(
            {"ok": not any(r.status == FAIL for r in results), "summary": summary(results),
             "checks": [asdict(r) for r in results]},
            indent=2,
        )  # fmt: skip
    return "\n".join([*(r.line() for r in results), summary(results)])


def exit_code(results: list[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0
