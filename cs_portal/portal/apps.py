from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "cs_portal.portal"
    label = "portal"
    verbose_name = "Support portal"
