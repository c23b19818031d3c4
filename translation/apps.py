from django.apps import AppConfig
from django.core.signals import setting_changed


def _reset_routes(*, setting: str, **kwargs) -> None:
    if setting in ("TRANSLATION_ROUTES", "SUPPORTED_LANGUAGES"):
        from translation.routing import load_routes

        load_routes.cache_clear()


class TranslationConfig(AppConfig):
    name = "translation"
    verbose_name = "Translation"

    def ready(self) -> None:
        setting_changed.connect(_reset_routes)
