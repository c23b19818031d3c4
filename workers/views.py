"""The admin's operations page (``/admin/operations/``), staff only: refreshes itself every
few seconds by fetching its live part again."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from workers.operations import operations_snapshot

REFRESH_S = 5


def operations(request: HttpRequest) -> TemplateResponse:
    context = {
        **admin.site.each_context(request), **operations_snapshot(), "title": "Operations",
        "refresh_s": REFRESH_S, "flower_url": settings.FLOWER_URL,
        # In ledger dispatch the broker holds wake-ups; the jobs are counted from the ledger.
        "ledger_dispatch": settings.TRANSLATION_DISPATCH == "ledger",
    }
    live_only = request.GET.get("part") == "live"
    return TemplateResponse(request, "admin/workers/operations_live.html" if live_only else "admin/workers/operations.html", context)
