"""A throwaway single-node Slurm cluster with 4 fake GPUs, in a folder of its own.

munged, slurmctld and slurmd are the real daemons from Debian's packages. The cluster has its own
munged (own socket, the machine's key), ports and config file (exported as SLURM_CONF), so it never
touches a Slurm or munged already on the machine, nor another test cluster.

With accounting (the default), the cluster also runs slurmdbd on a MariaDB server of its own (own
data folder, socket and port, run as the mysql user), and slurmctld enforces associations, limits
and QOS, with gres/gpu counted as a TRES: a course account's GPU limit holds as on a site's cluster.
Every job then needs an association: each test user gets one in the account DEFAULT_ACCOUNT, the
accounts there at the cluster's start, those tests/cluster/users.py creates later (`add_slurm_users`),
and those a hub creates at login when a test calls `add_users` for them before their first job.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

NODE_CPUS = 8  # more than the machine has (config_overrides): room for several single-CPU servers
NODE_MEMORY_MB = 16000
FAKE_GPUS = 4
CLUSTER_NAME = "campushub-test"
DEFAULT_ACCOUNT = "campushub-tests"  # every test user's default account: no limits
DB_NAME = "slurm_acct_db"
DB_USER = "slurmdbd"


ACTIVE: SlurmCluster | None = None  # the cluster started last, until it stops


def add_slurm_users(names) -> None:
    """Associations for new unix accounts in the running test cluster, if one runs with accounting."""
    if ACTIVE is not None:
        ACTIVE.add_users(names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether a process of this pid exists (one of another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process whose command line can be read now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            yield int(entry.name), argv


def end_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; waits for it to end. None or an ended one: nothing."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(*argv: str, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kw)


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = NODE_CPUS, memory_mb: int = NODE_MEMORY_MB, accounting: bool = True):
        self.root = Path(root)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.accounting = accounting
        self.db_port = free_port()
        self.dbd_port = free_port()
        self.db_password = secrets.token_hex(16)
        self.db_dir = self.root / "mariadb"
        self.db_socket = self.db_dir / "mariadb.sock"
        self.startup_seconds: dict[str, float] = {}
        self.associated: dict[str, int] = {}  # user name -> the uid its association was made for
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.daemons: list[subprocess.Popen] = []

    # --- life cycle ---

    def start(self) -> SlurmCluster:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.write_config()
        log = self.root / "log"
        begin = time.monotonic()
        self.start_munge()
        if self.accounting:
            self.start_accounting()
            self.startup_seconds["accounting"] = time.monotonic() - begin
        self.daemons.append(subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env,
            stdout=open(log / "slurmctld.out", "w"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for(lambda: self.cmd("scontrol", "ping", check=False).returncode == 0, 30, "slurmctld")
        self.daemons.append(subprocess.Popen(
            ["slurmd", "-D", "-f", str(self.conf), "-N", self.node], env=self.env,
            stdout=open(log / "slurmd.out", "w"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for(self.node_idle, 60, f"node {self.node} to be idle")
        if self.accounting:
            self.add_existing_users()
        self.startup_seconds["total"] = time.monotonic() - begin
        global ACTIVE
        ACTIVE = self
        return self

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait until none is left."""
        self.cmd("scancel", "--full", "--partition=gpu", check=False)
        try:
            wait_for(lambda: not self.jobs(), timeout, "all jobs to end")
        except TimeoutError:
            pass

    def stop(self) -> None:
        global ACTIVE
        if ACTIVE is self:
            ACTIVE = None
        if self.cmd("scontrol", "ping", check=False).returncode == 0:
            self.cancel_all()
        for proc in reversed(self.daemons):
            end_process(proc, 15)
        self.daemons.clear()
        run("pkill", "-f", f"slurmstepd.*{self.root}", check=False)
        run("pkill", "-f", f"munged.*{self.munge_socket}", check=False)

    def write_config(self) -> None:
        r = self.root
        self.conf.write_text(f"""\
ClusterName=campushub-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
KillWait=5
SchedulerParameters=bf_interval=2
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=gpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        if self.accounting:
            with open(self.conf, "a") as conf:
                conf.write(f"""\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,qos
""")
        (r / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File=/dev/tty[0-{FAKE_GPUS - 1}]\n")
        for f in (self.conf, r / "gres.conf"):
            f.chmod(0o644)

    def munge_works(self) -> bool:
        sock = f"--socket={self.munge_socket}"
        probe = subprocess.run(f"munge -n {sock} | unmunge {sock}", shell=True, capture_output=True)
        return probe.returncode == 0

    def start_munge(self) -> None:
        folder = self.munge_socket.parent
        folder.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
        self.daemons.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground", f"--socket={self.munge_socket}",
             f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
             f"--seed-file={folder / 'munged.seed'}"],
            stdout=open(self.root / "log" / "munged.out", "w"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for(self.munge_works, 20, "munged")

    # --- accounting: MariaDB and slurmdbd ---

    def start_accounting(self) -> None:
        """MariaDB with the accounting database, slurmdbd, and the cluster with its default account."""
        self.start_mariadb()
        r = self.root
        dbd_conf = r / "slurmdbd.conf"  # slurmdbd reads it next to SLURM_CONF
        fd = os.open(dbd_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the database password
        with open(fd, "w") as f:
            f.write(f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost={self.node}
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
LogFile={r}/log/slurmdbd.log
PidFile={r}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser={DB_USER}
StoragePass={self.db_password}
StorageLoc={DB_NAME}
""")
        self.daemons.append(subprocess.Popen(
            ["slurmdbd", "-D"], env=self.env,
            stdout=open(r / "log" / "slurmdbd.out", "w"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        try:
            wait_for(lambda: self.sacctmgr("show", "cluster", check=False).returncode == 0, 20, "slurmdbd")
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {self.sacctmgr('show', 'cluster', check=False).stderr.strip()}") from None
        self.sacctmgr("add", "cluster", CLUSTER_NAME)
        self.sacctmgr("add", "account", DEFAULT_ACCOUNT, "description=CampusHub tests", "organization=campushub")

    def start_mariadb(self) -> None:
        folder, data = self.db_dir, self.db_dir / "data"
        folder.mkdir(mode=0o750)
        shutil.chown(folder, "mysql", "mysql")
        installed = run(
            "mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}", "--skip-test-db",
            "--auth-root-authentication-method=socket", "--skip-name-resolve", check=False,
        )  # fmt: skip
        if installed.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {installed.stdout}{installed.stderr}")
        self.daemons.append(subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
             f"--socket={self.db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
             f"--pid-file={folder / 'mariadbd.pid'}", f"--log-error={folder / 'mariadbd.err'}",
             "--skip-name-resolve", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0",
             "--innodb-doublewrite=0", "--innodb-buffer-pool-size=128M", "--innodb-lock-wait-timeout=900"],
            stdout=open(self.root / "log" / "mariadbd.out", "w"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
        wait_for(lambda: self.sql("SELECT 1", check=False).returncode == 0, 60, "MariaDB")
        self.sql(
            f"CREATE DATABASE {DB_NAME}; "
            f"CREATE USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
            f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';"
        )

    def sql(self, statements: str, check=True) -> subprocess.CompletedProcess:
        """SQL as MariaDB's root, over the unix socket."""
        return run(
            "mariadb", "--no-defaults", f"--socket={self.db_socket}", "-u", "root", "-e", statements, check=check
        )

    def sacctmgr(self, *args: str, check=True) -> subprocess.CompletedProcess:
        return self.cmd("sacctmgr", "-i", *args, check=check)

    def add_users(self, names) -> None:
        """Associations in DEFAULT_ACCOUNT for these unix accounts (which must exist): with accounting, Slurm
        takes jobs of users with an association only. slurmctld learns a user's uid when the association is
        added: a user removed and made again with another uid gets its associations made anew."""
        if not self.accounting:
            return
        uids = {name: pwd.getpwnam(name).pw_uid for name in names}
        stale = sorted(n for n, uid in uids.items() if self.associated.get(n, uid) != uid)
        new = sorted(n for n in uids if self.associated.get(n) != uids[n])
        if stale:
            self.sacctmgr("delete", "user", "where", f"name={','.join(stale)}")
        if new:
            self.sacctmgr("add", "user", f"name={','.join(new)}", f"account={DEFAULT_ACCOUNT}")
        self.associated.update(uids)

    def add_existing_users(self) -> None:
        """Associations for the machine's ordinary accounts (uid 1000 to 59999) already there, such as the
        test users made before the cluster started."""
        self.add_users(p.pw_name for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000)

    # --- commands ---

    def cmd(self, *argv: str, check=True) -> subprocess.CompletedProcess:
        return run(*argv, check=check, env=self.env)

    def node_idle(self) -> bool:
        out = self.cmd("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
        return out == "idle"

    def jobs(self) -> list[dict]:
        """Jobs Slurm still lists as pending or running: id, user, state, name."""
        out = self.cmd("squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%i|%u|%T|%j").stdout
        return [dict(zip(("id", "user", "state", "name"), line.split("|"), strict=False)) for line in out.splitlines()]

    def munge_away(self) -> None:
        """Hide munged's socket: every Slurm command fails with an authentication error until munge_back()."""
        self.munge_socket.rename(self.munge_socket.with_name("munge.socket.away"))

    def munge_back(self) -> None:
        self.munge_socket.with_name("munge.socket.away").rename(self.munge_socket)

    def jobs_of(self, user: str) -> list[dict]:
        return [j for j in self.jobs() if j["user"] == user]

    def job_of(self, user: str) -> dict:
        """The user's one job (a failed assertion if there is none or more)."""
        jobs = self.jobs_of(user)
        assert len(jobs) == 1, f"expected one job of {user}: {jobs}"
        return jobs[0]

    def server_pid(self, job_id: str) -> int:
        """The job's jupyterhub-singleuser process."""
        for pid in self.job_pids(job_id):
            try:
                if b"jupyterhub-singleuser" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except FileNotFoundError:
                continue
        raise AssertionError(f"no jupyterhub-singleuser process in job {job_id}")

    def job_state(self, job_id: str) -> str:
        out = self.cmd("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        return out or "GONE"

    def job_pids(self, job_id: str) -> list[int]:
        out = self.cmd("scontrol", "listpids", job_id, check=False).stdout
        pids = []
        for line in out.splitlines()[1:]:
            first = line.split()[0] if line.split() else ""
            if first.isdigit():
                pids.append(int(first))
        return pids
