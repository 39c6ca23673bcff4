"""Slurm backend: each user's server is a Slurm job of the user's unix account.

Built on batchspawner's SlurmSpawner (job state kept in the hub database, the
`batchspawner-singleuser` port report from inside the job), with what a shared cluster needs:

- Slurm commands run without a shell, every option is a separate argument, and the batch script
  holds only admin-set text and quoted words: nothing a user sends reaches it.
- The port report accepts one integer port, only for the pending spawn that owns the calling
  token; batchspawner's handler copied any posted key onto the spawner.
- A job that ends before its server reports a port fails the spawn at once, with its log's tail.
- Only a definite answer from Slurm ends a server: a failing `squeue` leaves it running.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import pwd
import shlex

import batchspawner
from batchspawner import JobStatus
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web
from traitlets import Float, Integer, List, Unicode

PORT_REPORT_PATH = r"/api/batchspawner"

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING"}
ENDED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}  # fmt: skip


class SpawnError(web.HTTPError):
    """A spawn that cannot go on; the message is for the user (spawn page and REST API show it)."""

    def __init__(self, message: str):
        super().__init__(500, "%s", message)
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.jupyterhub_message


class PortReportError(ValueError):
    """A port report that is refused; the message says why."""


def parse_port_report(body: bytes) -> int:
    """The port from a port report: exactly {"port": <integer 1-65535>}, nothing else."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise PortReportError("the body must be JSON: {\"port\": <integer>}") from None
    if not isinstance(data, dict):
        raise PortReportError("the body must be a JSON object: {\"port\": <integer>}")
    extra = sorted(set(data) - {"port"})
    if extra:
        raise PortReportError(f"only 'port' may be reported; refused: {', '.join(map(str, extra))}")
    port = data.get("port")
    if type(port) is not int or not 1 <= port <= 65535:
        raise PortReportError("port must be an integer from 1 to 65535")
    return port


def classify_squeue(returncode: int, out: str, err: str) -> tuple[JobStatus, str]:
    """Read `squeue -h -j ID --states=all -o '%T %B'`: (status, the state line or the error).

    NOTFOUND only when Slurm says so; any other failure of the query is UNKNOWN.
    """
    if returncode == 0:
        line = (out.strip().splitlines() or [""])[-1].strip()
        state = line.split()[0] if line else ""
        if state in RUNNING_STATES:
            return JobStatus.RUNNING, line
        if state in PENDING_STATES:
            return JobStatus.PENDING, line
        if not line or state in ENDED_STATES:
            return JobStatus.NOTFOUND, line
        return JobStatus.UNKNOWN, line
    if "Invalid job id specified" in err:
        return JobStatus.NOTFOUND, ""
    return JobStatus.UNKNOWN, err.strip()


class SlurmSpawner(batchspawner.SlurmSpawner):
    """A user's server as a Slurm job, submitted as the user's unix account."""

    partition = Unicode(help="Slurm partition (sbatch --partition).").tag(config=True)
    account = Unicode("", help="Slurm account (sbatch --account); empty for none.").tag(config=True)
    qos = Unicode("", help="Slurm QOS (sbatch --qos); empty for none.").tag(config=True)
    cpus = Integer(1, help="CPUs per server (sbatch --cpus-per-task).").tag(config=True)
    memory = Unicode("4G", help="Memory per server (sbatch --mem).").tag(config=True)
    walltime = Unicode("08:00:00", help="Time limit of the job (sbatch --time).").tag(config=True)
    python_env = Unicode(
        "", help="Prefix of the Python environment on the nodes whose bin/ holds jupyterhub-singleuser."
    ).tag(config=True)
    prologue = Unicode("", help="Admin's shell lines run in the job before the server.").tag(config=True)
    submit_prefix = List(
        Unicode(),
        ["sudo", "-E", "-u", "{username}"],
        help="Argument list that runs a command as the user; '{username}' is replaced.",
    ).tag(config=True)
    min_uid = Integer(1000, help="Lowest uid that may get a server.").tag(config=True)
    command_timeout = Float(60, help="Seconds one Slurm command may take.").tag(config=True)
    log_tail_lines = Integer(20, help="How many lines of the job's log a failed spawn shows.").tag(config=True)

    # --- the unix account ---------------------------------------------------------------

    def unix_account(self) -> pwd.struct_passwd:
        name = self.user.name
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"There is no unix account named {name!r} on the hub host.") from None
        if account.pw_uid < self.min_uid:
            raise SpawnError(f"The account {name!r} is a system account (uid {account.pw_uid}): it gets no server.")
        return account

    def user_env(self, env):
        account = self.unix_account()
        env.update(USER=account.pw_name, HOME=account.pw_dir, SHELL=account.pw_shell or "/bin/bash")
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return env

    # --- Slurm commands -------------------------------------------------------------------

    async def run_as_user(self, *argv: str, input: str | None = None, env=None) -> tuple[int, str, str]:
        """Run a command as the user, without a shell: (returncode, stdout, stderr)."""
        prefix = [w.replace("{username}", self.user.name) for w in self.submit_prefix]
        proc = await asyncio.create_subprocess_exec(
            *prefix, *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), self.command_timeout
            )
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.unix_account().pw_dir, ".campushub", "logs")

    def job_log_path(self, job_id: str) -> str:
        return os.path.join(self.log_dir, f"jupyter-{job_id}.log")

    def sbatch_args(self) -> list[str]:
        account = self.unix_account()
        args = [
            "sbatch", "--parsable",
            f"--job-name=jupyter-{self.user.name}",
            f"--partition={self.partition}",
            f"--cpus-per-task={self.cpus}",
            f"--mem={self.memory}",
            f"--time={self.walltime}",
            f"--chdir={account.pw_dir}",
            f"--output={os.path.join(self.log_dir, 'jupyter-%j.log')}",
            "--export=ALL",
        ]  # fmt: skip
        if self.account:
            args.append(f"--account={self.account}")
        if self.qos:
            args.append(f"--qos={self.qos}")
        return args

    def render_batch_script(self) -> str:
        lines = ["#!/bin/bash", "set -eu", f"echo \"CampusHub server job $SLURM_JOB_ID on $(hostname)\""]
        if self.prologue:
            lines.append(self.prologue)
        if self.python_env:
            lines.append(f"export PATH={shlex.quote(os.path.join(self.python_env, 'bin'))}:\"$PATH\"")
        words = [self.batchspawner_singleuser_cmd, *self.cmd, *self.get_args()]
        lines.append("exec " + shlex.join(words))
        return "\n".join(lines) + "\n"

    async def submit_batch_script(self) -> str:
        env = self.get_env()
        rc, _, err = await self.run_as_user("mkdir", "-p", "-m", "0700", self.log_dir, env=env)
        if rc != 0:
            raise SpawnError(f"Could not create the job log folder {self.log_dir}: {err.strip()}")
        args = self.sbatch_args()
        self.log.info("Submitting server job for %s: %s", self.user.name, shlex.join(args))
        rc, out, err = await self.run_as_user(*args, input=self.render_batch_script(), env=env)
        if rc != 0:
            raise SpawnError(f"Slurm refused the server job: {err.strip() or out.strip()}")
        job_id = (out.strip().splitlines() or [""])[-1].split(";")[0]
        if not job_id.isdigit():
            raise SpawnError(f"sbatch gave no job id: {out.strip()!r}")
        self.job_id = job_id
        return job_id

    async def query_job_status(self) -> JobStatus:
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            rc, out, err = await self.run_as_user("squeue", "-h", "-j", self.job_id, "--states=all", "-o", "%T %B")
        except (OSError, asyncio.TimeoutError) as e:
            rc, out, err = -1, "", str(e) or type(e).__name__
        status, text = classify_squeue(rc, out, err)
        if status == JobStatus.UNKNOWN and rc != 0:
            # keep the last known state line (and host): a failed query says nothing about the job
            self.log.warning("Could not query job %s of %s, keeping it: %s", self.job_id, self.user.name, text)
        else:
            self.job_status = text
        return status

    async def cancel_batch_job(self) -> None:
        if not self.job_id:
            return
        self.log.info("Cancelling job %s of %s", self.job_id, self.user.name)
        rc, _, err = await self.run_as_user("scancel", self.job_id)
        if rc != 0:
            self.log.warning("scancel %s failed: %s", self.job_id, err.strip())

    async def job_log_tail(self, job_id: str) -> str:
        path = self.job_log_path(job_id)
        try:
            rc, out, err = await self.run_as_user("tail", "-n", str(self.log_tail_lines), path)
        except (OSError, asyncio.TimeoutError) as e:
            return f"(could not read {path}: {e})"
        return out.rstrip() if rc == 0 else f"(could not read {path}: {err.strip()})"

    async def job_ended_error(self, job_id: str, when: str) -> SpawnError:
        state = (self.job_status.split() or ["ENDED"])[0]
        tail = await self.job_log_tail(job_id)
        return SpawnError(
            f"Slurm job {job_id} ended ({state}) {when}. "
            f"Last lines of its log {self.job_log_path(job_id)}:\n{tail}"
        )

    # --- the spawn ------------------------------------------------------------------------

    async def start(self):
        self.unix_account()
        # a fresh address for every job: the last job's host is no place to bind on another node
        self.ip = self.traits()["ip"].default_value
        self.port = 0
        if self.server:
            self.server.port = 0
        job_id = await self.submit_batch_script()
        while True:
            status = await self.query_job_status()
            if status == JobStatus.RUNNING:
                break
            if status == JobStatus.NOTFOUND:
                error = await self.job_ended_error(job_id, "before its server started")
                self.clear_state()
                raise error
            await asyncio.sleep(self.startup_poll_interval)
        self.ip = self.state_gethost()
        # The port arrives through the port report (PortReportHandler); meanwhile, watch the job.
        while self.port == 0:
            await asyncio.sleep(self.startup_poll_interval)
            if self.port == 0 and await self.query_job_status() == JobStatus.NOTFOUND:
                error = await self.job_ended_error(job_id, "before its server started")
                self.clear_state()
                raise error
        self.log.info("Server job %s of %s runs at %s:%s", job_id, self.user.name, self.ip, self.port)
        return self.ip, self.port


class PortReportHandler(APIHandler):
    """POST /hub/api/batchspawner: a starting server reports its port, and nothing else."""

    def _pending_spawner(self) -> SlurmSpawner:
        token = self.get_auth_token() or ""
        for spawner in getattr(self.current_user, "spawners", {}).values():
            if (
                isinstance(spawner, SlurmSpawner)
                and spawner.api_token
                and hmac.compare_digest(spawner.api_token, token)
            ):
                if spawner.pending != "spawn" or spawner.port:
                    raise web.HTTPError(409, "This server is not waiting for a port report.")
                return spawner
        raise web.HTTPError(403, "This token belongs to no starting server.")

    @web.authenticated
    def post(self):
        spawner = self._pending_spawner()
        try:
            port = parse_port_report(self.request.body)
        except PortReportError as e:
            raise web.HTTPError(400, str(e)) from None
        spawner.port = port
        self.set_status(201)
        self.finish({"message": f"port {port} recorded"})


apihandlers.default_handlers[:] = [
    h for h in apihandlers.default_handlers if h[0] != PORT_REPORT_PATH
] + [(PORT_REPORT_PATH, PortReportHandler)]
