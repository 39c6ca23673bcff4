"""The local executor outside the demo: runs are processes of their owners' own unix accounts."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

import nbformat
import pytest

from campushub.scheduler.executors import executor_for
from campushub.scheduler.models import Run, Schedule
from campushub.scheduler.service import Scheduler
from campushub.scheduler.store import open_store
from campushub.site import parse_site
from tests.cluster.idp import campus_login

ERIN, ALICE = "chub-erin", "chub-alice"


@pytest.fixture
def scheduler(unix_users, singleuser_env, tmp_path):
    site = parse_site(
        {
            "hub": {"state_dir": str(tmp_path / "state")},
            "auth": campus_login(),
            "spawner": {"backend": "local", "local": {"python_env": str(singleuser_env)}},
        }
    )
    store = open_store(f"sqlite:///{tmp_path / 'scheduler.sqlite'}")
    return Scheduler(site, store, executor_for(site), None, tmp_path / "html", lambda i: f"http://hub/runs/{i}")


def owned_notebook(user: str, name: str, source: str) -> str:
    account = pwd.getpwnam(user)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})  # fmt: skip
    path = Path(account.pw_dir) / name
    path.write_text(nbformat.writes(nb))
    os.chown(path, account.pw_uid, account.pw_gid)
    return name


async def test_a_local_run_is_a_process_of_its_owner(scheduler):
    name = owned_notebook(ERIN, "whoami.ipynb", "import os\nopen('uid', 'w').write(str(os.getuid()))")
    made = await scheduler.add(ERIN, {"notebook": name, "cron": "@daily"})
    with scheduler.session() as db:
        run_id = scheduler.run_now(db, db.get(Schedule, made["id"]))["id"]

    async def ended():
        await scheduler.tick()
        with scheduler.session() as db:
            return db.get(Run, run_id).state in ("succeeded", "failed")

    for _ in range(300):
        if await ended():
            break
        await asyncio.sleep(0.2)
    with scheduler.session() as db:
        run = db.get(Run, run_id)
    assert run.state == "succeeded", run.detail
    erin = pwd.getpwnam(ERIN)
    folder = Path(run.folder)
    assert folder.is_relative_to(erin.pw_dir)
    assert (folder / "uid").read_text() == str(erin.pw_uid)
    assert {(folder / f).stat().st_uid for f in ("output.ipynb", "job.log", "input.ipynb")} == {erin.pw_uid}


async def test_another_users_notebook_cannot_be_scheduled(scheduler):
    from campushub.scheduler.definitions import ScheduleError

    owned_notebook(ALICE, "private.ipynb", "x = 1")
    os.chmod(pwd.getpwnam(ALICE).pw_dir, 0o700)
    with pytest.raises(ScheduleError, match="outside your home folder"):
        await scheduler.add(ERIN, {"notebook": f"../{ALICE}/private.ipynb", "cron": "@daily"})
    # a symlink in erin's home to alice's file is read as erin: refused the same way
    link = Path(pwd.getpwnam(ERIN).pw_dir) / "link.ipynb"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(pwd.getpwnam(ALICE).pw_dir) / "private.ipynb")
    with pytest.raises(ScheduleError, match="no readable notebook 'link.ipynb'"):
        await scheduler.add(ERIN, {"notebook": "link.ipynb", "cron": "@daily"})
