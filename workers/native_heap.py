"""The C heap of an engine process: the memory a forward pass frees stays for the next one.

glibc hands large freed blocks back to the system at once: a block above its mmap threshold is
mapped for its allocation and unmapped when freed, and the top of the heap is given back once
more than the trim threshold lies free there. A forward pass allocates and frees the same
activations at every decoding step, so each batch faulted its memory in again: 13,000–21,000
page faults per lane for a 128-job batch of the small benchmark model, the kernel zeroing every
page anew, and a batch computed 4–5 % slower than with freed memory kept (docs/benchmarks.md,
2026-11-28, fourteenth session). With both thresholds fixed (glibc then stops moving them) what
a batch freed is reused by the next, as a caching allocator (PyTorch's on a GPU, jemalloc)
reuses it; the price is a batch's peak memory staying with the process while it is idle. An
unloaded model's memory is still given back (``trim``).
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc takes on a 64-bit system (DEFAULT_MMAP_THRESHOLD_MAX): blocks
# above it are mapped for each allocation whatever the setting.
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
# mallopt takes a C int.
KEEP_MAX_BYTES = 2**31 - 1


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): its allocator, as it is
        return None


def keep_freed_memory(keep_bytes: int) -> bool:
    """Keep up to ``keep_bytes`` of freed memory in this process for its next allocations
    (0: glibc's own behaviour). Returns whether the C library took the setting."""
    if keep_bytes <= 0:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    keep_bytes = min(keep_bytes, KEEP_MAX_BYTES)
    taken = mallopt(M_MMAP_THRESHOLD, min(keep_bytes, MMAP_THRESHOLD_MAX)) == 1
    taken = mallopt(M_TRIM_THRESHOLD, keep_bytes) == 1 and taken
    if not taken:
        logger.warning("The C library refused to keep freed memory (mallopt); its defaults stay")
    return taken


def trim() -> None:
    """Give the heap's free pages back to the system (an unloaded model's, whatever is kept)."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)
