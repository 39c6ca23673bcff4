"""The `campushub` command, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "campushub.example.yaml"


def campushub(*args: str, **kw) -> subprocess.CompletedProcess:
    streams = {} if "stdout" in kw or "stderr" in kw else {"capture_output": True}
    return subprocess.run([sys.executable, "-m", "campushub", *args], text=True, **streams, **kw)


@pytest.mark.parametrize("args", [[], ["up"], ["hub"], ["proxy"], ["config"], ["config", "check"], ["config", "schema"]])
def test_every_command_has_help(args):
    r = campushub(*args, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: campushub {' '.join(args)}".rstrip())
    assert len(r.stdout.splitlines()) > 3


def test_config_check_ok():
    r = campushub("config", "check", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK")


def test_config_check_lists_every_error_and_exits_2(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("spawner:\n  backend: slurm\n  slurm:\n    cpus: -1\nhub:\n  port: 80000\n")
    r = campushub("config", "check", str(f))
    assert r.returncode == 2
    assert "spawner.slurm.partition: field required" in r.stderr
    assert "spawner.slurm.cpus: input should be greater than or equal to 1" in r.stderr
    assert "hub.port: input should be less than or equal to 65535" in r.stderr
    assert "OK" not in r.stdout


def test_a_bad_site_file_stops_the_hub_before_anything_starts(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(f"hub:\n  state_dir: {tmp_path / 'state'}\nspawner:\n  backend: slurm\n")
    for command in ("hub", "proxy", "up"):
        r = campushub(command, "--config", str(f), timeout=30)
        assert r.returncode == 2, (command, r.stderr)
        assert "spawner: spawner.slurm is required when spawner.backend is slurm" in r.stderr
    assert not (tmp_path / "state").exists()


def test_config_schema_is_json_schema():
    r = campushub("config", "schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "CampusHub site file"
    assert set(schema["properties"]) == {"hub", "proxy", "auth", "users", "spawner", "culling", "profiles"}
    assert schema["additionalProperties"] is False


def test_unknown_command_is_refused():
    r = campushub("launch")
    assert r.returncode == 2
    assert "invalid choice: 'launch'" in r.stderr


def test_the_demo_login_is_refused_off_loopback_by_check_and_at_start(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(f"hub:\n  ip: 0.0.0.0\n  state_dir: {tmp_path / 'state'}\n")
    for args in (["config", "check", str(f)], ["hub", "--config", str(f)], ["up", "--config", str(f)]):
        r = campushub(*args, timeout=30)
        assert r.returncode == 2, args
        assert "auth.kind: shared-password is for demos on 127.0.0.1 only, but hub.ip is 0.0.0.0" in r.stderr
    assert not (tmp_path / "state").exists()


def test_an_unreadable_or_open_client_secret_stops_the_hub(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    f = tmp_path / "site.yaml"
    f.write_text(
        "auth:\n  kind: oidc\n  oidc:\n    issuer: http://127.0.0.1:1/realms/x\n    client_id: hub\n"
        f"    client_secret_file: {secret}\n    allow_all_users: true\nhub:\n  state_dir: {tmp_path / 'state'}\n"
    )
    r = campushub("hub", "--config", str(f), timeout=60)
    assert r.returncode == 2
    assert f"auth.oidc.client_secret_file: {secret} is readable by every user: chmod 600 it" in r.stderr


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (`| head` that has read its line)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize(
    "args",
    [["config", "schema"], ["config", "check", str(EXAMPLE)], ["--help"], ["up", "--help"], ["--version"]],
)
def test_output_into_a_closed_pipe_ends_quietly(args):
    pipe = closed_pipe()
    try:
        r = campushub(*args, stdout=pipe, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(pipe)
    assert r.stderr == ""
    assert r.returncode == 0


def test_errors_into_a_closed_pipe_keep_their_exit_status(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("hub:\n  port: 0\n")
    pipe = closed_pipe()
    try:
        r = campushub("config", "check", str(f), stdout=subprocess.PIPE, stderr=pipe)
    finally:
        os.close(pipe)
    assert r.returncode == 2
