"""The course GPU quota's sacctmgr calls, against a recording stand-in for sacctmgr and scontrol."""

from __future__ import annotations

import json
import os
import stat

import pytest

from campushub import slurmenv
from campushub.courses import quota

FAKE = """#!/usr/bin/env python3
import json, os, sys
state = json.load(open(os.environ["FAKE_STATE"]))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "scontrol" and "assoc_mgr" in args:
    print(state.get("assoc_mgr", ""))
    sys.exit(0)
if os.path.basename(sys.argv[0]) == "scontrol":
    print("\\n".join(f"{k} = {v}" for k, v in state["config"].items()))
    sys.exit(0)
if args[:2] == ["-n", "-P"]:
    what = args[3]
    rows = state["show"].get(what, [])
    print("\\n".join(rows))
    sys.exit(0)
sys.exit(state.get("change_rc", 0))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sacctmgr", "scontrol"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    state_file, log = tmp_path / "state.json", tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STATE", str(state_file))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr(slurmenv, "COMMAND_ENV_KEYS", (*slurmenv.COMMAND_ENV_KEYS, "FAKE_STATE", "FAKE_LOG"))

    class Fake:
        def set(self, show=None, config=None, change_rc=0, assoc_mgr=""):
            state = {"show": show or {}, "config": config or {}, "change_rc": change_rc, "assoc_mgr": assoc_mgr}
            state_file.write_text(json.dumps(state))
            log.write_text("")

        def changes(self) -> list[list[str]]:
            calls = [json.loads(line) for line in log.read_text().splitlines()]
            return [c[1:] for c in calls if c[0] == "sacctmgr" and c[1] == "-i"]

    return Fake()


ACCOUNT = {
    # sacctmgr show account ... withassoc: the account's own association, then one a member
    "account": [
        "course-ml|intro to ml||root|gres/gpu=4|course-ml|course-ml",
        "course-ml|intro to ml|ada|||course-ml|course-ml",
    ],
    "qos": ["course-ml|gres/gpu=1"],
}


def test_an_account_as_slurm_has_it(fake):
    fake.set(show=ACCOUNT)
    state = quota.account_state("course-ml")
    assert (state.parent, state.members, state.per_user_gpus, state.total_gpus) == ("root", {"ada"}, 1, 4)


def test_a_new_course_account_is_added_with_its_limits(fake):
    fake.set()
    assert quota.ensure_account("course-ml", "Intro to ML") == ["add Slurm account course-ml under root"]
    assert fake.changes() == [
        ["-i", "add", "account", "course-ml", "description=Intro to ML", "organization=campushub", "parent=root"]
    ]


def test_nothing_changes_when_slurm_has_it_already(fake):
    fake.set(show=ACCOUNT)
    assert quota.ensure_account("course-ml", "Intro to ML") == []
    assert quota.set_gpu_limit("course-ml", per_user=1, total=4) == []
    assert quota.set_members("course-ml", ["ada"]) == []
    assert fake.changes() == []


def test_members_are_added_and_removed_in_one_call_each(fake):
    fake.set(show=ACCOUNT)
    changes = quota.set_members("course-ml", ["bob", "cy"])
    assert changes == [
        "add 2 users to Slurm account course-ml: bob, cy",
        "  2 of them without a unix account yet: apply again after their first login (bob, cy)",
        "remove 1 user from Slurm account course-ml: ada",
    ]
    assert fake.changes() == [
        ["-i", "add", "user", "name=bob,cy", "account=course-ml"],
        ["-i", "delete", "user", "where", "name=ada", "account=course-ml"],
    ]


def test_an_association_made_before_the_unix_account_is_renewed(fake):
    # root's association with the account was made while slurmctld knew no uid for the name
    show = dict(ACCOUNT, account=[*ACCOUNT["account"], "course-ml|intro to ml|root|||course-ml|course-ml"])
    held = "ClusterName=c Account=course-ml UserName=root(4294967294) Partition= Priority=0 ID=7"
    fake.set(show=show, assoc_mgr=held)
    assert quota.set_members("course-ml", ["ada", "root"]) == [
        "renew the association of 1 user with Slurm account course-ml, made before their unix account: root"
    ]
    assert fake.changes() == [
        ["-i", "delete", "user", "where", "name=root", "account=course-ml"],
        ["-i", "add", "user", "name=root", "account=course-ml"],
    ]
    fake.set(show=show, assoc_mgr=held.replace("4294967294", "0"))
    assert quota.set_members("course-ml", ["ada", "root"]) == []


def test_a_plan_changes_nothing(fake):
    fake.set(show=ACCOUNT)
    assert quota.set_gpu_limit("course-ml", per_user=2, total=None, dry_run=True) == [
        "set the GPU limit of Slurm account course-ml, all jobs together, from 4 GPUs to no limit",
        "set the GPU limit of each user of Slurm account course-ml from 1 GPU to 2 GPUs",
    ]
    assert quota.remove_account("course-ml", dry_run=True) == [
        "remove Slurm account course-ml and its users' associations with it",
        "remove Slurm QOS course-ml",
    ]
    assert fake.changes() == []


def test_limits_are_set_and_cleared_with_minus_one(fake):
    fake.set(show=ACCOUNT)
    quota.set_gpu_limit("course-ml", per_user=None, total=2)
    assert fake.changes() == [
        ["-i", "modify", "account", "where", "name=course-ml", "set", "GrpTRES=gres/gpu=2"],
        ["-i", "modify", "qos", "where", "name=course-ml", "set", "MaxTRESPerUser=gres/gpu=-1"],
    ]


@pytest.mark.parametrize(
    "call",
    [
        lambda: quota.ensure_account("Course ML", "x"),
        lambda: quota.ensure_account("course-ml", "it's 'quoted'"),
        lambda: quota.set_members("course-ml", ["ada", "bob,root"]),
        lambda: quota.set_gpu_limit("course-ml", per_user=-1, total=None),
        lambda: quota.set_gpu_limit("course-ml", per_user=True, total=None),
    ],
)
def test_bad_names_and_limits_are_refused_before_any_call(fake, call):
    fake.set(show=ACCOUNT)
    with pytest.raises(quota.QuotaError):
        call()
    assert fake.changes() == []


def test_a_refusal_of_sacctmgr_is_a_quota_error_for_a_person(fake):
    fake.set(change_rc=1)
    with pytest.raises(quota.QuotaError, match="sacctmgr add account course-ml"):
        quota.ensure_account("course-ml", "Intro to ML")


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"AccountingStorageType": "(null)"}, "need slurmdbd"),
        (
            {"AccountingStorageType": "accounting_storage/slurmdbd", "AccountingStorageEnforce": "associations"},
            "does not enforce limits, qos",
        ),
        (
            {
                "AccountingStorageType": "accounting_storage/slurmdbd",
                "AccountingStorageEnforce": "associations,limits,qos",
                "AccountingStorageTRES": "cpu,mem",
            },
            "add gres/gpu to AccountingStorageTRES",
        ),
    ],
)
def test_accounting_that_cannot_hold_a_quota_says_why(fake, config, reason):
    fake.set(config=config)
    found = quota.accounting_available()
    assert not found and reason in found.reason


def test_accounting_that_holds_a_quota(fake):
    fake.set(
        config={
            "AccountingStorageType": "accounting_storage/slurmdbd",
            "AccountingStorageEnforce": "associations,limits,qos,safe",
            "AccountingStorageTRES": "cpu,mem,energy,node,billing,fs/disk,vmem,pages,gres/gpu",
        }
    )
    assert quota.accounting_available()


def test_no_slurm_at_all_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    found = quota.accounting_available()
    assert not found and "scontrol is not installed" in found.reason
