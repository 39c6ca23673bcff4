"""The campushub_lab server extension: a busy kernel counts as activity."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from jupyter_server._tz import utcnow

import campushub_lab
from campushub_lab.activity import SETTING, any_kernel_busy, record_busy_kernels, watch_busy_kernels
from campushub_lab.portreport import ENABLED, with_port

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "campushub-lab"


class Kernels:
    """The part of jupyter_server's MappingKernelManager the extension reads."""

    def __init__(self, **states):
        self.kernels = {kid: SimpleNamespace(execution_state=state) for kid, state in states.items()}
        self.vanished: set[str] = set()  # listed, then shut down before get_kernel

    def list_kernel_ids(self):
        return list(self.kernels)

    def get_kernel(self, kernel_id):
        if kernel_id in self.vanished:
            raise KeyError(kernel_id)
        return self.kernels[kernel_id]


def test_only_a_busy_kernel_counts():
    assert not any_kernel_busy(Kernels())
    assert not any_kernel_busy(Kernels(a="idle", b="starting", c="dead", d="restarting"))
    assert any_kernel_busy(Kernels(a="idle", b="busy"))
    gone = Kernels(a="busy", b="idle")
    gone.vanished.add("a")
    assert not any_kernel_busy(gone)


def test_busy_kernels_set_the_activity_setting_to_now():
    settings: dict = {}
    assert not record_busy_kernels(settings, Kernels(a="idle"))
    assert SETTING not in settings

    before = utcnow()
    assert record_busy_kernels(settings, Kernels(a="idle", b="busy"))
    stamp = settings[SETTING]
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
    assert before <= stamp <= utcnow()

    # once idle again, the last busy time stays: it is the server's latest activity
    assert not record_busy_kernels(settings, Kernels(a="idle"))
    assert settings[SETTING] == stamp


def test_the_setting_is_one_jupyter_server_counts():
    # ServerApp.web_app.last_activity(): max() over `started`, kernel activity and every
    # settings key ending in `_last_activity` (all timezone-aware)
    assert SETTING.endswith("_last_activity")
    started = utcnow() - timedelta(hours=1)
    settings = {"started": started, "api_last_activity": started}
    record_busy_kernels(settings, Kernels(a="busy"))
    sources = [v for k, v in settings.items() if k == "started" or k.endswith("_last_activity")]
    assert max(sources) == settings[SETTING]


def test_the_watch_runs_on_the_servers_loop():
    kernels = Kernels(a="idle")
    quiet_log = SimpleNamespace(info=lambda *args: None)
    app = SimpleNamespace(web_app=SimpleNamespace(settings={}), kernel_manager=kernels, log=quiet_log)

    async def scenario():
        callback = watch_busy_kernels(app, seconds=0.05)
        try:
            await asyncio.sleep(0.2)
            assert SETTING not in app.web_app.settings
            kernels.kernels["a"].execution_state = "busy"
            await asyncio.sleep(0.2)
            first = app.web_app.settings[SETTING]
            await asyncio.sleep(0.2)
            assert app.web_app.settings[SETTING] > first  # kept at now while busy
        finally:
            callback.stop()

    asyncio.run(scenario())


def test_enabled_on_install():
    assert campushub_lab._jupyter_server_extension_points() == [{"module": "campushub_lab"}]
    config = json.loads((EXTENSION / "jupyter-config" / "server-config" / "campushub_lab.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"campushub_lab": True}}}
    # the wheel ships it as shared data: where jupyter_server reads it, in this environment
    installed = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "campushub_lab.json"
    assert json.loads(installed.read_text()) == config


# --- campushub-singleuser: the server on a free port, reported once it listens ---

SINGLEUSER = Path(sys.executable).with_name("campushub-singleuser")


def run_singleuser(*args: str, url: str | None = "http://10.1.2.3:0/user/ada/"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CAMPUSHUB_"))}
    if url is not None:
        env["JUPYTERHUB_SERVICE_URL"] = url
    return subprocess.run([str(SINGLEUSER), *args], env=env, capture_output=True, text=True, timeout=30)


def test_singleuser_runs_the_command_on_a_free_port_with_the_report_enabled():
    done = run_singleuser("env")
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    url = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
    assert (url.hostname, url.path) == ("10.1.2.3", "/user/ada/")
    assert 1024 <= url.port <= 65535
    assert env[ENABLED] == "1"


def test_singleuser_keeps_the_host_of_the_service_url():
    assert with_port("http://[fd00::5]:0/user/ada/", 4242) == "http://[fd00::5]:4242/user/ada/"
    assert with_port("http://:0/user/ada/", 4242) == "http://:4242/user/ada/"
    assert with_port("http://node7.campus:8888/user/ada/?x=1", 4242) == "http://node7.campus:4242/user/ada/?x=1"


def test_singleuser_says_what_is_wrong():
    assert run_singleuser().returncode == 2
    assert "usage: campushub-singleuser COMMAND" in run_singleuser("--help").stdout
    missing = run_singleuser("env", url=None)
    assert missing.returncode != 0 and "JUPYTERHUB_SERVICE_URL is not set" in missing.stderr
    absent = run_singleuser("no-such-command-campushub")
    assert absent.returncode != 0 and "cannot run no-such-command-campushub" in absent.stderr


# --- the Lab front-end: shipped prebuilt, found by JupyterLab without a rebuild ---


def test_the_front_end_is_installed_prebuilt_with_its_settings():
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "campushub-lab"
    package = json.loads((installed / "package.json").read_text())
    assert package["name"] == "campushub-lab"
    assert package["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    assert (installed / package["jupyterlab"]["_build"]["load"]).is_file()
    assert json.loads((installed / "install.json").read_text())["packageName"] == "campushub-lab"
    # a settings schema for each plugin that loads settings, as the Lab's settings editor finds them
    plugins = set(
        re.findall(r"_PLUGIN = '(campushub-lab:[a-z-]+)'", "".join(p.read_text() for p in EXTENSION.glob("src/*.ts")))
    )
    assert plugins == {"campushub-lab:session", "campushub-lab:templates", "campushub-lab:scheduler"}
    for plugin in plugins:
        schema = json.loads((installed / "schemas" / "campushub-lab" / f"{plugin.split(':')[1]}.json").read_text())
        assert schema["type"] == "object" and schema["properties"], plugin


# --- the server's start (campushub_lab.startup): slow steps deferred, nothing changed ---


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    # this checkout's campushub_lab, in a fresh interpreter (the deferral must come before any import of jsonschema)
    path = os.pathsep.join([str(EXTENSION), *filter(None, [os.environ.get("PYTHONPATH")])])
    run_env = dict(os.environ, PYTHONPATH=path, **env)
    return subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=120)


def test_the_iri_check_imports_rfc3987_syntax_on_first_use_and_still_checks():
    done = run_python(
        "import sys\n"
        "from campushub_lab.startup import defer_slow_imports\n"
        "defer_slow_imports()\n"
        "import jsonschema\n"
        "print('file' if '__file__' in vars(sys.modules['rfc3987_syntax']) else 'stand-in')\n"
        "v = jsonschema.Draft7Validator({'format': 'iri'}, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)\n"
        "print(v.is_valid('http://example.org/ü'), v.is_valid('http://ex ample'), v.is_valid('no-scheme'))\n"
        "print('file' if '__file__' in vars(sys.modules['rfc3987_syntax']) else 'stand-in')\n"
        "import rfc3987_syntax\n"
        "print(rfc3987_syntax.is_valid_syntax_iri('urn:x'))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["stand-in", "True False False", "file", "True"]


def test_the_lab_is_imported_without_running_yarn_and_reports_its_version(tmp_path):
    # a node that writes down each run: the Lab's import must not run it, a later options lookup does
    runs = tmp_path / "node-runs"
    node = tmp_path / "bin" / "node"
    node.parent.mkdir()
    node.write_text(f'#!/bin/sh\necho "$@" >> {runs}\n')
    node.chmod(0o755)
    done = run_python(
        "from campushub_lab.startup import import_lab_without_yarn_config\n"
        "import_lab_without_yarn_config()\n"
        "import os, jupyterlab.labapp as labapp, jupyterlab.commands as commands\n"
        "print(os.path.exists(os.environ['RUNS']))\n"
        "print(labapp.app_version == commands.get_app_version())\n"
        "print(os.path.exists(os.environ['RUNS']))\n",
        PATH=f"{node.parent}{os.pathsep}{os.environ['PATH']}",
        RUNS=str(runs),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]
    assert "config --json" in runs.read_text()


def test_singleuser_runs_this_environments_server_in_its_own_process():
    from campushub_lab.portreport import runs_this_environments_server

    assert runs_this_environments_server(str(Path(sys.executable).with_name("jupyterhub-singleuser")))
    assert not runs_this_environments_server("env")
    assert not runs_this_environments_server("no-such-command-campushub")
