"""The placement plan: which GPU serves which queues, one worker process per GPU.

A plan is a JSON file (``PLACEMENT_FILE``, by default ``docker/placement.json``):

    {"workers": [
        {"name": "gpu0", "device": "cuda:0", "queues": ["translate.en", "translate.es"], "metrics_port": 9200},
        {"name": "gpu1", "device": "cuda:1", "queues": ["translate.en", "translate.zh"], "metrics_port": 9201}
    ]}

A GPU may serve several languages; a language may be served by several GPUs (they all consume
its queue). On a machine without a GPU the plan becomes one CPU worker for all its queues.
Each worker serves Prometheus metrics on its ``metrics_port`` (default: 9200 + its position).
A GPU worker's ``lanes`` (1 to 8, default ``TRANSLATION_GPU_LANES``) are instances of its models
on its card, computing batches side by side (Triton's ``instance_group`` ``count``); a CPU
entry's are its CPU lanes (0: one per core).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from workers.lane_layout import MAX_GPU_LANES

DEVICE_PATTERN = re.compile(r"^(cpu|cuda:(\d+|GPU-[0-9a-fA-F-]+))$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
QUEUE_PATTERN = re.compile(r"^translate\.[a-z]{2}(\.[a-z0-9_-]+)?$")


DEFAULT_METRICS_PORT = 9200


class PlacementError(ValueError):
    """The plan is invalid; the message names the entry and the problem."""


@dataclass(frozen=True)
class Placement:
    name: str
    device: str  # "cpu" or "cuda:N" (an index or a GPU UUID)
    queues: tuple[str, ...]
    metrics_port: int = 9200
    lanes: int | None = None  # None: the worker's setting (TRANSLATION_GPU_LANES, TRANSLATION_CPU_LANES)

    def worker_arguments(self, *, host: str, cores: int = 0) -> list[str]:
        """The arguments of ``python -m workers.main`` for this entry on ``host``; ``cores``: the
        share of the machine's cores its lanes split (0: every usable core)."""
        return [
            "--device", self.device, "--queues", ",".join(self.queues), "--name", f"{self.name}@{host}",
            f"--metrics-port={self.metrics_port}",
            *([f"--lanes={self.lanes}"] if self.lanes is not None else []),
            *([f"--cores={cores}"] if cores else []),
        ]


def parse_placement(data: object, *, source: str = "the placement plan") -> list[Placement]:
    if not isinstance(data, dict) or not isinstance(data.get("workers"), list) or not data["workers"]:
        raise PlacementError(f'{source}: expected {{"workers": [...]}} with at least one worker')
    placements, names, devices, ports = [], set(), set(), set()
    for index, entry in enumerate(data["workers"]):
        where = f"{source}, worker {index + 1}"
        if not isinstance(entry, dict):
            raise PlacementError(f"{where}: expected an object")
        unknown = set(entry) - {"name", "device", "queues", "metrics_port", "lanes"}
        if unknown:
            raise PlacementError(f"{where}: unknown keys {sorted(unknown)}")
        name, device, queues = entry.get("name", ""), entry.get("device", ""), entry.get("queues")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PlacementError(f"{where}: name {name!r} must be lower-case letters, digits, '-' or '_'")
        if name in names:
            raise PlacementError(f"{where}: a second worker named {name!r}")
        if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
            raise PlacementError(f"{where}: device {device!r} must be 'cpu', 'cuda:N' or 'cuda:GPU-<uuid>'")
        if device != "cpu" and device in devices:
            # One worker per GPU: its lanes are the instances of its models on the card ("lanes").
            raise PlacementError(f"{where}: {device} already has a worker; give it more queues instead")
        if not isinstance(queues, list) or not queues:
            raise PlacementError(f"{where}: queues must be a non-empty list")
        for queue in queues:
            if not isinstance(queue, str) or not QUEUE_PATTERN.match(queue):
                raise PlacementError(f"{where}: queue {queue!r} must look like 'translate.<lang>[.<name>]'")
        port = entry.get("metrics_port", DEFAULT_METRICS_PORT + index)
        if not isinstance(port, int) or isinstance(port, bool) or not 1024 <= port <= 65535:
            raise PlacementError(f"{where}: metrics_port {port!r} must be a port number from 1024 to 65535")
        if port in ports:
            raise PlacementError(f"{where}: metrics_port {port} is already another worker's")
        lanes = entry.get("lanes")
        if lanes is not None:
            low, high = (0, 64) if device == "cpu" else (1, MAX_GPU_LANES)
            if not isinstance(lanes, int) or isinstance(lanes, bool) or not low <= lanes <= high:
                what = "CPU lanes (0: one per core)" if device == "cpu" else "instances of its models on the card"
                raise PlacementError(f"{where}: lanes {lanes!r} must be from {low} to {high} ({what})")
        names.add(name)
        devices.add(device)
        ports.add(port)
        placements.append(
            Placement(name=name, device=device, queues=tuple(dict.fromkeys(queues)), metrics_port=port, lanes=lanes)
        )
    return placements


def load_placement(path: Path) -> list[Placement]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlacementError(f"No placement plan at {path}") from None
    except OSError as exc:  # a directory, no permission
        raise PlacementError(f"Cannot read the placement plan {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PlacementError(f"{path} is not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PlacementError(f"{path} is not valid JSON: {exc}") from None
    return parse_placement(data, source=str(path))


def for_this_machine(plan: list[Placement], gpu_count: int, *, cpu_workers: int = 1) -> list[Placement]:
    """The plan as this machine can run it: GPU entries beyond its GPUs are an error; with no
    GPU at all, ``cpu_workers`` CPU workers (one by default) each consume every queue of the
    plan, hot standbys of each other, on the CPU lanes of the settings (a GPU entry's lanes are
    instances on its card)."""
    if gpu_count == 0:
        queues = tuple(dict.fromkeys(queue for placement in plan for queue in placement.queues))
        return [
            Placement(name="cpu" if index == 0 else f"cpu{index + 1}", device="cpu", queues=queues,
                      metrics_port=plan[0].metrics_port + index)
            for index in range(cpu_workers)
        ]
    for placement in plan:
        index = placement.device.removeprefix("cuda:")
        if index.isdigit() and int(index) >= gpu_count:
            raise PlacementError(f"worker {placement.name} wants {placement.device}, but this machine has {gpu_count} GPU(s)")
    return plan


def gpu_count() -> int:
    """GPUs this machine has, without initialising CUDA in this process (its children use them)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))
