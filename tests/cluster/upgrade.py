"""An older CampusHub installation to upgrade in place, as a site's hub host has one: a virtualenv (made with
`python3 -m venv` and pip) holding an older CampusHub release with the JupyterHub of its time, and the hub
and proxy run from it.

The older release is this source tree built as a wheel with version OLDER_VERSION and JupyterHub
OLDER_JUPYTERHUB: the newest JupyterHub before 6.0, whose database schema (revision OLDER_REVISION)
is older than 6.x's. Everything else comes from constraints.txt, as `make install` installs it.

The virtualenv with the older release's dependencies is cached under CACHE, keyed by a hash of what
goes into it (pyproject.toml, constraints.txt, the older JupyterHub, Python), and made again when that
changes (a minute or two; pip's cache makes it cheaper the next time). A test copies it to INSTALLED, the
path it was made at (its scripts' #! lines name it), puts the older CampusHub of this tree into the copy
(a few seconds), and removes the copy at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from campushub.proxy import find_proxy

from .hub import RunningHub

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/campushub/upgrade")
INSTALLED = CACHE / "installed"
OLDER_VERSION = "0.0.1"
OLDER_JUPYTERHUB = "5.5.4"
OLDER_REVISION = "4621fec11365"
# The hub hosts' Python (Debian's), as the deployment installs CampusHub with.
PYTHON = "/usr/bin/python3"
# Bumped when what build_older does changes, so that the cache is made again.
RECIPE = "1"


def sh(argv: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def clean_env(venv: Path) -> dict:
    """The environment of the installation's programs: its bin/ first on PATH, then configurable-http-proxy's
    folder; none of the tests' PYTHONPATH, which would bring this tree's campushub in instead of the installed one."""
    proxy_dir = os.path.dirname(find_proxy("chp"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in (str(venv / "bin"), proxy_dir, env.get("PATH", "")) if p)
    return env


def package_files() -> list[Path]:
    """What a wheel of this tree is made of (relative to ROOT)."""
    files = [Path("pyproject.toml"), Path("README.md")]
    for path in sorted((ROOT / "campushub").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files.append(path.relative_to(ROOT))
    return files


def build_wheel(dest: Path, version: str | None = None, jupyterhub: str | None = None) -> Path:
    """This tree as a wheel in `dest`; with `version` and `jupyterhub`, as an older release: that version
    number, and that range of JupyterHub in its dependencies."""
    with tempfile.TemporaryDirectory(prefix="campushub-src-") as folder:
        src = Path(folder)
        for name in package_files():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
        if version:
            init = src / "campushub" / "__init__.py"
            init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
        if jupyterhub:
            pyproject = src / "pyproject.toml"
            text, n = re.subn(r'"jupyterhub>=[^"]*"', f'"jupyterhub{jupyterhub}"', pyproject.read_text())
            assert n == 1, "pyproject.toml: no jupyterhub dependency to rewrite"
            pyproject.write_text(text)
        sh([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dest, src])
    (wheel,) = dest.glob(f"campushub-{version or '*'}-py3-none-any.whl")
    return wheel


def cache_key() -> str:
    digest = hashlib.sha256(f"{RECIPE} {OLDER_JUPYTERHUB} {PYTHON} {os.path.realpath(PYTHON)}".encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def older_wheel(dest: Path) -> Path:
    return build_wheel(dest, OLDER_VERSION, f">={OLDER_JUPYTERHUB.rsplit('.', 1)[0]},<6")


def older_constraints(dest: Path) -> Path:
    """constraints.txt with the older JupyterHub in place of its pin."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    kept = [line for line in lines if not line.lower().startswith("jupyterhub==")]
    assert len(kept) == len(lines) - 1, "constraints.txt: no jupyterhub pin to replace"
    dest.write_text("\n".join([*kept, f"jupyterhub=={OLDER_JUPYTERHUB}", ""]))
    return dest


def build_older(target: Path, wheel: Path) -> None:
    """Make the older installation with `wheel` at INSTALLED, then move it to `target` (a cached one is always
    complete)."""
    shutil.rmtree(INSTALLED, ignore_errors=True)
    for stale in CACHE.glob("older-*"):  # earlier inputs' installations
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="campushub-older-") as folder:
        try:
            sh([PYTHON, "-m", "venv", INSTALLED])
            pip = [INSTALLED / "bin" / "python", "-m", "pip", "install", "--quiet"]
            sh(
                [*pip, "--constraint", older_constraints(Path(folder) / "constraints.txt"), wheel],
                env=clean_env(INSTALLED),
            )
            sh([INSTALLED / "bin" / "python", "-m", "pip", "check"], env=clean_env(INSTALLED))
            INSTALLED.rename(target)
        except BaseException:
            shutil.rmtree(INSTALLED, ignore_errors=True)
            raise


def older_installation(wheel: Path) -> Path:
    """A fresh copy of the older installation at INSTALLED (made first if its inputs changed), with the older
    CampusHub of this tree (`wheel`, from older_wheel) in it; its path."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"older-{cache_key()}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build or copy at a time
        if not target.is_dir():
            build_older(target, wheel)
        shutil.rmtree(INSTALLED, ignore_errors=True)
        sh(["cp", "-a", target, INSTALLED])
    pip = [INSTALLED / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall"]
    sh([*pip, wheel], env=clean_env(INSTALLED))
    sh([INSTALLED / "bin" / "python", "-m", "pip", "check"], env=clean_env(INSTALLED))
    return INSTALLED


def remove_installation() -> None:
    shutil.rmtree(INSTALLED, ignore_errors=True)


def installed_versions(venv: Path, cwd: Path) -> tuple[str, str]:
    """(CampusHub's version, JupyterHub's) as the installation's Python imports them."""
    code = "import campushub, jupyterhub; print(campushub.__version__, jupyterhub.__version__)"
    out = sh([venv / "bin" / "python", "-c", code], env=clean_env(venv), cwd=cwd).stdout.split()
    return out[0], out[1]


def install_newer(venv: Path, wheel_dir: Path) -> subprocess.CompletedProcess:
    """Install this tree (the newer CampusHub) over the installation with pip, as an admin upgrades: its wheel,
    with constraints.txt (JupyterHub 6.1.1 and the rest)."""
    wheel = build_wheel(wheel_dir)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--constraint", ROOT / "constraints.txt"]
    return sh([*pip, wheel], env=clean_env(venv), cwd=wheel_dir)


def reinstall_older(venv: Path, wheel: Path, folder: Path) -> subprocess.CompletedProcess:
    """Put the older CampusHub (`wheel`) and its JupyterHub back with pip, as an admin rolls an upgrade back."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--constraint"]
    return sh([*pip, older_constraints(folder / "constraints.txt"), wheel], env=clean_env(venv))


class InstalledHub(RunningHub):
    """A RunningHub whose `campushub proxy` and `campushub hub` run from the installation `venv`, in the
    hub's folder (`python -m` would put the current folder, maybe this tree, first on sys.path)."""

    def __init__(self, venv: Path, workdir: Path, site: dict):
        self.venv = venv
        self.python = venv / "bin" / "python"
        super().__init__(workdir, site, env=clean_env(venv))
        self.cwd = self.workdir

    def campushub(self, *args: str) -> subprocess.CompletedProcess:
        """`campushub ARGS --config SITE` from the installation, to its end."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=300, env=self.env, cwd=self.cwd
        )
