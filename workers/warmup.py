"""Load the models a worker serves, once, and prove each works before consuming."""

from __future__ import annotations

import logging

from translation.engines import EngineSpec, engine_for
from translation.routing import routes_for_queues

logger = logging.getLogger(__name__)

WARMUP_TEXT = "Hello"


def load_models_for_queues(queues: set[str], *, device: str) -> dict[EngineSpec, int]:
    """Load every model named by a route on ``queues``; returns each model's memory in bytes.

    A many-to-many model serving several pairs is one spec, so it loads once.
    """
    memory: dict[EngineSpec, int] = {}
    for route in routes_for_queues(queues):
        spec = EngineSpec(engine=route.engine, model=route.model, precision=route.precision, device=device)
        engine = engine_for(spec)
        if spec not in memory:
            source = route.source if route.source != "*" else ("es" if route.target != "es" else "en")
            engine.translate([WARMUP_TEXT], source, route.target)
            memory[spec] = engine.memory_bytes
            print(f"  loaded {route.model} [{route.precision}] on {device}: {engine.memory_bytes / 2**20:.1f} MiB", flush=True)
    unrouted = queues - {route.queue for route in routes_for_queues(queues)}
    for queue in sorted(unrouted):
        logger.warning("Queue %s has no route: this worker will take no jobs from it", queue)
    return memory
