"""Which models a worker loads at start, and the language pair that proves each one works."""

from __future__ import annotations

import logging

from translation.engines import EngineSpec
from translation.routing import ANY, routes_for_queues
from workers.engine_process import Warmup

logger = logging.getLogger(__name__)


def warmups_for_queues(queues: set[str], *, device: str, quiet: bool = False) -> list[Warmup]:
    """One warm-up per model named by a route on ``queues``, disabled routes included: switching
    one on (an A/B swap, a fallback taking over) then finds its model loaded, not loading.

    A many-to-many model serving several pairs is one spec, so it loads once.
    """
    warmups: dict[EngineSpec, Warmup] = {}
    for route in routes_for_queues(queues, include_disabled=True):
        spec = EngineSpec(engine=route.engine, model=route.model, precision=route.precision, device=device)
        if spec not in warmups:
            source = route.source if route.source != ANY else ("es" if route.target != "es" else "en")
            warmups[spec] = Warmup(spec=spec, source=source, target=route.target)
    if quiet:  # asked again while running (workers/loaded_models.py): said once, at the start
        return list(warmups.values())
    unrouted = queues - {route.queue for route in routes_for_queues(queues, include_disabled=True)}
    for queue in sorted(unrouted):
        logger.warning("Queue %s has no route: this worker will take no jobs from it", queue)
    return list(warmups.values())
