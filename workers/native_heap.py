"""The C heap of an engine process: the memory a forward pass frees stays for the next one.

glibc hands large freed blocks back to the system at once: a block above its mmap threshold is
mapped for its allocation and unmapped when freed, and the top of the heap is given back once
more than the trim threshold lies free there. A forward pass allocates and frees the same
activations at every decoding step, so each batch faulted its memory in again: 13,000–21,000
page faults per lane for a 128-job batch of the small benchmark model, the kernel zeroing every
page anew, and a batch computed about 5 % slower than with freed memory kept (docs/benchmarks.md,
2026-11-28, fourteenth session). With both thresholds fixed (glibc then stops moving them)
blocks up to ``keep_bytes`` come from the heap, and what a batch freed is reused by the next, as
a caching allocator (PyTorch's on a GPU, jemalloc) reuses it; the price is a batch's peak memory
staying with the process while it is idle. An unloaded model's memory is still given back
(``trim``), and so is what loading the models left free (``workers.engine_process``).
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold older glibc releases take (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit):
# asked for where a larger one is refused; larger blocks are then mapped for each allocation.
MMAP_THRESHOLD_OLD_MAX = 32 * 1024 * 1024
# mallopt takes a C int.
KEEP_MAX_BYTES = 2**31 - 1


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): its allocator, as it is
        return None


def keep_freed_memory(keep_bytes: int) -> bool:
    """Keep freed memory in this process for its next allocations: blocks up to ``keep_bytes``
    from the heap, and up to ``keep_bytes`` free at its top (0: glibc's own behaviour). Returns
    whether the C library took both settings."""
    if keep_bytes <= 0:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    keep_bytes = min(int(keep_bytes), KEEP_MAX_BYTES)
    try:
        taken = mallopt(M_MMAP_THRESHOLD, keep_bytes) == 1 or (
            keep_bytes > MMAP_THRESHOLD_OLD_MAX and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_OLD_MAX) == 1)
        taken = taken and mallopt(M_TRIM_THRESHOLD, keep_bytes) == 1
    except (ctypes.ArgumentError, OSError):
        taken = False
    if not taken:
        logger.warning("The C library refused to keep freed memory (mallopt); it gives it back after each batch")
    return taken


def trim() -> None:
    """Give the heap's free pages back to the system (an unloaded model's, whatever is kept)."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)
