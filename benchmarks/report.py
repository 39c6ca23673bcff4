"""The report of a run: the tables and lines printed at the end, and the results block that --write
puts into docs/benchmarks.md between its markers. The method and how to read the figures are prose
in that page, outside the markers, and stay as they are."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from .stats import (
    bootstrap,
    listening_to_answer,
    makespan,
    median_of,
    pct,
    phase_median,
    ready_seconds,
    round_median,
    round_p50s,
    summary,
)

LABELS = {
    "campushub": "CampusHub (campushub.spawners.slurm)",
    "stock": "stock batchspawner 1.3.0 (SlurmSpawner)",
    "floor": "floor: bare jupyterhub-singleuser, no Slurm",
    "floor-startup": "bare server as CampusHub starts it (campushub_lab.startup), no Slurm",
}


def machine() -> dict:
    """When and on what a run ran: the first line of every benchmark's results."""
    os_name = "Linux"
    with contextlib.suppress(OSError):
        lines = Path("/etc/os-release").read_text().splitlines()
        os_name = dict(line.split("=", 1) for line in lines if "=" in line).get("PRETTY_NAME", "Linux").strip('"')
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "os": os_name,
        "python": platform.python_version(),
    }


RESULTS_START = "<!-- results:start (written by benchmarks/spawn.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- results:end -->"
# a page that --write creates: the results under a title, the method where it is kept
NEW_PAGE = """\
# Benchmark: spawn to ready

Results of one run of `python -m benchmarks.spawn`. How they are measured, on what, and how to read
them: docs/benchmarks.md in CampusHub's repository.

"""


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def results_table(res: dict) -> str:
    rows = [
        ("campushub", "sequential", f"{LABELS['campushub']}, sequential (1 user)"),
        ("stock", "sequential", f"{LABELS['stock']}, sequential (1 user)"),
        ("campushub", "concurrent", f"{LABELS['campushub']}, {res['meta']['users']} users at once"),
        ("stock", "concurrent", f"{LABELS['stock']}, {res['meta']['users']} users at once"),
        ("floor", "sequential", LABELS["floor"]),
        ("floor-startup", "sequential", LABELS["floor-startup"]),
    ]
    rows = [r for r in rows if r[0] in res]  # a run saved before the second floor lacks it
    out = ["| spawn to ready, seconds | runs | p50 | p95 | min | max |", "|---|---:|---:|---:|---:|---:|"]
    for backend, mode, label in rows:
        s = summary(res[backend][mode])
        if not s["n"]:
            out.append(f"| {label} | 0 ({s['failed']} failed) | – | – | – | – |")
            continue
        runs = f"{s['n']}" + (f" ({s['failed']} failed)" if s["failed"] else "")
        out.append(f"| {label} | {runs} | {fmt(s['p50'])} | {fmt(s['p95'])} | {fmt(s['min'])} | {fmt(s['max'])} |")
    return "\n".join(out)


PHASES = [
    ("request", "submit", "request → sbatch runs (hub, sudo)"),
    ("submit", "launched", "sbatch → batch script launched on the node (Slurm)"),
    ("launched", "listening", "launch → the server listens (its own start; stock reports its port first)"),
    ("listening", "spawned", "listening → the hub's HTTP check passes (CampusHub: the port report, then one check)"),
    ("spawned", "ready", "check passed → ready (proxy route, the answer)"),
    ("launched", "reported", "meanwhile: launch → port reported"),
    ("reported", "noticed", "meanwhile: port reported → the spawner's start() returns"),
]


def phase_table(res: dict) -> str:
    out = ["| phase of one sequential spawn (median, seconds) | CampusHub | stock |", "|---|---:|---:|"]
    for a, b, text in PHASES:
        out.append(
            f"| {text} | {fmt(phase_median(res, 'campushub', a, b))} | {fmt(phase_median(res, 'stock', a, b))} |"
        )
    total = [fmt(summary(res[x]["sequential"]).get("p50")) for x in ("campushub", "stock")]
    out.append(f"| spawn to ready (p50) | {total[0]} | {total[1]} |")
    return "\n".join(out)


def verdicts(res: dict) -> list[str]:
    n = res["meta"]["users"]
    ch, st, fl = (ready_seconds(res[b]["sequential"]) for b in ("campushub", "stock", "floor"))
    lines = []
    if ch and st:
        a, b = pct(ch, 50), pct(st, 50)
        lo, hi = bootstrap(ch, st, lambda x, y: x - y)
        noise = "within the noise of these runs" if lo <= 0 <= hi else ("slower" if lo > 0 else "faster")
        lines.append(
            f"- CampusHub no slower than stock, one user: **{'met' if a <= b else 'not met'}**: p50 {a:.2f} s "
            f"vs {b:.2f} s ({a / b:.2f}x), p95 {pct(ch, 95):.2f} s vs {pct(st, 95):.2f} s. The p50 difference, "
            f"{a - b:+.2f} s, has a 95% bootstrap interval of {lo:+.2f} to {hi:+.2f} s: {noise}."
        )
    cc, sc = ready_seconds(res["campushub"]["concurrent"]), ready_seconds(res["stock"]["concurrent"])
    if cc and sc:
        a, b = pct(cc, 50), pct(sc, 50)
        rounds = sorted(
            [(r, "CampusHub", v) for r, v in round_p50s(res, "campushub")]
            + [(r, "stock", v) for r, v in round_p50s(res, "stock")]
        )
        per_hub = {hub: [v for _, h, v in rounds if h == hub] for hub in ("CampusHub", "stock")}
        spread = max(max(v) - min(v) for v in per_hub.values())
        if min(len(v) for v in per_hub.values()) < 2:
            judged = "one round per hub, so no round-to-round spread to judge the difference by"
        elif abs(a - b) < spread:
            judged = "the difference is smaller than the spread between one hub's own rounds, so within the noise"
        else:
            judged = "the difference exceeds the spread between one hub's own rounds"
        lines.append(
            f"- CampusHub no slower than stock, {n} users at once: **{'met' if a <= b else 'not met'}**: p50 "
            f"{a:.2f} s vs {b:.2f} s ({a / b:.2f}x), p95 {pct(cc, 95):.2f} s vs {pct(sc, 95):.2f} s. "
            f"p50 of each round, in the order run: {', '.join(f'{h} {v:.1f} s' for _, h, v in rounds)}; {judged}."
        )
    if ch and fl:
        ratio = pct(ch, 50) / pct(fl, 50)
        lo, hi = bootstrap(ch, fl, lambda x, y: x / y)
        stock = f"{pct(st, 50) / pct(fl, 50):.2f}x" if st else "no spawn ready"
        lines.append(
            f"- CampusHub within 1.5x of the floor for one user: **{'met' if ratio <= 1.5 else 'not met'}**: "
            f"p50 {pct(ch, 50):.2f} s vs floor {pct(fl, 50):.2f} s, {ratio:.2f}x (95% bootstrap interval "
            f"{lo:.2f}x to {hi:.2f}x; 1.5x would be {1.5 * pct(fl, 50):.2f} s). Stock batchspawner: {stock}."
        )
    return lines + startup_verdicts(res)


def startup_verdicts(res: dict) -> list[str]:
    ch, fl = ready_seconds(res["campushub"]["sequential"]), ready_seconds(res["floor"]["sequential"])
    fs = ready_seconds(res.get("floor-startup", {}).get("sequential", []))
    if not (ch and fl and fs):
        return []
    lo, hi = bootstrap(ch, fl, lambda x, y: x - y)
    slo, shi = bootstrap(fs, fl, lambda x, y: x - y)
    met = pct(ch, 50) <= pct(fl, 50)
    return [
        f"- CampusHub's one-user spawn to ready at most the bare start of the unchanged server: "
        f"**{'met' if met else 'not met'}**: p50 {pct(ch, 50):.2f} s vs {pct(fl, 50):.2f} s, p95 {pct(ch, 95):.2f} s "
        f"vs {pct(fl, 95):.2f} s; the p50 difference, {pct(ch, 50) - pct(fl, 50):+.2f} s, has a 95% bootstrap "
        f"interval of {lo:+.2f} to {hi:+.2f} s.",
        f"- The bare start as CampusHub starts it: p50 {pct(fs, 50):.2f} s vs {pct(fl, 50):.2f} s unchanged "
        f"({pct(fs, 50) - pct(fl, 50):+.2f} s, 95% bootstrap interval {slo:+.2f} to {shi:+.2f} s); CPU time until "
        f"it answered (median) {fmt(median_of(res['floor-startup']['sequential'], 'cpu'))} s vs "
        f"{fmt(median_of(res['floor']['sequential'], 'cpu'))} s.",
    ]


STARTUP_START = "<!-- startup-results:start (written by benchmarks/spawn.py --startup --write; do not edit by hand) -->"
STARTUP_END = "<!-- startup-results:end -->"
STARTUP_SECTION = (
    STARTUP_START,
    STARTUP_END,
    "\n## The server's start: unchanged, and as CampusHub starts it\n\n`make bench BENCH_ARGS=--startup`.\n\n",
)


def startup_block(res: dict) -> str:
    """The --startup run's results: CampusHub's one-user spawn and the two bare starts, taking turns."""
    m = res["meta"]
    out = [
        "| seconds | runs | p50 | p95 | min | max | CPU until ready (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, label in [
        ("campushub", f"{LABELS['campushub']}: spawn to ready (1 user)"),
        ("floor", "bare jupyterhub-singleuser, unchanged: start to answer"),
        ("floor-startup", "bare server as CampusHub starts it: start to answer"),
    ]:
        x = summary(res[backend]["sequential"])
        cpu = fmt(median_of(res[backend]["sequential"], "cpu"))
        runs = f"{x['n']}" + (f" ({x['failed']} failed)" if x["failed"] else "")
        if not x["n"]:
            out.append(f"| {label} | {runs} | – | – | – | – | – |")
            continue
        out.append(
            f"| {label} | {runs} | {fmt(x['p50'])} | {fmt(x['p95'])} | {fmt(x['min'])} | {fmt(x['max'])} | {cpu} |"
        )
    return "\n".join(
        [
            STARTUP_START,
            "",
            f"Run of {m['date']} on `{m['host']}`: {m['cpus']} CPU cores, {m['os']}; Slurm {m['slurm']}, JupyterHub "
            f"{m['jupyterhub']}. {m['runs']} runs of each, taking turns in a rotating order after one warm-up each. "
            f"Load average before / after the run: {m['load_before']} / {m['load_after']}. The run took "
            f"{m['duration_s'] / 60:.1f} minutes.",
            "",
            *out,
            "",
            *startup_verdicts(res),
            "",
            STARTUP_END,
        ]
    )


def cpu_lines(res: dict) -> list[str]:
    n = res["meta"]["users"]
    cores = res["meta"]["cpus"]
    per = {b: median_of(res[b]["sequential"], "cpu") for b in ("campushub", "stock", "floor")}
    lines = [
        f"- CPU time of one server start, until ready (median): {fmt(per['campushub'])} s in a CampusHub job "
        "(campushub-singleuser, the server in the same process), "
        f"{fmt(per['stock'])} s in a stock job (batchspawner-singleuser, then jupyterhub-singleuser), "
        f"{fmt(per['floor'])} s for the bare jupyterhub-singleuser. {n} such starts need at least "
        f"{fmt(None if per['campushub'] is None else n * per['campushub'] / cores)} s on {cores} cores "
        "before anything else runs.",
    ]
    rounds = {b: res[b].get("rounds", []) for b in ("campushub", "stock")}
    if rounds["campushub"] and rounds["stock"]:

        def med(b, k):
            return round_median(res, b, k)

        lines.append(
            f"- While {n} servers started at once, each hub process with the Slurm commands it ran "
            f"(sudo, squeue, sbatch) used {med('campushub', 'hub_cpu'):.1f} s of CPU (CampusHub) and "
            f"{med('stock', 'hub_cpu'):.1f} s (stock), slurmctld {med('campushub', 'slurmctld_cpu'):.1f} s and "
            f"{med('stock', 'slurmctld_cpu'):.1f} s (medians over rounds): CPU the servers could not use."
        )
    return lines


def floor_note(res: dict) -> str:
    fl = res["floor"]["sequential"]
    logged = median_of(fl, "listening")
    lag = listening_to_answer(fl)
    return (
        f"For comparison, the bare server logged that it was listening {fmt(logged)} s after its start and "
        f"answered the 20 ms poll {fmt(lag)} s after that line (medians): the time between a job's server "
        "logging it and the hub's check passing is the hub's waiting, not the server's."
    )


def results_block(res: dict) -> str:
    m = res["meta"]
    lines = [
        RESULTS_START,
        "",
        f"Run of {m['date']} on `{m['host']}`: {m['cpus']} CPU cores, {m['memory_gb']:.0f} GB RAM, {m['os']}; "
        f"Slurm {m['slurm']}, JupyterHub {m['jupyterhub']}, batchspawner {m['batchspawner']}. "
        f"CampusHub's Slurm poll interval {m['campushub_poll_interval']} s, stock's startup_poll_interval 0.5 s. "
        f"{m['runs']} sequential runs per row, {m['users']} users at once in {m['concurrent_rounds']} round(s) per hub "
        f"(pooled). Load average before / after the run: {m['load_before']} / {m['load_after']}. "
        f"The run took {m['duration_s'] / 60:.1f} minutes.",
        "",
        results_table(res),
        "",
        f"Concurrent: each user's time runs from its own spawn request to its ready event. All {m['users']} "
        f"servers were ready {fmt(makespan(res, 'campushub'))} s (CampusHub) and "
        f"{fmt(makespan(res, 'stock'))} s (stock) after the first request (median over rounds).",
        "",
        *cpu_lines(res),
        "",
        "Targets:",
        "",
        *verdicts(res),
        "",
        "Where the time of one spawn goes, from the hub's, Slurm's and the job's logs (each phase's median "
        'is taken separately, so they add up to the total only roughly; the two "meanwhile" rows overlap '
        "the others):",
        "",
        phase_table(res),
        "",
        floor_note(res),
        "",
        RESULTS_END,
    ]
    return "\n".join(lines)


def console(res: dict) -> str:
    """What a run prints at its end."""
    parts = ["", results_table(res), "", "\n".join(verdicts(res)), "\n".join(cpu_lines(res)), "", phase_table(res)]
    return "\n".join(parts)


def page_problem(path: Path) -> str | None:
    """Why --write could not put results into this page (None: it can)."""
    if not path.exists():
        return None
    text = path.read_text()
    if RESULTS_START in text and RESULTS_END in text:
        return None
    return f"{path} has no results markers ({RESULTS_START} ... {RESULTS_END}): nothing written, so as not to lose it"


def write_doc(path: Path, res: dict) -> None:
    """Replace what lies between the page's markers with this run's results; a new page gets them under a
    title. Everything outside the markers (the method, the reading) stays as it is."""
    problem = page_problem(path)
    if problem:
        raise ValueError(problem)
    block = results_block(res)
    if path.exists():
        head, rest = path.read_text().split(RESULTS_START, 1)
        _, tail = rest.split(RESULTS_END, 1)
        path.write_text(head + block + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(NEW_PAGE + block + "\n")


def write_section(path: Path, start: str, end: str, section: str, block: str) -> None:
    """Replace what lies between a benchmark's markers (start, end) with its results block; a page without
    them (or no page) gets the section (its title and method) and the block at its end. The rest stays."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if (start in text) != (end in text):
        raise ValueError(f"{path} has only one of the markers {start} ... {end}: nothing written")
    if start in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n" + section + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(res: dict, block: str, args, section: tuple[str, str, str], log) -> None:
    """A benchmark's ending: its results block printed, saved as JSON (--json), written into the page (--write);
    `section` is its (start marker, end marker, section text)."""
    print(block)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.write:
        write_section(Path(args.write), *section, block)
        log(f"results written into {args.write}")
