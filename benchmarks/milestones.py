"""Where the time of one spawn goes: milestones read from the hub's, Slurm's and the job's logs."""

from __future__ import annotations

import pwd
import re
from datetime import datetime
from pathlib import Path

from tests.cluster.slurm import SlurmCluster

JH_TIME = re.compile(r"^\[[A-Z] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ")
SLURM_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] ")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace(" ", "T")).timestamp()  # local time, as the logs write it


def timed_lines(path: Path, pattern: re.Pattern) -> list[tuple[float, str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            out.append((_epoch(m.group(1)), line[m.end() :]))
    return out


def first_at(lines, regex: str, after: float, before: float) -> float | None:
    rx = re.compile(regex)
    for t, msg in lines:
        if after - 0.01 <= t <= before + 0.01 and rx.search(msg):
            return t
    return None


SUBMIT_RX = {"campushub": r"Submitting server job for {user}", "stock": r"Spawner submitting command: .*"}
NOTICED_RX = {"campushub": r"Server job \d+ of {user} runs at", "stock": r"Notebook server job \d+ started at"}


def milestones(sample: dict, backend: str, user: str, hub_log: Path, cluster: SlurmCluster, job_log: Path | None):
    """Seconds from the spawn request to each milestone of one sequential spawn (None: not found)."""
    a, b = sample["start"], sample["ready"]
    hub = timed_lines(hub_log, JH_TIME)
    ctld = timed_lines(cluster.root / "log" / "slurmctld.log", SLURM_TIME)
    slurmd = timed_lines(cluster.root / "log" / "slurmd.log", SLURM_TIME)
    job = sample.get("job") or r"\d+"
    found = {
        "submit": first_at(hub, SUBMIT_RX[backend].format(user=user), a, b),
        "queued": first_at(ctld, rf"_slurm_rpc_submit_batch_job: JobId={job}\b", a, b),
        "allocated": first_at(ctld, rf"(Allocate|Started) JobId={job}\b", a, b),
        "launched": first_at(slurmd, rf"Launching batch job {job}\b", a, b),
        "reported": first_at(hub, rf"POST /hub/api/batchspawner \({user}@", a, b),
        "noticed": first_at(hub, NOTICED_RX[backend].format(user=user), a, b),
        "listening": first_at(timed_lines(job_log, JH_TIME), r"is running at", a, b) if job_log else None,
        "spawned": first_at(hub, rf"User {user} took [\d.]+ seconds to start", a, b),
        "ready": b,
    }
    return {k: (None if v is None else round(v - a, 3)) for k, v in found.items()}


def job_log_path(backend: str, user: str, job_id: str | None) -> Path | None:
    if not job_id:
        return None
    home = Path(pwd.getpwnam(user).pw_dir)
    if backend == "campushub":
        return home / ".campushub" / "logs" / f"jupyter-{job_id}.log"
    return home / f"jupyterhub_slurmspawner_{job_id}.log"
