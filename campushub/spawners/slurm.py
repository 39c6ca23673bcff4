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
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import batchspawner
from batchspawner import JobStatus
from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from markupsafe import Markup
from tornado import web
from traitlets import Any, Dict, Float, Instance, Integer, List, Unicode, default

from .. import metrics
from ..auth import account_problem
from ..gpus import GPUS, Inventory
from ..profiles import (
    GpuCounts,
    Profile,
    ProfileError,
    SpawnRequest,
    duration_words,
    gpu_words,
    granted_profiles,
    group_slurm_account,
    options_form,
    options_from_form,
    resolve_request,
    site_profiles,
    walltime_seconds,
)
from ..site import ContainerSettings, SlurmSettings, UsersSettings
from ..slurmenv import command_env
from .metered import MeteredSpawner

PORT_REPORT_PATH = r"/api/batchspawner"

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING"}
ENDED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}  # fmt: skip


class SpawnError(web.HTTPError):
    """A spawn that cannot go on; the message is for the user (spawn page and REST API show it).
    `details` (Slurm's own words, a log's tail) follow it, and fold away on the pages."""

    def __init__(self, message: str, details: str = "", details_title: str = "Details"):
        super().__init__(500, "%s", message)
        self.words, self.details = message, details
        self.jupyterhub_message = f"{message}\n{details_title}:\n{details}" if details else message
        self.jupyterhub_html_message = Markup("<p>{}</p>").format(message) + (
            Markup("<details><summary>{}</summary><pre>{}</pre></details>").format(details_title, details)
            if details
            else Markup("")
        )

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


def pending_message(
    reason: str,
    start: str,
    request: SpawnRequest | None,
    cluster: GpuCounts | None = None,
    timezone: str = "",
    now: datetime | None = None,
) -> str:
    """Slurm's pending reason (squeue %r) and expected start (%S), in plain words that stay true for the
    whole wait: `cluster` tells how many of the GPUs asked for are in use; the start is shown in the
    site's `timezone` (default: the hub host's), with its date when it is not today."""
    gpus, kind = (request.gpus, request.gpu_type) if request else (0, None)
    if reason == "Resources":
        total = cluster.total(kind) if cluster is not None and gpus else 0
        free = cluster.free(kind) if total else 0
        if total and not free:
            text = (
                f"all {gpu_words(total, kind)} are in use by other jobs; "
                f"yours starts when {gpus} {'is' if gpus == 1 else 'are'} free"
            )
        elif total and free < gpus:
            verb = "is" if free == 1 else "are"
            text = f"only {free} of {gpu_words(total, kind)} {verb} free, and your server needs {gpus}"
        elif gpus and not total:
            text = f"the {gpu_words(gpus, kind)} you asked for {'is' if gpus == 1 else 'are'} in use by other jobs"
        else:
            text = "the CPUs and memory you asked for are in use by other jobs"
    elif reason == "Priority":
        text = "it waits behind jobs of higher priority"
    elif "GRES" in reason and (reason.startswith("QOS") or reason.startswith("Assoc")):
        text = f"the GPU limit of your account or group is reached ({reason})"
    elif reason.startswith("QOS") or reason.startswith("Assoc"):
        text = f"a limit of your account or group is reached ({reason})"
    elif reason in ("ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "NodeDown", "PartitionNodeLimit"):
        text = f"the partition's nodes are not available ({reason})"
    elif reason == "BeginTime":
        text = "it waits for its start time"
    elif reason in ("None", ""):
        text = "Slurm is scheduling it"
    else:
        text = f"Slurm: {reason}"
    when = start_time(start, timezone)
    if when is None:
        return text
    now = now.astimezone(when.tzinfo) if now else datetime.now(when.tzinfo)
    day = (
        ""
        if when.date() == now.date()
        else f"{when:%a %-d %b}" + (f" {when.year}" if when.year != now.year else "") + " "
    )
    return (
        f"{text}; estimated start {day}{when:%H:%M} {when.tzname()} "
        f"(in about {duration_words((when - now).total_seconds())})"
    )


def start_time(start: str, timezone: str = "") -> datetime | None:
    """squeue's %S (the controller's local time, no zone) in the site's time zone; None if Slurm has none."""
    try:
        when = datetime.fromisoformat(start)
    except ValueError:
        return None
    return when.astimezone(ZoneInfo(timezone) if timezone else None)


def refusal_message(slurm_text: str, request: SpawnRequest, cluster: GpuCounts | None) -> str:
    """Why sbatch refused a server job, in plain words with the next step; '' when not one a user causes."""
    text = slurm_text.lower()
    if "memory" in text and ("not available" in text or "exceed" in text or "specification" in text):
        return f"No node has {request.memory} of memory for one server. Choose a profile with less memory."
    if "node configuration is not available" in text or "invalid generic resource" in text:
        if request.gpus and cluster is not None:
            most = cluster.most_per_node(request.gpu_type)
            if request.gpus > most:
                return (
                    f"No node has {gpu_words(request.gpus, request.gpu_type)}: "
                    f"the largest node has {gpu_words(most, request.gpu_type)}. "
                    f"Ask for at most {most}."
                )
        return (
            f"No node of the partition {request.partition} has what you asked for ({request.cpus} CPU, "
            f"{request.memory} memory"
            + (f", {gpu_words(request.gpus, request.gpu_type)}" if request.gpus else "")
            + "). Ask for less, or choose another profile."
        )
    if "qos" in text or "accounting" in text or "association" in text or "account" in text:
        return (
            "A limit of your Slurm account or its QOS does not allow this job (too many GPUs, jobs or hours "
            "at once, or the account may not use this partition). Stop another server or ask for less; "
            "your administrators can tell you your limits."
        )
    if "time limit" in text:
        asked = duration_words(walltime_seconds(request.walltime))
        return f"The time limit you asked for ({asked}) is longer than the partition allows. Ask for fewer hours."
    return ""


def container_command(container: ContainerSettings, account: pwd.struct_passwd, gpus: int) -> list[str]:
    """The words that run the server's command in a container (none: no words), as the user's account."""
    home = account.pw_dir
    runtime, image, options = container.runtime, container.image or "", list(container.options)
    if runtime == "none":
        return []
    if runtime == "apptainer":
        # Apptainer passes the job's environment (JUPYTERHUB_*, CUDA_VISIBLE_DEVICES) by default.
        return ["apptainer", "exec", *(["--nv"] if gpus else []), "--bind", home, "--pwd", home, *options, image]
    if runtime == "podman":
        gpu = ["--device", "nvidia.com/gpu=all", "--env", "CUDA_VISIBLE_DEVICES"] if gpus else []
        return [
            # keep-id maps the user's uid to itself; --user makes it the server's, not the image's USER
            "podman", "run", "--rm", "--network=host", "--userns=keep-id",
            f"--user={account.pw_uid}:{account.pw_gid}",
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


def unix_account(name: str, min_uid: int, max_uid: int) -> pwd.struct_passwd:
    """The user's unix account, if it may get a server; else a SpawnError saying why."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise SpawnError(f"There is no unix account named {name!r} on the hub host.") from None
    problem = account_problem(account, min_uid, max_uid)
    if problem:
        raise SpawnError(f"{problem}: it gets no server.")
    return account


# batchspawner's settings that CampusHub's Slurm spawner replaces, and what to set instead.
RETIRED_SETTINGS = {
    **dict.fromkeys(("req_partition", "req_queue"), "spawner.slurm.partition"),
    "req_nprocs": "spawner.slurm.cpus",
    "req_memory": "spawner.slurm.memory",
    "req_runtime": "spawner.slurm.walltime",
    "req_account": "spawner.slurm.account",
    "req_qos": "spawner.slurm.qos",
    **dict.fromkeys(("req_ngpus", "req_gres"), "profiles[].resources.gpus (and gpu_type)"),
    **dict.fromkeys(("req_prologue", "req_epilogue", "batch_script"), "spawner.slurm.prologue"),
    **dict.fromkeys(
        ("req_options", "req_cluster", "req_reservation", "req_host"), "a profile, or Slurm's own defaults"
    ),
    "req_srun": "spawner.slurm.container.runtime: pyxis",
    "req_keepvars_extra": "spawner.environment in a JupyterHub config (hub.extra_config)",
    **dict.fromkeys(
        ("exec_prefix", "batch_submit_cmd", "batch_query_cmd", "batch_cancel_cmd"), "spawner.slurm.submit_prefix"
    ),
    **dict.fromkeys(
        ("state_pending_re", "state_running_re", "state_exechost_re", "state_unknown_re", "state_exechost_exp"),
        "nothing: CampusHub reads squeue's job states itself",
    ),
    "startup_poll_interval": "spawner.slurm.startup_check_interval",
}


def retired_settings(config, cls=None) -> list[tuple[str, str]]:
    """(key, what to set instead) for each retired batchspawner setting in a JupyterHub config."""
    sections = dict.fromkeys(c.__name__ for c in (cls or SlurmSpawner).mro() if hasattr(c, "class_trait_names"))
    return [
        (key, RETIRED_SETTINGS[key])
        for section in sections
        if section in config
        for key in config[section]
        if key in RETIRED_SETTINGS
    ]


class PortReportError(ValueError):
    """A port report that is refused; the message says why."""


def parse_port_report(body: bytes) -> int:
    """The port from a port report: exactly {"port": <integer 1-65535>}, nothing else."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise PortReportError('the body must be JSON: {"port": <integer>}') from None
    if not isinstance(data, dict):
        raise PortReportError('the body must be a JSON object: {"port": <integer>}')
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


class SlurmSpawner(MeteredSpawner, batchspawner.SlurmSpawner):
    """A user's server as a Slurm job, submitted as the user's unix account."""

    slurm = Instance(
        SlurmSettings, allow_none=True, help="The site file's spawner.slurm: partition, resources, prologue ..."
    ).tag(config=True)
    users = Instance(UsersSettings, (), help="The site file's users: which accounts may get a server.").tag(config=True)
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
    timezone = Unicode(
        "", help="Time zone of the times shown to the user, an IANA name (the site's branding.timezone); '': the hub's."
    ).tag(config=True)

    request = Any(None, help="The validated SpawnRequest of the current spawn.")
    last_stop = Dict(help="How the last job ended: job_id, state, reason. Kept in the hub database.")
    accepted_options = Dict(help="The user_options of the last spawn that was accepted. Kept in the hub database.")
    fallback_notice = Unicode("", help="Why this spawn uses the default profile instead of the saved options.")
    problem = Dict(
        help="What the user chose and why it failed (options, message, details): the next spawn form shows it, once. "
        "Kept in the hub database: the hub replaces a spawner whose start failed."
    )

    # --- profiles and the spawn request -----------------------------------------------------

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for key, instead in retired_settings(self.config, type(self)):
            self.log.warning("SlurmSpawner.%s does nothing in CampusHub: set %s instead", key, instead)
        if self.slurm is None:
            raise ValueError("SlurmSpawner needs its settings: spawner.slurm in the site file")

    def all_profiles(self) -> list[Profile]:
        return site_profiles(self.profiles)

    def granted_profiles(self) -> list[Profile]:
        groups = {g.name: dict(g.properties or {}) for g in self.user.groups}
        return granted_profiles(self.all_profiles(), admin=bool(self.user.admin), groups=groups)

    def resolve(self, options) -> SpawnRequest:
        """user_options -> SpawnRequest; a refusal is a 400 whose message names the field."""
        try:
            return resolve_request(
                options, profiles=self.all_profiles(), granted=self.granted_profiles(), defaults=self.slurm
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
            spawner.request = spawner.accept(user_options)

        return apply

    def accept(self, options) -> SpawnRequest:
        """This spawn's request. JupyterHub has saved sent options as the server's defaults already: a refused
        request puts the last accepted ones back. Saved options replayed by a start that sent none and refused
        now (a grant withdrawn, a profile changed) fall back to the default profile, with a notice."""
        self.fallback_notice = ""
        try:
            request = self.resolve(options)
        except web.HTTPError as e:
            if self.options_sent() or not options or not self.granted_profiles():
                self.save_options(self.accepted_options)
                raise
            request = self.resolve({})
            self.fallback_notice = (
                f"Your saved choice cannot be used any more ({e.log_message % e.args}): "
                f"starting with the default profile, {request.profile!r}."
            )
            self.log.info(
                "Saved options of %s refused, using the default profile: %s", self._log_name, e.log_message % e.args
            )
            options = {}
            self.save_options(options)
        self.accepted_options = dict(options or {})
        return request

    def options_sent(self) -> bool:
        """Whether the request that started this spawn carried user_options; if not, JupyterHub replays
        the saved ones."""
        handler = self.handler
        if handler is None:
            return False
        if hasattr(handler, "get_server_json_body"):  # the REST API
            try:
                return handler.get_server_json_body()["user_options"] is not None
            except web.HTTPError:
                return True
        # the spawn page: its form (POST) or options in the query
        return handler.request.method == "POST" or bool(set(handler.request.query_arguments) - {"next", "display_name"})

    def save_options(self, options: dict) -> None:
        self.user_options = dict(options)
        if self.orm_spawner is not None:
            self.orm_spawner.user_options = dict(options)
            self.db.commit()

    def notices(self, granted: list[Profile]) -> str:
        found = []
        if self.last_stop:
            found.append(
                f"Your last server (Slurm job {self.last_stop['job_id']}) stopped: {self.last_stop['reason']}."
            )
        saved = (self.orm_spawner.user_options if self.orm_spawner is not None else None) or {}
        if saved.get("profile") and saved["profile"] not in {p.slug for p in granted}:
            found.append(
                f"The profile you used last, {saved['profile']!r}, is no longer granted to you: choose another one."
            )
        return " ".join(found)

    async def get_options_form(self) -> str:
        granted = self.granted_profiles()
        notice = self.notices(granted)
        problem = self.problem
        if problem:
            self.problem = {}
            self.save_state()
        only = granted[0] if len(granted) == 1 else None
        if only and not (only.choices.gpus or only.choices.hours) and not notice and not problem:
            return ""  # nothing to choose: start right away
        partitions = {p.resources.partition or self.slurm.partition for p in granted}
        clusters = {name: found for name in partitions if (found := await self.cluster(name)) is not None}
        saved = (self.orm_spawner.user_options if self.orm_spawner is not None else None) or {}
        # the hub's Jinja environment: a site's JupyterHub.template_paths may hold its own form
        hub_templates = (getattr(self.user, "settings", None) or {}).get("jinja2_env_sync")
        return options_form(
            granted,
            self.slurm,
            notice,
            hub_templates,
            clusters=clusters,
            last=problem.get("options", saved),
            problem=problem.get("message", ""),
            problem_details=problem.get("details", ""),
        )

    def options_from_form(self, formdata):
        options = options_from_form(formdata)
        try:
            self.resolve(options)  # a bad form comes back with the message, before any spawn
        except web.HTTPError as e:
            self.problem = {"options": options, "message": e.log_message % e.args}
            raise
        return options

    async def cluster(self, partition: str, max_age: float | None = None) -> Inventory | None:
        """The partition's GPUs, as Slurm reports them (read at most every 30 s, or `max_age`); None if Slurm
        cannot tell."""
        return await GPUS.read(partition, self.run_as_hub, max_age)

    async def run_as_hub(self, argv) -> tuple[int, str, str]:
        """Run a Slurm query as the hub itself, without a shell, with only what Slurm's commands need."""
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=command_env(),
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.command_timeout)
        except (TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    # --- what the pages show -----------------------------------------------------------------

    def queued(self) -> bool:
        """Whether Slurm holds this server's job in its queue (the spawn page says so)."""
        return bool(self.job_id) and squeue_fields(self.job_status)[0] in PENDING_STATES

    def server_facts(self) -> dict:
        """The running server, for the home page: profile, GPUs, node, job id and time left ({} if none)."""
        state, host, start, _ = squeue_fields(self.job_status)
        if not self.job_id or state not in RUNNING_STATES:
            return {}
        request = self.running_request()
        known = {p.slug: p for p in self.all_profiles()}
        facts = {"job_id": self.job_id, "node": host, "profile": "", "gpus": "none", "time_left": ""}
        if request is not None:
            profile = known.get(request.profile)
            facts["profile"] = profile.display_name if profile else request.profile
            facts["gpus"] = gpu_words(request.gpus, request.gpu_type) if request.gpus else "none"
            began = start_time(start, self.timezone)
            if began is not None:
                left = walltime_seconds(request.walltime) - (datetime.now(began.tzinfo) - began).total_seconds()
                facts["time_left"] = duration_words(max(0, left))
        return facts

    # --- state ------------------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.last_stop = state.get("last_stop", {})
        self.accepted_options = state.get("accepted_options", {})
        self.problem = state.get("problem", {})

    def save_state(self) -> None:
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    def get_state(self):
        state = super().get_state()
        if self.last_stop:
            state["last_stop"] = self.last_stop
        if self.accepted_options:
            state["accepted_options"] = self.accepted_options
        if self.problem:
            state["problem"] = self.problem
        return state

    # --- the unix account ---------------------------------------------------------------

    def unix_account(self) -> pwd.struct_passwd:
        return unix_account(self.user.name, self.users.min_uid, self.users.max_uid)

    def user_env(self, env):
        account = self.unix_account()
        env.update(USER=account.pw_name, HOME=account.pw_dir, SHELL=account.pw_shell or "/bin/bash")
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return env

    # --- Slurm commands -------------------------------------------------------------------

    async def run_as_user(self, *argv: str, input: str | None = None, env=None) -> tuple[int, str, str]:
        """Run a command as the user, without a shell: (returncode, stdout, stderr).

        Its environment is `env` or, by default, only what Slurm's commands need (`command_env`): never
        the hub's own, which holds its secrets and which a user could read from /proc.
        """
        prefix = [w.replace("{username}", self.user.name) for w in self.slurm.submit_prefix]
        proc = await asyncio.create_subprocess_exec(
            *prefix, *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=command_env() if env is None else env,
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
        account = self.slurm_account()
        if account:
            args.append(f"--account={account}")
        if self.slurm.qos:
            args.append(f"--qos={self.slurm.qos}")
        return args

    def slurm_account(self) -> str | None:
        """The account the job is charged to: the one the user's hub groups name (campushub_slurm_account,
        a course's students group; in several, the group whose name sorts first), else spawner.slurm.account."""
        groups = {g.name: dict(g.properties or {}) for g in self.user.groups}
        account, problems = group_slurm_account(groups)
        for problem in problems:
            self.log.warning("Slurm account of %s: %s", self.user.name, problem)
        return account or self.slurm.account

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
        if self.slurm.prologue:
            lines.append(self.slurm.prologue)
        if self.slurm.python_env:
            lines.append(f'export PATH={shlex.quote(os.path.join(self.slurm.python_env, "bin"))}:"$PATH"')
        container = container_command(self.slurm.container, self.unix_account(), request.gpus)
        words = [*container, self.batchspawner_singleuser_cmd, *self.cmd, *self.get_args()]
        lines.append("exec " + shlex.join(words))
        return "\n".join(lines) + "\n"

    async def submit_batch_script(self) -> str:
        if not os.path.isdir(self.log_dir):  # a returning user's folder is there: spare the sudo
            rc, _, err = await self.run_as_user("mkdir", "-p", "-m", "0700", self.log_dir)
            if rc != 0:
                raise SpawnError(f"Could not create the job log folder {self.log_dir}: {err.strip()}")
        args = self.sbatch_args()
        self.log.info("Submitting server job for %s: %s", self.user.name, shlex.join(args))
        # the job's environment: JupyterHub's for this server (its own token, no hub secret), exported by sbatch
        rc, out, err = await self.run_as_user(*args, input=self.render_batch_script(), env=self.get_env())
        if rc != 0:
            said = err.strip() or out.strip()
            request = self.job_request
            words = refusal_message(said, request, await self.cluster(request.partition))
            raise SpawnError(
                f"Slurm refused the server job. {words}" if words else "Slurm refused the server job.",
                details=said,
                details_title="What Slurm said",
            )
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
            rc, out, err = await self.run_as_user(
                "squeue", "-h", "-j", self.job_id, "--states=all", "-o", SQUEUE_FORMAT
            )
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
            f"Slurm job {job_id} ended ({state}) {when}.",
            details=tail,
            details_title=f"Last lines of its log {self.job_log_path(job_id)}",
        )

    # --- the spawn ------------------------------------------------------------------------

    def record_port(self, port: int) -> None:
        """The port report's port; wakes start()."""
        self.port = port
        event = getattr(self, "_port_reported", None)
        if event is not None:
            event.set()

    async def start(self):
        with self.metered_spawn():
            try:
                started = await self.start_job()
            except SpawnError as e:
                # the next spawn form shows it next to the choice that failed
                self.problem = {"options": dict(self.user_options or {}), "message": e.words, "details": e.details}
                raise
        # the server listens (campushub-singleuser reports its port then): ready for the hub's check
        self.problem = {}  # an earlier failure, never shown, is past
        return started

    async def start_job(self):
        self.unix_account()
        # a fresh address for every job: the last job's host is no place to bind on another node
        self.ip = self.traits()["ip"].default_value
        self.port = 0
        if self.server:
            self.server.port = 0
        self._port_reported = asyncio.Event()
        job_id = await self.submit_batch_script()
        submitted = time.monotonic()
        while True:
            status = await self.query_job_status()
            if status == JobStatus.RUNNING:
                metrics.observe_queue_wait(self.job_request.partition, time.monotonic() - submitted)
                break
            if status == JobStatus.NOTFOUND:
                error = await self.job_ended_error(job_id, "before its server started")
                self.clear_state()
                raise error
            await asyncio.sleep(self.slurm.startup_check_interval)
        self.ip = self.state_gethost()
        # The port report (PortReportHandler) wakes us. Meanwhile, check that the job still runs: after 3
        # poll intervals, then twice as long each time, up to 10. Each check costs the hub a sudo and an
        # squeue, times every starting user, and a job that fails mostly fails right at its start.
        wait = 3 * self.slurm.startup_check_interval
        while not self.port:
            try:
                await asyncio.wait_for(self._port_reported.wait(), wait)
            except TimeoutError:
                if await self.query_job_status() == JobStatus.NOTFOUND:
                    error = await self.job_ended_error(job_id, "before its server started")
                    self.clear_state()
                    raise error from None
                wait = min(2 * wait, 10 * self.slurm.startup_check_interval)
        self.log.info("Server job %s of %s runs at %s:%s", job_id, self.user.name, self.ip, self.port)
        self.last_stop = {}
        return self.ip, self.port

    async def progress(self):
        """Where the job is, in words, refreshed every progress_interval seconds while it waits.

        It reads the job's line that start() keeps fresh (every poll interval), and, while the job waits for
        GPUs, the partition's GPUs (read at most every 30 s for all users). Each event says whether Slurm holds
        the job in its queue (`queued`): the spawn page then says so, and its button cancels the request."""
        last = None
        if self.fallback_notice:
            yield {"message": self.fallback_notice}
        while True:
            state, host, start, reason = squeue_fields(self.job_status)
            queued = state in PENDING_STATES
            if not self.job_id:
                message = "Submitting your server's job to Slurm"
            elif queued:
                request = self.job_request
                cluster = await self.cluster(request.partition) if request.gpus and reason == "Resources" else None
                if cluster is not None and cluster.free(request.gpu_type) >= request.gpus:
                    # Slurm holds the job for resources, yet the last read had its GPUs free: that read may
                    # predate the jobs that took them, so ask Slurm again before telling the user why
                    cluster = await self.cluster(request.partition, max_age=1.0)
                message = f"Job {self.job_id} is queued: " + pending_message(
                    reason, start, request, cluster, self.timezone
                )
            elif state in RUNNING_STATES:
                yield {"message": f"Job {self.job_id} is running on {host}: starting JupyterLab", "queued": False}
                return
            elif state:
                return  # ended: start() reports why
            else:
                message = f"Job {self.job_id} submitted; asking Slurm where it is"
            if message != last:
                yield {"message": message, "queued": queued}
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


apihandlers.default_handlers[:] = [h for h in apihandlers.default_handlers if h[0] != PORT_REPORT_PATH] + [
    (PORT_REPORT_PATH, PortReportHandler)
]
