"""The Slurm spawner's pure parts: the port report, reading squeue, the job it submits."""

from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

import pytest
from batchspawner import JobStatus
from traitlets.config import Config

from campushub.spawners.slurm import PortReportError, SlurmSpawner, classify_squeue, parse_port_report


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
    "squeue: error: Munge encode failed: Failed to access \"/run/munge/munge.socket.2\": "
    "No such file or directory (Did you start munged?)\n"
    "slurm_load_jobs error: Protocol authentication error\n"
)


@pytest.mark.parametrize(
    "rc, out, err, status",
    [
        (0, "RUNNING node12\n", "", JobStatus.RUNNING),
        (0, "PENDING n/a\n", "", JobStatus.PENDING),
        (0, "CONFIGURING node12\n", "", JobStatus.PENDING),
        (0, "FAILED node12\n", "", JobStatus.NOTFOUND),
        (0, "TIMEOUT node12\n", "", JobStatus.NOTFOUND),
        (0, "CANCELLED node12\n", "", JobStatus.NOTFOUND),
        (0, "", "", JobStatus.NOTFOUND),
        (0, "SUSPENDED node12\n", "", JobStatus.UNKNOWN),
        (1, "", "slurm_load_jobs error: Invalid job id specified\n", JobStatus.NOTFOUND),
        (1, "", MUNGE_DOWN, JobStatus.UNKNOWN),
        (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", JobStatus.UNKNOWN),
        (1, "", "sudo: unable to resolve host node12\n", JobStatus.UNKNOWN),
        (-1, "", "TimeoutError", JobStatus.UNKNOWN),
    ],
)
def test_only_a_definite_answer_ends_a_job(rc, out, err, status):
    assert classify_squeue(rc, out, err)[0] == status


def spawner(**traits) -> SlurmSpawner:
    c = Config()
    c.SlurmSpawner.partition = "gpu"
    c.SlurmSpawner.min_uid = 0  # root is the one account sure to exist here
    for name, value in traits.items():
        setattr(c.SlurmSpawner, name, value)
    return SlurmSpawner(config=c, user=SimpleNamespace(name="root", url="/user/root/", escaped_name="root"))


def test_sbatch_options_are_separate_arguments():
    args = spawner(account="campus", qos="normal", cpus=4, memory="16G", walltime="02:00:00").sbatch_args()
    assert args[:2] == ["sbatch", "--parsable"]
    for option in ("--partition=gpu", "--account=campus", "--qos=normal", "--cpus-per-task=4",
                   "--mem=16G", "--time=02:00:00", "--job-name=jupyter-root", "--chdir=/root",
                   "--output=/root/.campushub/logs/jupyter-%j.log"):  # fmt: skip
        assert option in args


def test_the_batch_script_quotes_every_word():
    script = spawner(python_env="/opt/env with space", prologue="module load cuda").render_batch_script()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "module load cuda" in lines
    assert "export PATH='/opt/env with space/bin':\"$PATH\"" in lines
    assert shlex.split(lines[-1])[:3] == ["exec", "batchspawner-singleuser", "jupyterhub-singleuser"]


def test_system_accounts_get_no_server():
    s = spawner(min_uid=1000)
    with pytest.raises(Exception, match="system account"):
        s.unix_account()
