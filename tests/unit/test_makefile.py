"""`make clean` and `make clean-demo-state`, run for real in a copy of the checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the checkout after a demo: a virtualenv, caches, and a user's notebook in the state folder."""
    copy = tmp_path / "campushub"
    shutil.copytree(
        REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "campushub-state", "__pycache__", ".*_cache")
    )
    (copy / ".venv" / "bin").mkdir(parents=True)
    (copy / ".venv" / "bin" / "python").write_text("")
    (copy / ".pytest_cache").mkdir()
    (copy / "campushub" / "__pycache__").mkdir()
    (copy / "campushub" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"")
    home = copy / "campushub-state" / "homes" / "ada"
    home.mkdir(parents=True)
    (home / "notebook.ipynb").write_text('{"cells": []}')
    (copy / "campushub-state" / "jupyterhub.sqlite").write_bytes(b"")
    return copy


def make(folder: Path, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", target], cwd=folder, capture_output=True, text=True, timeout=60
    )


def test_make_clean_removes_what_can_be_rebuilt_and_keeps_users_notebooks(checkout):
    r = make(checkout, "clean")
    assert r.returncode == 0, r.stderr
    assert (checkout / "campushub-state" / "homes" / "ada" / "notebook.ipynb").read_text() == '{"cells": []}'
    assert (checkout / "campushub-state" / "jupyterhub.sqlite").exists()
    for rebuilt in (".venv", ".pytest_cache", "campushub/__pycache__"):
        assert not (checkout / rebuilt).exists(), rebuilt
    assert "kept campushub-state/" in r.stdout and "make clean-demo-state deletes it" in r.stdout


def test_make_clean_demo_state_says_what_it_deletes(checkout):
    r = make(checkout, "clean-demo-state")
    assert r.returncode == 0, r.stderr
    assert (
        "deleting campushub-state/: the demo's database, secrets and users' homes with every file in them" in r.stdout
    )
    assert "  campushub-state/homes/ada/\n" in r.stdout
    assert not (checkout / "campushub-state").exists()
    assert (checkout / ".venv").exists(), "only the demo's state goes"
    assert "nothing to delete" in make(checkout, "clean-demo-state").stdout


def test_make_help_names_both(checkout):
    out = make(checkout, "help").stdout
    assert "make clean             remove what can be rebuilt" in out
    assert "make clean-demo-state  delete the demo's campushub-state/" in out
