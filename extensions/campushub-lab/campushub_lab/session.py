"""Where this server runs: the node, its Slurm job (id, partition, profile, start and end of its time
limit) and its GPUs with their load, for the Lab's session panel (GET campushub/session).

Outside a Slurm job (no SLURM_JOB_ID: the demo's local servers, a container) the session is "local"
and the job's fields are null. GPU load comes from NVML (the nvidia-ml-py package) where a driver is
present; otherwise the answer says why there is none.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit

SQUEUE_TIMEOUT = 10
# A job's start and end, asked of Slurm once per job (they do not change while it runs).
_job_times: dict[str, tuple[str | None, str | None]] = {}
_job_times_lock = asyncio.Lock()


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def slurm_time(text: str) -> str | None:
    """squeue's %S / %e (local time, no zone: 2026-11-23T10:00:00) as ISO 8601 with the zone; None for
    N/A, Unknown or anything else."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.astimezone()  # Slurm prints the node's local time
    return when.isoformat(timespec="seconds")


def iso_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return (when if when.tzinfo else when.astimezone()).isoformat(timespec="seconds")


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPU ids this job may use: CUDA_VISIBLE_DEVICES, else Slurm's SLURM_JOB_GPUS."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"):
        value = env.get(name)
        if value is not None:
            ids = [part.strip() for part in value.split(",") if part.strip()]
            return [i for i in ids if i not in ("NoDevFiles", "-1")]
    return []


async def job_times(job_id: str) -> tuple[str | None, str | None]:
    """(start, end) of the job, from `squeue -h -j ID -o '%S|%e'`, asked once and remembered (also when
    Slurm could not answer: the session panel then shows no countdown rather than asking again)."""
    async with _job_times_lock:
        if job_id not in _job_times:
            _job_times[job_id] = await _ask_squeue(job_id)
        return _job_times[job_id]


async def _ask_squeue(job_id: str) -> tuple[str | None, str | None]:
    try:
        proc = await asyncio.create_subprocess_exec(
            "squeue", "-h", "-j", job_id, "-o", "%S|%e",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return None, None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), SQUEUE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, None
    if proc.returncode != 0:
        return None, None
    start, _, end = out.decode(errors="replace").strip().partition("|")
    return slurm_time(start), slurm_time(end)


def gpu_stats(visible: list[str] | None = None) -> tuple[list[dict], str | None]:
    """NVML's view of the GPUs: ([{index, name, utilization, memory_used, memory_total}], None), or
    ([], why there is none). Blocking: run it in a thread. `visible`: the job's GPU ids; where NVML sees
    more GPUs than the job was given (Slurm without device isolation), only the job's are reported."""
    try:
        import pynvml
    except ImportError:
        return [], "GPU statistics need the nvidia-ml-py package, which this environment lacks"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"no NVIDIA driver on this node ({e})"
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return [], "no NVIDIA GPU on this node"
        stats = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if not _is_visible(pynvml, handle, index, count, visible or []):
                continue
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization = int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except pynvml.NVMLError:  # some GPUs (MIG slices) report none
                utilization = 0
            stats.append({
                "index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                "utilization": utilization, "memory_used": int(memory.used), "memory_total": int(memory.total),
            })  # fmt: skip
        return stats, None
    except pynvml.NVMLError as e:
        return [], f"NVIDIA's management library failed: {e}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _is_visible(pynvml, handle, index: int, count: int, visible: list[str]) -> bool:
    if not visible:
        return True
    if all(v.isdigit() for v in visible):
        # with device isolation NVML sees only the job's GPUs (numbered from 0): all are the job's
        return count <= len(visible) or str(index) in visible
    try:
        uuid = pynvml.nvmlDeviceGetUUID(handle)
    except pynvml.NVMLError:
        return True
    uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return any(uuid == v or uuid.startswith(v) for v in visible)


async def session_info(env: Mapping[str, str] | None = None) -> dict:
    """The answer of GET campushub/session."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or None
    scheduler_url = env.get("CAMPUSHUB_SCHEDULER_URL")
    gpus = visible_gpus(env)
    start = end = None
    if job_id:
        start = iso_or_none(env.get("CAMPUSHUB_JOB_START"))
        end = iso_or_none(env.get("CAMPUSHUB_JOB_END"))
        if start is None or end is None:
            asked_start, asked_end = await job_times(job_id)
            start, end = start or asked_start, end or asked_end
    stats, stats_error = await asyncio.get_running_loop().run_in_executor(None, gpu_stats, gpus)
    return {
        "kind": "slurm" if job_id else "local",
        "node": (env.get("SLURMD_NODENAME") if job_id else None) or socket.gethostname(),
        "job_id": job_id,
        "partition": (env.get("SLURM_JOB_PARTITION") or None) if job_id else None,
        "profile": (env.get("CAMPUSHUB_PROFILE") or None) if job_id else None,
        "gpus": gpus,
        "start": start,
        "end": end,
        "now": now_iso(),
        "scheduler": urlsplit(scheduler_url).path if scheduler_url else None,
        "gpu_stats": stats,
        "gpu_stats_error": stats_error,
    }
