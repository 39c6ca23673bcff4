"""The benchmark's statistics and its results page: pure functions of recorded samples."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.report import RESULTS_END, RESULTS_START, console, page_problem, write_doc
from benchmarks.stats import (
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


def test_percentiles_interpolate_between_order_statistics():
    assert pct([3.0], 95) == 3.0
    assert pct([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert pct([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert pct([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    # with 10 runs, p95 lies between the two slowest (as numpy's default computes it)
    ten = [float(x) for x in range(1, 11)]
    assert pct(ten, 95) == pytest.approx(9.55)
    assert pct(ten, 50) == pytest.approx(statistics.median(ten))


def test_summary_counts_failed_spawns_apart():
    samples = [{"seconds": 2.0}, {"error": "timed out"}, {"seconds": 4.0}, {"seconds": 3.0}]
    assert ready_seconds(samples) == [2.0, 4.0, 3.0]
    s = summary(samples)
    assert (s["n"], s["failed"], s["p50"], s["min"], s["max"], s["mean"]) == (3, 1, 3.0, 2.0, 4.0, 3.0)
    assert s["p95"] == pytest.approx(3.9)
    assert summary([{"error": "x"}, {"error": "y"}]) == {"n": 0, "failed": 2}


def test_phase_median_between_two_milestones_skips_spawns_without_them():
    res = {
        "campushub": {
            "sequential": [
                {"seconds": 4, "milestones": {"submit": 0.1, "launched": 0.5, "ready": 4.0}},
                {"seconds": 5, "milestones": {"submit": 0.3, "launched": None, "ready": 5.0}},
                {"seconds": 6, "milestones": {"submit": 0.2, "launched": 0.9, "ready": 6.0}},
                {"error": "failed"},
            ]
        }
    }
    assert phase_median(res, "campushub", "submit", "launched") == pytest.approx(0.55)
    # "request" is the spawn request itself, at 0
    assert phase_median(res, "campushub", "request", "submit") == pytest.approx(0.2)
    assert phase_median(res, "campushub", "launched", "listening") is None


def test_bootstrap_interval_is_reproducible_and_holds_the_observed_difference():
    a = [3.1, 3.4, 3.9, 3.2, 3.6, 3.3, 3.8, 3.5]
    b = [5.0, 5.6, 4.9, 6.2, 5.3, 5.1, 7.0, 5.4]
    lo, hi = bootstrap(a, b, lambda x, y: x - y)
    assert (lo, hi) == bootstrap(a, b, lambda x, y: x - y)  # a fixed seed: the same run, the same page
    assert lo <= statistics.median(a) - statistics.median(b) <= hi
    assert hi < 0  # clearly faster
    lo, hi = bootstrap(a, a, lambda x, y: x / y)
    assert lo <= 1.0 <= hi


def concurrent(*rounds):
    """Samples of concurrent rounds: each round a list of (start, seconds)."""
    return [
        {"round": r, "start": start, "seconds": sec, "ready": start + sec}
        for r, samples in enumerate(rounds)
        for start, sec in samples
    ]


def test_rounds_p50_makespan_and_round_figures():
    res = {
        "stock": {
            "concurrent": concurrent([(100.0, 4.0), (100.5, 6.0)], [(200.0, 8.0), (200.1, 2.0), (200.2, 5.0)])
            + [{"round": 1, "error": "timed out"}],
            "rounds": [{"hub_cpu": 1.0}, {"hub_cpu": 3.0}, {"hub_cpu": 2.5}],
        }
    }
    assert round_p50s(res, "stock") == [(0, 5.0), (1, 5.0)]
    # from the round's first request to its last ready: 6.5 s and 8.0 s
    assert makespan(res, "stock") == pytest.approx(7.25)
    assert round_median(res, "stock", "hub_cpu") == 2.5
    assert makespan({"stock": {"concurrent": [{"round": 0, "error": "x"}]}}, "stock") is None


def test_medians_of_a_key_and_of_the_floor_lag():
    floor = [
        {"seconds": 3.0, "listening": 2.9, "cpu": 2.5},
        {"seconds": 3.5, "listening": 3.3, "cpu": None},
        {"seconds": 4.0, "listening": None, "cpu": 2.7},
        {"error": "exited"},
    ]
    assert median_of(floor, "cpu") == pytest.approx(2.6)
    assert median_of(floor, "missing") is None
    assert listening_to_answer(floor) == pytest.approx(0.15)
    assert listening_to_answer([{"error": "x"}]) is None


def saved_run() -> dict:
    seq = [{"seconds": s, "start": 0.0, "ready": s, "cpu": 2.0, "milestones": {}} for s in (3.0, 3.5, 4.0)]
    return {
        "campushub": {"sequential": seq, "concurrent": concurrent([(0.0, 5.0), (0.1, 6.0)])},
        "stock": {"sequential": seq, "concurrent": concurrent([(0.0, 6.0), (0.2, 7.0)])},
        "floor": {"sequential": [dict(s, listening=s["seconds"] - 0.1) for s in seq]},
        "meta": {
            "date": "2026-01-01 00:00 UTC", "host": "h", "cpus": 2, "memory_gb": 8.0, "os": "Debian",
            "slurm": "22.05", "jupyterhub": "6", "batchspawner": "1.3.0", "campushub_poll_interval": 1.0,
            "users": 2, "runs": 3, "concurrent_rounds": 1, "duration_s": 60, "load_before": "0", "load_after": "0",
        },
    }  # fmt: skip


def test_writing_results_keeps_the_page_outside_its_markers(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nThe method, by hand.\n\n{RESULTS_START}\nold results\n{RESULTS_END}\n\n## Reading\n")
    write_doc(page, saved_run())
    text = page.read_text()
    assert text.startswith(f"# Title\n\nThe method, by hand.\n\n{RESULTS_START}\n")
    assert text.endswith(f"{RESULTS_END}\n\n## Reading\n")
    assert "old results" not in text
    assert "| spawn to ready, seconds | runs | p50 | p95 | min | max |" in text


def test_a_page_without_markers_is_never_overwritten(tmp_path):
    page = tmp_path / "notes.md"
    page.write_text("someone's notes\n")
    assert "no results markers" in page_problem(page)
    with pytest.raises(ValueError):
        write_doc(page, saved_run())
    assert page.read_text() == "someone's notes\n"
    new = tmp_path / "new" / "run.md"
    assert page_problem(new) is None
    write_doc(new, saved_run())
    assert RESULTS_START in new.read_text() and "docs/benchmarks.md" in new.read_text()


def test_a_run_whose_stock_spawns_all_failed_is_still_reported():
    res = saved_run()
    res["stock"]["sequential"] = [{"error": "timed out"}] * 3
    text = console(res)
    assert "| stock batchspawner 1.3.0 (SlurmSpawner), sequential (1 user) | 0 (3 failed) |" in text
    assert "Stock batchspawner: no spawn ready." in text


def test_a_benchmark_section_is_replaced_between_its_markers_and_the_rest_kept(tmp_path):
    from benchmarks.report import write_section

    page = tmp_path / "benchmarks.md"
    start, end = "<!-- x:start -->", "<!-- x:end -->"
    write_section(page, start, end, "\n## X\n\nmethod\n\n", f"{start}\nfirst\n{end}")
    assert page.read_text() == f"# Benchmarks\n\n## X\n\nmethod\n\n{start}\nfirst\n{end}\n"
    page.write_text(page.read_text() + "\nreading, by hand\n")
    write_section(page, start, end, "\n## X\n\nmethod\n\n", f"{start}\nsecond\n{end}")
    assert page.read_text() == f"# Benchmarks\n\n## X\n\nmethod\n\n{start}\nsecond\n{end}\n\nreading, by hand\n"
    page.write_text(f"{start} only one marker")
    with pytest.raises(ValueError, match="only one of the markers"):
        write_section(page, start, end, "", "")
    assert page.read_text() == f"{start} only one marker"


def test_the_startup_comparison_says_whether_the_spawn_is_within_the_unchanged_bare_start():
    from benchmarks.report import STARTUP_END, STARTUP_START, startup_block

    res = saved_run()
    res["floor-startup"] = {"sequential": [{"seconds": s, "cpu": 1.0} for s in (1.5, 1.6, 1.7)]}
    res["meta"]["startup_only"] = True
    block = startup_block(res)
    assert block.startswith(STARTUP_START) and block.endswith(STARTUP_END)
    assert "| bare server as CampusHub starts it: start to answer | 3 | 1.60 |" in block
    # the spawn (p50 3.5 s) against the unchanged bare start (p50 3.5 s): at most, so met
    assert "bare start of the unchanged server: **met**: p50 3.50 s vs 3.50 s" in block
    res["campushub"]["sequential"] = [dict(s, seconds=s["seconds"] + 0.5) for s in res["campushub"]["sequential"]]
    assert "unchanged server: **not met**: p50 4.00 s vs 3.50 s" in startup_block(res)
    # the full run's table shows both bare starts, and a run saved before the second one still renders
    assert "bare server as CampusHub starts it (campushub_lab.startup)" in console(res)
    del res["floor-startup"]
    assert "campushub_lab.startup" not in console(res)
