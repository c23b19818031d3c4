"""Start-up checks of what the translation ledger needs from its database."""

from __future__ import annotations

from django.core.checks import Error, Warning, register

# A batch's results are stored with UPDATE ... FROM ... RETURNING (translation/execution.py).
SQLITE_AT_LEAST = (3, 35, 0)


@register("database")
def sqlite_new_enough(app_configs=None, databases=None, **kwargs) -> list[Error]:
    from django.db import connections

    errors = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        import sqlite3

        if sqlite3.sqlite_version_info < SQLITE_AT_LEAST:
            errors.append(Error(
                f"SQLite {sqlite3.sqlite_version} is too old for the translation ledger: it stores a batch's "
                f"results with UPDATE ... FROM ... RETURNING, which needs SQLite "
                f"{'.'.join(map(str, SQLITE_AT_LEAST))} or later.",
                hint="Use a Python built against a newer SQLite, or PostgreSQL (DATABASE_URL).",
                id="translation.E001",
            ))
    return errors


@register()
def initial_routes_readable(app_configs=None, **kwargs) -> list[Warning]:
    """The initial routes (TRANSLATION_ROUTES or TRANSLATION_ROUTES_FILE) parse: only
    ``import_routes`` needs them, so a bad file is a warning to every process, not a crash."""
    from django.conf import settings

    problem = getattr(settings, "TRANSLATION_ROUTES_PROBLEM", "")
    if not problem:
        return []
    return [Warning(
        f"The initial routes cannot be read ({problem}); `manage.py import_routes` without a file will refuse to run.",
        hint="Fix the JSON (a list of routes, as in docker/routes.example.json) or unset the variable.",
        id="translation.W001",
    )]
