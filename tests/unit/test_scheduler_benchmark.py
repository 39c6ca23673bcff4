"""The scheduler benchmark's figures and its section of the results page: pure functions of recorded samples."""

from __future__ import annotations

import pytest

from benchmarks.report import RESULTS_START as SPAWN_START
from benchmarks.scheduler_report import (
    RESULTS_END,
    RESULTS_START,
    active_counts,
    console,
    limit_verdict,
    max_overlap,
    occurrences,
    overhead,
    page_problem,
    peaks,
    phase_median,
    record_peaks,
    write_doc,
)

DUE = "2026-01-01T02:00:00+00:00"


def test_active_counts_of_one_sample_and_their_peaks():
    assert active_counts([]) == {"total": 0, "per_owner": 0, "per_schedule": 0}
    one = active_counts([("ada", 1), ("ada", 2), ("bob", 3), ("ada", 2)])
    assert one == {"total": 4, "per_owner": 3, "per_schedule": 2}
    other = active_counts([("bob", 3), ("cy", 4), ("dee", 5), ("eve", 6), ("fay", 7)])
    assert peaks([one, other]) == {"total": 5, "per_owner": 3, "per_schedule": 2}
    assert peaks([]) == {"total": 0, "per_owner": 0, "per_schedule": 0}


def test_max_overlap_counts_intervals_that_hold_at_once():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 10), (1, 2), (3, 4), (5, 11)]) == 2
    assert max_overlap([(0, 5), (1, 6), (2, 7)]) == 3
    # one run ends as the next starts in its slot: never both at once
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1


def run(i, owner, schedule_id, submitted, finished, due=DUE, trigger="schedule", state="succeeded"):
    return {"id": i, "owner": owner, "schedule_id": schedule_id, "submitted": submitted, "finished": finished,
            "due": due, "trigger": trigger, "state": state}  # fmt: skip


def test_record_peaks_per_owner_and_per_schedule_and_limits():
    runs = [
        run(1, "ada", 1, 0.0, 4.0),
        run(2, "ada", 2, 1.0, 5.0),
        run(3, "bob", 3, 2.0, 3.0),
        run(4, "bob", 4, 3.0, 6.0),  # starts as run 3 ends
        run(5, "cy", 5, None, 9.0),  # never submitted (failed before its job started): left out
    ]
    seen = record_peaks(runs)
    assert seen == {"total": 3, "per_owner": 2, "per_schedule": 1}
    assert limit_verdict(seen, {"total": 3, "per_owner": 2, "per_schedule": 1})
    assert not limit_verdict(seen, {"total": 6, "per_owner": 1, "per_schedule": 1})


def test_occurrences_finds_missing_duplicated_and_other_runs():
    clean = [run(i, "ada", i, 0.0, 1.0) for i in (1, 2, 3)]
    assert occurrences(clean, [1, 2, 3], DUE) == {"schedules": 3, "runs": 3, "missing": 0, "duplicated": 0, "other": 0}
    messy = [
        run(1, "ada", 1, 0.0, 1.0),
        run(2, "ada", 1, 0.0, 1.0),  # the same occurrence twice
        run(3, "ada", 2, 0.0, 1.0, due="2026-01-01T02:01:00+00:00"),  # the next minute, not this one
        run(4, "ada", 3, 0.0, 1.0, trigger="manual"),
    ]
    assert occurrences(messy, [1, 2, 3], DUE) == {"schedules": 3, "runs": 4, "missing": 2, "duplicated": 1, "other": 2}


def saved_run() -> dict:
    def service(seconds):
        phases = {"submit": 0.02, "job": seconds - 0.2, "finish": 0.15, "seen": 0.01}
        return {"seconds": seconds, "phases": phases}

    runs = [run(i, f"o{i % 2}", i, float(i), i + 3.0) for i in range(1, 5)]
    return {
        "overhead": {
            "papermill": [{"seconds": s} for s in (3.0, 3.2, 2.8, 3.1)],
            "service-5s": [service(s) for s in (3.3, 3.4, 3.2)] + [{"error": "run 9 failed: x"}],
            "service-1s": [service(s) for s in (3.2, 3.3, 3.1, 3.25)],
        },
        "burst": {
            "limits": {"total": 2, "per_owner": 1, "per_schedule": 1}, "owners": 2, "schedule_ids": [1, 2, 3, 4],
            "due": DUE, "check_interval": 5.0, "cpus": 2, "runs": runs,
            "samples": [active_counts([("o0", 2), ("o1", 1)]), active_counts([("o1", 3)])],
            "made_s": 0.3, "paused_s": 0.5, "seconds": 7.5, "next_minute_s": 40.0,
        },
        "meta": {
            "date": "2026-01-01 00:00 UTC", "host": "h", "cpus": 2, "memory_gb": 8.0, "os": "Debian",
            "python": "3.11", "papermill": "2.7.0", "nbclient": "0.11", "ipykernel": "7", "nbconvert": "7",
            "sqlalchemy": "2.1", "campushub": "0.1.0", "runs": 4, "default_check_interval": 5,
            "duration_s": 60, "load_before": "0", "load_after": "0",
        },
    }  # fmt: skip


def test_overhead_is_the_difference_of_medians_with_an_interval():
    res = saved_run()
    o = overhead(res, "service-5s")
    assert o["seconds"] == pytest.approx(3.3 - 3.05)
    assert o["lo"] <= o["seconds"] <= o["hi"]
    assert phase_median(res["overhead"]["service-1s"], "submit") == pytest.approx(0.02)
    assert phase_median(res["overhead"]["papermill"], "submit") is None
    res["overhead"]["service-5s"] = [{"error": "x"}]
    assert overhead(res, "service-5s") is None


def test_the_report_reads_the_numbers_against_target_and_limits():
    text = console(saved_run())
    assert "| through the service, check_interval 5 s (the site's default) | 3 (1 failed) | 3.30 |" in text
    assert "| through the service, check_interval 1 s | 4 |" in text
    assert "**+0.25 s** at the median" in text and "Target at most 1.5 s more: **met**" in text
    assert "| active runs, all owners (`max_active_runs`) | 2 | 3 | 2 |" in text
    assert "**NOT respected** (the table)" in text  # the records: 3 at once against a limit of 2
    assert "**exactly one run per schedule-occurrence**" in text


def test_writing_adds_a_section_once_then_replaces_only_its_results(tmp_path):
    page = tmp_path / "benchmarks.md"
    spawn = f"# Benchmark: spawn to ready\n\n{SPAWN_START}\nspawn results\n<!-- results:end -->\n\n## GPU\n"
    page.write_text(spawn)
    write_doc(page, saved_run())
    text = page.read_text()
    assert text.startswith(spawn.rstrip("\n"))  # the spawn benchmark's page and markers stay
    assert "## Scheduler: per-run overhead" in text and text.endswith(f"{RESULTS_END}\n")
    page.write_text(text.replace("## Scheduler: per-run overhead", "## Scheduler (edited by hand)") + "\nMore.\n")
    res = saved_run()
    res["meta"]["host"] = "second-run"
    write_doc(page, res)
    text = page.read_text()
    assert text.count(RESULTS_START) == 1 and "`second-run`" in text and "`h`" not in text
    assert "## Scheduler (edited by hand)" in text and text.endswith(f"{RESULTS_END}\n\nMore.\n")
    assert "spawn results" in text


def test_a_page_with_one_marker_only_is_never_overwritten(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text(f"notes\n{RESULTS_START}\nhalf a block\n")
    assert "only one of the scheduler results markers" in page_problem(page)
    with pytest.raises(ValueError):
        write_doc(page, saved_run())
    assert page.read_text() == f"notes\n{RESULTS_START}\nhalf a block\n"
    new = tmp_path / "new" / "bench.md"
    write_doc(new, saved_run())
    assert new.read_text().startswith("# Benchmarks\n") and RESULTS_START in new.read_text()
