"""The Slurm spawner's pure parts: the port report, reading squeue, the job it submits."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from datetime import datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from batchspawner import JobStatus
from tornado import web
from traitlets.config import Config

from campushub.gpus import GPUS, parse_nodes
from campushub.profiles import Profile, SpawnRequest
from campushub.site import SlurmSettings, UsersSettings
from campushub.spawners.slurm import (
    PortReportError,
    SlurmSpawner,
    SpawnError,
    classify_squeue,
    parse_port_report,
    pending_message,
    refusal_message,
    squeue_fields,
)


def test_a_port_alone_is_accepted():
    assert parse_port_report(b'{"port": 43117}') == 43117


@pytest.mark.parametrize(
    "body",
    [
        {"port": 1, "batch_query_cmd": "touch /tmp/x"},
        {"exec_prefix": "touch /tmp/x"},
        {"port": "1234"},
        {"port": True},
        {"port": 0},
        {"port": 65536},
        {"port": 8.5},
        {},
        [1234],
        "1234",
    ],
)
def test_anything_else_is_refused(body):
    with pytest.raises(PortReportError):
        parse_port_report(json.dumps(body).encode())


@pytest.mark.parametrize("raw", [b"", b"port=1", b"\xff\xfe", b"{"])
def test_non_json_is_refused(raw):
    with pytest.raises(PortReportError):
        parse_port_report(raw)


# what squeue printed on the test cluster (Slurm 22.05)
MUNGE_DOWN = (
    'squeue: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": '
    "No such file or directory (Did you start munged?)\n"
    "slurm_load_jobs error: Protocol authentication error\n"
)


@pytest.mark.parametrize(
    "rc, out, err, status",
    [
        (0, "RUNNING|node12|2026-11-23T02:16:58|None\n", "", JobStatus.RUNNING),
        (0, "PENDING|n/a|N/A|ReqNodeNotAvail, UnavailableNodes:node12\n", "", JobStatus.PENDING),
        (0, "CONFIGURING|node12|2026-11-23T02:16:58|None\n", "", JobStatus.PENDING),
        (0, "FAILED|node12|2026-11-23T02:16:58|NonZeroExitCode\n", "", JobStatus.NOTFOUND),
        (0, "TIMEOUT|node12|2026-11-23T02:16:58|TimeLimit\n", "", JobStatus.NOTFOUND),
        (0, "CANCELLED|node12|2026-11-23T02:16:58|None\n", "", JobStatus.NOTFOUND),
        (0, "", "", JobStatus.NOTFOUND),
        (0, "SUSPENDED|node12|2026-11-23T02:16:58|None\n", "", JobStatus.UNKNOWN),
        (1, "", "slurm_load_jobs error: Invalid job id specified\n", JobStatus.NOTFOUND),
        (1, "", MUNGE_DOWN, JobStatus.UNKNOWN),
        (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", JobStatus.UNKNOWN),
        (1, "", "sudo: unable to resolve host node12\n", JobStatus.UNKNOWN),
        (-1, "", "TimeoutError", JobStatus.UNKNOWN),
    ],
)
def test_only_a_definite_answer_ends_a_job(rc, out, err, status):
    assert classify_squeue(rc, out, err)[0] == status


def test_a_job_line_gives_state_host_start_and_reason():
    line = "PENDING|n/a|N/A|ReqNodeNotAvail, UnavailableNodes:node12"
    assert squeue_fields(line) == ("PENDING", "n/a", "N/A", "ReqNodeNotAvail, UnavailableNodes:node12")
    assert squeue_fields("") == ("", "", "", "")
    s = spawner()
    s.job_status = "RUNNING|node12|2026-11-23T02:16:58|None"
    assert s.state_gethost() == "node12"


def spawner(min_uid: int = 0, profiles=(), container=None, config: Config | None = None, **slurm) -> SlurmSpawner:
    """A spawner for root (the one account sure to exist here), with spawner.slurm settings `slurm`."""
    c = config or Config()
    c.SlurmSpawner.slurm = SlurmSettings(partition="gpu", container=container or {}, **slurm)
    # root has uid 0, which a site file cannot allow: built without validation
    c.SlurmSpawner.users = UsersSettings.model_construct(accounts="directory", min_uid=min_uid, max_uid=60000)
    c.SlurmSpawner.profiles = list(profiles)
    user = SimpleNamespace(name="root", url="/user/root/", escaped_name="root", admin=False, groups=[])
    return SlurmSpawner(config=c, user=user)


def test_sbatch_options_are_separate_arguments():
    args = spawner(account="campus", qos="normal", cpus=4, memory="16G", walltime="02:00:00").sbatch_args()
    assert args[:2] == ["sbatch", "--parsable"]
    for option in ("--partition=gpu", "--account=campus", "--qos=normal", "--cpus-per-task=4",
                   "--mem=16G", "--time=02:00:00", "--job-name=jupyter-root", "--chdir=/root",
                   "--output=/root/.campushub/logs/jupyter-%j.log"):  # fmt: skip
        assert option in args


def test_a_course_groups_slurm_account_is_charged_before_the_sites():
    s = spawner(account="campus")
    s.user.groups = [
        SimpleNamespace(name="course-ml-students", properties={"campushub_slurm_account": "course-ml"}),
        SimpleNamespace(name="researchers", properties={"campushub_profiles": ["gpu-1"]}),
    ]
    args = s.sbatch_args()
    assert "--account=course-ml" in args and "--account=campus" not in args


def test_in_several_course_groups_the_group_sorting_first_names_the_account(caplog):
    s = spawner(account="campus")
    s.user.groups = [
        SimpleNamespace(name="course-b-students", properties={"campushub_slurm_account": "course-b"}),
        SimpleNamespace(name="course-a-students", properties={"campushub_slurm_account": "course-a"}),
        SimpleNamespace(name="aaa-bad", properties={"campushub_slurm_account": "course x; rm -rf /"}),
    ]
    assert s.slurm_account() == "course-a"
    assert "is not a Slurm account name" in caplog.text and "passed over for 'course-a'" in caplog.text


def test_the_batch_script_quotes_every_word():
    script = spawner(python_env="/opt/env with space", prologue="module load cuda").render_batch_script()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "module load cuda" in lines
    assert "export PATH='/opt/env with space/bin':\"$PATH\"" in lines
    assert shlex.split(lines[-1])[:3] == ["exec", "campushub-singleuser", "jupyterhub-singleuser"]


def test_system_accounts_get_no_server():
    s = spawner(min_uid=1000)
    with pytest.raises(Exception, match="system account"):
        s.unix_account()


def test_a_gpu_profile_becomes_gres_and_time():
    s = spawner(profiles=[Profile(slug="gpu", display_name="GPU", everyone=True,
                                  resources={"gpus": 1, "gpu_type": "a100", "walltime": "04:00:00"},
                                  choices={"gpus": {"min": 1, "max": 2}, "hours": {"min": 1, "max": 48}})])  # fmt: skip
    s.request = s.resolve({"profile": "gpu", "gpus": 2, "hours": "30"})
    args = s.sbatch_args()
    assert "--gres=gpu:a100:2" in args and "--time=1-06:00:00" in args
    assert "export CAMPUSHUB_PROFILE=gpu" in s.render_batch_script()


def test_a_refused_request_is_a_400_naming_the_field():
    s = spawner()
    with pytest.raises(web.HTTPError) as e:
        s.resolve({"gpus": 1})
    assert e.value.status_code == 400
    assert str(e.value.log_message % e.value.args).startswith("gpus:")


@pytest.mark.parametrize(
    "reason, start, words",
    [
        ("Resources", "N/A", "the 2 GPUs you asked for are in use by other jobs"),
        ("Priority", "N/A", "behind jobs of higher priority"),
        ("QOSMaxGRESPerUser", "N/A", "GPU limit of your account or group"),
        ("ReqNodeNotAvail", "Unknown", "nodes are not available"),
        ("Resources", "2031-01-01T10:15:00", "estimated start Wed 1 Jan 2031 10:15"),
    ],
)
def test_pending_reasons_in_plain_words(reason, start, words):
    request = SpawnRequest(
        profile="g", partition="gpu", cpus=1, memory="1G", gpus=2, gpu_type=None, walltime="01:00:00"
    )
    assert words in pending_message(reason, start, request)


def one_gpu(gpus=1, gpu_type=None, memory="1G", walltime="01:00:00"):
    return SpawnRequest(
        profile="g", partition="gpu", cpus=1, memory=memory, gpus=gpus, gpu_type=gpu_type, walltime=walltime
    )


def four_gpus(in_use):
    return parse_nodes(f"NodeName=vm Gres=gpu:4 State=MIXED Partitions=gpu AllocTRES=cpu=1,gres/gpu={in_use}", "gpu")


def test_a_wait_for_gpus_reads_true_for_the_whole_wait():
    # one GPU asked for, all four taken: not "1 GPU is busy"
    text = pending_message("Resources", "N/A", one_gpu(), four_gpus(in_use=4))
    assert text.startswith("all 4 GPUs are in use by other jobs; yours starts when 1 is free"), text
    text = pending_message("Resources", "N/A", one_gpu(gpus=3), four_gpus(in_use=2))
    assert text.startswith("only 2 of 4 GPUs are free, and your server needs 3"), text


def test_the_estimated_start_has_its_date_when_not_today_in_the_sites_time_zone():
    zone = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 11, 23, 9, 0, tzinfo=zone)
    local = lambda when: when.astimezone(None).replace(tzinfo=None).isoformat()  # noqa: E731 (squeue's %S)
    today = pending_message("Priority", local(datetime(2026, 11, 23, 10, 30, tzinfo=zone)), one_gpu(), None,
                            "Europe/Berlin", now)  # fmt: skip
    assert today.endswith("estimated start 10:30 CET (in about 1 h 30 min)"), today
    tomorrow = pending_message("Priority", local(datetime(2026, 11, 24, 8, 0, tzinfo=zone)), one_gpu(), None,
                               "Europe/Berlin", now)  # fmt: skip
    assert tomorrow.endswith("estimated start Tue 24 Nov 08:00 CET (in about 23 h)"), tomorrow


def test_a_wait_for_resources_asks_slurm_again_when_the_last_read_had_the_gpus_free():
    # the GPUs were read (all free) just before other jobs took them; Slurm now holds this job for resources
    s = spawner(profiles=[Profile(slug="gpu", display_name="GPU", everyone=True, resources={"gpus": 1})])
    s.request, s.job_id, s.job_status = s.resolve({"profile": "gpu"}), "23", "PENDING||N/A|Resources"
    reads = []

    async def scontrol(argv):
        reads.append(argv)
        return 0, "NodeName=vm Gres=gpu:4 State=MIXED Partitions=gpu AllocTRES=cpu=2,gres/gpu=4\n", ""

    s.run_as_hub = scontrol
    GPUS.found["gpu"] = (time.monotonic() - 5, four_gpus(in_use=0))  # within the cache's 30 s
    try:
        first = asyncio.run(anext(s.progress()))
    finally:
        GPUS.found.pop("gpu", None)
    assert first["message"].startswith("Job 23 is queued: all 4 GPUs are in use by other jobs"), first
    assert first["queued"] and len(reads) == 1


@pytest.mark.parametrize(
    "slurm_said, request_, words",
    [
        ("sbatch: error: Batch job submission failed: Requested node configuration is not available",
         one_gpu(gpus=6), "No node has 6 GPUs: the largest node has 4 GPUs. Ask for at most 4."),
        ("sbatch: error: Memory specification can not be satisfied",
         one_gpu(memory="500G"), "No node has 500G of memory for one server"),
        ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
         one_gpu(walltime="2-00:00:00"), "The time limit you asked for (48 h) is longer than the partition allows"),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's "
         "size and/or time limits)", one_gpu(), "A limit of your Slurm account or its QOS does not allow this job"),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
         one_gpu(), "A limit of your Slurm account"),
        ("sbatch: error: Slurm controller not responding", one_gpu(), ""),
    ],
)  # fmt: skip
def test_slurms_refusals_in_plain_words_with_the_next_step(slurm_said, request_, words):
    text = refusal_message(slurm_said, request_, four_gpus(in_use=0))
    assert text.startswith(words) if words else text == "", text


def test_a_spawn_error_keeps_slurms_words_in_a_fold_escaped():
    error = SpawnError(
        "Slurm refused the server job. Ask for less.", details="error: <gres> & co", details_title="What Slurm said"
    )
    assert str(error) == "Slurm refused the server job. Ask for less.\nWhat Slurm said:\nerror: <gres> & co"
    assert error.jupyterhub_html_message == (
        "<p>Slurm refused the server job. Ask for less.</p>"
        "<details><summary>What Slurm said</summary><pre>error: &lt;gres&gt; &amp; co</pre></details>"
    )


def test_the_gpus_of_a_partition_from_scontrol():
    text = (
        "NodeName=a1 Gres=gpu:a100:4(S:0-1),gpu:v100:2 State=MIXED Partitions=gpu,debug "
        "AllocTRES=cpu=4,mem=8G,gres/gpu=3,gres/gpu:a100=3\n"
        "NodeName=a2 Gres=gpu:a100:8 State=IDLE+DRAIN Partitions=gpu AllocTRES=\n"
        "NodeName=c1 Gres=(null) State=IDLE Partitions=cpu AllocTRES=\n"
    )
    gpus = parse_nodes(text, "gpu")
    assert [n.name for n in gpus.nodes] == ["a1", "a2"]
    assert (gpus.most_per_node(), gpus.most_per_node("a100"), gpus.most_per_node("v100")) == (8, 8, 2)
    assert (gpus.total("a100"), gpus.free("a100"), gpus.free()) == (12, 1, 3)  # a2 is drained
    # GresUsed (scontrol --details) where Slurm gives it: AllocTRES lists GPUs only with AccountingStorageTRES
    used = parse_nodes(
        "NodeName=vm Gres=gpu:4 GresDrain=N/A GresUsed=gpu:3 State=MIXED Partitions=gpu AllocTRES=cpu=1,mem=100M\n"
        "NodeName=vn Gres=gpu:a100:2 GresUsed=gpu:a100:1(IDX:0),gpu:(null):0 State=MIXED Partitions=gpu AllocTRES=\n",
        "gpu",
    )
    assert (used.total(), used.free(), used.free("a100")) == (6, 2, 1)


@pytest.mark.parametrize(
    "runtime, gpus, expected",
    [
        ("none", 1, ["campushub-singleuser", "jupyterhub-singleuser"]),
        ("apptainer", 2, ["apptainer", "exec", "--nv", "--bind", "/root", "--pwd", "/root", "/img/lab.sif",
                          "campushub-singleuser", "jupyterhub-singleuser"]),
        ("apptainer", 0, ["apptainer", "exec", "--bind", "/root", "--pwd", "/root", "/img/lab.sif",
                          "campushub-singleuser", "jupyterhub-singleuser"]),
        ("podman", 1, ["podman", "run", "--rm", "--network=host", "--userns=keep-id", "--user=0:0", "--volume", "/root:/root",
                       "--workdir", "/root", "--env", "JUPYTERHUB_*", "--env", "CAMPUSHUB_*", "--env", "HOME",
                       "--env", "USER", "--device", "nvidia.com/gpu=all", "--env", "CUDA_VISIBLE_DEVICES",
                       "/img/lab.sif", "campushub-singleuser", "jupyterhub-singleuser"]),
        ("pyxis", 1, ["srun", "--export=ALL", "--container-image=/img/lab.sif", "--container-mounts=/root:/root",
                      "--container-workdir=/root", "campushub-singleuser", "jupyterhub-singleuser"]),
    ],
)  # fmt: skip
def test_the_server_command_in_each_container_runtime(runtime, gpus, expected):
    s = spawner(container={"runtime": runtime, "image": "/img/lab.sif"},
                profiles=[Profile(slug="p", display_name="P", everyone=True, resources={"gpus": gpus})])  # fmt: skip
    words = shlex.split(s.render_batch_script().splitlines()[-1])
    assert words[0] == "exec" and words[1:] == expected


def test_container_options_come_before_the_image():
    s = spawner(container={"runtime": "podman", "image": "lab:1",
                           "options": ["--runtime", "runc", "--ulimit", "nofile=1024:1024"]})  # fmt: skip
    words = shlex.split(s.render_batch_script().splitlines()[-1])
    assert words[words.index("lab:1") - 4 : words.index("lab:1")] == [
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
    ]


def test_batchspawners_own_settings_are_not_silently_ignored(caplog):
    c = Config()
    c.SlurmSpawner.req_partition = "gpu"
    c.BatchSpawnerBase.exec_prefix = "sudo -E -u {username}"
    with caplog.at_level("WARNING"):
        spawner(config=c)
    assert "SlurmSpawner.req_partition does nothing in CampusHub: set spawner.slurm.partition instead" in caplog.text
    assert "SlurmSpawner.exec_prefix does nothing in CampusHub: set spawner.slurm.submit_prefix instead" in caplog.text


def test_a_jupyterhub_config_with_batchspawners_settings_is_refused_with_the_key_to_use(monkeypatch, tmp_path):
    from campushub.hubconfig import configure
    from campushub.site import SiteError

    monkeypatch.delenv("CAMPUSHUB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    c = Config()
    c.SlurmSpawner.req_runtime = "04:00:00"
    with pytest.raises(SiteError) as e:
        configure(c)
    assert e.value.problems == ["req_runtime: does nothing in CampusHub: set spawner.slurm.walltime"]
    assert not (tmp_path / "campushub-state").exists()
