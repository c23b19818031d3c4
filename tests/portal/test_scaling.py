"""Pages whose database work does not grow with the tables: the admin's lists and edit pages ask
the same number of queries for 3 rows as for 30, the ledger's list reads no column's distinct
values, and PostgreSQL can read the inbox's first page off its indexes instead of sorting, and
its search off a trigram index instead of every message."""

import contextlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cs_portal.portal.models import Conversation, Message
from cs_portal.portal.services import agent_create, conversation_create, message_create_from_customer, team_create
from translation.models import Translation

pytestmark = pytest.mark.django_db


def conversations(api_client, count: int) -> list[Conversation]:
    """``count`` conversations of their own customers, each with a Spanish message, each given to
    a new agent of a new team (so that each row names another agent and team)."""
    made = []
    for i in range(count):
        n = Conversation.objects.count()
        agent_create(username=f"agent{n}", password="x", working_language="en", team=team_create(name=f"Team {n}"))
        conversation = conversation_create(api_client=api_client, customer_name=f"Customer {i}")
        message_create_from_customer(conversation=conversation, text=f"Hola {i}", language="es")
        made.append(conversation)
    return made


def queries(client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[-500:]
    return [query["sql"] for query in captured.captured_queries]


@pytest.fixture
def grow(api_client_key, admin_client, django_capture_on_commit_callbacks):
    """Queries of a page with 3 conversations (agents, teams, customers), then with 30."""

    def counts(url_of) -> tuple[int, int]:
        found = []
        for wanted in (3, 30):
            with django_capture_on_commit_callbacks(execute=False):  # nothing is sent to a worker
                conversations(api_client_key[0], wanted - Conversation.objects.count())
            admin_client.get(url_of())  # the process's caches (content types) filled alike for both
            found.append(len(queries(admin_client, url_of())))
        return found[0], found[1]

    return counts


class AdminScalingTests:
    @pytest.mark.parametrize("model", ["conversation", "message", "customer", "team"])
    def test_a_list_asks_as_many_queries_for_30_rows_as_for_3(self, grow, model):
        few, many = grow(lambda: reverse(f"admin:portal_{model}_changelist"))
        assert few == many

    def test_the_ledgers_list_asks_as_many_queries_for_30_rows_as_for_3(self, grow):
        few, many = grow(lambda: reverse("admin:translation_translation_changelist"))
        assert few == many

    @pytest.mark.parametrize("model", ["conversation", "message"])
    def test_an_edit_page_does_not_list_every_conversation_or_customer(self, grow, model):
        def url():
            row = Conversation.objects.order_by("pk").first() if model == "conversation" else (
                Message.objects.order_by("pk").first())
            return reverse(f"admin:portal_{model}_change", args=[row.pk])

        few, many = grow(url)
        assert few == many

    def test_the_ledgers_filters_read_no_distinct_values_and_still_filter(self, admin_client, queued_translation):
        url = reverse("admin:translation_translation_changelist")
        sql = queries(admin_client, url)
        assert not [query for query in sql if "DISTINCT" in query.upper() and "translation_translation" in query]
        page = admin_client.get(url).content.decode()
        assert "?target_language__exact=en" in page and "Spanish (es)" in page  # every known language offered
        assert "?queue__exact=translate.en" in page  # the routes' queues
        listed = admin_client.get(url, {"target_language__exact": "en"}).context["cl"].result_list
        assert [row.pk for row in listed] == [queued_translation.pk]
        assert not admin_client.get(url, {"target_language__exact": "de"}).context["cl"].result_list


@pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL's plans")
class InboxIndexTests:
    def plan(self, queryset) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")  # a few test rows: ask what the plan can use
            cursor.execute("SET LOCAL enable_sort = off")
            sql, params = queryset.query.sql_with_params()
            cursor.execute(f"EXPLAIN {sql}", params)
            return "\n".join(row[0] for row in cursor.fetchall())

    def test_the_inbox_page_is_read_off_its_indexes(self, api_client_key, django_capture_on_commit_callbacks):
        from cs_portal.portal.selectors import inbox

        with django_capture_on_commit_callbacks(execute=False):
            conversations(api_client_key[0], 3)
        supervisor = agent_create(username="lead", password="x", working_language="en", every_team=True)
        plan = self.plan(inbox(agent=supervisor)[:200])
        assert "conversation_inbox" in plan, plan  # the order, without a sort of every conversation
        assert "message_latest_delivered" in plan, plan  # each row's latest message, one index step
        assert "Sort" not in plan, plan  # nothing sorted: every order comes from an index
        assert Translation.objects.exists()  # the rows the plan was asked about are real

    def test_a_search_reads_the_messages_trigram_index_not_every_message(
        self, api_client_key, django_capture_on_commit_callbacks
    ):
        from cs_portal.portal.selectors import inbox

        with django_capture_on_commit_callbacks(execute=False):
            conversations(api_client_key[0], 3)
        supervisor = agent_create(username="lead", password="x", working_language="en", every_team=True)
        plan = self.plan(inbox(agent=supervisor, query="hola 1")[:200])
        assert "message_text_search" in plan, plan  # portal migration 0010
        assert [c.customer.name for c in inbox(agent=supervisor, query="HOLA 1")] == ["Customer 1"]


class AssignmentTests:
    def test_a_new_conversation_goes_to_the_available_agent_with_the_fewest_open_ones(
        self, api_client_key, django_capture_on_commit_callbacks
    ):
        from cs_portal.portal.models import ConversationStatus

        client = api_client_key[0]
        busy_before = agent_create(username="ana", password="x", working_language="en")
        busy_now = agent_create(username="bo", password="x", working_language="en")
        away = agent_create(username="cy", password="x", working_language="en")
        away.is_available = False
        away.save()
        with django_capture_on_commit_callbacks(execute=False):
            for agent, status, times in [(busy_before, ConversationStatus.CLOSED, 5), (busy_before, ConversationStatus.OPEN, 1),
                                         (busy_now, ConversationStatus.OPEN, 2)]:
                for _ in range(times):
                    Conversation.objects.filter(pk=conversation_create(api_client=client, customer_name="C").pk).update(
                        assignee=agent, status=status)
            # Closed conversations do not count; the agent who is away gets none.
            assert conversation_create(api_client=client, customer_name="New").assignee == busy_before
            assert conversation_create(api_client=client, customer_name="Next").assignee == busy_before  # a tie: first agent
            assert conversation_create(api_client=client, customer_name="Third").assignee == busy_now
            assert not Conversation.objects.filter(assignee=away).exists()


class SearchIndexMigrationTests:
    """0010's branches that the test database never takes: pg_trgm refused, and an index left
    invalid by an interrupted concurrent build (stand-ins for the database's answers)."""

    class Database:
        def __init__(self, *, extension: str, index_valid: bool | None) -> None:
            self.extension, self.index_valid, self.statements, self.answer = extension, index_valid, [], None
            self.vendor = "postgresql"

        # The schema editor's connection, and its cursor.
        @property
        def connection(self):
            return self

        def cursor(self):
            return contextlib.nullcontext(self)

        def execute(self, sql, params=None) -> None:
            from django.db import ProgrammingError

            self.statements.append(sql)
            if sql.startswith("CREATE EXTENSION") and self.extension == "refused":
                raise ProgrammingError('permission denied to create extension "pg_trgm"')
            if "FROM pg_extension" in sql:
                self.answer = (1,) if self.extension == "installed" else None
            elif "FROM pg_index" in sql:
                self.answer = None if self.index_valid is None else (self.index_valid,)

        def fetchone(self):
            return self.answer

    @staticmethod
    def create(database) -> None:
        import importlib

        importlib.import_module("cs_portal.portal.migrations.0010_search_indexes").search_indexes_create(None, database)

    def test_without_the_extension_it_says_so_and_makes_no_index(self, capsys):
        database = self.Database(extension="refused", index_valid=None)
        self.create(database)
        said = capsys.readouterr().out
        assert "The inbox's search index was not made: the pg_trgm extension is not available" in said
        assert 'permission denied to create extension "pg_trgm"' in said
        assert not [sql for sql in database.statements if "INDEX" in sql]

    def test_an_index_left_invalid_is_made_again(self):
        database = self.Database(extension="installed", index_valid=False)
        self.create(database)
        drop, create = [sql for sql in database.statements if "INDEX CONCURRENTLY" in sql]
        assert drop == 'DROP INDEX CONCURRENTLY IF EXISTS "message_text_search"'
        assert create.startswith('CREATE INDEX CONCURRENTLY IF NOT EXISTS "message_text_search" ON "portal_message"')

    def test_a_valid_index_is_kept(self):
        database = self.Database(extension="installed", index_valid=True)
        self.create(database)
        assert not [sql for sql in database.statements if "DROP" in sql]
