"""The site file: one YAML file that describes a CampusHub deployment.

`load_site` turns it into a validated, typed `Site`; `site_schema` exports the JSON Schema.
Every key has a description: it feeds the schema, the docs and the example site file.
Relative paths in a site file are relative to the folder holding that file.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .profiles import Memory, Model, Profile, SlurmName, Walltime


class SiteError(Exception):
    """A site file that cannot be used; `problems` holds one line per error, each naming its key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


Port = Annotated[int, Field(ge=1, le=65535)]
GroupName = Annotated[str, Field(min_length=1, max_length=255)]
Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]


def moved_keys(data: Any, moved: dict[str, str]) -> Any:
    """A clear error for a key of an earlier release that has a new name."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(f"{old} has been renamed: set {new}")
    return data


class Section(Model):
    @field_validator("*", mode="after")
    @classmethod
    def _resolve_paths(cls, value: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base")
        if isinstance(value, Path) and base is not None and not value.is_absolute():
            return (Path(base) / value).resolve()
        return value


class DatabaseSection(Section):
    """A section with a database of its own: `db_url` and `db_password_file`, under campushub.database's rules."""

    key: ClassVar[str]  # the section's key in the site file, for the messages

    @field_validator("db_url", check_fields=False)
    @classmethod
    def _a_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from .database import url_problem  # the rules of database URLs live with the databases

        problem = url_problem(value, f"{cls.key}.db_password_file")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("db_password_file", check_fields=False)
    @classmethod
    def _password_with_postgresql(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value and not (info.data.get("db_url") or "").startswith("postgresql"):
            raise ValueError(f"is for a PostgreSQL {cls.key}.db_url (SQLite needs no password)")
        return value


class HubSettings(DatabaseSection):
    key = "hub"

    ip: str = Field(
        "127.0.0.1",
        description="IP address where users reach CampusHub (the proxy listens here; 0.0.0.0: every interface). "
        "Keep 127.0.0.1 behind a TLS-terminating reverse proxy.",
    )
    port: Port = Field(8000, description="Port where users reach CampusHub.")
    base_url: str = Field(
        "/", pattern=r"^/([A-Za-z0-9._~-]+/)*$", description="URL prefix of the whole site, ending in '/'."
    )
    hub_ip: str = Field(
        "127.0.0.1",
        description="IP address of the hub's own API. Servers on compute nodes must reach it: "
        "on a cluster use an address of the hub host that the nodes can reach.",
    )
    hub_port: Port = Field(8081, description="Port of the hub's own API.")

    @field_validator("ip", "hub_ip")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address: give one such as 127.0.0.1 or 10.0.0.5 "
                    "(0.0.0.0 listens on every interface)"
                ) from None
        return value

    public_url: Url | None = Field(
        None,
        description="The address users open, when a reverse proxy serves CampusHub (e.g. https://hub.campus.edu/). "
        "The login's callback is <public_url>hub/oauth_callback. Default: http://ip:port/base_url.",
    )
    hub_connect_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="URL that servers use to reach the hub API, when it differs from "
        "http://hub_ip:hub_port (a DNS name, a NAT address).",
    )
    state_dir: Path = Field(
        Path("campushub-state"),
        description="Folder for the hub database (SQLite) and generated secrets; with the local backend, "
        "users' homes in its homes/. Created with mode 0700. Logs go to the standard output of "
        "`campushub up`, `hub` and `proxy` (a terminal, or the service manager's journal).",
    )
    db_url: str | None = Field(
        None,
        description="The hub's database (SQLAlchemy URL). Default: SQLite in the state folder "
        "(<state_dir>/jupyterhub.sqlite). PostgreSQL: postgresql://campushub@db.campus.edu/jupyterhub (driver "
        "psycopg 3: pip install campushub[postgres]), with the password in db_password_file, never in the URL.",
    )
    db_password_file: Path | None = Field(
        None, description="File holding the hub database's password (mode 0600 or 0640); with a PostgreSQL db_url."
    )

    extra_config: dict[str, dict[str, Any]] = Field(
        {},
        description="JupyterHub settings that the site file does not model, as {Class: {setting: value}} "
        "(e.g. {JupyterHub: {shutdown_on_logout: true}}), applied after the site file. Each class and setting "
        "must exist; `campushub config check` lists them.",
    )

    @field_validator("extra_config")
    @classmethod
    def _known_settings(cls, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if extra:
            from .hubconfig import extra_config_problems  # imports JupyterHub: only when there is something to check

            problems = extra_config_problems(extra)
            if problems:
                raise ValueError("not JupyterHub settings: " + "; ".join(problems))
        return extra


class ProxySettings(Section):
    kind: Literal["chp", "traefik"] = Field(
        "chp",
        description="Which proxy `campushub proxy` runs. 'chp': configurable-http-proxy (Node.js), which keeps "
        "routes in memory. 'traefik': traefik (installed with CampusHub), which keeps routes in a file of the "
        "state folder (traefik/). Both outlive a hub restart with every route (docs/proxy.md).",
    )
    api_port: Port = Field(
        8001,
        description="Port of the proxy's API on 127.0.0.1 (the hub talks to it; traefik's asks for a login "
        "generated into the state folder).",
    )


class OIDCSettings(Section):
    issuer: Url = Field(description="The provider's issuer URL (e.g. https://sso.campus.edu/realms/campus).")
    client_id: str = Field(min_length=1, description="The client id registered at the provider.")
    client_secret_file: Path = Field(
        description="File holding the client secret (not readable by others: mode 0600 or 0640)."
    )
    username_claim: str = Field(
        "preferred_username",
        description="Claim that names the user. Lowercased, it becomes the hub and unix name as it is: a claim "
        "that is not already a valid name (ASCII letters, digits, '.', '_', '-', starting with a letter, at most "
        "32 characters) is refused, never changed to fit. A name belongs to the first identity (issuer and "
        "subject) that logs in with it after passing every check.",
    )
    email_domain: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$",
        description="Opt-in: a username claim name@<email_domain> (e.g. ada@campus.edu) becomes 'name'. A claim "
        "at any other domain is refused. Unset: a claim with '@' is refused.",
    )
    allowed_email_domains: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")]] = Field(
        [],
        description="When set, only users whose 'email' claim is a verified address at one of these domains "
        "may log in (checked even with allow_all_users).",
    )
    groups_claim: str = Field("groups", description="Claim listing the user's groups; they become hub groups.")
    scopes: list[str] = Field(["openid", "profile", "email"], description="Scopes asked of the provider.")
    allowed_groups: list[GroupName] = Field([], description="Groups whose members may log in.")
    admin_groups: list[GroupName] = Field([], description="Groups whose members are hub admins.")
    admin_groups_only: bool = Field(
        False,
        description="Admins come from admin_groups only: auth.admin_users is refused. Recommended where users "
        "can choose their own user name at the provider.",
    )
    allow_all_users: bool = Field(
        False, description="Let every user of the provider log in (otherwise: allowed_groups and admins)."
    )

    @model_validator(mode="after")
    def _someone_allowed(self) -> OIDCSettings:
        if not (self.allowed_groups or self.allow_all_users):
            raise ValueError("set allowed_groups, or allow_all_users: true")
        return self


class GitHubSettings(Section):
    url: Url = Field("https://github.com", description="GitHub, or the address of a GitHub Enterprise Server.")
    client_id: str = Field(min_length=1, description="The OAuth app's client id.")
    client_secret_file: Path = Field(description="File holding the OAuth app's client secret (mode 0600).")
    allowed_organizations: list[str] = Field([], description="GitHub organizations (or org:team) allowed in.")
    allowed_users: list[str] = Field([], description="GitHub users allowed in.")

    @model_validator(mode="after")
    def _someone_allowed(self) -> GitHubSettings:
        if not (self.allowed_organizations or self.allowed_users):
            raise ValueError("set allowed_organizations or allowed_users")
        return self


class AuthSettings(Section):
    kind: Literal["shared-password", "oidc", "github"] = Field(
        "shared-password",
        description="How users log in. 'oidc': the campus OpenID Connect provider (auth.oidc). 'github': "
        "GitHub accounts, for a small lab (auth.github). 'shared-password': any user name with one shared "
        "password, generated into the state folder: demos and trials on 127.0.0.1 only.",
    )
    oidc: OIDCSettings | None = Field(None, description="Settings of the OpenID Connect login.")
    github: GitHubSettings | None = Field(None, description="Settings of the GitHub login.")
    encrypt_auth_state: bool = Field(
        False,
        description="Keep the provider's tokens (auth state) in the hub database, encrypted with "
        "JUPYTERHUB_CRYPT_KEY from the environment, or with a key generated into the state folder.",
    )
    admin_users: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]] = Field(
        [],
        description="Hub admins. With shared-password they log in with the admin password generated "
        "into <state_dir>/demo_admin_password.",
    )

    @model_validator(mode="after")
    def _kind_settings(self) -> AuthSettings:
        if self.kind in ("oidc", "github") and getattr(self, self.kind) is None:
            raise ValueError(f"auth.{self.kind} is required when auth.kind is {self.kind}")
        return self


class UsersSettings(Section):
    accounts: Literal["directory", "create"] = Field(
        "directory",
        description="Unix accounts of users (every backend but the demo's shared-password login). 'directory': "
        "they exist already (LDAP/SSSD); a login without one gets a clear page. 'create': the first login "
        "creates the account with a 0700 home (the hub runs as root; for single-server sites).",
    )
    min_uid: int = Field(
        1000, ge=1, description="Lowest unix uid that may log in and get a server: system accounts and root never do."
    )
    max_uid: int = Field(
        60000,
        ge=1,
        description="Highest unix uid that may log in and get a server (nobody, 65534, and other high system "
        "accounts never do). Accounts whose shell is nologin or false are refused too.",
    )

    @model_validator(mode="after")
    def _uid_range(self) -> UsersSettings:
        if self.min_uid > self.max_uid:
            raise ValueError("min_uid must not be larger than max_uid")
        return self


class ContainerSettings(Section):
    runtime: Literal["none", "apptainer", "podman", "pyxis"] = Field(
        "none",
        description="How the server runs inside the job. none: directly on the node. apptainer: "
        "`apptainer exec --nv` with the home bound. podman: `podman run` with host network, the home "
        "mounted and JUPYTERHUB_* passed. pyxis: `srun --container-image` (Slurm's pyxis/enroot plugin).",
    )
    image: str | None = Field(
        None,
        pattern=r"^[^\s'\"]+$",
        description="The image: a .sif path (apptainer), an image name (podman), or a pyxis image "
        "(e.g. nvcr.io#nvidia/pytorch:24.05-py3 or a .sqsh path). It must have jupyterhub-singleuser and "
        "campushub-singleuser (extensions/campushub-lab) on its PATH.",
    )
    options: list[str] = Field([], description="Extra arguments for the runtime, before the image.")

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerSettings:
        if self.runtime != "none" and not self.image:
            raise ValueError(f"image is required with runtime {self.runtime}")
        return self


class SlurmSettings(Section):
    partition: SlurmName = Field(description="Slurm partition for users' servers.")
    account: SlurmName | None = Field(None, description="Slurm account to charge (sbatch --account).")
    qos: SlurmName | None = Field(None, description="Slurm quality of service (sbatch --qos).")
    cpus: int = Field(1, ge=1, le=1024, description="CPUs per server (sbatch --cpus-per-task).")
    memory: Memory = Field("4G", description="Memory per server (sbatch --mem), e.g. 4G.")
    walltime: Walltime = Field(
        "08:00:00", description="Longest run of one server (sbatch --time), as [days-]hours:minutes:seconds."
    )
    python_env: Path | None = Field(
        None,
        description="Prefix of the Python environment on the compute nodes that holds jupyterhub-singleuser "
        "and campushub-singleuser (its bin/ is put first on PATH). Unset: found on the job's PATH.",
    )
    prologue: str = Field(
        "",
        description="Shell lines run in the job before the server starts (module load, conda activate). "
        "Written by the admin; no user input ever reaches it.",
    )
    submit_prefix: list[str] = Field(
        ["sudo", "-E", "-u", "{username}"],
        min_length=1,
        description="Command that runs sbatch, squeue, scancel, mkdir and tail as the user; "
        "'{username}' is replaced. Run without a shell.",
    )
    container: ContainerSettings = Field({}, description="Run the server in a container inside the job.")
    startup_check_interval: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between job-state checks while a server starts: every interval while its job is "
        "pending; while the server loads, after 3 intervals, then at doubling intervals up to 10.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return moved_keys(data, {"min_uid": "users.min_uid", "poll_interval": "spawner.slurm.startup_check_interval"})

    @field_validator("submit_prefix")
    @classmethod
    def _prefix_words(cls, words: list[str]) -> list[str]:
        if any(not w or "\n" in w for w in words):
            raise ValueError("every word must be non-empty and on one line")
        return words


class LocalSettings(Section):
    python_env: Path | None = Field(
        None,
        description="Prefix of the Python environment whose bin/jupyterhub-singleuser runs users' servers; every "
        "user must be able to read and run it. Unset: the hub's own environment.",
    )


ImageRef = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")]
DevicePath = Annotated[str, Field(pattern=r"^/dev/[A-Za-z0-9._/-]+$")]


class Ulimits(Section):
    nofile: int | None = Field(None, ge=-1, description="Open files (-1: unlimited) [the engine's].")
    nproc: int | None = Field(None, ge=-1, description="Processes (-1: unlimited) [the engine's].")
    memlock: int | None = Field(None, ge=-1, description="Locked memory in bytes (-1: unlimited) [the engine's].")


class DockerSettings(Section):
    url: str = Field(
        "unix:///var/run/docker.sock",
        description="The Docker API the hub creates servers' containers through: Docker's socket "
        "(unix:///var/run/docker.sock), or `podman system service`'s (unix:///run/podman/podman.sock). "
        "Only the hub uses it; no container gets it.",
    )
    images: list[ImageRef] = Field(
        min_length=1,
        description="The images servers may run (the allow-list), as the engine names them "
        "(e.g. registry.campus.edu/campushub/lab:2026.11). A profile or a user's `image` option names one of "
        "them; any other is refused. They must be on the engine already (or pullable by it).",
    )
    default_image: ImageRef | None = Field(
        None, description="The image of a spawn that names none (one of images). Unset: the first of images."
    )
    gpus: list[DevicePath] = Field(
        [],
        description="The host's GPU devices (e.g. /dev/nvidia0, /dev/nvidia1): the pool a profile's GPUs are "
        "taken from. A device belongs to one running server at a time, and the container sees only its own.",
    )
    gpu_support_devices: list[DevicePath] = Field(
        [],
        description="Devices every GPU server gets besides its GPUs (e.g. /dev/nvidiactl, /dev/nvidia-uvm).",
    )
    cpus: float = Field(1, gt=0, le=1024, description="CPU limit of a server whose profile sets none (cpu_limit).")
    memory: Memory = Field("2G", description="Memory limit of a server whose profile sets none (mem_limit), e.g. 4G.")
    homes: Literal["volume", "bind"] = Field(
        "volume",
        description="Where a user's files live. 'volume': a Docker volume per user (home_volume), mounted at "
        "home_path and run as the image's own non-root user. 'bind': the user's unix home on the hub host, "
        "mounted at the same path, and the container runs as the user's uid and gid (needs unix accounts).",
    )
    home_volume: str = Field(
        "campushub-home-{username}",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(\{username\}[A-Za-z0-9_.-]*)+$",
        description="Name of a user's volume (homes: volume); '{username}' must appear, and is replaced by the user "
        "name, escaped as DockerSpawner does when it holds other than a-z, 0-9, '.' and '_' (ada-l: ada-2dl).",
    )
    home_path: str = Field(
        "/home/jovyan",
        pattern=r"^/[A-Za-z0-9._/-]*$",
        description="Where the volume is mounted in the container (homes: volume): the home of the image's user.",
    )
    network: str = Field(
        "bridge",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Docker network of the containers. 'host': the host's network (the server listens on a free "
        "port of the host; it reaches the hub at hub.hub_ip). Another network: the hub must be reachable from "
        "it (hub.hub_connect_url).",
    )
    pull_policy: Literal["ifnotpresent", "never", "always"] = Field(
        "ifnotpresent",
        description="Pull an image the engine lacks ('ifnotpresent'), never pull ('never': the images are loaded "
        "onto the host beforehand), or pull at every spawn ('always').",
    )
    runtime: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="OCI runtime of the containers (e.g. runc). Unset: the engine's default.",
    )
    ulimits: Ulimits = Field(
        {},
        description="Resource limits set in every container, soft and hard alike (podman's API service needs "
        "nofile and nproc, e.g. 1024).",
    )

    @field_validator("url")
    @classmethod
    def _an_api_address(cls, value: str) -> str:
        if not re.fullmatch(r"unix:///\S+|tcp://[^\s/]+|ssh://[^\s/]+", value):
            raise ValueError(
                f"{value!r} is not a Docker API address: give unix:///var/run/docker.sock (a socket), "
                "tcp://host:2376 or ssh://user@host"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DockerSettings:
        if len(set(self.images)) != len(self.images):
            raise ValueError("images: an image is listed twice")
        if self.default_image is not None and self.default_image not in self.images:
            raise ValueError(f"default_image: {self.default_image!r} is not one of images")
        twice = sorted({d for d in self.gpus if self.gpus.count(d) > 1})
        if twice:
            raise ValueError(f"gpus: listed more than once: {', '.join(twice)}")
        shared = sorted(set(self.gpus) & set(self.gpu_support_devices))
        if shared:
            raise ValueError(f"gpu_support_devices: also in gpus: {', '.join(shared)}")
        return self

    @property
    def image(self) -> str:
        """The default image."""
        return self.default_image or self.images[0]


class SpawnerSettings(Section):
    backend: Literal["local", "slurm", "docker"] = Field(
        "local",
        description="Where servers run. 'local': processes on the hub host, each as the user's own unix account "
        "(the hub runs as root); with the demo's shared-password login, as the hub's own account (no "
        "isolation between users). 'slurm': each server is a Slurm job of the user's unix account. 'docker': each "
        "server is a container, through a Docker API (spawner.docker).",
    )
    start_timeout: int = Field(
        300, ge=10, description="Seconds a server may take to start (queue wait included) before the spawn fails."
    )
    http_timeout: int = Field(60, ge=5, description="Seconds a started server may take to answer HTTP.")
    running_check_interval: int = Field(
        30, ge=1, description="Seconds between checks that a running server is still alive (its job, its process)."
    )
    slurm: SlurmSettings | None = Field(None, description="Settings of the Slurm backend.")
    local: LocalSettings = Field({}, description="Settings of the local backend.")
    docker: DockerSettings | None = Field(None, description="Settings of the Docker backend.")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return moved_keys(data, {"poll_interval": "spawner.running_check_interval"})

    @model_validator(mode="after")
    def _backend_settings(self) -> SpawnerSettings:
        if self.backend == "slurm" and self.slurm is None:
            raise ValueError("spawner.slurm is required when spawner.backend is slurm")
        if self.backend == "docker" and self.docker is None:
            raise ValueError("spawner.docker is required when spawner.backend is docker")
        return self


class CullingSettings(Section):
    enabled: bool = Field(True, description="Stop servers that have been idle for idle_timeout seconds.")
    idle_timeout: int = Field(
        3600,
        ge=10,
        description="Seconds without activity (browser traffic, kernel output or a kernel busy running code) "
        "after which a server is stopped.",
    )
    check_every: int = Field(60, ge=1, description="Seconds between the culler's checks.")
    activity_interval: int = Field(
        60,
        ge=1,
        description="Seconds between a server's activity reports to the hub, and between the hub's reads of "
        "the proxy's activity: the precision of idle_timeout.",
    )

    @model_validator(mode="after")
    def _precise_enough(self) -> CullingSettings:
        # activity reaches the hub up to activity_interval late (+5 s for a busy kernel's check)
        if self.idle_timeout < 2 * self.activity_interval + 5:
            raise ValueError("idle_timeout must be at least 2 * activity_interval + 5 seconds")
        return self


class SmtpSettings(Section):
    host: str = Field(min_length=1, description="SMTP server that sends alert mail (e.g. smtp.campus.edu).")
    port: Port = Field(25, description="Its port (25, or 587 with starttls).")
    sender: str = Field(
        pattern=r"^[^@\s]+@[^@\s]+$", description="From address of alert mail, e.g. campushub@campus.edu."
    )
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS before sending.")
    username: str | None = Field(None, description="Login at the SMTP server, if it asks for one.")
    password_file: Path | None = Field(None, description="File holding the SMTP password (mode 0600).")


class SchedulerSettings(DatabaseSection):
    key = "scheduler"

    enabled: bool = Field(
        True,
        description="Run the nightly-notebooks service (campushub.scheduler) with the hub, at /services/scheduler/.",
    )
    executor: Literal["slurm", "local"] | None = Field(
        None,
        description="Where runs execute. 'slurm': one sbatch job per run, as the owner (spawner.slurm's "
        "partition, account, python_env and prologue). 'local': a process on the hub host, as the owner (as the "
        "hub's own account in the demo). Default: slurm with spawner.backend slurm, else local.",
    )
    port: Port = Field(8090, description="Port of the service on 127.0.0.1 (the proxy routes to it).")
    db_url: str | None = Field(
        None,
        description="The service's database (SQLAlchemy URL). Default: SQLite in the state folder. PostgreSQL: "
        "postgresql+psycopg://campushub@db.campus.edu/scheduler, with the password in db_password_file.",
    )
    db_password_file: Path | None = Field(
        None, description="File holding the service database's password (mode 0600 or 0640); with a PostgreSQL db_url."
    )

    runs_folder: str = Field(
        "campushub-runs",
        pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        description="Folder in each owner's home that receives the runs: <runs_folder>/<schedule id>/<run id>/ "
        "holds the input and output notebooks, the HTML and the job's log.",
    )
    templates_dir: Path | None = Field(
        None,
        description="A folder of the site's own template notebooks (*.ipynb with a cell tagged parameters), "
        "offered besides CampusHub's (notebooks/templates).",
    )
    check_interval: float = Field(
        5, gt=0, le=60, description="Seconds between the service's checks of due schedules and of running jobs."
    )
    max_active_runs: int = Field(20, ge=1, description="Runs submitted or running at once, all users together.")
    max_active_runs_per_user: int = Field(4, ge=1, description="Runs submitted or running at once per owner.")
    max_timeout: int = Field(
        24 * 3600, ge=60, description="Longest timeout, in seconds, that a schedule may set (default 1 day)."
    )
    smtp: SmtpSettings | None = Field(
        None, description="Mail server for alert emails. Unset: email alerts are refused."
    )
    webhook_allowed_hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]-]+$")]] = Field(
        [],
        description="Hosts that webhook alerts may be sent to even though their address is private, loopback or "
        "link-local (such addresses are refused otherwise, so that users cannot reach internal services).",
    )


class MetricsSettings(Section):
    token_file: Path | None = Field(
        None,
        description="File holding the token (at least 16 characters, mode 0600) that Prometheus sends to scrape "
        "/hub/metrics: the hub service 'prometheus' gets it, with the scope read:metrics and nothing else. "
        "Unset: only a token with read:metrics (an admin's) can read the metrics.",
    )


class BrandingSettings(Section):
    name: str = Field(
        "CampusHub", min_length=1, max_length=60, description="The service's name, on every page and in titles."
    )
    logo: Path | None = Field(
        None, description="Image file (PNG or SVG) shown in every page's header. Unset: CampusHub's default."
    )
    description: str = Field(
        "",
        max_length=200,
        description="One line on the login page saying who may use the service, e.g. 'For researchers and "
        "students of the Campus AI Institute'.",
    )
    support: str | None = Field(
        None,
        pattern=r"^([^@\s:/]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}|https?://[^\s/]+(/\S*)?)$",
        description="Where users get help: an email address or a web page (https://...). Shown on the login "
        "page, the footer and every error page.",
    )
    timezone: str | None = Field(
        None,
        description="Time zone of the times shown to users (a queued job's estimated start), as an IANA name "
        "such as Europe/Berlin. Unset: the hub host's own.",
    )
    templates: Path | None = Field(
        None,
        description="A folder of the site's own page templates (JupyterHub's page.html, login.html, error.html, "
        "home.html, spawn.html, ... or campushub-spawn-form.html), used before CampusHub's.",
    )

    @field_validator("timezone")
    @classmethod
    def _a_zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{value!r} is not a time zone name such as Europe/Berlin or UTC") from None
        return value


class Site(Section):
    """A CampusHub deployment."""

    hub: HubSettings = Field({}, description="Addresses, ports and the state folder.")
    proxy: ProxySettings = Field({}, description="The proxy in front of the hub.")
    branding: BrandingSettings = Field({}, description="How the service presents itself on its pages.")
    auth: AuthSettings = Field({}, description="How users log in.")
    spawner: SpawnerSettings = Field({}, description="Where users' servers run.")
    users: UsersSettings = Field({}, description="Users' unix accounts.")
    culling: CullingSettings = Field({}, description="Stopping idle servers (jupyterhub-idle-culler).")
    scheduler: SchedulerSettings = Field({}, description="Nightly notebooks: scheduled papermill runs.")
    metrics: MetricsSettings = Field({}, description="Prometheus metrics at /hub/metrics (docs/metrics.md).")
    profiles: list[Profile] = Field(
        [],
        description="Resource profiles users choose from on the spawn page (Slurm backend). Without any, "
        "every user gets one profile made of spawner.slurm's partition, cpus, memory and walltime.",
    )
    source: Path | None = Field(None, exclude=True, description="The file this site was read from.")

    @field_validator("profiles")
    @classmethod
    def _profiles_apart(cls, profiles: list[Profile]) -> list[Profile]:
        slugs = [p.slug for p in profiles]
        twice = sorted({s for s in slugs if slugs.count(s) > 1})
        if twice:
            raise ValueError(f"slug used more than once: {', '.join(twice)}")
        if sum(p.default for p in profiles) > 1:
            raise ValueError("at most one profile can be the default")
        return profiles

    @model_validator(mode="after")
    def _demo_login_on_loopback(self) -> Site:
        if self.auth.kind == "shared-password" and not is_loopback(self.hub.ip):
            raise ValueError(
                f"auth.kind: shared-password is for demos on 127.0.0.1 only, but hub.ip is {self.hub.ip}: "
                "use oidc or github"
            )
        return self

    @model_validator(mode="after")
    def _demo_login_not_on_a_cluster(self) -> Site:
        if self.auth.kind == "shared-password" and self.spawner.backend == "slurm":
            raise ValueError(
                "auth.kind: shared-password cannot be used with spawner.backend: slurm (anyone with the password "
                "could log in as any unix account): use oidc or github"
            )
        return self

    @model_validator(mode="after")
    def _bound_homes_need_accounts(self) -> Site:
        if self.auth.kind == "shared-password" and self.spawner.docker and self.spawner.docker.homes == "bind":
            raise ValueError(
                "spawner.docker.homes: bind mounts users' unix homes, which needs a campus login (oidc or github), "
                "not shared-password"
            )
        return self

    @model_validator(mode="after")
    def _admins_by_group_only(self) -> Site:
        if self.auth.kind == "oidc" and self.auth.oidc.admin_groups_only and self.auth.admin_users:
            raise ValueError("auth.admin_users: auth.oidc.admin_groups_only is set: admins come from admin_groups")
        return self

    @model_validator(mode="after")
    def _profiles_need_slurm(self) -> Site:
        if self.profiles and self.spawner.backend not in ("slurm", "docker"):
            raise ValueError("profiles: need spawner.backend: slurm or docker")
        return self

    @model_validator(mode="after")
    def _profiles_fit_the_backend(self) -> Site:
        docker = self.spawner.docker
        problems = []
        for i, p in enumerate(self.profiles):
            r = p.resources
            if r.image and docker is None:
                problems.append(f"profiles[{i}].resources.image: needs spawner.docker (its images)")
            elif r.image and r.image not in docker.images:
                problems.append(f"profiles[{i}].resources.image: {r.image!r} is not one of spawner.docker.images")
            if self.spawner.backend != "docker":
                continue
            for key in ("partition", "gpu_type", "walltime"):
                if getattr(r, key) is not None:
                    problems.append(f"profiles[{i}].resources.{key}: is for Slurm; spawner.backend is docker")
            if p.choices.hours:
                problems.append(f"profiles[{i}].choices.hours: is for Slurm; spawner.backend is docker")
            most = p.choices.gpus.max if p.choices.gpus else r.gpus
            if most > len(docker.gpus):
                problems.append(
                    f"profiles[{i}].resources.gpus: asks for up to {most} GPUs; spawner.docker.gpus lists "
                    f"{len(docker.gpus)}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(error: dict) -> str:
    where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]).replace(".[", "[")
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if error["type"] == "extra_forbidden":
        near = difflib.get_close_matches(str(error["loc"][-1]), _keys_at(error["loc"][:-1]), n=1)
        if near:
            message += f"; did you mean '{near[0]}'?"
    return f"{where}: {message}" if where else message


def _keys_at(loc: tuple) -> list[str]:
    """The keys that the section at `loc` (a pydantic error location) accepts."""
    model = Site
    for part in loc:
        if isinstance(part, str):
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field else None
            if model is None:
                return []
    return [name for name in model.model_fields if name != "source"]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None


def parse_site(data: Any, base: Path | None = None) -> Site:
    """Validate already-parsed YAML data; relative paths resolve against `base` (default: cwd)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SiteError([f"(top level): expected a mapping of sections, got {type(data).__name__}"])
    if "source" in data:
        raise SiteError(["source: extra inputs are not permitted"])
    try:
        return Site.model_validate(data, context={"base": base or Path.cwd()})
    except ValidationError as e:
        raise SiteError([_problem(err) for err in e.errors()]) from None


def load_site(path: str | Path | None) -> Site:
    """Read and validate a site file; None gives the embedded defaults (the demo)."""
    if path is None:
        return parse_site({})
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise SiteError([f"{path}: cannot read the site file: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SiteError([f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    site = parse_site(data, base=path.parent)
    return site.model_copy(update={"source": path})


def site_schema() -> dict:
    """The JSON Schema of the site file."""
    schema = Site.model_json_schema()
    schema["properties"].pop("source", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "CampusHub site file"
    return schema
