from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from cs_portal.portal.workspace.views import customer_chat


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database and broker reachable, and a ready, live worker on every enabled
    route's queue (workers/health.py). 503 with the reasons otherwise."""
    from workers.health import readiness

    result = readiness()
    return JsonResponse({"status": "ready" if result.ready else "not ready", "checks": result.checks},
                        status=200 if result.ready else 503)


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="workspace:inbox", permanent=False)),
    path("workspace/", include("cs_portal.portal.workspace.urls")),
    path("chat/", customer_chat, name="customer-chat"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("cs_portal.portal.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]

handler404 = "cs_portal.portal.api.errors.api_not_found"
