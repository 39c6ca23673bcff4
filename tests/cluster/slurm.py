"""A throwaway single-node Slurm cluster with 4 fake GPUs, in a folder of its own.

munged, slurmctld and slurmd are the real daemons from Debian's packages. The cluster has its own
munged (own socket, the machine's key), ports and config file (exported as SLURM_CONF), so it never
touches a Slurm or munged already on the machine, nor another test cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODE_CPUS = 8  # more than the machine has (config_overrides): room for several single-CPU servers
NODE_MEMORY_MB = 16000
FAKE_GPUS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    def __init__(self, root: Path, cpus: int = NODE_CPUS, memory_mb: int = NODE_MEMORY_MB):
        self.root = Path(root)
        self.cpus = cpus
        self.memory_mb = memory_mb
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
        self.start_munge()
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
        return self

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job and wait until none is left."""
        self.cmd("scancel", "--full", "--partition=gpu", check=False)
        try:
            wait_for(lambda: not self.jobs(), timeout, "all jobs to end")
        except TimeoutError:
            pass

    def stop(self) -> None:
        if len(self.daemons) > 1 and self.daemons[1].poll() is None:
            self.cancel_all()
        for proc in reversed(self.daemons):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
