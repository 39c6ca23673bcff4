"""Real unix accounts for the tests, made with useradd and removed with userdel."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from pathlib import Path

from .slurm import add_slurm_users


def create_users(names: list[str]) -> list[pwd.struct_passwd]:
    for name in names:
        remove_user(name)  # a leftover of an interrupted run starts clean
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    add_slurm_users(names)  # with accounting, a user's jobs need an association
    return [pwd.getpwnam(n) for n in names]


def remove_user(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
    # Rootless podman, with no XDG_RUNTIME_DIR (no login session here), keeps its runtime and
    # storage folders in /tmp; userdel leaves them, and the next user given this uid would own them.
    for folder in (Path(f"/tmp/containers-user-{uid}"), Path(f"/tmp/podman-run-{uid}")):
        try:
            owned = folder.lstat().st_uid == uid and folder.is_dir() and not folder.is_symlink()
        except FileNotFoundError:
            continue
        if owned:
            shutil.rmtree(folder)
