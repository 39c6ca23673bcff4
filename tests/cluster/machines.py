"""Several real Debian 12 hosts on this machine, each with systemd as PID 1, for deployment tests:
Ansible runs over SSH against them as it would against a site's Slurm controller, compute nodes and
hub host.

Each host is a systemd-nspawn container booted from one Debian root file system (debootstrap, made once
and cached under /var/cache/campushub/machines), through an overlay of its own, so a host costs no copy
and the cache is never written. The hosts sit on a bridge of their own (chub-br0, 10.231.0.0/24, no
route out): they reach each other by name and this machine (10.231.0.1), and this machine reaches them
over SSH with a key the harness makes for the run.

The hosts have no route to Debian's mirror: what a deployment installs with apt is in the cached root
file system already (PACKAGES), which stands in for a site's local mirror. So the deployment may ask apt
for these packages (they are present), but not update apt's lists or install anything else.

One set of hosts at a time on a machine (the bridge and the addresses are fixed): the integration
tests' machine lock sees to that.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# What a deployment of CampusHub installs on its hosts, and what the harness needs on them.
PACKAGES = [
    # systemd as PID 1, its D-Bus, and systemd-networkd (in the systemd package) for host0's address
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iputils-ping",
    "procps",
    # Ansible's modules run with the host's Python (its apt module with python3-apt, which it would
    # otherwise install from the mirror first; its pip module with python3-packaging); the hub's and the
    # nodes' virtualenvs need python3-venv
    "python3",
    "python3-apt",
    "python3-packaging",
    "python3-venv",
    "openssh-server",
    "sudo",
    "ca-certificates",
    # the Slurm controller and compute nodes, and the hub's proxy
    "munge",
    "slurm-wlm",
    "node-configurable-http-proxy",
    # what node-logform (the proxy's) needs as the virtual node-safe-stable-stringify: debootstrap
    # resolves dependencies by package name only, so it must be named
    "node-fast-safe-stringify",
]
# No locales package: glibc's built-in C.UTF-8 is enough for Python and Ansible.
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE = Path("/var/cache/campushub/machines")
# Timers and services that reach for the network or do housekeeping a short-lived test host does not need.
DISABLED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "fstrim.timer", "e2scrub_all.timer"]
ENABLED_UNITS = ["systemd-networkd.service", "ssh.service"]
# Bumped when what prepare_rootfs does changes, so that the cache is made again.
ROOTFS_VERSION = "1"

BRIDGE = "chub-br0"
SUBNET = "10.231.0"  # this machine is .1, the hosts .11, .12, ...
RUN_PREFIX = "campushub-machines-"
# The overlays' source in /proc/mounts; with the environment variables CAMPUSHUB_MACHINES_RUN (of each
# nspawn process) and CAMPUSHUB_MACHINE (of each host's PID 1), how the leftovers of a crashed run are found.
MARK = "campushub-machines"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class CommandFailed(RuntimeError):
    pass


def sh(argv: list[str], timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{shlex.join(argv)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").replace("\r", "").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


def rootfs() -> Path:
    """The cached Debian root file system, made first (a minute or two) if PACKAGES or the mirror changed."""
    mirror = os.environ.get("DEBIAN_MIRROR", DEFAULT_MIRROR)
    key = hashlib.sha256(f"{ROOTFS_VERSION} {mirror} {sorted(PACKAGES)}".encode()).hexdigest()[:16]
    target = CACHE / f"rootfs-{key}"
    if target.is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; another run may have made it meanwhile
        if not target.is_dir():
            build_rootfs(target, mirror)
    return target


def build_rootfs(target: Path, mirror: str) -> None:
    # Builds that were interrupted (their mounts first: debootstrap binds /proc, /sys and maybe /dev in).
    for stale in CACHE.glob(".build-*"):
        unmount_under(stale)
        shutil.rmtree(stale, ignore_errors=True)
    # Built beside the cache and renamed when done: a rootfs-<key> folder is always a complete one.
    build = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=CACHE))
    build.chmod(0o755)  # mkdtemp's 0700 would keep the root's own users (munge's postinst) out of /
    try:
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(build), mirror]
        try:
            sh(argv, 1800)
        except CommandFailed as e:
            raise CommandFailed(f"{e}--- debootstrap.log:\n{tail(build / 'debootstrap/debootstrap.log')}") from None
        prepare_rootfs(build)
        build.rename(target)
    except BaseException:
        unmount_under(build)
        shutil.rmtree(build, ignore_errors=True)
        raise


def prepare_rootfs(root: Path) -> None:
    # Each host gets its own SSH host keys and machine id (nspawn gives it a random one for an empty file).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # The deployment brings the cluster's munge key; until then munge fails (the host is "degraded").
    (root / "etc/munge/munge.key").unlink(missing_ok=True)
    sh(["chroot", str(root), "systemctl", "enable", *ENABLED_UNITS])
    sh(["chroot", str(root), "systemctl", "disable", *DISABLED_UNITS], check=False)  # some may not exist
    sh(["chroot", str(root), "apt-get", "clean"])


class Machine:
    """One booted host."""

    def __init__(self, name: str, address: str, folder: Path):
        self.name = name
        self.address = address
        self.folder = folder
        self.merged = folder / "merged"
        self.log = folder / "console.log"
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # the container's systemd, as this machine sees it
        self.ssh_key: Path | None = None
        self.cgroups: list[Path] = []

    def run(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """`sh -c command` as root inside the host (not through SSH), with text output."""
        if self.pid is None:
            raise RuntimeError(f"{self.name} is not running")
        return sh(["nsenter", "-t", str(self.pid), "-a", "/bin/sh", "-c", command], timeout, check, env=GUEST_ENV)

    def ssh_command(self) -> list[str]:
        """The argv prefix that runs a command on the host as root over SSH: append the command."""
        return [
            "ssh",
            "-i",
            str(self.ssh_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            f"root@{self.address}",
        ]

    def unit_active(self, unit: str) -> bool:
        return self.run(f"systemctl is-active --quiet {shlex.quote(unit)}", check=False).returncode == 0

    def __repr__(self) -> str:
        return f"Machine({self.name!r}, {self.address!r})"


class Machines:
    """A set of hosts, booted in parallel; a context manager (start on entry, stop on exit).

    binds and bind_ro: per host name, nspawn's HOST:GUEST binds (HOST a folder on this machine)."""

    def __init__(
        self,
        names: list[str],
        folder: Path | None = None,
        binds: dict[str, list[str]] | None = None,
        bind_ro: dict[str, list[str]] | None = None,
        boot_timeout: float = 180,
    ):
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be distinct and at least one: {names}")
        self.names = list(names)
        self.given_folder = folder
        self.folder: Path | None = None
        self.binds = binds or {}
        self.bind_ro = bind_ro or {}
        self.boot_timeout = boot_timeout
        self.machines: dict[str, Machine] = {}
        self.ssh_key: Path | None = None

    def __getitem__(self, name: str) -> Machine:
        return self.machines[name]

    def __iter__(self):
        return iter(self.machines.values())

    def __enter__(self) -> Machines:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Machines:
        clean_leftovers()
        lower = rootfs()
        if self.given_folder:
            self.folder = self.given_folder
            self.folder.mkdir(parents=True, exist_ok=True)
        else:
            self.folder = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
        try:
            self.ssh_key = self.folder / "id_ed25519"
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", MARK, "-f", str(self.ssh_key)])
            sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
            sh(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
            sh(["ip", "link", "set", BRIDGE, "up"])
            for i, name in enumerate(self.names):
                self.machines[name] = Machine(name, f"{SUBNET}.{11 + i}", self.folder / name)
                self.machines[name].ssh_key = self.ssh_key
            for machine in self:
                self._prepare(machine, lower)
            for machine in self:
                self._boot(machine)
            deadline = time.monotonic() + self.boot_timeout
            with ThreadPoolExecutor(len(self.names)) as pool:
                for done in [pool.submit(self._wait_up, m, deadline) for m in self]:
                    done.result()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self, machine: Machine, lower: Path) -> None:
        for sub in ("upper", "work", "merged"):
            (machine.folder / sub).mkdir(parents=True)
        options = f"lowerdir={lower},upperdir={machine.folder / 'upper'},workdir={machine.folder / 'work'}"
        sh(["mount", "-t", "overlay", MARK, "-o", options, str(machine.merged)])
        etc = machine.merged / "etc"
        (etc / "hostname").write_text(f"{machine.name}\n")
        hosts = "".join(f"{m.address}\t{m.name}\n" for m in self)
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{hosts}")
        (etc / "systemd/network").mkdir(exist_ok=True)
        (etc / "systemd/network/10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={machine.address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        sh(["ssh-keygen", "-A", "-f", str(machine.merged)])
        ssh_dir = machine.merged / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{self.ssh_key}.pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)

    def _boot(self, machine: Machine) -> None:
        argv = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=read-only",
            f"--directory={machine.merged}",
            f"--machine={machine.name}",
            f"--network-bridge={BRIDGE}",
            "--setenv=CAMPUSHUB_MACHINE=1",
        ]
        argv += [f"--bind={b}" for b in self.binds.get(machine.name, [])]
        argv += [f"--bind-ro={b}" for b in self.bind_ro.get(machine.name, [])]
        # TERM: a console log without colours. Without SYSTEMD_NSPAWN_LOCK=0 nspawn would take a lock in
        # /run/systemd/nspawn/locks, which PID 1 here does not clean.
        env = dict(os.environ, SYSTEMD_NSPAWN_LOCK="0", CAMPUSHUB_MACHINES_RUN=str(self.folder), TERM="dumb")
        # A cgroup of its own for each host: nspawn puts the host's systemd in a "payload" cgroup below its own,
        # and hosts started from the same cgroup would share that one (their units start and remove each other's
        # cgroups: "Failed at step CGROUP").
        machine.cgroups = [root / machine.name for root in cgroup_roots()]
        for cgroup in machine.cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)

        def enter_cgroups():
            for cgroup in machine.cgroups:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        with open(machine.log, "wb") as log:
            machine.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=enter_cgroups,
            )

    def _wait_up(self, machine: Machine, deadline: float) -> None:
        def fail(why: str):
            raise RuntimeError(f"{machine.name} did not come up: {why}\n--- {machine.log}:\n{tail(machine.log)}")

        state = "?"
        while True:
            if machine.process.poll() is not None:
                fail(f"systemd-nspawn exited with {machine.process.returncode}")
            if time.monotonic() > deadline:
                fail(f"not running after {self.boot_timeout:.0f} s (systemctl is-system-running: {state})")
            if machine.pid is None:
                machine.pid = container_init(machine.process.pid)
            if machine.pid is not None:
                answer = machine.run("systemctl is-system-running", check=False, timeout=10)
                state = answer.stdout.strip() or answer.stderr.strip()
                if state in ("running", "degraded") and port_open(machine.address, 22):
                    probe = sh([*machine.ssh_command(), "true"], timeout=15, check=False)
                    if probe.returncode == 0:
                        return
                    state += f", but ssh: {probe.stderr.strip()}"
            time.sleep(0.3)

    def stop(self) -> None:
        """Power off each host, then remove everything the run made: overlays, cgroups, bridge, run folder."""
        with ThreadPoolExecutor(max(1, len(self.machines))) as pool:
            list(pool.map(power_off, self.machines.values()))
        for machine in self:
            unmount(machine.merged)
            for cgroup in machine.cgroups:
                remove_cgroup(cgroup)
        for root in cgroup_roots():
            remove_cgroup(root)
        sh(["ip", "link", "del", BRIDGE], check=False)
        if self.folder is None:
            return
        if self.given_folder:
            for machine in self:
                shutil.rmtree(machine.folder, ignore_errors=True)
            for key in (self.folder / "id_ed25519", self.folder / "id_ed25519.pub"):
                key.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    def inventory(self, groups: dict[str, list[str]], variables: dict[str, str] | None = None) -> str:
        """An Ansible inventory (INI) of these hosts: groups of host names, and variables for all of them."""
        common = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        lines = ["[all]"]
        for m in self:
            lines.append(
                f"{m.name} ansible_host={m.address} ansible_user=root ansible_python_interpreter=/usr/bin/python3 "
                f"ansible_ssh_private_key_file={self.ssh_key} ansible_ssh_common_args='{common}'"
            )
        for group, names in groups.items():
            lines += ["", f"[{group}]", *names]
        if variables:
            lines += ["", "[all:vars]", *(f"{k}={v}" for k, v in variables.items())]
        return "\n".join(lines) + "\n"


def container_init(nspawn_pid: int) -> int | None:
    """The pid (here) of the container's PID 1: a descendant of nspawn that is 1 in its own pid namespace."""
    for pid in descendants(nspawn_pid):
        nspid = proc_status(pid).get("NSpid", "").split()
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
    return None


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += map(int, children)
        todo += map(int, children)
    return found


def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def power_off(machine: Machine) -> None:
    process = machine.process
    if process is None:
        return
    if process.poll() is None and machine.pid is not None:
        machine.run("systemctl poweroff", check=False, timeout=10)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    if process.poll() is None:
        kill_group(process.pid)
        if machine.pid is not None:
            kill(machine.pid)
        process.wait(timeout=10)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def unmount(path: Path) -> None:
    if sh(["umount", str(path)], check=False).returncode != 0:
        sh(["umount", "--lazy", str(path)], check=False)


def mounts() -> list[tuple[str, str]]:
    """(source, mount point) of each mount here, the octal escapes of /proc/mounts undone."""
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        source, point = line.split()[:2]
        found.append((source, point.encode().decode("unicode_escape")))
    return found


def unmount_under(folder: Path) -> None:
    prefix = str(folder).rstrip("/") + "/"
    points = [p for _, p in mounts() if (p + "/").startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        sh(["umount", "--lazy", point], check=False)


def cgroup_roots() -> list[Path]:
    """Our folder below this process's cgroup in the hierarchies a host's systemd uses: the v1 name=systemd
    one where there is one (a hybrid layout, as here) and the unified (v2) one."""
    points = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, kind, options = line.split()[:4]
        if kind == "cgroup2":
            points["0"] = point
        elif kind == "cgroup" and "name=systemd" in options.split(","):
            points["name=systemd"] = point
    roots = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        point = points.get("0" if number == "0" else controllers)
        if point:
            roots.append(Path(point) / path.lstrip("/") / MARK)
    return roots


def remove_cgroup(cgroup: Path) -> None:
    """rmdir, deepest first (a cgroup's files go with its folder); one with processes left stays."""
    for folder, _, _ in os.walk(cgroup, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def environ(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def clean_leftovers() -> None:
    """What a run that crashed left: its hosts' processes, overlays, bridge and run folders."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        env = environ(pid)
        # the nspawn processes of a run (their environment names the run) and the hosts' PID 1 (nspawn's --setenv)
        if any(v.startswith("CAMPUSHUB_MACHINES_RUN=") for v in env) or "CAMPUSHUB_MACHINE=1" in env:
            kill(int(pid))
    time.sleep(0.5)
    for source, point in mounts():
        if source == MARK:
            unmount(Path(point))
    for root in cgroup_roots():
        remove_cgroup(root)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        sh(["ip", "link", "del", BRIDGE])
    for stale in Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*"):
        if not any(p.startswith(f"{stale}/") for _, p in mounts()):
            shutil.rmtree(stale, ignore_errors=True)
