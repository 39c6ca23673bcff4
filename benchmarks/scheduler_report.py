"""The scheduler benchmark's figures and report: pure functions of what benchmarks/scheduler.py recorded.

A run's results `res` hold
- "overhead": per variant ("papermill", and "service" per check interval, e.g. "service-5s") a list of
  samples; a sample that ended well has "seconds" (and a service run its "phases"), a failed one "error";
- "burst": the limits, the sampled active counts, the records of every run, the timings;
- "meta": the machine, the versions, the settings.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path

from .report import fmt, write_section
from .stats import bootstrap, pct, ready_seconds, summary

TARGET_OVERHEAD = 1.5  # seconds more than bare papermill, at the median
RESULTS_START = "<!-- scheduler-results:start (written by benchmarks/scheduler.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- scheduler-results:end -->"
# the section --write adds to a page that has no scheduler results yet; the page's own text stays
SECTION = """
## Scheduler: per-run overhead and a burst of due runs

`make bench-scheduler` (no root, no Slurm; it runs `python -m benchmarks.scheduler`) drives the
nightly-notebooks service in-process: a `campushub.scheduler.Scheduler` on its SQLite store with the
local executor of the demo (runs are processes of the current account, homes in the state folder), its
loop (`run_forever`) running, and no hub. One small notebook, written by the benchmark into a
templates folder of its own (a parameters cell and one cell that sums a million squares), is used for
everything, as the same file.

- **Overhead per run**: the same notebook, run N times each way, the ways taking turns in a rotating
  order after one unmeasured warm-up each: bare `papermill --no-progress-bar --log-output --cwd FOLDER
  IN OUT` of the hub's environment (what a user runs by hand, with the flags the service's job uses,
  its output into a log file as the job's is), timed from its start to its exit; and through the
  service, from the API's run-now call (`Scheduler.run_now`) until the run's record is final
  (polled every 20 ms), once with the site's default `check_interval` (5 s) and once with 1 s,
  each a service of its own. The difference of the medians is the overhead; its interval is a
  bootstrap over both groups.
- **Burst**: 100 schedules (10 owners with 10 each, cron `* * * * *`, `max_concurrent` 1), with
  `scheduler.max_active_runs` 6 and `max_active_runs_per_user` 2, all set due at the same minute
  boundary (within the service's grace) before the loop starts. Once the service has made the 100
  runs, the benchmark pauses the 100 schedules through the service (as `PATCH {"paused": true}` does),
  so that the next minute adds no runs, and the runs already made go on. A thread samples the store
  every 0.2 s for the runs in the active states (submitting, queued, running): in all, per owner and
  per schedule. The records give a second, exact view: the most runs whose submitted-to-finished
  times overlap. Every schedule must have exactly one run, for that minute. Each owner's 10 schedules
  are made one after the other, and the service takes due runs in the order they were made, so the
  first owners' runs meet the per-owner limit while the next owners' fill the slots left. With one run
  per schedule, the per-schedule limit cannot be passed here; it is sampled all the same.

"""


# --- overhead ---------------------------------------------------------------------------------


def overhead(res: dict, variant: str) -> dict | None:
    """The variant's median minus bare papermill's, with the 95% bootstrap interval of that difference."""
    a, b = ready_seconds(res["overhead"][variant]), ready_seconds(res["overhead"]["papermill"])
    if not a or not b:
        return None
    lo, hi = bootstrap(a, b, lambda x, y: x - y)
    return {"seconds": statistics.median(a) - statistics.median(b), "lo": lo, "hi": hi}


def phase_median(samples: list[dict], phase: str) -> float | None:
    vals = [x["phases"][phase] for x in samples if x.get("phases", {}).get(phase) is not None]
    return statistics.median(vals) if vals else None


# --- burst ------------------------------------------------------------------------------------


def active_counts(active: list[tuple[str, int]]) -> dict:
    """One sample of the store: the (owner, schedule id) of each active run -> the counts the limits bound."""
    owners, schedules = Counter(o for o, _ in active), Counter(s for _, s in active)
    return {
        "total": len(active),
        "per_owner": max(owners.values(), default=0),
        "per_schedule": max(schedules.values(), default=0),
    }


def peaks(samples: list[dict]) -> dict:
    """The most seen of each count over the samples."""
    return {k: max((s[k] for s in samples), default=0) for k in ("total", "per_owner", "per_schedule")}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end) that hold at one moment (one that ends as another starts: not both)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in events:  # at a tie, -1 sorts first
        now += step
        most = max(most, now)
    return most


def record_peaks(runs: list[dict]) -> dict:
    """From the records: the most runs at once between submitted and finished, in all, of one owner, of
    one schedule (runs without both times are left out)."""
    timed = [r for r in runs if r.get("submitted") is not None and r.get("finished") is not None]
    out = {"total": max_overlap([(r["submitted"], r["finished"]) for r in timed])}
    for key, field in (("per_owner", "owner"), ("per_schedule", "schedule_id")):
        groups = defaultdict(list)
        for r in timed:
            groups[r[field]].append((r["submitted"], r["finished"]))
        out[key] = max((max_overlap(v) for v in groups.values()), default=0)
    return out


def occurrences(runs: list[dict], schedule_ids: list[int], due: str) -> dict:
    """Exactly one run per schedule for the minute `due`: how many schedules had none (missing), how many
    occurrences got more than one run (duplicated), and runs of any other time or trigger (other)."""
    of_minute = Counter(r["schedule_id"] for r in runs if r["due"] == due and r["trigger"] == "schedule")
    return {
        "schedules": len(schedule_ids),
        "runs": len(runs),
        "missing": sum(1 for i in schedule_ids if of_minute[i] == 0),
        "duplicated": sum(1 for n in of_minute.values() if n > 1),
        "other": sum(1 for r in runs if r["due"] != due or r["trigger"] != "schedule"),
    }


def limit_verdict(seen: dict, limits: dict) -> bool:
    return all(seen[k] <= limits[k] for k in ("total", "per_owner", "per_schedule"))


# --- the report -------------------------------------------------------------------------------


def label(variant: str, meta: dict) -> str:
    if variant == "papermill":
        return "bare papermill (the peer)"
    interval = float(variant.removeprefix("service-").removesuffix("s"))
    default = " (the site's default)" if interval == meta["default_check_interval"] else ""
    return f"through the service, check_interval {interval:g} s{default}"


def overhead_table(res: dict) -> str:
    out = ["| one run of the notebook, seconds | runs | p50 | p95 | min | max |", "|---|---:|---:|---:|---:|---:|"]
    for variant, samples in res["overhead"].items():
        s = summary(samples)
        if not s["n"]:
            out.append(f"| {label(variant, res['meta'])} | 0 ({s['failed']} failed) | – | – | – | – |")
            continue
        runs = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        out.append(
            f"| {label(variant, res['meta'])} | {runs} | {fmt(s['p50'])} | {fmt(s['p95'])} | {fmt(s['min'])} "
            f"| {fmt(s['max'])} |"
        )
    return "\n".join(out)


PHASES = [
    ("submit", "run-now → job started (read and check the notebook, run folder, input copy, start)"),
    ("job", "job started → papermill done (bash, papermill, the kernel, the notebook)"),
    ("finish", "papermill done → run final in the store (noticed, output read, HTML rendered)"),
    ("seen", "final in the store → seen by the benchmark's 20 ms poll"),
]


def phase_table(res: dict) -> str:
    variants = [v for v in res["overhead"] if v != "papermill"]
    head = " | ".join(f"check_interval {v.removeprefix('service-').removesuffix('s')} s" for v in variants)
    out = [f"| where a service run's time goes (median, seconds) | {head} |", "|---|" + "---:|" * len(variants)]
    for phase, text in PHASES:
        cells = " | ".join(fmt(phase_median(res["overhead"][v], phase)) for v in variants)
        out.append(f"| {text} | {cells} |")
    return "\n".join(out)


def overhead_lines(res: dict) -> list[str]:
    lines = []
    bare = ready_seconds(res["overhead"]["papermill"])
    for variant in res["overhead"]:
        if variant == "papermill":
            continue
        o = overhead(res, variant)
        if o is None:
            lines.append(f"- {label(variant, res['meta'])}: no figure (no run of one of the two succeeded).")
            continue
        met = "met" if o["seconds"] <= TARGET_OVERHEAD else "not met"
        service = ready_seconds(res["overhead"][variant])
        lines.append(
            f"- Overhead, {label(variant, res['meta'])}: **{o['seconds']:+.2f} s** at the median "
            f"({pct(service, 50):.2f} s vs {pct(bare, 50):.2f} s; 95% bootstrap interval {o['lo']:+.2f} to "
            f"{o['hi']:+.2f} s). Target at most {TARGET_OVERHEAD} s more: **{met}**."
        )
    return lines


def burst_table(b: dict) -> str:
    limits = b["limits"]
    seen, records = peaks(b["samples"]), record_peaks(b["runs"])
    rows = [
        ("total", "active runs, all owners (`max_active_runs`)"),
        ("per_owner", "active runs of one owner (`max_active_runs_per_user`)"),
        ("per_schedule", "active runs of one schedule (`max_concurrent`)"),
    ]
    out = [
        "| burst: most at once | sampled every 0.2 s | from the records (submitted → finished) | limit |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {text} | {seen[k]} | {records[k]} | {limits[k]} |" for k, text in rows]
    return "\n".join(out)


def burst_lines(b: dict) -> list[str]:
    limits, seen, records = b["limits"], peaks(b["samples"]), record_peaks(b["runs"])
    occ = occurrences(b["runs"], b["schedule_ids"], b["due"])
    states = Counter(r["state"] for r in b["runs"])
    ended = ", ".join(f"{n} {state}" for state, n in states.most_common())
    durations = [r["finished"] - r["submitted"] for r in b["runs"] if r.get("submitted") and r.get("finished")]
    respected = limit_verdict(seen, limits) and limit_verdict(records, limits)
    clean = occ["missing"] == occ["duplicated"] == occ["other"] == 0
    lines = [
        f"- {occ['schedules']} schedules fell due at {b['due']}: the service made {occ['runs']} runs "
        f"({occ['missing']} schedules without a run, {occ['duplicated']} occurrences with more than one, "
        f"{occ['other']} runs of another time): "
        f"**{'exactly one run per schedule-occurrence' if clean else 'NOT one run per schedule-occurrence'}**. "
        f"The service made them {fmt(b['made_s'])} s after its loop started; the benchmark paused the schedules "
        f"{fmt(b['paused_s'])} s after the start, {fmt(b['next_minute_s'])} s before the next minute was due.",
        f"- All runs ended {fmt(b['seconds'])} s after the loop started ({ended}; "
        f"{len(b['samples'])} samples of the store). One run took {fmt(pct(durations, 50) if durations else None)} s "
        f"from submission to its end at the median ({fmt(max(durations) if durations else None)} s at most), with "
        f"up to {limits['total']} at once on {b['cpus']} cores.",
        f"- Concurrency limits (in all {limits['total']}, per owner {limits['per_owner']}, per schedule "
        f"{limits['per_schedule']}): "
        + ("**respected** in every sample and in the records." if respected else "**NOT respected** (the table)."),
    ]
    return lines


def results_block(res: dict) -> str:
    m, b = res["meta"], res["burst"]
    lines = [
        RESULTS_START,
        "",
        f"Run of {m['date']} on `{m['host']}`: {m['cpus']} CPU cores, {m['memory_gb']:.0f} GB RAM, {m['os']}; "
        f"Python {m['python']}, papermill {m['papermill']}, nbclient {m['nbclient']}, ipykernel {m['ipykernel']}, "
        f"nbconvert {m['nbconvert']}, SQLAlchemy {m['sqlalchemy']} on SQLite, CampusHub {m['campushub']}. "
        f"{m['runs']} runs per way (after one warm-up each). Load average before / after the run: "
        f"{m['load_before']} / {m['load_after']}. The run took {m['duration_s'] / 60:.1f} minutes.",
        "",
        overhead_table(res),
        "",
        *overhead_lines(res),
        "",
        phase_table(res),
        "",
        f"Burst: {len(b['schedule_ids'])} schedules of {b['owners']} owners, check_interval {b['check_interval']:g} s.",
        "",
        burst_table(b),
        "",
        *burst_lines(b),
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


def console(res: dict) -> str:
    b = res["burst"]
    parts = ["", overhead_table(res), "", *overhead_lines(res), "", phase_table(res), "", burst_table(b), ""]
    return "\n".join(parts + burst_lines(b))


def page_problem(path: Path) -> str | None:
    """Why --write could not put results into this page (None: it can)."""
    if not path.exists():
        return None
    text = path.read_text()
    if (RESULTS_START in text) != (RESULTS_END in text):
        return f"{path} has only one of the scheduler results markers: nothing written, so as not to lose text"
    return None


def write_doc(path: Path, res: dict) -> None:
    """Replace what lies between the page's scheduler markers with this run's results; a page without
    them (or no page) gets the section, method and results, at its end. The rest of the page stays."""
    problem = page_problem(path)
    if problem:
        raise ValueError(problem)
    write_section(path, RESULTS_START, RESULTS_END, SECTION, results_block(res))
