"""A trigram index for the inbox's search (``selectors.inbox``: ``icontains`` on the messages'
text, which Django writes ``UPPER(text::text) LIKE UPPER(%s)``). Without it a search reads every
message of the portal. (The customers' name and e-mail are searched in the same ``OR`` as the
messages, which PostgreSQL cannot answer from indexes of its own: they are left unindexed.)

PostgreSQL only, and only where the pg_trgm extension can be had: it is a trusted extension
(PostgreSQL 13+), so the database's owner may create it; where it cannot (no contrib files, no
privilege), the migration says so and goes on, the search working as before, only slower.
Built ``CONCURRENTLY`` (this migration is not atomic): a large messages table keeps taking new
messages while its index is built. The index is not in the models' state (it exists on
PostgreSQL only, where the extension is): this migration owns it.
"""

from django.db import DatabaseError, migrations

INDEXES = {
    "message_text_search": ("portal_message", "text"),
}


def trigram_extension(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
    if cursor.fetchone() is not None:
        return True
    try:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as error:  # no contrib files, or not allowed: search works, unindexed
        message = (f"The inbox's search index was not made: the pg_trgm extension is not available ({error}). "
                   "Search still works, reading every message; `CREATE EXTENSION pg_trgm` as a superuser, then "
                   "`manage.py migrate portal 0009` and `manage.py migrate`, adds it.")
        print(f"\n  {message}")
        return False
    return True


def search_indexes_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite, the embedded run: its tables are small enough to read whole
    with schema_editor.connection.cursor() as cursor:
        if not trigram_extension(cursor):
            return
        for name, (table, column) in INDEXES.items():
            # A concurrent build that was interrupted leaves an invalid index of that name behind.
            cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                           [name])
            found = cursor.fetchone()
            if found is not None and not found[0]:
                cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
            cursor.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" USING gin (UPPER("{column}") gin_trgm_ops)'
            )


def search_indexes_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name in INDEXES:
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


class Migration(migrations.Migration):

    # CREATE INDEX CONCURRENTLY runs outside a transaction. Never squash this migration with others:
    # a squashed migration is atomic, and its build would fail.
    atomic = False

    dependencies = [
        ("portal", "0009_token_digests"),
    ]

    operations = [
        migrations.RunPython(search_indexes_create, search_indexes_drop, elidable=False),
    ]
