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
        declare_queues()


def declare_queues() -> None:
    """Name every routed queue in Celery's configuration.

    Flower lists a broker's queues from the workers it has seen, else from ``task_queues``;
    declaring them here shows the per-language queues even before a worker reports.
    """
    from celery import current_app
    from kombu import Exchange, Queue

    from translation.routing import load_routes

    # The same shape Celery gives a queue it creates on demand: a direct exchange of its name.
    names = sorted({route.queue for route in load_routes()})
    current_app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names]
