"""A real Docker-compatible API for the tests: root's `podman system service` on a socket of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import docker

from .slurm import wait_for


class PodmanService:
    """`podman system service --time=0 unix://<folder>/podman.sock`, run as root; stop() and start() again
    to take the API away from a running hub (the containers themselves live on)."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="campushub-podman-"))
        self.socket = self.folder / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        self.log = self.folder / "podman-service.log"

    def start(self) -> PodmanService:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.url],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(self.answers, 30, f"podman's API service on {self.socket} (log: {self.log})", 0.2)
        return self

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"podman system service exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        if not self.socket.exists():
            return False
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.socket.unlink(missing_ok=True)
