"""The test harness cleans up after itself: a test process that used the campus login's shared
identity provider ends (the provider's thread does not hold it) and leaves no secret folder behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_a_run_with_the_shared_provider_ends_and_leaves_no_secret_folder(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_sessionfinish  # noqa: F401\n")
    (tmp_path / "test_login_site.py").write_text(
        "from pathlib import Path\n"
        "from tests.cluster.idp import campus_login\n\n"
        "def test_site():\n"
        "    secret = Path(campus_login()['oidc']['client_secret_file'])\n"
        "    assert secret.exists()\n"
        "    Path('" + str(tmp_path / "secret-folder") + "').write_text(str(secret.parent))\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not Path((tmp_path / "secret-folder").read_text()).exists()
