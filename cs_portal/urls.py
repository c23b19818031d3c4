from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from cs_portal.portal.workspace.views import customer_chat


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Readiness checks come with the operations work."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", RedirectView.as_view(pattern_name="workspace:inbox", permanent=False)),
    path("workspace/", include("cs_portal.portal.workspace.urls")),
    path("chat/", customer_chat, name="customer-chat"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("cs_portal.portal.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
]

handler404 = "cs_portal.portal.api.errors.api_not_found"
