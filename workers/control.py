"""Remote-control commands of a translation worker, answered by Celery's control channel.

    celery -A cs_portal inspect models          # every worker's loaded models and their memory
    celery -A cs_portal inspect intake          # how each worker took its translate messages (workers/job_intake.py)
"""

from __future__ import annotations

from celery.worker.control import inspect_command

# Filled by workers.main once the engine processes have loaded their models.
LOADED_MODELS: list[dict] = []


def lanes_note(model: dict) -> str:
    """How a worker's lanes hold a loaded model: on a CPU, the weights mapped from the
    checkpoint's files once for all of them, the rest (converted or quantized weights) once per
    lane; on a GPU, a copy per lane in the card's memory."""
    lanes = model.get("copies", 1)
    if lanes <= 1:
        return ""
    shared = model.get("shared_mib", 0)
    if not shared:
        return f" in {lanes} lanes, a copy each"
    if shared >= model["memory_mib"]:
        return f" in {lanes} lanes, mapped once from the checkpoint"
    return f" in {lanes} lanes, {shared} MiB of it mapped once from the checkpoint"


@inspect_command()
def models(state) -> list[dict]:
    """The models this worker serves: model, precision, device, weights in MiB (all its lanes
    together), the number of lanes (``copies``) and the MiB of it they share (``shared_mib``)."""
    return list(LOADED_MODELS)  # the lanes' threads replace its items as models load and unload


@inspect_command()
def intake(state) -> dict[str, int]:
    """How this worker's consumer took its translate messages (workers/job_intake.py): ``direct``
    (straight into the batcher) or ``handed_to_pool`` (Celery's default path), how the direct
    ones ended (``succeeded``, ``retried``, ``failed``, ``expired``), and ``in_flight`` now."""
    from workers.job_intake import COUNTS

    return COUNTS.snapshot()
