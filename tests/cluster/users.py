"""Real unix accounts for the tests, made with useradd and removed with userdel."""

from __future__ import annotations

import pwd
import subprocess
import time


def create_users(names: list[str]) -> list[pwd.struct_passwd]:
    for name in names:
        remove_user(name)  # a leftover of an interrupted run starts clean
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    return [pwd.getpwnam(n) for n in names]


def remove_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)
    for _ in range(50):
        if subprocess.run(["pgrep", "-u", name], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
