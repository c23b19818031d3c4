"""How a worker lays out its lanes: engine processes computing batches side by side, on a CPU
each with a share of the cores, on a GPU each an instance of the models on the card."""

from __future__ import annotations

import math
import os
from pathlib import Path

# Lanes a CPU worker runs when none are configured: one per core up to this many (each lane
# is a process with its own copy of whatever weights are not mapped from the checkpoint, and
# its own runtime; past four, a lane's own threads serve large models better).
MAX_AUTO_LANES = 4
# Model instances one GPU worker may run on its card (each a process with its own CUDA context
# and its own copy of the weights in the card's memory).
MAX_GPU_LANES = 8


def cpu_lanes(requested: int, cores: int) -> tuple[int, int]:
    """How a CPU worker splits ``cores``: (engine processes, torch threads each).

    ``requested`` lanes, or with 0 one per core up to ``MAX_AUTO_LANES``; each lane gets an
    equal share of the cores (at least one thread).
    """
    if requested < 0:
        raise ValueError(f"the number of CPU lanes must be 0 (one per core) or more, not {requested}")
    cores = max(1, cores)
    lanes = requested or min(cores, MAX_AUTO_LANES)
    return lanes, max(1, cores // lanes)


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), capped by its
    cgroup's CPU quota where one is set (a container's CPU limit, cgroup v2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return cores


def gpu_lanes(requested: int, cores: int) -> tuple[int, int]:
    """How a GPU worker runs its card: (engine processes, torch threads each).

    Each lane is an instance of the models on the one card, as Triton's ``instance_group``
    ``count`` makes several instances of a model per GPU: while one lane launches its kernels,
    claims or stores, another's forward pass keeps the card busy (on an H200, ``generate`` at
    batch 128 kept the card computing for 17-47 ms of a 110-180 ms call; docs/benchmarks.md).
    ``requested`` 1: one lane on torch's own threads. More: each lane a share of the cores, so
    that N processes do not each start a thread per core.
    """
    if not 1 <= requested <= MAX_GPU_LANES:
        raise ValueError(f"the number of GPU lanes must be from 1 to {MAX_GPU_LANES}, not {requested}")
    return (1, 0) if requested == 1 else (requested, max(1, max(1, cores) // requested))


def lane_layout(device: str, requested: int, cores: int = 0) -> tuple[int, int]:
    """(lanes, torch threads each) of a worker on ``device``: ``cpu_lanes`` or ``gpu_lanes``
    over ``cores`` (0: the usable ones)."""
    usable = cores or usable_cores()
    return cpu_lanes(requested, usable) if device == "cpu" else gpu_lanes(requested, usable)


def default_lanes(device: str) -> int:
    """The lanes a worker on ``device`` runs unless told: ``TRANSLATION_CPU_LANES`` on a CPU,
    ``TRANSLATION_GPU_LANES`` on a GPU."""
    from django.conf import settings

    return settings.TRANSLATION_CPU_LANES if device == "cpu" else settings.TRANSLATION_GPU_LANES
