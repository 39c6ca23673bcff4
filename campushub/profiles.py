"""Resource profiles: what a user may ask for, who grants it, and the one typed request a spawn uses.

Profiles are shaped like KubeSpawner's profile_list: slug, display_name, description, the resources,
and choices the user may adjust within bounds. A profile is granted to every user (`everyone`),
to members of hub groups (`groups`), or by a hub group's property `campushub_profiles` (a list of
slugs, changed through the REST API with no hub restart). Admins see every profile.

Everything a user sends, from the spawn form or as REST `user_options`, goes through
`resolve_request`: an unknown key, a value out of bounds or not a plain number, a profile not
granted, is a `ProfileError` naming the field; only the typed `SpawnRequest` reaches a job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Protocol

from jinja2 import Environment, FileSystemLoader, TemplateNotFound
from pydantic import BaseModel, ConfigDict, Field, model_validator

GROUP_PROPERTY = "campushub_profiles"
OPTION_KEYS = ("profile", "gpus", "hours")

# A hub group's property naming the Slurm account its members' servers are charged to (a course's students).
ACCOUNT_PROPERTY = "campushub_slurm_account"

SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SlurmName = Annotated[str, Field(pattern=SLURM_NAME)]
WALLTIME = r"(?:([0-9]+)-)?([0-9]{1,2}):([0-9]{2}):([0-9]{2})"  # Slurm's [days-]hours:minutes:seconds
Walltime = Annotated[str, Field(pattern=f"^{WALLTIME}$")]
Memory = Annotated[str, Field(pattern=r"^[1-9][0-9]*[KMGT]?$")]


class ProfileError(ValueError):
    """A spawn request that is refused; the message names the field and is meant for the user."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Range(Model):
    min: int = Field(ge=0, description="Smallest value the user may pick.")
    max: int = Field(ge=0, description="Largest value the user may pick.")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError("min must not be larger than max")
        return self


class Resources(Model):
    partition: SlurmName | None = Field(None, description="Slurm partition [spawner.slurm.partition].")
    cpus: int | None = Field(
        None, ge=1, le=1024, description="CPUs [spawner.slurm.cpus]; Docker: the CPU limit [spawner.docker.cpus]."
    )
    memory: Memory | None = Field(
        None, description="Memory, e.g. 16G [spawner.slurm.memory]; Docker: the limit [spawner.docker.memory]."
    )
    gpus: int = Field(0, ge=0, le=64, description="GPUs (the default when choices.gpus is set) [0].")
    gpu_type: SlurmName | None = Field(None, description="GPU type in Slurm's gres, e.g. a100 [any].")
    walltime: Walltime | None = Field(
        None,
        description="Time limit as [days-]hours:minutes:seconds (the default when choices.hours is set) "
        "[spawner.slurm.walltime].",
    )
    image: str | None = Field(
        None,
        description="Docker backend: the image, one of spawner.docker.images [spawner.docker.default_image].",
    )


class Choices(Model):
    gpus: Range | None = Field(None, description="The user picks the number of GPUs in this range.")
    hours: Range | None = Field(None, description="The user picks the time limit, in hours, in this range.")

    @model_validator(mode="after")
    def _hours_positive(self) -> Choices:
        if self.hours and self.hours.min < 1:
            raise ValueError("hours.min must be at least 1")
        return self


class Profile(Model):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,29}$", description="Short name used in user_options.")
    display_name: str = Field(min_length=1, max_length=80, description="Title on the spawn page.")
    description: str = Field("", max_length=500, description="One or two sentences on the spawn page.")
    default: bool = Field(False, description="Preselected, and used when user_options name no profile.")
    everyone: bool = Field(False, description="Granted to every user.")
    groups: list[str] = Field([], description="Hub groups whose members are granted this profile.")
    resources: Resources = Field({}, description="What the job gets.")
    choices: Choices = Field({}, description="What the user may adjust, within bounds.")

    @model_validator(mode="after")
    def _defaults_within_choices(self) -> Profile:
        if self.choices.gpus and not self.choices.gpus.min <= self.resources.gpus <= self.choices.gpus.max:
            raise ValueError("resources.gpus must lie within choices.gpus")
        if self.choices.hours and self.resources.walltime:
            hours = walltime_hours(self.resources.walltime)
            if not self.choices.hours.min <= hours <= self.choices.hours.max:
                raise ValueError("resources.walltime must lie within choices.hours")
        return self


class SlurmDefaults(Protocol):
    """What a profile leaves unset comes from here: the site file's spawner.slurm."""

    partition: str
    cpus: int
    memory: str
    walltime: str


@dataclass(frozen=True)
class SpawnRequest:
    """What one spawn asks Slurm for: typed, validated, nothing else."""

    profile: str
    partition: str
    cpus: int
    memory: str
    gpus: int
    gpu_type: str | None
    walltime: str

    @property
    def gres(self) -> str | None:
        if not self.gpus:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}"


def walltime_seconds(walltime: str) -> int:
    m = re.fullmatch(WALLTIME, walltime)
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def walltime_hours(walltime: str) -> int:
    """Whole hours of a [days-]hh:mm:ss walltime, rounded up."""
    return -(-walltime_seconds(walltime) // 3600)


def hours_walltime(hours: int) -> str:
    return f"{hours // 24}-{hours % 24:02d}:00:00" if hours >= 24 else f"{hours:02d}:00:00"


def site_profiles(profiles: Iterable[Profile]) -> list[Profile]:
    """The site's profiles; without any, one default profile for everyone (spawner.slurm's resources)."""
    return list(profiles) or [Profile(slug="default", display_name="Default", default=True, everyone=True)]


def granted_profiles(
    profiles: Iterable[Profile], *, admin: bool, groups: Mapping[str, Mapping[str, Any]]
) -> list[Profile]:
    """The profiles a user may use: `groups` maps each of the user's hub groups to its properties."""
    by_property: set[str] = set()
    for properties in groups.values():
        slugs = (properties or {}).get(GROUP_PROPERTY) or []
        if isinstance(slugs, list):
            by_property |= {s for s in slugs if isinstance(s, str)}
    return [p for p in profiles if admin or p.everyone or set(p.groups) & set(groups) or p.slug in by_property]


def group_slurm_account(groups: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, list[str]]:
    """The Slurm account that the user's hub groups name (property campushub_slurm_account), and the
    problems found: (account or None, problems). `groups` maps each group to its properties.

    A user in several groups that name an account is charged to the account of the group whose name
    sorts first; a value that is not a Slurm name is passed over, and named among the problems."""
    account, problems = None, []
    for group in sorted(groups):
        value = (groups[group] or {}).get(ACCOUNT_PROPERTY)
        if value is None:
            continue
        if not isinstance(value, str) or not re.fullmatch(SLURM_NAME, value):
            problems.append(f"group {group}'s {ACCOUNT_PROPERTY} {value!r} is not a Slurm account name: passed over")
        elif account is None:
            account = value
        elif value != account:
            problems.append(f"group {group}'s {ACCOUNT_PROPERTY} {value!r} is passed over for {account!r}")
    return account, problems


def default_profile(granted: list[Profile]) -> Profile:
    return next((p for p in granted if p.default), granted[0])


def _whole_number(field: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        return int(value)
    shown = repr(value)[:40]
    raise ProfileError(f"{field}: must be a whole number, not {shown}")


def resolve_request(
    options: Any, *, profiles: list[Profile], granted: list[Profile], defaults: SlurmDefaults
) -> SpawnRequest:
    """Validate user_options into a SpawnRequest, or raise ProfileError naming the field."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ProfileError('user_options must be an object like {"profile": "cpu"}')
    unknown = [repr(k)[:40] for k in options if k not in OPTION_KEYS]
    if unknown:
        raise ProfileError(f"unknown option {', '.join(unknown)}: the options are {', '.join(OPTION_KEYS)}")
    if not granted:
        raise ProfileError("profile: no profile is granted to you; ask your administrators")
    slug = options.get("profile", default_profile(granted).slug)
    known = {p.slug: p for p in profiles}
    if not isinstance(slug, str) or slug not in known:
        raise ProfileError(f"profile: there is no profile {repr(slug)[:40]}")
    if slug not in {p.slug for p in granted}:
        raise ProfileError(f"profile: {slug!r} is not granted to you")
    profile = known[slug]
    r = profile.resources
    gpus, walltime = r.gpus, r.walltime or defaults.walltime
    for field in ("gpus", "hours"):
        if field not in options:
            continue
        value = _whole_number(field, options[field])
        bounds = getattr(profile.choices, field)
        if bounds is None:
            raise ProfileError(f"{field}: the profile {slug!r} does not let you choose {field}")
        if not bounds.min <= value <= bounds.max:
            raise ProfileError(f"{field}: must be from {bounds.min} to {bounds.max} in the profile {slug!r}")
        if field == "gpus":
            gpus = value
        else:
            walltime = hours_walltime(value)
    return SpawnRequest(
        profile=slug,
        partition=r.partition or defaults.partition,
        cpus=r.cpus or defaults.cpus,
        memory=r.memory or defaults.memory,
        gpus=gpus,
        gpu_type=r.gpu_type,
        walltime=walltime,
    )


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """The spawn form's fields -> user_options (still unvalidated: resolve_request checks them)."""
    slug = (formdata.get("profile") or [""])[0]
    options = {"profile": slug}
    for field in ("gpus", "hours"):
        value = formdata.get(f"{field}-{slug}")
        if value:
            options[field] = value[0]
    return options


def hours_minutes(walltime: str) -> str:
    """A [days-]hh:mm:ss walltime in hours and minutes, the one way the pages show time: "1 h 30 min"."""
    return duration_words(walltime_seconds(walltime))


def duration_words(seconds: float) -> str:
    """Seconds as hours and minutes: "2 h", "1 h 5 min", "45 min" (under a minute: "1 min")."""
    hours, minutes = divmod(max(1, round(seconds / 60)), 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "") if part)


def gpu_words(count: int, gpu_type: str | None = None) -> str:
    return f"{count} {gpu_type + ' ' if gpu_type else ''}GPU{'' if count == 1 else 's'}"


def summary(profile: Profile, defaults: SlurmDefaults, gpu_max: int | None = None) -> str:
    r = profile.resources
    cpus = r.cpus or defaults.cpus
    parts = [f"{int(cpus) if cpus == int(cpus) else cpus} CPU", f"{r.memory or defaults.memory} memory"]
    if profile.choices.gpus:
        parts.append(
            f"{profile.choices.gpus.min}-{gpu_max or profile.choices.gpus.max} GPUs"
            + (f" ({r.gpu_type})" if r.gpu_type else "")
        )
    elif r.gpus:
        parts.append(gpu_words(r.gpus) + (f" ({r.gpu_type})" if r.gpu_type else ""))
    if profile.choices.hours:
        parts.append(f"{profile.choices.hours.min} h to {profile.choices.hours.max} h")
    elif r.walltime or defaults.walltime:  # none with the Docker backend: a server runs until stopped
        parts.append(f"up to {hours_minutes(r.walltime or defaults.walltime)}")
    return " · ".join(parts)


class GpuCounts(Protocol):
    """What the cluster has (campushub.gpus.Inventory)."""

    def most_per_node(self, gpu_type: str | None = None) -> int: ...
    def total(self, gpu_type: str | None = None) -> int: ...
    def free(self, gpu_type: str | None = None) -> int: ...


def needs_gpus(profile: Profile) -> bool:
    return bool(profile.resources.gpus or profile.choices.gpus)


def gpu_cap(profile: Profile, cluster: GpuCounts | None) -> int | None:
    """The most GPUs the profile can get on the cluster (None: no GPUs, or the cluster is unknown)."""
    if cluster is None or not needs_gpus(profile):
        return None
    most = cluster.most_per_node(profile.resources.gpu_type)
    return min(most, profile.choices.gpus.max) if profile.choices.gpus else most


def fits(profile: Profile, cluster: GpuCounts | None) -> bool:
    """Whether some node can run the profile (its least GPU count)."""
    cap = gpu_cap(profile, cluster)
    least = profile.choices.gpus.min if profile.choices.gpus else profile.resources.gpus
    return cap is None or least <= cap


TEMPLATES = Path(__file__).with_name("templates")
FORM_TEMPLATE = "campushub-spawn-form.html"


@cache
def own_templates() -> Environment:
    """CampusHub's templates, autoescaped: built once, not at every spawn page."""
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)


def options_form(
    granted: list[Profile],
    defaults: SlurmDefaults,
    notice: str = "",
    env: Environment | None = None,
    *,
    clusters: Mapping[str, GpuCounts] | None = None,
    last: Mapping[str, Any] | None = None,
    problem: str = "",
    problem_details: str = "",
) -> str:
    """The spawn page's form (templates/campushub-spawn-form.html), rendered with autoescaping by `env`
    (the hub's, so that a site's template_paths can override it) or CampusHub's own.

    `clusters`: the GPUs Slurm reports, per partition; a profile no node can run is left out, a GPU choice is capped at
    the largest node, and each GPU profile says how many of its GPUs are free. `last`: the user's last
    choice (or what a refused form sent), pre-selected. `problem`: why that choice failed, shown next to it,
    with `problem_details` (Slurm's own words) in a fold.
    """
    template = None
    if env is not None:
        try:
            template = env.get_template(FORM_TEMPLATE)
        except TemplateNotFound:
            pass
    if template is None:
        template = own_templates().get_template(FORM_TEMPLATE)

    def cluster_of(profile: Profile) -> GpuCounts | None:
        return (clusters or {}).get(profile.resources.partition or defaults.partition)

    offered = [p for p in granted if fits(p, cluster_of(p))]
    not_offered = [
        f"{p.display_name} is not offered: the largest node has "
        f"{gpu_words(cluster_of(p).most_per_node(p.resources.gpu_type), p.resources.gpu_type)}."
        for p in granted
        if p not in offered
    ]
    last = dict(last or {})
    slugs = [p.slug for p in offered]
    chosen = last.get("profile") if last.get("profile") in slugs else (default_profile(offered).slug if offered else "")
    gpu_max = {p.slug: _or(gpu_cap(p, cluster_of(p)), p.choices.gpus.max) for p in offered if p.choices.gpus}
    gpu_values, start_hours = {}, {}
    for p in offered:
        if p.choices.gpus:
            gpu_values[p.slug] = _last_value(last, "gpus", p, p.resources.gpus, p.choices.gpus.min, gpu_max[p.slug])
        if p.choices.hours:
            hours = walltime_hours(p.resources.walltime) if p.resources.walltime else p.choices.hours.min
            start_hours[p.slug] = _last_value(last, "hours", p, hours, p.choices.hours.min, p.choices.hours.max)
    free = {}
    for p in offered:
        cluster, kind = cluster_of(p), p.resources.gpu_type
        if cluster is not None and needs_gpus(p):
            total, now = cluster.total(kind), cluster.free(kind)
            free[p.slug] = (
                f"all {gpu_words(total, kind)} in use now" if not now else f"{now} of {gpu_words(total, kind)} free now"
            )
    return template.render(
        profiles=offered,
        chosen=chosen,
        notice=" ".join(filter(None, [notice, *not_offered])),
        problem=problem,
        problem_details=problem_details,
        summaries={p.slug: summary(p, defaults, gpu_max.get(p.slug)) for p in offered},
        start_hours=start_hours,
        gpu_values=gpu_values,
        gpu_max=gpu_max,
        free=free,
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _last_value(last: Mapping[str, Any], field: str, profile: Profile, default: int, low: int, high: int) -> int:
    """The value the user chose last for the profile, if it is still allowed; else the default."""
    value = last.get(field) if last.get("profile") == profile.slug else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return min(max(default, low), high)


def granting_group(profile: Profile, *, admin: bool, groups: Mapping[str, Mapping[str, Any]]) -> str:
    """Why a user holds a profile, as a metric label with few values: 'everyone', else the first (by name) of
    the user's hub groups that grants it (profile.groups or the group's campushub_profiles), else 'admin'."""
    if profile.everyone:
        return "everyone"
    for group in sorted(groups):
        slugs = (groups[group] or {}).get(GROUP_PROPERTY) or []
        if group in profile.groups or (isinstance(slugs, list) and profile.slug in slugs):
            return group
    return "admin" if admin else "none"
