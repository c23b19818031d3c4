"""Process lifetime helpers shared by the supervisors of this project."""

from __future__ import annotations

import signal


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, so that a killed supervisor
    never leaves a worker or an engine process running with nobody watching it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        pass
