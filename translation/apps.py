from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class TranslationConfig(AppConfig):
    name = "translation"
    verbose_name = "Translation"

    def ready(self) -> None:
        from translation import checks  # noqa: F401  (registers the database checks)
        from translation.models import LanguageRoute
        from translation.routing import route_saved

        # This process follows its own saves at once; other processes within
        # TRANSLATION_ROUTES_CHECK_S (translation/routing.py).
        post_save.connect(route_saved, sender=LanguageRoute, dispatch_uid="routes_changed_save")
        post_delete.connect(route_saved, sender=LanguageRoute, dispatch_uid="routes_changed_delete")
