"""Running the Ansible playbook (ansible/site.yml) against hosts booted by tests/cluster/machines.py.

The hosts have no route to a package index: CampusHub and everything it needs come from a folder of
wheels bound into them (the role's campushub_pip_find_links), as at a site with no internet. The
dependencies' wheels are made once per change of constraints.txt and kept; CampusHub's own two
wheels are made from the checkout for each run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
CACHE = Path("/var/cache/campushub/deploy")
BIN = Path(sys.executable).parent
PIP_QUIET = ["--quiet", "--disable-pip-version-check"]


def pip_wheel(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *PIP_QUIET, *args], capture_output=True, text=True, cwd=REPO
    )
    if out.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


def wheelhouse(folder: Path) -> Path:
    """A folder of wheels for the hosts: campushub and campushub-lab built from this checkout, and every
    package they and the single-user environment need, at constraints.txt's versions."""
    folder.mkdir(parents=True, exist_ok=True)
    pip_wheel("--no-deps", "--wheel-dir", str(folder), ".", "./extensions/campushub-lab")
    own = sorted(folder.glob("*.whl"))
    inputs = b"".join((REPO / f).read_bytes() for f in ("constraints.txt", "pyproject.toml",
                      "extensions/campushub-lab/pyproject.toml", "images/singleuser-requirements.txt"))  # fmt: skip
    deps = CACHE / f"wheels-{hashlib.sha256(inputs).hexdigest()[:16]}"
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        pip_wheel("--constraint", "constraints.txt", "--wheel-dir", str(deps), *map(str, own),
                  "-r", "images/singleuser-requirements.txt")  # fmt: skip
        for wheel in own:  # the checkout's own change with every run: never cached
            (deps / wheel.name).unlink(missing_ok=True)
        for old in CACHE.glob("wheels-*"):
            if old != deps:
                shutil.rmtree(old, ignore_errors=True)
        (deps / ".complete").touch()
    for wheel in deps.glob("*.whl"):
        try:
            os.link(wheel, folder / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, folder / wheel.name)
    return folder


def inventory(
    hosts: dict[str, str], groups: dict[str, list[str]], variables: dict, host_vars: dict | None = None
) -> dict:
    """An Ansible YAML inventory: `hosts` maps inventory names to addresses."""
    host_vars = host_vars or {}
    return {
        "all": {
            "vars": variables,
            "children": {
                group: {"hosts": {name: {"ansible_host": hosts[name], **host_vars.get(name, {})} for name in members}}
                for group, members in groups.items()
            },
        }
    }


def run_playbook(inventory_data: dict, folder: Path, name: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """ansible-playbook site.yml with this inventory; its whole output is kept in <folder>/<name>.log."""
    path = folder / f"{name}.inventory.yml"
    path.write_text(yaml.safe_dump(inventory_data, sort_keys=False))
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(folder / "ansible-tmp"),
        ANSIBLE_HOME=str(folder / "ansible-home"),
    )
    started = time.monotonic()
    out = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(path), "site.yml"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    out.seconds = time.monotonic() - started
    (folder / f"{name}.log").write_text(out.stdout + out.stderr)
    print(f"ansible-playbook ({name}): exit {out.returncode} in {out.seconds:.0f} s")
    return out


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP's counts per host: {"host": {"ok": 12, "changed": 0, "failed": 0, ...}}."""
    counts = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s*:\s*(.*)$", line)
        if m and "=" in m.group(2):
            counts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return counts
