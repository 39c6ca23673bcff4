"""The course manifest: one YAML file per course, validated like the site file (every key described).

Relative paths (the roster) are relative to the folder holding the manifest. `load_course` returns a
`Course`: the manifest with its roster read and checked; a `CourseError` lists every problem, each with
its file and line.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from ..profiles import Model
from . import CourseError
from .roster import USERNAME, Student, load_roster

Username = Annotated[str, Field(pattern=USERNAME.pattern, description="A campus (and unix) user name.")]


class Term(Model):
    start: dt.date = Field(description="First day of the term (YYYY-MM-DD).")
    end: dt.date = Field(description="Last day of the term (YYYY-MM-DD); after start.")

    @model_validator(mode="after")
    def _ordered(self) -> Term:
        if self.end <= self.start:
            raise ValueError(f"the term ends ({self.end}) before it starts ({self.start}): end must be after start")
        return self


class Staff(Model):
    instructors: list[Username] = Field(min_length=1, description="Instructors' user names (at least one).")
    tas: list[Username] = Field([], description="Teaching assistants' user names.")

    @property
    def all(self) -> list[str]:
        return sorted(set(self.instructors) | set(self.tas))


class GpuQuota(Model):
    """Numbers only here: Slurm enforces them through the course's account (slurm_account), once the
    site has Slurm accounting."""

    max_gpus_per_student: int | None = Field(
        None, ge=0, le=1024, description="Most GPUs one student may hold at once (MaxTRESPerUser gres/gpu)."
    )
    max_gpus: int | None = Field(
        None, ge=0, le=65536, description="Most GPUs the course's students may hold at once, together (GrpTRES)."
    )


class Folders(Model):
    root: Path = Field(
        description="The course's folder on the shared filesystem (absolute; its parent must exist), e.g. "
        "/srv/courses/ml101. Apply creates root/materials (staff write, the course reads) and "
        "root/exchange/<student> (each student writes their own, staff read all)."
    )

    @model_validator(mode="after")
    def _absolute(self) -> Folders:
        if not self.root.is_absolute() or ".." in self.root.parts or self.root == Path("/"):
            raise ValueError(f"root must be an absolute path below / with no '..', not {str(self.root)!r}")
        return self


class Manifest(Model):
    """A semester course."""

    id: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,23}$",
        description="Short name (slug): lowercase letters, digits and '-', at most 24 characters. Names the hub "
        "groups course-<id>-students and course-<id>-staff, the staff role and the Slurm account.",
    )
    title: str = Field(min_length=1, max_length=200, description="The course's title, for people.")
    term: Term = Field(description="When the course runs.")
    staff: Staff = Field(description="Who teaches: they get the staff role over this course's students.")
    roster: Path = Field(
        description="The roster: a CSV file with the columns username, email, name, section "
        "(docs/courses.md), relative to the manifest."
    )
    profiles: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,29}$")]] = Field(
        [],
        description="Slugs of the site's profiles granted to the students (through the students group's "
        "property campushub_profiles: no restart).",
    )
    gpu_quota: GpuQuota = Field({}, description="GPU limits of the course's Slurm account.")
    folders: Folders | None = Field(None, description="The course's shared folders. Unset: none.")

    @property
    def students_group(self) -> str:
        return f"course-{self.id}-students"

    @property
    def staff_group(self) -> str:
        return f"course-{self.id}-staff"

    @property
    def staff_role(self) -> str:
        return f"course-{self.id}-staff"

    @property
    def slurm_account(self) -> str:
        return f"course-{self.id}"

    @property
    def unix_group(self) -> str:
        """Everyone who reads the course's folders: students and staff."""
        return f"course-{self.id}"


@dataclass(frozen=True)
class Course:
    manifest: Manifest
    students: list[Student]
    source: Path | None = None

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def usernames(self) -> list[str]:
        return [s.username for s in self.students]


def _lines(text: str) -> dict[tuple, int]:
    """The line of each key path in a YAML mapping (for messages)."""
    found: dict[tuple, int] = {}

    def walk(node, path):
        found.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                found[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return found
    if root is not None:
        walk(root, ())
    return found


def _problem(error: dict, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(error["loc"])
    while loc and loc not in lines:
        loc = loc[:-1]
    where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]).replace(".[", "[")
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    line = lines.get(loc, 1)
    return f"{source}:{line}: {where}: {message}" if where else f"{source}:{line}: {message}"


def parse_manifest(text: str, source: str = "manifest", base: Path | None = None) -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise CourseError([f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from None
    if not isinstance(data, dict):
        raise CourseError([f"{source}:1: expected a mapping of keys (id, title, term, staff, roster ...)"])
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        lines = _lines(text)
        raise CourseError([_problem(err, lines, source) for err in e.errors()]) from None
    if base is not None and not manifest.roster.is_absolute():
        manifest = manifest.model_copy(update={"roster": (base / manifest.roster).resolve()})
    return manifest


def check_course(course: Course, site_profiles: list[str] | None, lines: dict[tuple, int], source: str) -> None:
    """What the manifest and roster say together, and against the site's profiles."""
    m = course.manifest
    problems = []

    def at(*path: Any) -> str:
        return f"{source}:{lines.get(path, 1)}"

    for i, slug in enumerate(m.profiles):
        if site_profiles is not None and slug not in site_profiles:
            known = ", ".join(site_profiles) or "none"
            problems.append(f"{at('profiles', i)}: profiles[{i}]: the site has no profile {slug!r} (it has: {known})")
    roster = {s.username: s for s in course.students}
    for kind in ("instructors", "tas"):
        for i, name in enumerate(getattr(m.staff, kind)):
            if name in roster:
                problems.append(
                    f"{at('staff', kind, i)}: staff.{kind}[{i}]: {name} is also a student (roster line "
                    f"{roster[name].line}): staff and students are apart"
                )
    if problems:
        raise CourseError(problems)


def load_course(path: str | Path, site_profiles: list[str] | None = None) -> Course:
    """Read a manifest and its roster; every problem of either is listed (with its line) in one CourseError."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CourseError([f"{path}: cannot read the course manifest: {e.strerror}"]) from None
    manifest = parse_manifest(text, str(path), base=path.parent)
    course = Course(manifest, load_roster(manifest.roster), path)
    check_course(course, site_profiles, _lines(text), str(path))
    return course
