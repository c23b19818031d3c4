"""Which queue, engine and model serve a language pair.

Everything that decides a route goes through ``route_for``; the table comes from settings
(``TRANSLATION_ROUTES``) and is validated in ``load_routes``. Queue names are made only by
``queue_name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from translation import errors, languages

ANY = "*"
ENGINES = ("hf-seq2seq",)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
QUEUE_PATTERN = re.compile(r"^translate\.[a-z]{2}(\.[a-z0-9_-]+)?$")


def queue_name(target_language: str) -> str:
    """The queue of jobs into ``target_language``: one queue per target language."""
    return f"translate.{target_language}"


@dataclass(frozen=True)
class Route:
    source: str  # ISO 639-1, or ANY
    target: str
    queue: str
    engine: str
    model: str  # local path or hub id, given to from_pretrained
    precision: str = "fp32"


@cache
def load_routes() -> tuple[Route, ...]:
    """The validated routing table; a bad table stops the process with a precise message."""
    routes: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(settings.TRANSLATION_ROUTES):
        where = f"TRANSLATION_ROUTES[{index}]"
        unknown = set(raw) - {"source", "target", "queue", "engine", "model", "precision"}
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown keys {sorted(unknown)}")
        source, target = raw.get("source", ANY), raw.get("target", "")
        if source != ANY and not languages.is_known(source):
            raise ImproperlyConfigured(f"{where}: unknown source language '{source}'")
        if not languages.is_known(target):
            raise ImproperlyConfigured(f"{where}: unknown target language '{target}'")
        queue = raw.get("queue") or queue_name(target)
        if not QUEUE_PATTERN.match(queue):
            raise ImproperlyConfigured(f"{where}: queue '{queue}' must look like 'translate.<lang>[.<name>]'")
        engine = raw.get("engine", "hf-seq2seq")
        if engine not in ENGINES:
            raise ImproperlyConfigured(f"{where}: engine '{engine}' is not one of {ENGINES}")
        precision = raw.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ImproperlyConfigured(f"{where}: precision '{precision}' is not one of {PRECISIONS}")
        if not raw.get("model"):
            raise ImproperlyConfigured(f"{where}: 'model' (a local path or hub id) is required")
        if (source, target) in seen:
            raise ImproperlyConfigured(f"{where}: a second route for {source}->{target}")
        seen.add((source, target))
        routes.append(Route(source, target, queue, engine, raw["model"], precision))
    return tuple(routes)


def route_for(source: str, target: str) -> Route:
    """The route for a pair: an exact source match wins over a route for any source."""
    table = load_routes()
    for candidate_source in (source, ANY):
        for route in table:
            if route.source == candidate_source and route.target == target:
                return route
    raise errors.NoRoute(errors.NO_ROUTE.format(source=source, target=target))


def routes_for_queues(queues: set[str]) -> list[Route]:
    """The routes a worker consuming ``queues`` serves."""
    return [route for route in load_routes() if route.queue in queues]
