"""Slurm backend: each user's server is a Slurm job of the user's unix account.

Built on batchspawner's SlurmSpawner (job state kept in the hub database, the port reported from
inside the job to /hub/api/batchspawner), with what a shared cluster needs:

- Slurm commands run without a shell, every option is a separate argument, and the batch script
  holds only admin-set text and quoted words: nothing a user sends reaches it.
- The port report accepts one integer port, only for the pending spawn that owns the calling
  token; batchspawner's handler copied any posted key onto the spawner.
- The job reports its port once the server listens (`campushub-singleuser`, extensions/campushub-lab),
  and the report wakes the spawn: the hub's first readiness check finds the server up.
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
from datetime import datetime

import batchspawner
from batchspawner import JobStatus
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web
from traitlets import Any, Dict, Float, Integer, List, Unicode, default

from ..profiles import (
    Profile,
    ProfileError,
    SlurmDefaults,
    SpawnRequest,
    granted_profiles,
    options_form,
    options_from_form,
    resolve_request,
)

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


# Why a job ended, in words for the user (Slurm's job states).
END_REASONS = {
    "TIMEOUT": "time limit reached",
    "CANCELLED": "cancelled",
    "COMPLETED": "the server exited",
    "FAILED": "the job failed",
    "NODE_FAIL": "the node failed",
    "OUT_OF_MEMORY": "out of memory",
    "PREEMPTED": "preempted by a job of higher priority",
    "BOOT_FAIL": "the node failed to boot",
    "DEADLINE": "deadline reached",
}


def pending_message(reason: str, start: str, request: SpawnRequest | None) -> str:
    """Slurm's pending reason (squeue %r) and expected start (%S), in plain words."""
    gpus = request.gpus if request else 0
    if reason == "Resources":
        what = f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "the CPUs and memory you asked for"
        text = f"Waiting for resources: {what} {'are' if gpus != 1 else 'is'} busy with other jobs"
    elif reason == "Priority":
        text = "Waiting in the queue behind jobs of higher priority"
    elif "GRES" in reason and (reason.startswith("QOS") or reason.startswith("Assoc")):
        text = f"Waiting: the GPU limit of your account or group is reached ({reason})"
    elif reason.startswith("QOS") or reason.startswith("Assoc"):
        text = f"Waiting: a limit of your account or group is reached ({reason})"
    elif reason in ("ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "NodeDown", "PartitionNodeLimit"):
        text = f"Waiting: the partition's nodes are not available ({reason})"
    elif reason == "BeginTime":
        text = "Waiting for its start time"
    elif reason in ("None", ""):
        text = "Queued: Slurm is scheduling the job"
    else:
        text = f"Waiting in the queue (Slurm: {reason})"
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        return text
    minutes = max(0, round((when - datetime.now()).total_seconds() / 60))
    return f"{text}; estimated start {when:%H:%M} (in about {minutes} min)"


def container_command(runtime: str, image: str, options: list[str], home: str, gpus: int) -> list[str]:
    """The words that run the server's command in a container (none: no words)."""
    if runtime == "none":
        return []
    if runtime == "apptainer":
        # Apptainer passes the job's environment (JUPYTERHUB_*, CUDA_VISIBLE_DEVICES) by default.
        return ["apptainer", "exec", *(["--nv"] if gpus else []), "--bind", home, "--pwd", home, *options, image]
    if runtime == "podman":
        gpu = ["--device", "nvidia.com/gpu=all", "--env", "CUDA_VISIBLE_DEVICES"] if gpus else []
        return [
            "podman", "run", "--rm", "--network=host", "--userns=keep-id",
            "--volume", f"{home}:{home}", "--workdir", home,
            "--env", "JUPYTERHUB_*", "--env", "CAMPUSHUB_*", "--env", "HOME", "--env", "USER", *gpu,
            *options, image,
        ]  # fmt: skip
    if runtime == "pyxis":
        return [
            "srun", "--export=ALL", f"--container-image={image}", f"--container-mounts={home}:{home}",
            f"--container-workdir={home}", *options,
        ]  # fmt: skip
    raise ValueError(f"unknown container runtime {runtime!r}")


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


# What the spawner asks squeue of its job: state, host, expected start and pending reason. The
# reason comes last: it may hold spaces ("ReqNodeNotAvail, UnavailableNodes:...").
SQUEUE_FORMAT = "%T|%B|%S|%r"


def squeue_fields(line: str) -> tuple[str, str, str, str]:
    """A SQUEUE_FORMAT line: (state, host, start, reason); missing fields are empty."""
    fields = line.split("|", 3)
    return tuple(fields + [""] * (4 - len(fields)))  # type: ignore[return-value]


def classify_squeue(returncode: int, out: str, err: str) -> tuple[JobStatus, str]:
    """Read `squeue -h -j ID --states=all -o SQUEUE_FORMAT`: (status, the job's line or the error).

    NOTFOUND only when Slurm says so; any other failure of the query is UNKNOWN.
    """
    if returncode == 0:
        line = (out.strip().splitlines() or [""])[-1].strip()
        state = squeue_fields(line)[0]
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
    container_runtime = Unicode("none", help="none, apptainer, podman or pyxis.").tag(config=True)
    container_image = Unicode("", help="The container image (see the site file's spawner.slurm.container).").tag(
        config=True
    )
    container_options = List(Unicode(), help="Extra arguments for the container runtime.").tag(config=True)
    batchspawner_singleuser_cmd = Unicode(
        "campushub-singleuser",
        help="Starts the server in the job on a free port and reports the port once the server listens "
        "(campushub-lab's; batchspawner-singleuser works too, reporting before the server listens).",
    ).tag(config=True)
    command_timeout = Float(60, help="Seconds one Slurm command may take.").tag(config=True)
    cancel_attempts = Integer(5, help="How often stop tries scancel while Slurm still lists the job.").tag(config=True)
    log_tail_lines = Integer(20, help="How many lines of the job's log a failed spawn shows.").tag(config=True)
    profiles = List(help="Resource profiles (campushub.profiles.Profile) from the site file.").tag(config=True)
    progress_interval = Float(3.0, help="Seconds between queue checks shown on the spawn page.").tag(config=True)

    request = Any(None, help="The validated SpawnRequest of the current spawn.")
    last_stop = Dict(help="How the last job ended: job_id, state, reason. Kept in the hub database.")

    # --- profiles and the spawn request -----------------------------------------------------

    @property
    def slurm_defaults(self) -> SlurmDefaults:
        return SlurmDefaults(partition=self.partition, cpus=self.cpus, memory=self.memory, walltime=self.walltime)

    def all_profiles(self) -> list[Profile]:
        return list(self.profiles) or [
            Profile(slug="default", display_name="Default", default=True, everyone=True)
        ]

    def granted_profiles(self) -> list[Profile]:
        groups = {g.name: dict(g.properties or {}) for g in self.user.groups}
        return granted_profiles(self.all_profiles(), admin=bool(self.user.admin), groups=groups)

    def resolve(self, options) -> SpawnRequest:
        """user_options -> SpawnRequest; a refusal is a 400 whose message names the field."""
        try:
            return resolve_request(
                options, profiles=self.all_profiles(), granted=self.granted_profiles(), defaults=self.slurm_defaults
            )
        except ProfileError as e:
            raise web.HTTPError(400, "%s", str(e)) from None

    @property
    def job_request(self) -> SpawnRequest:
        """This spawn's request; without user_options, the default profile's."""
        return self.request or self.resolve({})

    @default("apply_user_options")
    def _apply_profile(self):
        def apply(spawner, user_options):
            spawner.request = spawner.resolve(user_options)

        return apply

    def last_stop_notice(self) -> str:
        if not self.last_stop:
            return ""
        return f"Your last server (Slurm job {self.last_stop['job_id']}) stopped: {self.last_stop['reason']}."

    async def get_options_form(self) -> str:
        granted = self.granted_profiles()
        notice = self.last_stop_notice()
        only = granted[0] if len(granted) == 1 else None
        if only and not (only.choices.gpus or only.choices.hours) and not notice:
            return ""  # nothing to choose: start right away
        return options_form(granted, self.slurm_defaults, notice)

    def options_from_form(self, formdata):
        options = options_from_form(formdata)
        self.resolve(options)  # a bad form comes back with the message, before any spawn
        return options

    # --- state ------------------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.last_stop = state.get("last_stop", {})

    def get_state(self):
        state = super().get_state()
        if self.last_stop:
            state["last_stop"] = self.last_stop
        return state

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
        except (TimeoutError, asyncio.CancelledError):
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
        request = self.job_request
        args = [
            "sbatch", "--parsable",
            f"--job-name=jupyter-{self.user.name}",
            f"--partition={request.partition}",
            f"--cpus-per-task={request.cpus}",
            f"--mem={request.memory}",
            f"--time={request.walltime}",
            f"--chdir={account.pw_dir}",
            f"--output={os.path.join(self.log_dir, 'jupyter-%j.log')}",
            "--export=ALL",
        ]  # fmt: skip
        if request.gres:
            args.append(f"--gres={request.gres}")
        if self.account:
            args.append(f"--account={self.account}")
        if self.qos:
            args.append(f"--qos={self.qos}")
        return args

    def render_batch_script(self) -> str:
        request = self.job_request
        lines = [
            "#!/bin/bash",
            "set -eu",
            'echo "CampusHub server job $SLURM_JOB_ID on $(hostname), GPUs: ${CUDA_VISIBLE_DEVICES:-none}"',
            f"export CAMPUSHUB_PROFILE={shlex.quote(request.profile)}",
            # when the time limit ends the job, for the Lab's countdown
            'export CAMPUSHUB_JOB_END="$(date -d "$(squeue -h -j "$SLURM_JOB_ID" -o %e)" --iso-8601=seconds'
            ' 2>/dev/null || true)"',
        ]
        if self.prologue:
            lines.append(self.prologue)
        if self.python_env:
            lines.append(f"export PATH={shlex.quote(os.path.join(self.python_env, 'bin'))}:\"$PATH\"")
        container = container_command(
            self.container_runtime, self.container_image, list(self.container_options),
            self.unix_account().pw_dir, request.gpus,
        )  # fmt: skip
        words = [*container, self.batchspawner_singleuser_cmd, *self.cmd, *self.get_args()]
        lines.append("exec " + shlex.join(words))
        return "\n".join(lines) + "\n"

    async def submit_batch_script(self) -> str:
        env = self.get_env()
        if not os.path.isdir(self.log_dir):  # a returning user's folder is there: spare the sudo
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
            rc, out, err = await self.run_as_user("squeue", "-h", "-j", self.job_id, "--states=all", "-o", SQUEUE_FORMAT)
        except (TimeoutError, OSError) as e:
            rc, out, err = -1, "", str(e) or type(e).__name__
        status, text = classify_squeue(rc, out, err)
        if status == JobStatus.UNKNOWN and rc != 0:
            # keep the last known state line (and host): a failed query says nothing about the job
            self.log.warning("Could not query job %s of %s, keeping it: %s", self.job_id, self.user.name, text)
        else:
            self.job_status = text
        return status

    def state_gethost(self) -> str:
        return squeue_fields(self.job_status)[1]

    async def poll(self):
        status = await self.query_job_status()
        if status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
            return None
        if self.job_status.startswith("COMPLETING"):
            return None  # ending: its final state (TIMEOUT, CANCELLED ...) comes at the next poll
        if self.job_id:
            state = squeue_fields(self.job_status)[0] or "GONE"
            reason = END_REASONS.get(state, "Slurm no longer knows the job")
            self.last_stop = {"job_id": self.job_id, "state": state, "reason": reason}
            self.log.info("Server job %s of %s ended: %s (%s)", self.job_id, self.user.name, reason, state)
        self.clear_state()
        return 1

    async def cancel_batch_job(self) -> None:
        # The hub forgets the server once stop() returns, whatever happened: a cancel that failed for a
        # passing reason (slurmctld busy, munge restarting) is tried again while Slurm still lists the job.
        job_id = self.job_id
        if not job_id:
            return
        self.log.info("Cancelling job %s of %s", job_id, self.user.name)
        for attempt in range(1, self.cancel_attempts + 1):
            try:
                rc, _, err = await self.run_as_user("scancel", job_id)
            except (TimeoutError, OSError) as e:
                rc, err = -1, str(e) or type(e).__name__
            if rc == 0:
                return
            self.log.warning(
                "scancel %s failed (attempt %d of %d): %s", job_id, attempt, self.cancel_attempts, err.strip()
            )
            if await self.query_job_status() not in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
                return  # it has ended already
            await asyncio.sleep(2)
        self.log.error("Could not cancel job %s of %s: it may run until its time limit", job_id, self.user.name)

    async def job_log_tail(self, job_id: str) -> str:
        path = self.job_log_path(job_id)
        try:
            rc, out, err = await self.run_as_user("tail", "-n", str(self.log_tail_lines), path)
        except (TimeoutError, OSError) as e:
            return f"(could not read {path}: {e})"
        return out.rstrip() if rc == 0 else f"(could not read {path}: {err.strip()})"

    async def job_ended_error(self, job_id: str, when: str) -> SpawnError:
        state = squeue_fields(self.job_status)[0] or "ENDED"
        tail = await self.job_log_tail(job_id)
        return SpawnError(
            f"Slurm job {job_id} ended ({state}) {when}. "
            f"Last lines of its log {self.job_log_path(job_id)}:\n{tail}"
        )

    # --- the spawn ------------------------------------------------------------------------

    def record_port(self, port: int) -> None:
        """The port report's port; wakes start()."""
        self.port = port
        event = getattr(self, "_port_reported", None)
        if event is not None:
            event.set()

    async def start(self):
        self.unix_account()
        # a fresh address for every job: the last job's host is no place to bind on another node
        self.ip = self.traits()["ip"].default_value
        self.port = 0
        if self.server:
            self.server.port = 0
        self._port_reported = asyncio.Event()
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
        # The port report (PortReportHandler) wakes us. Meanwhile, check that the job still runs: after 3
        # poll intervals, then twice as long each time, up to 10. Each check costs the hub a sudo and an
        # squeue, times every starting user, and a job that fails mostly fails right at its start.
        wait = 3 * self.startup_poll_interval
        while not self.port:
            try:
                await asyncio.wait_for(self._port_reported.wait(), wait)
            except TimeoutError:
                if await self.query_job_status() == JobStatus.NOTFOUND:
                    error = await self.job_ended_error(job_id, "before its server started")
                    self.clear_state()
                    raise error from None
                wait = min(2 * wait, 10 * self.startup_poll_interval)
        self.log.info("Server job %s of %s runs at %s:%s", job_id, self.user.name, self.ip, self.port)
        self.last_stop = {}
        return self.ip, self.port

    async def progress(self):
        """Where the job is, in words, refreshed every progress_interval seconds while it waits.

        It reads the job's line that start() keeps fresh (every poll interval): no query of its own."""
        last = None
        while True:
            state, host, start, reason = squeue_fields(self.job_status)
            if not self.job_id:
                message = "Submitting your server's job to Slurm"
            elif state in PENDING_STATES:
                message = f"Job {self.job_id}: " + pending_message(reason, start, self.request)
            elif state in RUNNING_STATES:
                yield {"message": f"Job {self.job_id} is running on {host}: starting JupyterLab"}
                return
            elif state:
                return  # ended: start() reports why
            else:
                message = f"Job {self.job_id} submitted; asking Slurm where it is"
            if message != last:
                yield {"message": message}
                last = message
            await asyncio.sleep(self.progress_interval)


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
        spawner.record_port(port)
        self.set_status(201)
        self.finish({"message": f"port {port} recorded"})


apihandlers.default_handlers[:] = [
    h for h in apihandlers.default_handlers if h[0] != PORT_REPORT_PATH
] + [(PORT_REPORT_PATH, PortReportHandler)]
