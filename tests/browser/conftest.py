"""Browser tests: Playwright's sync API runs its own event loop, and Django's connections follow
the context (asgiref.local), so ORM calls made while it runs can open connections that no code
of the test can reach to close. They are ended here, at the end of the session, so that the
test database can be dropped."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def end_stray_connections(django_db_setup, django_db_blocker):
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'"
        )
