"""Executors: where a run's job executes, always as the schedule's owner. One interface, two kinds.

- `SlurmExecutor`: one sbatch job per run, submitted as the owner (spawner.slurm's submit_prefix),
  papermill from the cluster's single-user environment.
- `LocalExecutor`: a process on the hub host, as the owner's unix account (setuid, the service runs
  as root); in the demo, as the service's own account with homes in the state folder.

A run's job is one bash script that holds only admin-set text and quoted words: the parameters
travel base64-encoded (papermill -b), the paths are the service's own. The job writes its exit
status to `exit_code` in the run's folder; the service reads files there as the owner.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batchspawner import JobStatus

from ..profiles import SpawnRequest
from ..site import Site
from ..slurmenv import command_env
from ..spawners.slurm import SQUEUE_FORMAT, classify_squeue, squeue_fields, unix_account
from .definitions import ScheduleError

COMMAND_TIMEOUT = 60
READ_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class RunJob:
    """What one run asks of an executor."""

    run_id: int
    schedule_id: int
    owner: str
    folder: str
    parameters: dict
    timeout: int
    request: SpawnRequest | None = None
    service_id: str = ""  # tells apart the runs of two deployments on one cluster or host

    @property
    def job_name(self) -> str:
        return f"campushub-run-{self.service_id}-{self.run_id}"


@dataclass(frozen=True)
class JobState:
    phase: Literal["queued", "running", "ended", "unknown"]
    node: str = ""
    detail: str = ""  # Slurm's pending reason, or how the job ended (its Slurm state)


def run_script(job: RunJob, *, python_env: Path | None, prologue: str, log_here: bool) -> str:
    """The job's bash script. `log_here`: the script sends its own output to job.log (sbatch's --output
    does it for Slurm)."""
    folder = shlex.quote(job.folder)
    parameters = base64.b64encode(json.dumps(job.parameters).encode()).decode()
    lines = ["#!/bin/bash", "set -u", f"cd {folder} || exit 1"]
    if log_here:
        lines.append("exec >>job.log 2>&1")
    lines.append(
        f'echo "CampusHub run {job.run_id} of schedule {job.schedule_id} on $(hostname),'
        ' GPUs: ${CUDA_VISIBLE_DEVICES:-none}"'
    )
    if python_env:
        lines.append(f'export PATH={shlex.quote(str(Path(python_env) / "bin"))}:"$PATH"')
    if prologue:
        lines.append(prologue)
    lines += [
        shlex.join(
            [
                "papermill",
                "--no-progress-bar",
                "--log-output",
                "--cwd",
                job.folder,
                "-b",
                parameters,
                "input.ipynb",
                "output.ipynb",
            ]
        ),  # fmt: skip
        "code=$?",
        'echo "$code" > exit_code',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


class Executor:
    """Runs jobs as their owners and reads the owners' files for the service."""

    kind = ""

    def __init__(self, site: Site):
        self.site = site

    def home(self, owner: str) -> str:
        raise NotImplementedError

    def run_folder(self, owner: str, schedule_id: int, run_id: int) -> str:
        return os.path.join(self.home(owner), self.site.scheduler.runs_folder, str(schedule_id), str(run_id))

    async def run_as(self, owner: str, argv: list[str], input: bytes | None = None) -> tuple[int, bytes, str]:
        """Run a command as the owner, without a shell and with a minimal environment:
        (returncode, stdout, stderr)."""
        raise NotImplementedError

    async def _communicate(self, proc, input: bytes | None) -> tuple[int, bytes, str]:
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), COMMAND_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out, err.decode(errors="replace")

    async def read(self, owner: str, path: str, limit: int = READ_LIMIT) -> bytes | None:
        """A file of the owner's, read as the owner (no path the owner controls is followed by the service
        itself); None if it is not there or not readable."""
        rc, out, _ = await self.run_as(owner, ["head", "-c", str(limit + 1), "--", path])
        if rc != 0:
            return None
        if len(out) > limit:
            raise ScheduleError(f"{path} is larger than {limit // (1024 * 1024)} MiB")
        return out

    async def tail(self, owner: str, path: str, size: int = 4096) -> str:
        """The end of a file of the owner's (a log), read as the owner; "" if it cannot be read."""
        rc, out, _ = await self.run_as(owner, ["tail", "-c", str(size), "--", path])
        return out.decode(errors="replace") if rc == 0 else ""

    async def prepare(self, job: RunJob, notebook: bytes) -> None:
        """The run's folder, made by the owner, with the input notebook in it."""
        rc, _, err = await self.run_as(job.owner, ["mkdir", "-p", "-m", "0700", "--", job.folder])
        if rc != 0:
            raise ScheduleError(f"could not create the run folder {job.folder}: {err.strip()}")
        target = os.path.join(job.folder, "input.ipynb")
        # dd reads the pipe it is given (a user cannot reopen a pipe of root's through /dev/stdin)
        rc, _, err = await self.run_as(job.owner, ["dd", f"of={target}", "status=none"], input=notebook)
        if rc != 0:
            raise ScheduleError(f"could not write {target}: {err.strip()}")

    async def submit(self, job: RunJob) -> str:
        """Start the job; its id."""
        raise NotImplementedError

    async def state(self, job: RunJob, job_id: str) -> JobState:
        raise NotImplementedError

    async def cancel(self, job: RunJob, job_id: str) -> None:
        raise NotImplementedError

    async def find(self, job: RunJob) -> str | None:
        """The id of the job of a run whose submission was interrupted, if it was submitted."""
        raise NotImplementedError


class SlurmExecutor(Executor):
    kind = "slurm"

    def home(self, owner: str) -> str:
        users = self.site.users
        return unix_account(owner, users.min_uid, users.max_uid).pw_dir

    async def run_as(self, owner, argv, input=None):
        prefix = [w.replace("{username}", owner) for w in self.site.spawner.slurm.submit_prefix]
        env = command_env() | {"HOME": self.home(owner), "USER": owner}
        proc = await asyncio.create_subprocess_exec(
            *prefix, *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        return await self._communicate(proc, input)

    def sbatch_args(self, job: RunJob) -> list[str]:
        slurm, request = self.site.spawner.slurm, job.request
        minutes = -(-job.timeout // 60) + 1  # Slurm ends it even if the service is down
        args = [
            "sbatch", "--parsable", f"--job-name={job.job_name}",
            f"--partition={request.partition}", f"--cpus-per-task={request.cpus}", f"--mem={request.memory}",
            f"--time={minutes}", f"--chdir={job.folder}", f"--output={os.path.join(job.folder, 'job.log')}",
            "--export=ALL",
        ]  # fmt: skip
        if request.gres:
            args.append(f"--gres={request.gres}")
        if slurm.account:
            args.append(f"--account={slurm.account}")
        if slurm.qos:
            args.append(f"--qos={slurm.qos}")
        return args

    async def submit(self, job):
        slurm = self.site.spawner.slurm
        script = run_script(job, python_env=slurm.python_env, prologue=slurm.prologue, log_here=False)
        rc, out, err = await self.run_as(job.owner, self.sbatch_args(job), input=script.encode())
        text = out.decode(errors="replace").strip()
        if rc != 0:
            raise ScheduleError(f"Slurm refused the run's job: {err.strip() or text}")
        job_id = (text.splitlines() or [""])[-1].split(";")[0]
        if not job_id.isdigit():
            raise ScheduleError(f"sbatch gave no job id: {text!r}")
        return job_id

    async def state(self, job, job_id):
        try:
            rc, out, err = await self.run_as(
                job.owner, ["squeue", "-h", "-j", job_id, "--states=all", "-o", SQUEUE_FORMAT]
            )
        except (TimeoutError, OSError) as e:
            return JobState("unknown", detail=str(e) or type(e).__name__)
        status, line = classify_squeue(rc, out.decode(errors="replace"), err)
        state, host, _, reason = squeue_fields(line)
        if status == JobStatus.PENDING:
            return JobState("queued", detail=reason)
        if status == JobStatus.RUNNING or state == "COMPLETING":
            return JobState("running", node=host)
        if status == JobStatus.NOTFOUND:
            return JobState("ended", node=host, detail=state)
        return JobState("unknown", detail=line)

    async def cancel(self, job, job_id):
        for _ in range(3):
            try:
                rc, _, _ = await self.run_as(job.owner, ["scancel", job_id])
            except (TimeoutError, OSError):
                rc = -1
            if rc == 0:
                return
            await asyncio.sleep(1)

    async def find(self, job):
        rc, out, _ = await self.run_as(job.owner, ["squeue", "-h", "-u", job.owner, "-n", job.job_name, "-o", "%i"])
        ids = out.decode().split() if rc == 0 else []
        return ids[0] if ids else None


class LocalExecutor(Executor):
    """Jobs as processes on the hub host. With the demo's shared-password login the processes are the
    service's own account's, in <state_dir>/homes/<owner>, as the demo's servers are."""

    kind = "local"

    def __init__(self, site: Site):
        super().__init__(site)
        self.demo = site.auth.kind == "shared-password"
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    def account(self, owner: str) -> pwd.struct_passwd | None:
        if self.demo:
            return None
        users = self.site.users
        return unix_account(owner, users.min_uid, users.max_uid)

    def home(self, owner):
        account = self.account(owner)
        return account.pw_dir if account else str(Path(self.site.hub.state_dir).resolve() / "homes" / owner)

    def _as_owner(self, owner: str) -> dict:
        account = self.account(owner)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": self.home(owner), "USER": account.pw_name if account else owner,
        }  # fmt: skip
        if account is None:
            return {"env": env}
        groups = os.getgrouplist(account.pw_name, account.pw_gid)
        return {"env": env, "user": account.pw_uid, "group": account.pw_gid, "extra_groups": groups}

    async def run_as(self, owner, argv, input=None):
        if self.demo:
            os.makedirs(self.home(owner), mode=0o700, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd="/", **self._as_owner(owner),
        )  # fmt: skip
        return await self._communicate(proc, input)

    async def submit(self, job):
        env_prefix = self.site.spawner.local.python_env or Path(sys.executable).parent.parent
        script = run_script(job, python_env=env_prefix, prologue="", log_here=True)
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "-c", script, job.job_name,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            cwd="/", start_new_session=True, **self._as_owner(job.owner),
        )  # fmt: skip
        job_id = str(proc.pid)
        self.processes[job_id] = proc
        return job_id

    def _alive(self, job: RunJob, job_id: str) -> bool:
        proc = self.processes.get(job_id)
        if proc is not None:
            if proc.returncode is None:
                return True
            self.processes.pop(job_id, None)
            return False
        # a job of an earlier start of the service: the process of that pid must be this run's
        try:
            cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{job_id}/stat").read_text()
        except OSError:
            return False
        return job.job_name.encode() in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"

    async def state(self, job, job_id):
        if self._alive(job, job_id):
            return JobState("running", node=os.uname().nodename)
        return JobState("ended")

    async def wait(self, job_id: str) -> None:
        """Returns when a process this service started ends (at once for any other)."""
        proc = self.processes.get(job_id)
        if proc is not None:
            await proc.wait()

    async def cancel(self, job, job_id):
        if self._alive(job, job_id):
            try:
                os.killpg(int(job_id), signal.SIGTERM)
            except ProcessLookupError:
                pass

    async def find(self, job):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._alive(job, entry.name):
                return entry.name
        return None


def executor_for(site: Site) -> Executor:
    kind = site.scheduler.executor or ("slurm" if site.spawner.backend == "slurm" else "local")
    return SlurmExecutor(site) if kind == "slurm" else LocalExecutor(site)
