"""Remote-control commands of a translation worker, answered by Celery's control channel.

    celery -A cs_portal inspect models          # every worker's loaded models and their memory
"""

from __future__ import annotations

from celery.worker.control import inspect_command

# Filled by workers.main once the engine processes have loaded their models.
LOADED_MODELS: list[dict] = []


def in_lanes(model: dict) -> str:
    """How many copies a loaded model's memory counts: a CPU worker's lanes each load it."""
    return f" in {model['copies']} lanes" if model.get("copies", 1) > 1 else ""


@inspect_command()
def models(state) -> list[dict]:
    """The models this worker serves: model, precision, device, weights in MiB (all its lanes'
    copies) and the number of copies."""
    return LOADED_MODELS
