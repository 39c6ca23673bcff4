"""The cluster's GPUs as Slurm reports them: how many each node of a partition has, of each type, and
how many are in use now.

Read from `scontrol --details --oneliner show node` (each node's Gres, GresUsed, State and Partitions; AllocTRES
where a Slurm gives no GresUsed), run by
the hub without a shell, and kept for `CACHE_SECONDS`: a node added or a GPU drained shows on the spawn
page within that time, without a hub restart.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

CACHE_SECONDS = 30.0
# a node in one of these states runs no new job
UNAVAILABLE_STATES = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "POWERED_DOWN", "MAINT", "RESERVED")


@dataclass(frozen=True)
class NodeGpus:
    name: str
    total: dict[str, int]  # type ("" for any) -> GPUs on the node
    used: dict[str, int]  # type ("" for any) -> GPUs in use
    available: bool = True  # runs new jobs (not down, drained ...)

    def free(self, gpu_type: str | None = None) -> int:
        key = gpu_type or ""
        return max(0, self.total.get(key, 0) - self.used.get(key, 0)) if self.available else 0


@dataclass(frozen=True)
class Inventory:
    """The GPUs of one partition's nodes."""

    nodes: list[NodeGpus] = field(default_factory=list)

    def most_per_node(self, gpu_type: str | None = None) -> int:
        """The most GPUs (of the type) one server can get: the largest node's count."""
        return max((n.total.get(gpu_type or "", 0) for n in self.nodes), default=0)

    def total(self, gpu_type: str | None = None) -> int:
        return sum(n.total.get(gpu_type or "", 0) for n in self.nodes)

    def free(self, gpu_type: str | None = None) -> int:
        """GPUs (of the type) not in use now, on nodes that take jobs."""
        return sum(n.free(gpu_type) for n in self.nodes)


def parse_gres(text: str) -> dict[str, int]:
    """Slurm's Gres or GresUsed of a node ("gpu:4", "gpu:a100:4(S:0-1),gpu:v100:2", "gpu:(null):3(IDX:0-2)")
    -> {type: count}, with "" for every type together."""
    counts: dict[str, int] = {}
    for entry in re.sub(r"\((?!null\))[^)]*\)", "", text).split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            continue
        count = int(parts[-1])
        counts[""] = counts.get("", 0) + count
        if len(parts) == 3 and parts[1] not in ("", "(null)"):
            counts[parts[1]] = counts.get(parts[1], 0) + count
    return counts


def parse_alloc_tres(text: str) -> dict[str, int]:
    """GPUs in use from a node's AllocTRES ("cpu=2,mem=1G,gres/gpu=2,gres/gpu:a100=2") -> {type: count}."""
    used: dict[str, int] = {}
    for entry in text.split(","):
        name, _, value = entry.partition("=")
        if not name.startswith("gres/gpu") or not value.isdigit():
            continue
        used[name.removeprefix("gres/gpu").removeprefix(":")] = int(value)
    return used


def parse_nodes(text: str, partition: str) -> Inventory:
    """`scontrol --details --oneliner show node` -> the GPUs of the nodes in `partition`."""
    nodes = []
    for line in text.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
        if "NodeName" not in fields or partition not in fields.get("Partitions", "").split(","):
            continue
        state = fields.get("State", "")
        nodes.append(
            NodeGpus(
                name=fields["NodeName"],
                total=parse_gres(fields.get("Gres", "")),
                used=parse_gres(fields["GresUsed"])
                if "GresUsed" in fields
                else parse_alloc_tres(fields.get("AllocTRES", "")),
                available=not any(s in state for s in UNAVAILABLE_STATES),
            )
        )
    return Inventory(nodes)


class GpuCache:
    """The partitions' inventories, each re-read when older than `seconds`. A failed read keeps the last
    one (or None: the pages then offer what the site file says)."""

    def __init__(self, seconds: float = CACHE_SECONDS):
        self.seconds = seconds
        self.found: dict[str, tuple[float, Inventory | None]] = {}

    def last(self, partition: str) -> Inventory | None:
        return self.found.get(partition, (0.0, None))[1]

    async def read(self, partition: str, run, max_age: float | None = None) -> Inventory | None:
        """`run(argv)` runs a command without a shell: (returncode, stdout, stderr). `max_age` (seconds)
        asks for a read newer than the cache's own age."""
        read_at, inventory = self.found.get(partition, (0.0, None))
        age = self.seconds if max_age is None else min(max_age, self.seconds)
        if inventory is not None and time.monotonic() - read_at < age:
            return inventory
        try:
            rc, out, _ = await run(["scontrol", "--details", "--oneliner", "show", "node"])
        except (TimeoutError, OSError):
            rc, out = -1, ""
        if rc == 0:
            inventory = parse_nodes(out, partition)
        self.found[partition] = (time.monotonic(), inventory)
        return inventory


GPUS = GpuCache()
