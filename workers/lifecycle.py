"""Process lifetime helpers shared by the supervisors of this project."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 20


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (the system's choice)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (``start_workers`` numbers its CPU workers'
    metrics ports on from the plan's first)."""
    import socket

    for _ in range(100):
        base = free_port()
        probes = []
        try:
            for port in range(base, base + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, so that a killed supervisor
    never leaves a worker or an engine process running with nobody watching it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        pass


@dataclass
class Child:
    """A supervised child process with its own log file."""

    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None
    # A worker's warm shutdown finishes the batches it holds before it exits.
    stop_timeout_s: float = STOP_TIMEOUT_S
    extra_env: dict[str, str] = field(default_factory=dict)  # this child's own, beside the shared ones

    def start(self, env: dict[str, str]) -> None:
        env = {**env, **self.extra_env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            # A session of its own: Ctrl-C reaches only the supervisor, which stops children in order.
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd=ROOT, preexec_fn=die_with_parent,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)  # Celery: warm shutdown, unfinished jobs go back
        try:
            self.process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived; raised at the next safe point by ``raise_if_stop_requested``."""


_stop = threading.Event()


def install_stop_signals() -> None:
    """Record Ctrl-C and SIGTERM. The handler only sets a flag: an exception raised inside a
    signal handler can land in the middle of a fork or a library's cleanup and be swallowed."""

    def on_signal(signum, frame) -> None:
        _stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def raise_if_stop_requested() -> None:
    if _stop.is_set():
        raise StopRequested()


def wait_until_consuming(process: subprocess.Popen, name: str, timeout: float) -> bool:
    """Wait until the worker ``name`` (run by ``process``) answers a ping; False if the process
    ended or the time ran out first."""
    import time

    from cs_portal.celery import app

    deadline = time.monotonic() + timeout
    while not app.control.ping(destination=[name], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
    return True


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL if it has not ended within ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
