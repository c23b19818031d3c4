"""Flower with its login on every page: ``python -m workers.flower [Flower options]``.

Flower 2.2 asks for its basic-auth credentials on its pages and API but answers ``/metrics``
and ``/healthcheck`` to anyone. This launcher requires the credentials there too, and refuses
to start without credentials (``FLOWER_BASIC_AUTH`` or ``--basic-auth``, or an OAuth ``--auth``)
unless ``FLOWER_ALLOW_NO_AUTH=1`` is set for a machine nobody else can reach.
"""

from __future__ import annotations

import os
import sys

NO_CREDENTIALS = (
    "Flower needs credentials: set FLOWER_BASIC_AUTH=user:password (or pass --basic-auth); "
    "FLOWER_ALLOW_NO_AUTH=1 starts it open, for a machine nobody else can reach."
)


def require_login_on_monitor_endpoints() -> None:
    """Put Flower's /metrics and /healthcheck behind the same login as its pages."""
    from flower.views import monitor
    from tornado import web

    for handler in (monitor.Metrics, monitor.Healthcheck):
        if not getattr(handler.get, "requires_login", False):
            protected = web.authenticated(handler.get)
            protected.requires_login = True
            handler.get = protected


def has_credentials(argv: list[str], environ=os.environ) -> bool:
    options = ("--basic-auth", "--basic_auth", "--auth")
    given = any(arg.split("=", 1)[0] in options for arg in argv)
    return given or bool(environ.get("FLOWER_BASIC_AUTH") or environ.get("FLOWER_AUTH"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not has_credentials(argv) and os.environ.get("FLOWER_ALLOW_NO_AUTH") != "1":
        raise SystemExit(NO_CREDENTIALS)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # Flower serves its own process's metrics
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cs_portal.settings")
    require_login_on_monitor_endpoints()
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "cs_portal", "flower", *argv]
    celery_main()


if __name__ == "__main__":
    main()
