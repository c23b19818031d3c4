import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError

from cs_portal.commands import DatabaseCommand
from translation.errors import ApplicationError
from translation.models import LanguageRoute
from translation.services import routes_import


class Command(DatabaseCommand):
    help = (
        "Load language routes from a JSON file (a list of routes, as in docker/routes.example.json), "
        "or the initial routes of the settings (TRANSLATION_ROUTES) when no file is given. "
        "Each route is validated as the admin validates it; nothing is written unless all are valid."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", nargs="?", help="a JSON file; default: settings.TRANSLATION_ROUTES")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--replace", action="store_true", help="delete the existing routes first")
        group.add_argument(
            "--if-empty", action="store_true", help="do nothing if there is any route already (first start-up)"
        )

    def handle(self, *args, file: str | None, replace: bool, if_empty: bool, **options) -> None:
        if if_empty and LanguageRoute.objects.exists():
            self.stdout.write(f"{LanguageRoute.objects.count()} route(s) already configured; nothing imported.")
            return
        if file:
            try:
                entries = json.loads(Path(file).read_text(encoding="utf-8"))
            except OSError as exc:
                raise CommandError(f"Cannot read {file}: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:
                raise CommandError(f"{file} is not UTF-8 text: {exc}") from exc
            except json.JSONDecodeError as exc:
                raise CommandError(f"{file} is not valid JSON: {exc}") from exc
        elif settings.TRANSLATION_ROUTES_PROBLEM:
            raise CommandError(f"The initial routes cannot be read: {settings.TRANSLATION_ROUTES_PROBLEM}")
        else:
            entries = settings.TRANSLATION_ROUTES
        if not replace and LanguageRoute.objects.exists() and not if_empty:
            self.stdout.write("Adding to the existing routes (use --replace to start from an empty table).")
        try:
            created = routes_import(entries, replace=replace)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        for route in created:
            self.stdout.write(f"  {route}  queue {route.queue}  model {route.model_name} [{route.precision}]")
        self.stdout.write(self.style.SUCCESS(f"{len(created)} route(s) imported."))
