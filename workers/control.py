"""Remote-control commands of a translation worker, answered by Celery's control channel.

    celery -A cs_portal inspect models          # every worker's loaded models and their memory
"""

from __future__ import annotations

from celery.worker.control import inspect_command

# Filled by workers.main once the engine process has loaded its models.
LOADED_MODELS: list[dict] = []


@inspect_command()
def models(state) -> list[dict]:
    """The models this worker serves: model, precision, device and weights in MiB."""
    return LOADED_MODELS
