"""CPU time of this machine's processes, from ``/proc`` (Linux): the benchmark's account of
which part of the pipeline took the cores while it ran.

Whole processes, not threads: a process's figure includes all of its threads. A process that
started during the measured stretch counts in full; one that ended during it is missing (a
database connection closed meanwhile, say), so the parts are a lower bound.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessTime:
    pid: int
    ppid: int
    name: str  # the kernel's command name (at most 15 characters; a kernel worker's changes)
    seconds: float  # user + system CPU time since it started
    started: int = 0  # clock ticks after boot: tells a reused pid from the same process


def parse_stat(line: str, ticks_per_second: int) -> ProcessTime:
    """One ``/proc/<pid>/stat`` line. The name sits in parentheses and may itself hold spaces
    and parentheses, so the fields are counted from the last ``)``."""
    pid, _, rest = line.partition(" (")
    name, _, fields = rest.rpartition(") ")
    values = fields.split()
    # After the name: state, ppid, ..., utime and stime as the 12th and 13th, starttime as the
    # 20th (fields 14, 15 and 22 of stat(5)).
    utime, stime, started = int(values[11]), int(values[12]), int(values[19])
    return ProcessTime(int(pid), int(values[1]), name, (utime + stime) / ticks_per_second, started)


def processes(proc: Path = PROC) -> dict[int, ProcessTime] | None:
    """Every process's CPU time now, by pid; None where there is no ``/proc`` to read."""
    if not (proc / "self" / "stat").exists():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found[int(entry.name)] = parse_stat((entry / "stat").read_text(), ticks)
        except (OSError, ValueError, IndexError):  # it ended while being read
            continue
    return found


def cpu_seconds(pids, proc: Path = PROC) -> float | None:
    """The CPU time of the processes ``pids`` together; None where one cannot be read."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            total += parse_stat((proc / str(pid) / "stat").read_text(), ticks).seconds
        except (OSError, ValueError, IndexError):
            return None
    return total


Part = Callable[[ProcessTime], bool]


def _used(before: Mapping[int, ProcessTime], after: Mapping[int, ProcessTime]):
    """(process, CPU seconds since ``before``) for every process of ``after``; a pid reused by a
    new process counts from zero."""
    for pid, now in after.items():
        then = before.get(pid)
        since = then.seconds if then is not None and then.started == now.started else 0.0
        yield now, max(0.0, now.seconds - since)


def cpu_by_part(
    before: Mapping[int, ProcessTime], after: Mapping[int, ProcessTime], parts: Mapping[str, Part]
) -> dict[str, float]:
    """CPU seconds each part used between two readings; a process counts in the first part it
    matches, the rest in "everything else"."""
    used = dict.fromkeys([*parts, "everything else"], 0.0)
    for process, seconds in _used(before, after):
        used[next((name for name, matches in parts.items() if matches(process)), "everything else")] += seconds
    return used


def unmatched_by_name(
    before: Mapping[int, ProcessTime], after: Mapping[int, ProcessTime], parts: Mapping[str, Part]
) -> Counter[str]:
    """What "everything else" was: CPU seconds by process name, of processes no part matches."""
    names: Counter[str] = Counter()
    for process, seconds in _used(before, after):
        if seconds and not any(matches(process) for matches in parts.values()):
            names[process.name] += seconds
    return names
