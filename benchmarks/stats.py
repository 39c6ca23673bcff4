"""Statistics of a run's samples: percentiles, summaries, medians per phase and per round, and
bootstrap intervals. Pure functions of the samples that benchmarks/spawn.py records.

A sample is a dict: a spawn that became ready has "seconds" (and "start" and "ready", epoch seconds);
a failed one has "error" instead. A run's results `res` hold, per backend ("campushub", "stock",
"floor"), the lists "sequential" and "concurrent" of samples (a concurrent one also has its "round").
"""

from __future__ import annotations

import random
import statistics


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def ready_seconds(samples: list[dict]) -> list[float]:
    """The spawn-to-ready seconds of the samples that became ready."""
    return [x["seconds"] for x in samples if "seconds" in x]


def summary(samples: list[dict]) -> dict:
    """n (ready), failed, p50, p95, min, max and mean of the ready samples' seconds."""
    ok = ready_seconds(samples)
    if not ok:
        return {"n": 0, "failed": len(samples)}
    return {
        "n": len(ok),
        "failed": len(samples) - len(ok),
        "p50": pct(ok, 50),
        "p95": pct(ok, 95),
        "min": min(ok),
        "max": max(ok),
        "mean": statistics.fmean(ok),
    }


def phase_median(res: dict, backend: str, a: str, b: str) -> float | None:
    """Median over the backend's sequential spawns of the seconds from milestone a to milestone b."""
    vals = []
    for s in res[backend]["sequential"]:
        m = dict(s.get("milestones") or {}, request=0.0)
        if m.get(a) is not None and m.get(b) is not None:
            vals.append(m[b] - m[a])
    return statistics.median(vals) if vals else None


def bootstrap(a: list[float], b: list[float], stat, n: int = 4000) -> tuple[float, float]:
    """95% bootstrap interval of stat(median of a, median of b), resampling each group."""
    rng = random.Random(0)
    vals = sorted(
        stat(statistics.median(rng.choices(a, k=len(a))), statistics.median(rng.choices(b, k=len(b)))) for _ in range(n)
    )
    return vals[int(0.025 * n)], vals[int(0.975 * n) - 1]


def round_p50s(res: dict, backend: str) -> list[tuple[int, float]]:
    """(round, p50) of each concurrent round of the backend, in the order run."""
    rounds: dict[int, list[float]] = {}
    for x in res[backend]["concurrent"]:
        if "seconds" in x:
            rounds.setdefault(x["round"], []).append(x["seconds"])
    return sorted((r, pct(v, 50)) for r, v in rounds.items())


def median_of(samples: list[dict], key: str) -> float | None:
    """Median of the samples' values of key, where they have one."""
    vals = [x[key] for x in samples if x.get(key) is not None]
    return statistics.median(vals) if vals else None


def makespan(res: dict, backend: str) -> float | None:
    """Median over the backend's concurrent rounds of the seconds from the first request to the last ready."""
    rounds = {}
    for s in res[backend]["concurrent"]:
        if "seconds" in s:
            r = rounds.setdefault(s["round"], [])
            r.append(s)
    spans = [max(x["ready"] for x in r) - min(x["start"] for x in r) for r in rounds.values()]
    return statistics.median(spans) if spans else None


def round_median(res: dict, backend: str, key: str) -> float:
    """Median over the backend's concurrent rounds of a per-round figure (hub_cpu, slurmctld_cpu, seconds)."""
    return statistics.median(r[key] for r in res[backend]["rounds"])


def listening_to_answer(samples: list[dict]) -> float | None:
    """Median seconds from a server logging that it listens to its first answer (floor samples)."""
    lags = [x["seconds"] - x["listening"] for x in samples if x.get("listening") is not None and "seconds" in x]
    return statistics.median(lags) if lags else None
