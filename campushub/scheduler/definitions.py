"""Schedule definitions: what a user sends, checked into a typed definition or refused with a ScheduleError.

Every check that needs no file happens here (cron, time zone, limits, alert addresses, the notebook's
path). The notebook itself is read as its owner by the service, and its parameters are checked
against papermill's inspection of it (`check_parameters`).
"""

from __future__ import annotations

import ast
import json
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .alerts import email_problem

TEMPLATE_PREFIX = "template:"
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CRON_NICKNAMES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024


class ScheduleError(ValueError):
    """A request that is refused; the message is meant for the user. `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def packaged_templates() -> Path:
    """CampusHub's template notebooks: notebooks/templates of the source tree, or the copy in the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "notebook_templates", here.parent / "notebooks" / "templates"):
        if candidate.is_dir():
            return candidate
    return here / "notebook_templates"


def template_dirs(site_dir: Path | None) -> list[Path]:
    """Where templates are looked up, the site's own first."""
    return [d for d in (site_dir, packaged_templates()) if d is not None]


def find_template(name: str, site_dir: Path | None) -> Path:
    for folder in template_dirs(site_dir):
        path = folder / f"{name}.ipynb"
        if path.is_file():
            return path
    raise ScheduleError(f"notebook: there is no template {name!r} (see the list of templates)")


def list_templates(site_dir: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in reversed(template_dirs(site_dir)):
        if folder.is_dir():
            found |= {p.stem: p for p in sorted(folder.glob("*.ipynb")) if TEMPLATE_NAME.fullmatch(p.stem)}
    return dict(sorted(found.items()))


def cron_problem(cron: str) -> str | None:
    if not isinstance(cron, str) or not cron.strip():
        return "cron: give an expression such as '0 2 * * *' (every day at 02:00)"
    text = cron.strip()
    if text.startswith("@"):
        return None if text in CRON_NICKNAMES else f"cron: {text!r} is not one of {', '.join(CRON_NICKNAMES)}"
    if len(text.split()) != 5:
        return f"cron: {text!r} must have 5 fields: minute hour day-of-month month day-of-week"
    if not croniter.is_valid(text):
        return f"cron: {text!r} is not a valid cron expression"
    return None


@cache
def known_timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def next_due(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time after `after` (aware) that the cron expression names, in its time zone."""
    local = after.astimezone(ZoneInfo(timezone))
    return croniter(cron.strip(), local).get_next(datetime).astimezone(UTC)


def notebook_path_problem(notebook: str) -> str | None:
    """Why a notebook's path cannot be used: it must lie inside the owner's home, given relative to it."""
    if "\x00" in notebook or any(ord(ch) < 32 for ch in notebook):
        return "notebook: the path holds control characters"
    path = PurePosixPath(notebook)
    if path.is_absolute() or ".." in path.parts or notebook.startswith("~"):
        return f"notebook: {notebook!r} is outside your home folder: give a path relative to your home, without '..'"
    if path.suffix != ".ipynb":
        return f"notebook: {notebook!r} is not a notebook (.ipynb)"
    return None


class Alerts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[str] = Field([], max_length=5, description="Addresses that get an email when a run fails.")
    webhooks: list[str] = Field([], max_length=3, description="URLs that get a JSON POST when a run fails.")
    on_success: bool = Field(False, description="Alert on success too.")

    @field_validator("emails")
    @classmethod
    def _emails(cls, emails: list[str]) -> list[str]:
        for address in emails:
            if problem := email_problem(address):
                raise ValueError(problem)
        return emails


Seconds = Annotated[int, Field(strict=True)]


class Definition(BaseModel):
    """A schedule as the user sends it (REST body, CLI, Lab); the owner is whoever sends it."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: str = Field("", max_length=80, description="A name for the schedule; default: the notebook's.")
    notebook: str = Field(min_length=1, max_length=1024, description="A path in the owner's home, or template:NAME.")
    parameters: dict[str, Any] = Field({}, description="Values for the notebook's parameters.")
    cron: str = Field(description="When to run: a 5-field cron expression, or @daily, @hourly ...")
    timezone: str = Field("UTC", description="The time zone the cron expression is read in, e.g. Europe/Berlin.")
    profile: str | None = Field(None, description="The resource profile of the run (Slurm).")
    timeout: Seconds = Field(3600, ge=60, description="Seconds a run may take once it started; then it is cancelled.")
    retries: Seconds = Field(0, ge=0, le=5, description="How often a failed run is tried again.")
    retry_delay: Seconds = Field(300, ge=0, le=86400, description="Seconds before a retry.")
    max_concurrent: Seconds = Field(1, ge=1, le=10, description="Runs of this schedule at once.")
    missed: Literal["skip", "run_once"] = Field(
        "skip", description="Runs that fell due while the service was down: skip them, or run once."
    )
    alerts: Alerts = Field({}, description="Who hears of failures.")

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        if any(ord(ch) < 32 for ch in name):
            raise ValueError("no control characters")
        return name.strip()

    @field_validator("notebook")
    @classmethod
    def _notebook(cls, notebook: str) -> str:
        if notebook.startswith(TEMPLATE_PREFIX):
            name = notebook.removeprefix(TEMPLATE_PREFIX)
            if not TEMPLATE_NAME.fullmatch(name):
                raise ValueError(f"there is no template {name!r}")
        elif problem := notebook_path_problem(notebook):
            raise ValueError(problem.removeprefix("notebook: "))
        return notebook

    @field_validator("cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        if problem := cron_problem(cron):
            raise ValueError(problem.removeprefix("cron: "))
        return cron.strip()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, timezone: str) -> str:
        if timezone not in known_timezones():
            raise ValueError(f"unknown time zone {timezone[:64]!r}: give an IANA name such as Europe/Berlin or UTC")
        return timezone

    @field_validator("parameters")
    @classmethod
    def _small(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(parameters)) > MAX_PARAMETERS_BYTES:
            raise ValueError(f"at most {MAX_PARAMETERS_BYTES // 1024} KiB of parameters")
        return parameters

    @property
    def template(self) -> str | None:
        return self.notebook.removeprefix(TEMPLATE_PREFIX) if self.notebook.startswith(TEMPLATE_PREFIX) else None

    @property
    def display_name(self) -> str:
        return self.name or self.template or PurePosixPath(self.notebook).stem


def parse_definition(body: Any, *, max_timeout: int, webhook_check=None) -> Definition:
    """A request body -> Definition, or ScheduleError naming every wrong field."""
    if not isinstance(body, Mapping):
        raise ScheduleError('the body must be a JSON object such as {"notebook": "...", "cron": "0 2 * * *"}')
    try:
        definition = Definition.model_validate(dict(body))
    except ValidationError as e:
        raise ScheduleError("; ".join(_problem(err) for err in e.errors())) from None
    if definition.timeout > max_timeout:
        raise ScheduleError(f"timeout: at most {max_timeout} seconds on this site")
    for url in definition.alerts.webhooks:
        if webhook_check and (problem := webhook_check(url)):
            raise ScheduleError(f"alerts.webhooks: {problem}")
    return definition


def _problem(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "not a setting of a schedule"
    return f"{where}: {message}" if where else message


# --- the notebook's own parameters ----------------------------------------------------------

TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def inspect_parameters(notebook: bytes) -> dict[str, dict]:
    """papermill's view of a notebook's parameters: {name: {inferred_type_name, default, help}}."""
    import nbformat
    import papermill

    try:
        nbformat.reads(notebook.decode(), as_version=4)
    except Exception as e:  # nbformat raises several kinds for a file that is not a notebook
        raise ScheduleError(f"notebook: not a readable notebook ({type(e).__name__}: {str(e)[:200]})") from None
    with tempfile.NamedTemporaryFile(suffix=".ipynb") as f:
        f.write(with_kernel(notebook))
        f.flush()
        try:
            return papermill.inspect_notebook(f.name)
        except ValueError as e:
            raise ScheduleError(f"notebook: papermill cannot read its parameters: {e}") from None


def with_kernel(notebook: bytes) -> bytes:
    """The notebook as a run gets it: one that names no kernel or language (saved outside Jupyter) gets
    Python 3's."""
    import nbformat

    node = nbformat.reads(notebook.decode(), as_version=4)
    kernelspec = node.metadata.setdefault("kernelspec", {})
    language = kernelspec.get("language") or node.metadata.get("language_info", {}).get("name")
    if kernelspec.get("name") and language:
        return notebook
    kernelspec.setdefault("name", "python3")
    kernelspec.setdefault("display_name", "Python 3")
    kernelspec["language"] = language or "python"
    return nbformat.writes(node).encode()


def parameter_type(spec: Mapping[str, Any]) -> str | None:
    """The type a parameter takes: its annotation, else its default's (None: anything)."""
    name = spec.get("inferred_type_name")
    if name in TYPES:
        return name
    try:
        default = ast.literal_eval(spec.get("default") or "")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(default, bool):
        return "bool"
    return next((name for name, types in TYPES.items() if type(default) is types[-1]), None)


def check_parameters(values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a value for a parameter the notebook does not have, or of another type than it declares."""
    if values and not declared:
        raise ScheduleError("parameters: the notebook has no cell tagged 'parameters', so it takes none")
    for name, value in values.items():
        if name not in declared:
            raise ScheduleError(
                f"parameters.{name}: the notebook has no such parameter (it has: {', '.join(declared)})"
            )
        expected = parameter_type(declared[name])
        if expected is None:
            continue
        ok = isinstance(value, TYPES[expected]) and not (expected != "bool" and isinstance(value, bool))
        if not ok:
            raise ScheduleError(
                f"parameters.{name}: must be {expected}, not {type(value).__name__} {json.dumps(value)[:40]}"
            )


def parameterized_notebook(notebook: bytes, values: Any) -> dict:
    """The notebook with `values` for its parameters, as a run would start it: checked against the
    parameters it declares, the kernel `with_kernel` gives, and papermill's injected-parameters cell after
    the cell tagged `parameters` (none when no value is given). A ScheduleError names a wrong value."""
    import nbformat
    from papermill.parameterize import parameterize_notebook

    if not isinstance(values, Mapping):
        raise ScheduleError('parameters: must be an object such as {"epochs": 3}')
    if len(json.dumps(values)) > MAX_PARAMETERS_BYTES:
        raise ScheduleError(f"parameters: at most {MAX_PARAMETERS_BYTES // 1024} KiB of parameters")
    check_parameters(values, inspect_parameters(notebook))
    node = nbformat.reads(with_kernel(notebook).decode(), as_version=4)
    if values:
        untagged = [cell for cell in node.cells if "tags" not in cell.metadata]
        for cell in untagged:  # papermill looks for its tags in every cell, and its own metadata
            cell.metadata["tags"] = []
        node.metadata.setdefault("papermill", {})
        node = parameterize_notebook(node, dict(values))
        for cell in untagged:
            del cell.metadata["tags"]
        del node.metadata["papermill"]  # not a papermill run: only the injected cell stays
    return node
