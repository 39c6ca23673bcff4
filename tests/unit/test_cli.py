"""The `campushub` command, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.slurm import free_port

EXAMPLE = Path(__file__).parents[2] / "hub_config" / "campushub.example.yaml"


def campushub(*args: str, **kw) -> subprocess.CompletedProcess:
    streams = {} if "stdout" in kw or "stderr" in kw else {"capture_output": True}
    return subprocess.run([sys.executable, "-m", "campushub", *args], text=True, **streams, **kw)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["up"],
        ["hub"],
        ["proxy"],
        ["config"],
        ["config", "check"],
        ["config", "schema"],
        ["schedule"],
        ["schedule", "add"],
        ["schedule", "runs"],
        ["schedule", "run-now"],
        ["doctor"],
        ["db"],
        ["db", "upgrade"],
        ["backup"],
        ["restore"],
    ],
)
def test_every_command_has_help(args):
    r = campushub(*args, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: campushub {' '.join(args)}".rstrip())
    assert len(r.stdout.splitlines()) > 3


@pytest.fixture
def example(tmp_path) -> Path:
    """The example site file, with its OIDC client secret and Prometheus token in files that exist."""
    secret = tmp_path / "oidc-client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    token = tmp_path / "prometheus-token"
    token.write_text("a-token-of-prometheus\n")
    token.chmod(0o600)
    f = tmp_path / "campushub.yaml"
    logo = tmp_path / "logo.svg"
    logo.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    text = EXAMPLE.read_text().replace("/etc/campushub/oidc-client-secret", str(secret))
    for password in ("/etc/campushub/hub-db-password", "/etc/campushub/scheduler-db-password"):
        text = text.replace(password, str(secret))
    text = text.replace("/etc/campushub/prometheus-token", str(token))
    f.write_text(text.replace("/etc/campushub/logo.svg", str(logo)))
    return f


def test_config_check_ok(example):
    r = campushub("config", "check", str(example))
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
    assert set(schema["properties"]) == {
        "hub",
        "proxy",
        "branding",
        "auth",
        "users",
        "spawner",
        "culling",
        "scheduler",
        "metrics",
        "profiles",
    }
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


def oidc_site(tmp_path: Path, secret: Path) -> Path:
    f = tmp_path / "site.yaml"
    f.write_text(
        "auth:\n  kind: oidc\n  oidc:\n    issuer: http://127.0.0.1:1/realms/x\n    client_id: hub\n"
        f"    client_secret_file: {secret}\n    allow_all_users: true\nhub:\n  state_dir: {tmp_path / 'state'}\n"
    )
    return f


def missing(secret: Path) -> str:
    return f"cannot read {secret}: No such file or directory"


def a_folder(secret: Path) -> str:
    secret.mkdir()
    return f"cannot read {secret}: Is a directory"


def open_to_all(secret: Path) -> str:
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    return f"{secret} is readable by every user: chmod 600 it"


def empty(secret: Path) -> str:
    secret.write_text("\n")
    secret.chmod(0o600)
    return f"{secret} is empty"


@pytest.mark.parametrize("make_secret", [missing, a_folder, open_to_all, empty])
def test_config_check_refuses_the_secret_files_that_the_hub_refuses(tmp_path, make_secret):
    secret = tmp_path / "secret"
    message = f"auth.oidc.client_secret_file: {make_secret(secret)}"
    f = oidc_site(tmp_path, secret)
    check = campushub("config", "check", str(f))
    assert (check.returncode, check.stdout) == (2, "")
    assert message in check.stderr
    for command in ("hub", "up"):
        r = campushub(command, "--config", str(f), timeout=60)
        assert r.returncode == 2, command
        assert message in r.stderr, command
        assert not (tmp_path / "state").exists(), (
            f"`campushub {command}` created its state folder for a site it refused"
        )


def test_config_check_passes_a_usable_secret_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    r = campushub("config", "check", str(oidc_site(tmp_path, secret)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK")


@pytest.mark.parametrize("key, value", [("ip", "not-an-ip"), ("hub_ip", "999.1.1.1")])
def test_config_check_refuses_an_address_that_is_not_one(tmp_path, key, value):
    f = tmp_path / "site.yaml"
    f.write_text(f"hub:\n  {key}: {value}\n")
    r = campushub("config", "check", str(f))
    assert r.returncode == 2
    assert f"hub.{key}: '{value}' is not an IP address" in r.stderr


def test_config_check_suggests_the_key_nearest_a_misspelt_one(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("hub:\n  prot: 8000\n")
    r = campushub("config", "check", str(f))
    assert r.returncode == 2
    assert "hub.prot: extra inputs are not permitted; did you mean 'port'?" in r.stderr


@pytest.mark.parametrize("text", ["", "# nothing set yet\n", "{}\n"])
def test_config_check_says_an_empty_site_file_gives_the_demo(tmp_path, text):
    f = tmp_path / "site.yaml"
    f.write_text(text)
    r = campushub("config", "check", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK: {f} (empty: the demo defaults apply;")


def test_config_check_does_not_call_a_file_with_settings_empty(example):
    r = campushub("config", "check", str(example))
    assert r.returncode == 0 and "empty" not in r.stdout


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (`| head` that has read its line)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize(
    "args",
    [["config", "schema"], ["config", "check", "EXAMPLE"], ["--help"], ["up", "--help"], ["--version"]],
)
def test_output_into_a_closed_pipe_ends_quietly(args, example):
    args = [str(example) if a == "EXAMPLE" else a for a in args]
    pipe = closed_pipe()
    try:
        r = campushub(*args, stdout=pipe, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(pipe)
    assert r.stderr == ""
    assert r.returncode == 0


def test_up_into_a_closed_pipe_ends_quietly_and_starts_nothing(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(f"hub:\n  port: {free_port()}\n  hub_port: {free_port()}\n  state_dir: {tmp_path / 'state'}\n"
                 f"proxy:\n  api_port: {free_port()}\n")  # fmt: skip
    pipe = closed_pipe()
    try:
        r = campushub("up", "--config", str(f), stdout=pipe, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(pipe)
    assert (r.returncode, r.stderr) == (0, "")
    assert not (tmp_path / "state" / "jupyterhub.sqlite").exists(), "a hub was started"


def test_errors_into_a_closed_pipe_keep_their_exit_status(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("hub:\n  port: 0\n")
    pipe = closed_pipe()
    try:
        r = campushub("config", "check", str(f), stdout=subprocess.PIPE, stderr=pipe)
    finally:
        os.close(pipe)
    assert r.returncode == 2


def test_schedule_parameters_are_json_or_text_and_a_bad_one_is_named():
    from campushub.scheduler.client import ClientError, parameter

    assert parameter("epochs=5", raw=False) == ("epochs", 5)
    assert parameter("rate=0.1", raw=False) == ("rate", 0.1)
    assert parameter("tags=[1, 2]", raw=False) == ("tags", [1, 2])
    assert parameter("title=Nightly run", raw=False) == ("title", "Nightly run")
    assert parameter("code=5", raw=True) == ("code", "5")
    for bad in ("epochs", "=5"):
        with pytest.raises(ClientError, match=f"parameter {bad!r}: write it as name=value"):
            parameter(bad, raw=False)


def test_schedule_needs_a_token():
    env = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_API_TOKEN"}
    r = campushub("schedule", "list", "--url", "http://127.0.0.1:9/", env=env)
    assert r.returncode == 2 and "no token: set JUPYTERHUB_API_TOKEN" in r.stderr
