"""The test users: removing one leaves nothing of it on the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cluster.users import create_users, remove_user

USER = "chub-gone"


def test_a_removed_test_user_leaves_no_podman_folders_in_tmp(root_required):
    [account] = create_users([USER])
    uid = account.pw_uid
    folders = [Path(f"/tmp/containers-user-{uid}"), Path(f"/tmp/podman-run-{uid}")]
    try:
        # what the podman test does as its user: rootless podman makes its folders in /tmp
        r = subprocess.run(["runuser", "-l", USER, "-c", "podman info"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        for folder in folders:
            assert folder.is_dir() and folder.stat().st_uid == uid, f"podman did not make {folder}"
    finally:
        remove_user(USER)
    assert [f for f in folders if f.exists()] == []
