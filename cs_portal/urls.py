from django.contrib import admin
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from cs_portal.portal.workspace.views import customer_chat
from workers.views import operations


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database and broker reachable, and a ready, live worker on every enabled
    route's queue (workers/health.py). 503 with the reasons otherwise. It names workers, hosts
    and the errors' own words: guarded as the metrics are (``metrics_token_required``)."""
    from workers.health import readiness

    result = readiness()
    return JsonResponse({"status": "ready" if result.ready else "not ready", "checks": result.checks},
                        status=200 if result.ready else 503)


def readyz_web(request: HttpRequest) -> JsonResponse:
    """This web process can serve: its database answers. For a load balancer's readiness probe:
    the portal keeps taking messages while a queue has no worker or the broker is down (the
    jobs wait in the ledger), so those must not take the web out of service."""
    from workers.health import database_readiness

    result = database_readiness(detail=False)  # open to the load balancer, and so to anyone
    return JsonResponse({"status": "ready" if result.ready else "not ready", "checks": result.checks},
                        status=200 if result.ready else 503)


def metrics_token_required(view):
    """With METRICS_BEARER_TOKEN set, the view answers only requests that carry it, or those of
    a staff member signed in (the operations page links to these views)."""
    import hmac
    from functools import wraps

    from django.conf import settings

    def staff(request: HttpRequest) -> bool:
        """A staff member signed in; asked only without the token, and no when the database
        (which holds the session) is away: a probe carrying the token still gets its 503."""
        try:
            return request.user.is_authenticated and request.user.is_active and request.user.is_staff
        except DatabaseError:
            return False

    @wraps(view)
    def guarded(request: HttpRequest) -> HttpResponse:
        token = settings.METRICS_BEARER_TOKEN
        given = request.headers.get("Authorization", "")
        if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()) and not staff(request):
            response = HttpResponse("This page needs the bearer token (METRICS_BEARER_TOKEN).\n", status=401,
                                    content_type="text/plain")
            response["WWW-Authenticate"] = "Bearer"
            return response
        return view(request)

    return guarded


@metrics_token_required
def metrics(request: HttpRequest) -> HttpResponse:
    """This web server's series: requests by view (django-prometheus) and the jobs it sent,
    added up over every web process (``PROMETHEUS_MULTIPROC_DIR``)."""
    from django_prometheus.exports import ExportToDjangoView

    return ExportToDjangoView(request)


@metrics_token_required
def fleet_metrics(request: HttpRequest) -> HttpResponse:
    """Queue depths, ledger backlog and worker heartbeats: one collector for the whole fleet
    (scrape it through one address, not every web replica)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from workers.fleet_metrics import FleetCollector

    registry = CollectorRegistry()
    registry.register(FleetCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="workspace:inbox", permanent=False)),
    path("workspace/", include("cs_portal.portal.workspace.urls")),
    path("chat/", customer_chat, name="customer-chat"),
    path("admin/operations/", admin.site.admin_view(operations), name="admin-operations"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("cs_portal.portal.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
    path("readyz", metrics_token_required(readyz), name="readyz"),
    path("readyz/web", readyz_web, name="readyz-web"),
    path("metrics", metrics, name="metrics"),
    path("metrics/fleet", fleet_metrics, name="fleet-metrics"),
]

handler404 = "cs_portal.portal.api.errors.api_not_found"
