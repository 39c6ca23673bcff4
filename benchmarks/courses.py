"""Courses benchmark: `campushub course apply` of a 1,000-student roster against a real hub and the test
harness's Slurm with accounting, then the same apply again with nothing to change; beside it, the peer an
admin would otherwise script: one REST call per student (create the user, add them to the group), and
the Slurm account and its members with sacctmgr.

It starts the test harness's Slurm cluster (tests/cluster/slurm.py: slurmctld, slurmd, slurmdbd on
MariaDB) and a real CampusHub (`campushub proxy` + `campushub hub`, tests/cluster/hub.py) with the demo's
login and a throwaway state folder, and runs the real command as an admin runs it (a new Python process
each time, with a token of the least scopes). Each course has a GPU quota, so apply also makes its Slurm
account, the limit and 1,000 associations. The manifests have no shared folders: 1,000 unix accounts are
not made for it (the folders are tested in tests/integration/test_courses.py). It needs root (one unix
account for the course's instructor, the Slurm daemons) and takes the machine's test lock.

Run from the repository root:
    sudo make bench-courses [BENCH_ARGS="--write docs/benchmarks.md"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from campushub import __version__
from tests.cluster.hub import RunningHub
from tests.cluster.lock import machine_lock
from tests.cluster.slurm import SlurmCluster
from tests.cluster.users import create_users, remove_user

from .report import machine, publish

INSTRUCTOR = "chb-course-prof"
ADMIN = "chb-course-admin"
SCOPES = ["admin:users", "admin:groups"]
TARGET_APPLY, TARGET_REAPPLY = 15.0, 2.0
RESULTS_START = "<!-- courses-results:start (written by benchmarks/courses.py --write; do not edit by hand) -->"
RESULTS_END = "<!-- courses-results:end -->"
SECTION = """
## Courses: applying a roster

`python -m benchmarks.courses` (`sudo make bench-courses`): `campushub course apply` of a new course with
a 1,000-student roster and a GPU quota against a real hub (the demo's login, SQLite) and the test
harness's Slurm with accounting (slurmdbd on MariaDB), timed from the command's start to its exit as an
admin runs it (a new process, a token with the scopes admin:users and admin:groups), then the same apply
again with nothing to change, several times. Apply makes the hub's users, groups, grant and staff role,
and Slurm's course account, its GPU limit and 1,000 associations. Each round is a new course with 1,000
new students, so the hub and Slurm's database grow by 1,000 users a round. The peer: what an admin
scripts without CampusHub, one REST call per student to create the user and one to add them to the
course's group (on one kept-alive connection), then `sacctmgr` for the account, its limits and its members (all
in one call), for a course of its own. Targets: a new course within 15 s, a re-apply within 2 s.

"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_course(folder: Path, course_id: str, students: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{course_id}-s{i:04d},{course_id}-s{i:04d}@campus.example,Student {i},{'AB'[i % 2]}\n"
                   for i in range(students))  # fmt: skip
    (folder / "roster.csv").write_text("username,email,name,section\n" + rows)
    manifest = {
        "id": course_id,
        "title": f"Benchmark course {course_id}",
        "term": {"start": "2026-09-01", "end": "2026-12-18"},
        "staff": {"instructors": [INSTRUCTOR]},
        "roster": "roster.csv",
        "profiles": ["default"],
        "gpu_quota": {"max_gpus_per_student": 1, "max_gpus": 4},
    }
    path = folder / "course.yaml"
    path.write_text(json.dumps(manifest))
    return path


def timed_apply(hub: RunningHub, path: Path, token_file: Path) -> tuple[float, str]:
    started = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "campushub", "course", "apply", str(path), "--config", str(hub.site_file),
         "--token-file", str(token_file)], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    took = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"apply failed: {r.stderr}")
    return took, r.stdout


def peer(hub: RunningHub, slurm: SlurmCluster, token: str, course_id: str, students: int) -> float:
    s = requests.Session()
    s.headers["Authorization"] = f"token {token}"
    api = f"http://127.0.0.1:{hub.hub_port}/hub/api"
    started = time.perf_counter()
    s.post(f"{api}/groups/course-{course_id}-students", timeout=60).raise_for_status()
    for i in range(students):
        name = f"{course_id}-s{i:04d}"
        s.post(f"{api}/users/{name}", timeout=60).raise_for_status()
        s.post(f"{api}/groups/course-{course_id}-students/users", json={"users": [name]}, timeout=60).raise_for_status()
    account = f"course-{course_id}"
    slurm.sacctmgr("add", "account", account, "parent=root")
    slurm.sacctmgr("add", "qos", account, "MaxTRESPerUser=gres/gpu=1")
    slurm.sacctmgr("modify", "account", "where", f"name={account}", "set", "GrpTRES=gres/gpu=4",
                   f"qos={account}", f"defaultqos={account}")  # fmt: skip
    slurm.sacctmgr("add", "user", "name=" + ",".join(f"{course_id}-s{i:04d}" for i in range(students)),
                   f"account={account}")  # fmt: skip
    return time.perf_counter() - started


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="campushub-bench-courses-"))
    create_users([INSTRUCTOR])
    slurm = SlurmCluster(Path(tempfile.mkdtemp(prefix="campushub-slurm-")))  # its own, open to munge and slurm
    os.environ["SLURM_CONF"] = str(slurm.conf)  # the course command's sacctmgr talks to this cluster
    hub = RunningHub(work / "hub", {"auth": {"admin_users": [ADMIN]}, "scheduler": {"enabled": False},
                                    "culling": {"enabled": False}})  # fmt: skip
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        slurm.start()
        slurm_version = slurm.cmd("sinfo", "--version").stdout.split()[-1]
        hub.start()
        admin = hub.token(ADMIN, hub.admin_password)
        r = hub.api("POST", f"/users/{ADMIN}/tokens", admin, json={"scopes": SCOPES, "note": "bench"})
        r.raise_for_status()
        token_file = work / "token"
        token_file.write_text(r.json()["token"])
        rounds = []
        for n in range(1, args.rounds + 1):
            path = write_course(work / f"c{n}", f"bench{n}", args.students)
            apply_s, out = timed_apply(hub, path, token_file)
            assert "applied" in out, out
            reapply = []
            for _ in range(args.reapplies):
                took, out = timed_apply(hub, path, token_file)
                assert "no changes" in out, out
                reapply.append(took)
            log(f"round {n}: apply {apply_s:.2f} s, re-apply median {statistics.median(reapply):.2f} s")
            rounds.append({"apply": apply_s, "reapply": reapply})
        peer_s = None
        if args.peer:
            peer_s = peer(hub, slurm, admin, "peer", args.students)
            log(f"peer (one call per student and step): {peer_s:.2f} s")
    finally:
        hub.close()
        slurm.stop()
        subprocess.run(["rm", "-rf", str(slurm.root)], check=False)
        remove_user(INSTRUCTOR)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    import jupyterhub

    return {
        **machine(),
        "jupyterhub": jupyterhub.__version__,
        "campushub": __version__,
        "slurm": slurm_version,
        "students": args.students,
        "rounds": rounds,
        "peer": peer_s,
        "load": [load_before, os.getloadavg()],
        "minutes": (time.monotonic() - started) / 60,
    }


def results_block(res: dict) -> str:
    load = " / ".join(" ".join(f"{x:.1f}" for x in avg) for avg in res["load"])
    lines = [
        RESULTS_START,
        "",
        f"Run of {res['date']} on `{res['host']}`: {res['cpus']} CPU cores; Python {res['python']}, JupyterHub "
        f"{res['jupyterhub']} on SQLite, Slurm {res['slurm']} with slurmdbd, CampusHub {res['campushub']}. "
        f"{res['students']} students a course, each course with a GPU quota. "
        f"Load average before / after: {load}. The run took {res['minutes']:.1f} minutes.",
        "",
        "| round | hub users before | apply of a new course, s | re-apply, nothing to change: median (min-max), s |",
        "|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(res["rounds"]):
        re = r["reapply"]
        lines.append(f"| {i + 1} | {i * (res['students'] + 1) + 1} | {r['apply']:.2f} | "
                     f"{statistics.median(re):.2f} ({min(re):.2f}-{max(re):.2f}) |")  # fmt: skip
    worst_apply = max(r["apply"] for r in res["rounds"])
    worst_re = max(statistics.median(r["reapply"]) for r in res["rounds"])
    lines += [
        "",
        f"- A new {res['students']}-student course: at most **{worst_apply:.2f} s** in any round. Target at most "
        f"{TARGET_APPLY:.0f} s: **{'met' if worst_apply <= TARGET_APPLY else 'not met'}**.",
        f"- A re-apply with nothing to change: a median of at most **{worst_re:.2f} s** in any round. Target at "
        f"most {TARGET_REAPPLY:.0f} s: **{'met' if worst_re <= TARGET_REAPPLY else 'not met'}**.",
    ]
    if res["peer"] is not None:
        lines.append(f"- The peer, one REST call per student and step ({2 * res['students'] + 1} calls) and "
                     f"four sacctmgr calls: {res['peer']:.2f} s for the same roster.")  # fmt: skip
    lines += ["", RESULTS_END]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.courses", description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=1000, help="students a course (default 1000)")
    p.add_argument("--rounds", type=int, default=3, help="new courses, one after the other (default 3)")
    p.add_argument("--reapplies", type=int, default=5, help="re-applies with no change per round (default 5)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip the one-call-per-student peer")
    p.add_argument("--write", metavar="MD", help="write the results into this page (e.g. docs/benchmarks.md)")
    p.add_argument("--json", metavar="FILE", help="also save the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work folder (the hub's state and logs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("run it as root: it makes a unix account for the course's instructor")
    with machine_lock(say=log):
        res = run(args)
    publish(res, results_block(res), args, (RESULTS_START, RESULTS_END, SECTION), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
