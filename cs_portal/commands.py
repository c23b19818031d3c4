"""What the project's management commands share."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError, connection


def database_unreachable(error: BaseException) -> str:
    """One line naming the database a command could not reach or that refused it, and why."""
    settings = connection.settings_dict
    where = settings.get("NAME") if connection.vendor == "sqlite" else (
        f"{settings.get('HOST') or 'localhost'}:{settings.get('PORT') or 'default port'}/{settings.get('NAME')}")
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    if connection.connection is None:  # never connected: the database is away, or the address wrong
        return f"The database cannot be reached ({connection.vendor} {where}): {reason}. Is it running? (DATABASE_URL)"
    hint = " Has `manage.py migrate` run?" if "no such table" in reason or "does not exist" in reason else ""
    return f"The database refused the command ({connection.vendor} {where}): {reason}.{hint}"


def migrations_unapplied() -> list[str]:
    """The migrations the database lacks (``app.name``), as ``migrate`` would apply them."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, backwards in plan if not backwards]


class DatabaseCommand(BaseCommand):
    """A command that reads or writes the database: when the database cannot be reached it ends
    with one line saying so (exit status 1), not a traceback."""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except (OperationalError, InterfaceError) as error:
            raise CommandError(database_unreachable(error)) from error
