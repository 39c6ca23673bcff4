"""Docker backend: each user's server is a container, created through a Docker API (Docker's own socket,
or `podman system service`'s), built on DockerSpawner 14.

What a shared host needs, on top of DockerSpawner:

- The image comes from the site's allow-list (spawner.docker.images): a profile or the user's `image`
  option names one, anything else is a 400 naming it and no container is created.
- Memory and CPU limits come from the profile; GPUs are taken from the site's pool (spawner.docker.gpus),
  one server per device. The pool's use is read from the engine's containers themselves (their device
  lists), so a hub restart forgets nothing; a spawn allocates and creates its container under one lock.
  The container gets only its own devices, and NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES to match.
- Containers are unprivileged: every capability dropped, no-new-privileges, never the engine's socket, a
  non-root user (the image's own, which must not be root, or the user's uid with bind-mounted homes).
- The engine out of reach, an image missing, a container that exits before its server listens: the spawn
  fails at once with a message for the user (and the container's last log lines), not at start_timeout.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from dataclasses import dataclass
from typing import Any as AnyType

import docker
import dockerspawner
import requests
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Any, Dict, Float, Instance, Integer, List, Unicode, default

from ..profiles import (
    Profile,
    ProfileError,
    gpu_words,
    granted_profiles,
    options_form,
    options_from_form,
    resolve_request,
    site_profiles,
)
from ..site import DockerSettings, UsersSettings
from .metered import MeteredSpawner
from .slurm import SpawnError, unix_account

GPU_LABEL = "campushub.gpus"
LISTEN_CHECK_INTERVAL = 0.05  # seconds between tries of a starting server's port
USER_LABEL = "campushub.user"

# DockerSpawner's settings that the site file models, and what to set instead (hub.extra_config refuses them).
SITE_SETTINGS = {
    **dict.fromkeys(("image", "allowed_images"), "spawner.docker.images (and default_image)"),
    "mem_limit": "profiles[].resources.memory or spawner.docker.memory",
    "cpu_limit": "profiles[].resources.cpus or spawner.docker.cpus",
    **dict.fromkeys(("volumes", "read_only_volumes", "mounts"), "spawner.docker.homes"),
    "network_name": "spawner.docker.network",
    "pull_policy": "spawner.docker.pull_policy",
    **dict.fromkeys(("client_kwargs", "tls_config"), "spawner.docker.url"),
    **dict.fromkeys(
        ("extra_host_config", "extra_create_kwargs"),
        "spawner.docker (gpus, runtime, ulimits); the security settings are CampusHub's",
    ),
    "remove": "nothing: a stopped server's container is removed; homes persist (spawner.docker.homes)",
}

_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclass(frozen=True)
class ContainerRequest:
    """What one spawn asks the engine for: typed, validated, nothing else."""

    profile: str
    image: str
    cpus: float
    memory: str
    gpus: int


@dataclass(frozen=True)
class _Defaults:
    """What a profile leaves unset (resolve_request's SlurmDefaults; partition and walltime are unused)."""

    cpus: float
    memory: str
    partition: str = ""
    walltime: str = ""


def resolve_container_request(
    options: AnyType, *, settings: DockerSettings, profiles: list[Profile], granted: list[Profile]
) -> ContainerRequest:
    """user_options -> ContainerRequest, or ProfileError naming the field. `image` must be on the allow-list."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ProfileError('user_options must be an object like {"profile": "cpu"}')
    options = dict(options)
    image = options.pop("image", None)
    if image is not None and (not isinstance(image, str) or image not in settings.images):
        raise ProfileError(f"image: {repr(image)[:120]} is not one of the site's images: {', '.join(settings.images)}")
    try:
        request = resolve_request(
            options,
            profiles=profiles,
            granted=granted,
            defaults=_Defaults(cpus=settings.cpus, memory=settings.memory),
        )
    except ProfileError as e:
        if str(e).startswith("unknown option"):
            raise ProfileError(f"{e}, image") from None
        raise
    profile = next(p for p in profiles if p.slug == request.profile)
    return ContainerRequest(
        profile=request.profile,
        image=image or profile.resources.image or settings.image,
        cpus=float(request.cpus),
        memory=request.memory,
        gpus=request.gpus,
    )


def gpu_environment(devices: list[str]) -> dict[str, str]:
    """What tells CUDA (and NVIDIA's container runtime) which GPUs a container has: the host's indexes
    (the digits ending each device's name) for NVIDIA_VISIBLE_DEVICES; CUDA numbers what it sees from 0."""
    if not devices:
        return {"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": "", "CAMPUSHUB_GPUS": ""}
    indexes = [m.group(1) if (m := re.search(r"([0-9]+)$", d)) else d for d in devices]
    return {
        "NVIDIA_VISIBLE_DEVICES": ",".join(indexes),
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(devices))),
        "CAMPUSHUB_GPUS": ",".join(devices),
    }


def memory_bytes(memory: str) -> int:
    """A memory size such as 4G (K, M, G, T: powers of 1024; no suffix: bytes) in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(memory[:-1]) * units[memory[-1]] if memory[-1] in units else int(memory)


def free_gpus(pool: list[str], used: set[str]) -> list[str]:
    return [d for d in pool if d not in used]


def exposes_engine(source: str, url: str) -> bool:
    """Whether a mount source is the engine's socket (or a folder holding it)."""
    socket_path = url.removeprefix("unix://") if url.startswith("unix://") else ""
    names = ("docker.sock", "podman.sock")
    if source.endswith(names) or "/docker.sock" in source or "/podman.sock" in source:
        return True
    return bool(socket_path) and (socket_path == source or socket_path.startswith(source.rstrip("/") + "/"))


class DockerSpawner(MeteredSpawner, dockerspawner.DockerSpawner):
    """A user's server as a container on the host's Docker (or podman) engine."""

    settings = Instance(
        DockerSettings, allow_none=True, help="The site file's spawner.docker: the socket, images, GPUs, homes ..."
    ).tag(config=True)
    users = Instance(UsersSettings, (), help="The site file's users: which accounts may get a server.").tag(config=True)
    profiles = List(help="Resource profiles (campushub.profiles.Profile) from the site file.").tag(config=True)
    log_tail_lines = Integer(20, help="How many lines of the container's log a failed spawn shows.").tag(config=True)
    startup_check_interval = Float(
        0.5, help="Seconds between checks, while a server starts, that its container runs and listens."
    ).tag(config=True)

    request = Any(None, help="The validated ContainerRequest of the current spawn.")
    gpu_devices = List(help="The host devices of this server's GPUs. Kept in the hub database.")
    accepted_options = Dict(help="The user_options of the last spawn that was accepted. Kept in the hub database.")
    phase = Unicode("", help="What the spawn does now, in words for the spawn page.")

    _gpu_lock: asyncio.Lock | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.settings is None:
            raise ValueError("DockerSpawner needs its settings: spawner.docker in the site file")

    @default("client_kwargs")
    def _client_kwargs(self):
        return {"base_url": self.settings.url, "timeout": 60}

    @default("network_name")
    def _network(self):
        return self.settings.network

    @default("use_internal_ip")
    def _internal_ip(self):
        return self.settings.network not in ("bridge",)

    @default("pull_policy")
    def _pull_policy(self):
        return self.settings.pull_policy

    @default("remove")
    def _remove(self):
        return True

    @default("prefix")
    def _prefix(self):
        return "campushub"

    # --- profiles and the spawn request -----------------------------------------------------

    def all_profiles(self) -> list[Profile]:
        return site_profiles(self.profiles)

    def granted_profiles(self) -> list[Profile]:
        groups = {g.name: dict(g.properties or {}) for g in self.user.groups}
        return granted_profiles(self.all_profiles(), admin=bool(self.user.admin), groups=groups)

    def resolve(self, options) -> ContainerRequest:
        """user_options -> ContainerRequest; a refusal is a 400 whose message names the field."""
        try:
            return resolve_container_request(
                options, settings=self.settings, profiles=self.all_profiles(), granted=self.granted_profiles()
            )
        except ProfileError as e:
            raise web.HTTPError(400, "%s", str(e)) from None

    @default("apply_user_options")
    def _apply_profile(self):
        def apply(spawner, user_options):
            spawner.request = spawner.accept(user_options)

        return apply

    def accept(self, options) -> ContainerRequest:
        """This spawn's request. JupyterHub has saved the sent options as the server's already: a refused request
        puts the last accepted ones back, so that nothing of it is remembered."""
        try:
            request = self.resolve(options)
        except web.HTTPError:
            self.user_options = dict(self.accepted_options)
            if self.orm_spawner is not None:
                self.orm_spawner.user_options = dict(self.accepted_options)
                self.db.commit()
            raise
        self.accepted_options = dict(options or {})
        return request

    async def check_allowed(self, image):
        # DockerSpawner's own check of user_options["image"]: resolve_container_request checked it already
        if image not in self.settings.images:
            raise web.HTTPError(400, "%s", f"image: {image!r} is not one of the site's images")
        return image

    def options_from_form(self, formdata):
        options = options_from_form(formdata)
        self.resolve(options)  # a bad form comes back with the message, before any spawn
        return options

    @default("options_form")
    def _no_form(self):
        return ""  # get_options_form makes the form (DockerSpawner's own would list the images)

    def defaults(self) -> _Defaults:
        return _Defaults(cpus=self.settings.cpus, memory=self.settings.memory)

    async def get_options_form(self) -> str:
        """The profiles granted to the user (campushub-spawn-form.html); none when there is nothing to choose."""
        granted = self.granted_profiles()
        if len(granted) == 1 and not granted[0].choices.gpus:
            return ""
        saved = (self.orm_spawner.user_options if self.orm_spawner is not None else None) or {}
        # the hub's Jinja environment: a site's JupyterHub.template_paths may hold its own form
        hub_templates = (getattr(self.user, "settings", None) or {}).get("jinja2_env_sync")
        return options_form(granted, self.defaults(), "", hub_templates, last=saved)

    # --- state ------------------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.gpu_devices = list(state.get("gpu_devices", []))
        self.accepted_options = dict(state.get("accepted_options", {}))

    def get_state(self):
        state = super().get_state()
        if self.gpu_devices:
            state["gpu_devices"] = list(self.gpu_devices)
        if self.accepted_options:
            state["accepted_options"] = self.accepted_options
        return state

    def clear_state(self):
        super().clear_state()
        self.gpu_devices = []

    # --- the container ----------------------------------------------------------------------

    def get_env(self):
        env = super().get_env()
        env.update(gpu_environment(list(self.gpu_devices)))
        if self.request is not None:
            env["CAMPUSHUB_PROFILE"] = self.request.profile
        if self.settings.homes == "bind":
            account = unix_account(self.user.name, self.users.min_uid, self.users.max_uid)
            env.update(USER=account.pw_name, HOME=account.pw_dir)
        else:
            env["HOME"] = self.settings.home_path
        return env

    def volume_name(self) -> str:
        name = self.user.name
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.]*", name):
            name = self.escaped_name  # '-' and anything else escaped: names stay apart
        return self.settings.home_volume.replace("{username}", name)

    async def gpus_in_use(self) -> set[str]:
        """The GPU devices of the engine's containers that have not ended (any hub's, this one's before a restart)."""
        used: set[str] = set()
        for found in await self.docker("containers", all=True, filters={"label": GPU_LABEL}):
            if found.get("State") in ("exited", "dead"):
                continue
            try:
                info = await self.docker("inspect_container", found["Id"])
            except docker.errors.NotFound:
                continue
            devices = (info.get("HostConfig") or {}).get("Devices") or []
            used |= {d.get("PathOnHost") for d in devices if d.get("PathOnHost")}
            label = (info.get("Config") or {}).get("Labels", {}).get(GPU_LABEL, "")
            used |= {d for d in label.split(",") if d}
        return used

    def host_config(self) -> dict:
        s = self.settings
        devices = [*self.gpu_devices, *(s.gpu_support_devices if self.gpu_devices else [])]
        config: dict = {
            "auto_remove": False,  # the log of a container that failed is read before it is removed
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "privileged": False,
            "devices": [f"{d}:{d}:rwm" for d in devices],
        }
        ulimits = s.ulimits.model_dump(exclude_none=True)
        if ulimits:
            config["ulimits"] = [{"name": k, "soft": v, "hard": v} for k, v in ulimits.items()]
        if s.runtime:
            config["runtime"] = s.runtime
        return config

    async def create_object(self):
        s = self.settings
        if self.request is None:
            self.request = self.resolve(self.user_options or {})
        labels = {USER_LABEL: self.user.name}
        create: dict = {"labels": labels}
        if s.homes == "bind":
            account = unix_account(self.user.name, self.users.min_uid, self.users.max_uid)
            self.volumes = {account.pw_dir: {"bind": account.pw_dir, "mode": "rw"}}
            create.update(user=f"{account.pw_uid}:{account.pw_gid}", working_dir=account.pw_dir)
        else:
            await self.check_image_user()
            self.volumes = {self.volume_name(): {"bind": s.home_path, "mode": "rw"}}
            create["working_dir"] = s.home_path
        for source in self.volume_binds:
            if exposes_engine(source, s.url):
                raise SpawnError(f"The container engine's socket ({source}) is never mounted into a server.")
        cls = type(self)
        if cls._gpu_lock is None:
            cls._gpu_lock = asyncio.Lock()
        async with cls._gpu_lock:  # allocate and create together: the next spawn sees this container
            self.gpu_devices = []
            if self.request.gpus:
                free = free_gpus(list(s.gpus), await self.gpus_in_use())
                if len(free) < self.request.gpus:
                    raise SpawnError(
                        f"Only {len(free)} of the {len(s.gpus)} GPUs are free now, and your server needs "
                        f"{self.request.gpus}. Try again later, or choose a profile with fewer GPUs."
                    )
                self.gpu_devices = free[: self.request.gpus]
                labels[GPU_LABEL] = ",".join(self.gpu_devices)
                self.phase = (
                    f"Creating your container with {gpu_words(len(self.gpu_devices))}: {', '.join(self.gpu_devices)}"
                )
            self.extra_host_config = self.host_config()
            self.extra_create_kwargs = create
            obj = await super().create_object()
        self.log.info(
            "Container for %s: image %s, %s CPU, %s memory, GPUs %s",
            self._log_name, self.image, self.cpu_limit, self.mem_limit, ",".join(self.gpu_devices) or "none",
        )  # fmt: skip
        return obj

    async def check_image_user(self) -> None:
        """Servers run as the image's own user: refuse an image that would run them as root."""
        info = await self.docker("inspect_image", self.image)
        user = ((info.get("Config") or {}).get("User") or "").split(":")[0]
        if user in ("", "0", "root"):
            raise SpawnError(
                f"The image {self.image} runs as root: CampusHub runs servers only as a non-root user. "
                "Ask your administrators for an image with a USER (or homes: bind)."
            )

    # --- the spawn --------------------------------------------------------------------------

    async def start(self):
        with self.metered_spawn():
            return await self.start_container()

    async def start_container(self):
        if self.request is None:
            self.request = self.resolve(self.user_options or {})
        request = self.request
        self.image = request.image
        self.mem_limit = memory_bytes(request.memory)
        self.cpu_limit = request.cpus
        if self.settings.network == "host":
            # the server listens on the host's loopback, on a free port: the proxy on this host reaches it
            self.ip, self.port = "127.0.0.1", random_port()
        self.phase = f"Preparing your container ({request.profile}) from {request.image}"
        try:
            ip, port = await super().start()
        except web.HTTPError:
            raise
        except docker.errors.ImageNotFound as e:
            raise SpawnError(
                f"The image {request.image} is not on the container engine, and it could not be pulled. "
                "Tell your administrators.",
                details=_explain(e),
                details_title="What the engine said",
            ) from None
        except _ENGINE_ERRORS as e:
            await self.remove_quietly()
            raise SpawnError(self.engine_words(e), details=_explain(e), details_title="What the engine said") from None
        self.phase = "Your container runs: starting JupyterLab"
        await self.wait_for_server(ip, port)
        return ip, port

    async def progress(self):
        """The spawn's phases, as they come (JupyterHub ends this when the spawn ends)."""
        shown = ""
        while True:
            if self.phase and self.phase != shown:
                shown = self.phase
                yield {"message": shown}
            await asyncio.sleep(0.25)

    def engine_words(self, e: Exception) -> str:
        if isinstance(e, docker.errors.APIError) and e.response is not None:
            if e.status_code == 404 and "image" in _explain(e).lower():
                return f"The image {self.image} is not on the container engine. Tell your administrators."
            return f"The container engine refused your server's container ({e.status_code})."
        return (
            f"The container engine at {self.settings.url} cannot be reached, so no server can start now. "
            "Tell your administrators."
        )

    async def get_ip_and_port(self):
        if self.settings.network == "host":
            return self.ip, self.port
        return await super().get_ip_and_port()

    async def wait_for_server(self, ip: str, port: int) -> None:
        """Until the server listens; a container that ends first fails the spawn at once, with its log.
        The port is tried often (a local connect), the engine asked every startup_check_interval."""
        asked = -self.startup_check_interval
        while True:
            if time.monotonic() - asked >= self.startup_check_interval:
                asked = time.monotonic()
                await self.check_running()
            if await _listens(ip, port):
                return
            await asyncio.sleep(LISTEN_CHECK_INTERVAL)

    async def check_running(self) -> None:
        try:
            info = await self.docker("inspect_container", self.container_id)
        except _ENGINE_ERRORS as e:
            raise SpawnError(self.engine_words(e), details=_explain(e)) from None
        state = info.get("State") or {}
        if not state.get("Running"):
            tail = await self.container_log_tail()
            await self.remove_quietly()
            self.clear_state()
            raise SpawnError(
                f"Your server's container exited (code {state.get('ExitCode')}) before its server started.",
                details=tail,
                details_title="Last lines of its log",
            )

    async def container_log_tail(self) -> str:
        try:
            out = await self.docker("logs", self.container_id, tail=self.log_tail_lines)
        except _ENGINE_ERRORS as e:
            return f"(could not read the container's log: {_explain(e)})"
        return out.decode(errors="replace").rstrip()

    async def remove_quietly(self) -> None:
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, force=True, v=True)
        except _ENGINE_ERRORS as e:
            self.log.warning("Could not remove container %s of %s: %s", self.object_id[:12], self._log_name, e)
        self.object_id = ""

    async def poll(self):
        """Only a definite answer from the engine ends a server: while the engine is out of reach, a server with a
        container is left running (and one without is not)."""
        try:
            return await super().poll()
        except _ENGINE_ERRORS as e:
            if not self.object_id:
                return 0
            self.log.warning("Could not ask the engine about %s's container, keeping it: %s", self._log_name, e)
            return None

    async def stop(self, now=False):
        if not self.object_id and not await self.get_object():
            self.clear_state()
            return
        try:
            await super().stop(now=now)
        except docker.errors.NotFound:
            self.clear_state()
        self.gpu_devices = []


def _explain(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e)


async def _listens(ip: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
    except (OSError, TimeoutError, socket.gaierror):
        return False
    writer.close()
    return True
