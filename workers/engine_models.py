"""A model's life in an engine process: made ready (loaded, proved with one sentence, then one
full batch computed so that a batch's memory is in place before the first burst), measured, and
let go. Runs in the engine process (``workers.engine_process``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from translation.engines import EngineSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelMemory:
    """A loaded model's weights in one engine process: ``total`` bytes, of which ``shared`` are
    mapped from the checkpoint's files and shared with every other process that maps them."""

    total: int
    shared: int = 0

    @staticmethod
    def held_together(lanes: list[ModelMemory]) -> int:
        """What engine processes each holding the model take together: the pages they share
        once, every process's own part once each."""
        return max(lane.shared for lane in lanes) + sum(lane.total - lane.shared for lane in lanes)


def warm_up(spec: EngineSpec, source: str, target: str) -> ModelMemory:
    """Load ``spec``'s model and prove it with one sentence (at the start, or ahead of a changed
    route's jobs); returns its memory. A model that does not load or translate is not kept."""
    from translation.engines import engine_for, engine_unload

    try:
        engine = engine_for(spec)
        engine.translate(["Hello"], source, target)
    except Exception:
        engine_unload(spec)
        free_memory(spec.device)
        raise
    return memory_of(engine)


# The sentence of a full batch at start: a customer's message of a usual length (about 20 tokens).
FULL_BATCH_TEXT = "Hello, I ordered a pair of shoes two weeks ago and they still have not arrived."


def compute_full_batch(spec: EngineSpec, source: str, target: str, size: int) -> float | None:
    """Compute one batch of ``size`` sentences: the memory a full batch needs (its activations,
    the decoder's cache, a GPU allocator's blocks) is taken now and kept (the C heap keeps what a
    batch frees: workers/native_heap.py), not in the first burst of jobs, which computed about a
    sixth slower than the next on the 2-core machine (docs/benchmarks.md).

    Returns its seconds; None when there was none to compute (``size`` 1) or the memory ran out
    (a card too small for the route's batch size: logged, and its batches of that size will be
    split as they fail). Any other error is raised: a model that cannot compute a batch is not
    ready."""
    if size <= 1:
        return None
    import torch

    from translation.engines import engine_for

    started = time.monotonic()
    try:
        engine_for(spec).translate([FULL_BATCH_TEXT] * size, source, target)
        return time.monotonic() - started
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    # Out of the handler: the error's traceback, and the batch's tensors it holds, are gone.
    logger.warning("%s: a full batch of %d ran out of memory at start (%s); batches that size will be split",
                   spec.model, size, failure)
    if spec.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return None


def memory_of(engine) -> ModelMemory:
    """A loaded engine's memory; 0 where it cannot be measured (the model is loaded all the
    same, and must still be reported to be unloaded later)."""
    try:
        return ModelMemory(engine.memory_bytes, engine.shared_bytes)
    except Exception:
        logger.warning("Could not measure the memory of %s", engine.spec.model, exc_info=True)
        return ModelMemory(0)


def free_memory(device: str) -> None:
    """Return an unloaded model's memory: collect its tensors now, give a GPU's cached blocks
    back to the driver (other processes, the next model), and the C heap's free pages back to
    the system (glibc keeps them otherwise: int8 weights are copies on that heap)."""
    import gc

    from workers.native_heap import trim

    gc.unfreeze()  # the unloaded model's objects were frozen with the rest; the caller freezes again
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    trim()


def device_broken(device: str, error: BaseException) -> bool:
    """After a call failed on ``device``: whether the device can compute no more in this process.
    A CUDA error other than running out of memory (an illegal address, a device-side assert, a
    lost card) is sticky: every later call in the same context fails, while the process lives
    on and its worker looks healthy. Probed with a synchronize; an engine's own error (a pair it
    does not serve, an input too long) and a CPU never are."""
    from translation.engines import EngineError

    if not device.startswith("cuda") or isinstance(error, EngineError):
        return False
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    try:
        torch.cuda.synchronize()
    except Exception:
        return True
    return False
