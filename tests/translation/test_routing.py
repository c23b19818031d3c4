import pytest
from django.core.exceptions import ValidationError

from translation import errors
from translation.models import LanguageRoute, RouteTableVersion, queue_name
from translation.routing import (
    ROUTE_DISABLED,
    Route,
    RoutingTable,
    route_for,
    routes,
    routes_for_queues,
    share_problems,
)
from translation.services import routes_import


def route(id, source, target, model="m", **fields) -> Route:
    return Route(source=source, target=target, queue=fields.pop("queue", queue_name(target)), engine="hf-seq2seq",
                 model=model, id=id, **fields)


class RoutingTableTests:
    """The choice itself: pure logic on snapshots, no database."""

    table = RoutingTable([
        route(1, "es", "en", "pair-model"),
        route(2, "*", "en", "many-model"),
        route(3, "*", "es", "many-model", precision="int8"),
    ])

    def test_exact_source_wins_over_any_source(self):
        assert self.table.choose("es", "en").model == "pair-model"
        assert self.table.choose("fr", "en").model == "many-model"
        assert self.table.choose("en", "es").precision == "int8"

    def test_pair_without_route_raises_no_route_with_the_pair(self):
        with pytest.raises(errors.NoRoute) as raised:
            self.table.choose("en", "ja")
        assert raised.value.message == errors.NO_ROUTE.format(source="en", target="ja")

    def test_a_disabled_route_hands_its_jobs_to_its_fallback(self):
        table = RoutingTable([
            route(1, "es", "en", "pair-model", enabled=False, fallback_id=2),
            route(2, "es", "en", "backup-model", enabled=False, fallback_id=3),  # a chain: followed to the end
            route(3, "*", "en", "many-model"),
        ])
        assert table.choose("es", "en").id == 3

    def test_a_fallback_for_another_source_is_never_followed(self):
        table = RoutingTable([
            route(1, "*", "en", "many-model", enabled=False, fallback_id=2), route(2, "es", "en", "spanish-model"),
        ])
        with pytest.raises(errors.NoRoute, match="is disabled"):
            table.choose("de", "en")  # German text must not reach a Spanish model

    def test_a_disabled_route_without_fallback_leaves_the_any_source_route(self):
        table = RoutingTable([route(1, "es", "en", enabled=False), route(2, "*", "en", "many-model")])
        assert table.choose("es", "en").id == 2

    def test_a_disabled_route_with_nothing_behind_it_fails_with_the_reason(self):
        table = RoutingTable([route(1, "es", "en", enabled=False)])
        with pytest.raises(errors.NoRoute) as raised:
            table.choose("es", "en")
        assert raised.value.message == ROUTE_DISABLED.format(route=table.by_id[1])

    def test_a_fallback_cycle_in_stored_data_ends_in_a_clear_failure(self):
        table = RoutingTable([
            route(1, "es", "en", enabled=False, fallback_id=2), route(2, "es", "en", enabled=False, fallback_id=1),
        ])
        with pytest.raises(errors.NoRoute, match="is disabled"):
            table.choose("es", "en")

    def test_ab_variants_split_by_share_and_stick_to_the_key(self):
        table = RoutingTable([
            route(1, "es", "en", variant="a", traffic_share=30), route(2, "es", "en", variant="b", traffic_share=70),
        ])
        picks = {key: table.choose("es", "en", key).variant for key in range(1000)}
        assert 250 <= sum(1 for v in picks.values() if v == "a") <= 350
        assert all(table.choose("es", "en", key).variant == variant for key, variant in picks.items())


class ShareProblemsTests:
    def test_enabled_shares_of_a_pair_must_add_up_to_100(self):
        rows = [
            LanguageRoute(source_language="es", target_language="en", variant="a", traffic_share=30),
            LanguageRoute(source_language="es", target_language="en", variant="b", traffic_share=60),
            LanguageRoute(source_language="es", target_language="en", variant="c", traffic_share=10, enabled=False),
            LanguageRoute(source_language="*", target_language="en", traffic_share=100),
        ]
        assert share_problems(rows) == [
            "Traffic shares of the enabled routes for es→en add up to 90% (a 30%, b 60%); they must add up to 100%."
        ]


@pytest.mark.django_db
class RouteTableInTheDatabaseTests:
    def test_the_initial_routes_cover_every_supported_language(self, settings):
        assert {route.target for route in routes()} == set(settings.SUPPORTED_LANGUAGES)

    def test_a_save_in_this_process_routes_the_next_job_at_once(self, tiny_models):
        assert route_for("es", "en").queue == "translate.en"
        row = LanguageRoute.objects.get(source_language="es", target_language="en")
        row.queue = "translate.en.b"
        row.save()
        assert route_for("es", "en").queue == "translate.en.b"

    def test_a_change_made_elsewhere_is_seen_within_the_check_interval(self, settings):
        settings.TRANSLATION_ROUTES_CHECK_S = 0.2
        assert route_for("es", "en").queue == "translate.en"
        # queryset.update() sends no signal, as a change from another process would not.
        from django.utils import timezone

        LanguageRoute.objects.filter(source_language="es", target_language="en").update(
            queue="translate.en.b", updated_at=timezone.now()
        )
        RouteTableVersion.bump()  # what a save does in its transaction
        import time

        time.sleep(0.25)
        assert route_for("es", "en").queue == "translate.en.b"

    def test_routes_emptied_and_imported_again_are_seen_by_a_process_holding_the_old_ones(self, settings):
        """The tables emptied (a test suite's flush, a database restored) and the same routes
        imported again: new rows, after as many bumps as the first time. A process that holds
        the table of before (it heard of none of these saves) loads the new one."""
        from translation import routing
        from translation.services import routes_import

        def emptied_and_imported():
            LanguageRoute.objects.all().delete()
            RouteTableVersion.objects.all().delete()
            routes_import(settings.TRANSLATION_ROUTES)

        settings.TRANSLATION_ROUTES_CHECK_S = 0
        emptied_and_imported()
        held = routing.current_table()  # what another process read then
        old = route_for("es", "en")
        emptied_and_imported()
        routing._table = held  # that process's table: only the version tells it of the change
        new = route_for("es", "en")
        assert new.id != old.id and LanguageRoute.objects.filter(pk=new.id).exists()

    def test_worker_queues_select_their_enabled_routes(self):
        LanguageRoute.objects.filter(source_language="es", target_language="en").update(enabled=False)
        from translation.routing import routes_changed

        routes_changed()
        assert {r.target for r in routes_for_queues({"translate.en"})} == {"en"}
        assert all(r.source == "*" for r in routes_for_queues({"translate.en"}))


@pytest.mark.django_db(transaction=True)
def test_a_version_row_another_transaction_recreates_meanwhile_still_counts_this_change():
    """The version row is gone (a database restored) and two transactions change the routes at
    once: both find no row to bump, both create it. The second waits on the first's row and then
    finds it made; its own change must still move the number, or a process that read the first
    transaction's number would never load the second's change."""
    import threading
    import time

    import psycopg
    from django.db import connection, transaction

    from tests.conftest import database_url

    RouteTableVersion.objects.all().delete()
    url = database_url().replace("postgres://", "postgresql://", 1)
    failure: list[BaseException] = []

    def this_change() -> None:
        try:
            with transaction.atomic():
                RouteTableVersion.bump()
        except BaseException as error:  # seen by the test below
            failure.append(error)
        finally:
            connection.close()

    with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as watcher:
        other.execute("INSERT INTO translation_routetableversion (id, version) VALUES (1, 777)")  # not committed
        change = threading.Thread(target=this_change, daemon=True)
        change.start()
        for _ in range(200):  # until the change waits for the other transaction's row
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
                "AND query ILIKE 'INSERT INTO %%translation_routetableversion%%'"
            ).fetchone()[0]
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "the change never waited for the other transaction's row"
        other.commit()
        change.join(timeout=30)
    assert not change.is_alive() and not failure, failure
    assert RouteTableVersion.objects.get(pk=1).version == 778



def valid(**fields) -> LanguageRoute:
    # Hebrew: a language the initial routes leave out, so these routes meet only each other.
    values = {"source_language": "es", "target_language": "he", "model_name": "model"} | fields
    return LanguageRoute(**values)


def valid_saved(**fields) -> LanguageRoute:
    row = valid(**fields)
    row.full_clean()
    row.save()
    return row


@pytest.mark.django_db
class RouteValidationTests:
    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            ({"target_language": "xx"}, "target_language", "Unknown language code 'xx'"),
            ({"source_language": "qq"}, "source_language", "Unknown language code 'qq'"),
            ({"source_language": "he"}, "target_language", "must differ from the source language"),
            ({"queue": "japanese"}, "queue", "Queue 'japanese' must look like 'translate.<lang>'"),
            ({"queue": "translate.JA"}, "queue", "must look like"),
            ({"max_batch_size": 0}, "max_batch_size", "greater than or equal to 1"),
            ({"max_batch_size": 5000}, "max_batch_size", "less than or equal to 1024"),
            ({"max_wait_ms": 5000}, "max_wait_ms", "less than or equal to 1000"),
            ({"traffic_share": 101}, "traffic_share", "less than or equal to 100"),
            ({"precision": "fp4"}, "precision", "'fp4' is not a valid choice"),
            ({"engine": "magic"}, "engine", "'magic' is not a valid choice"),
            ({"model_name": ""}, "model_name", "cannot be blank"),
            ({"variant": "Big A"}, "variant", "lower-case letters"),
            ({"adapter": "adapters/support-tone"}, "adapter", "not served by the workers yet"),
        ],
    )
    def test_each_bad_field_is_refused_with_its_reason(self, fields, field, message):
        with pytest.raises(ValidationError) as raised:
            valid(**fields).full_clean()
        assert message in " ".join(raised.value.message_dict[field])

    def test_a_second_active_route_for_a_pair_and_variant_is_refused(self):
        valid().save()
        with pytest.raises(ValidationError, match="is already the active route for es→he"):
            valid(model_name="other").full_clean()
        valid(model_name="other", enabled=False).full_clean()  # a disabled twin is fine

    def test_a_fallback_must_serve_the_same_pair(self):
        other = valid(target_language="de")
        other.save()
        with pytest.raises(ValidationError, match="does not serve es→he"):
            valid(fallback=other).full_clean()
        spanish = valid(source_language="es", variant="x", enabled=False)
        spanish.save()
        with pytest.raises(ValidationError, match="does not serve \\*→he"):
            valid(source_language="*", fallback=spanish).full_clean()
        valid(source_language="es", variant="y", fallback=valid_saved(source_language="*")).full_clean()

    def test_a_route_others_fall_back_to_cannot_stop_serving_them(self):
        backup = valid_saved(source_language="*")
        valid_saved(enabled=False, fallback=backup)
        backup.target_language = "fr"
        with pytest.raises(ValidationError, match="falls back to this route"):
            backup.full_clean()

    def test_fallback_cycles_are_refused(self):
        first = valid()
        first.save()
        second = valid(variant="b", enabled=False, fallback=first)
        second.save()
        first.fallback = second
        with pytest.raises(ValidationError, match="Fallback cycle"):
            first.full_clean()
        first.fallback = first
        with pytest.raises(ValidationError, match="cannot be its own fallback"):
            first.full_clean()

    def test_the_queue_defaults_to_the_target_languages(self):
        row = valid()
        row.full_clean()
        row.save()
        assert row.queue == "translate.he"


@pytest.mark.django_db
class RoutesImportTests:
    def test_an_invalid_entry_writes_nothing_and_names_itself(self):
        before = LanguageRoute.objects.count()
        with pytest.raises(errors.ApplicationError, match=r"routes\[1\]: target_language: Unknown language code 'xx'"):
            routes_import([{"source": "es", "target": "ja", "model": "m"}, {"target": "xx", "model": "m"}])
        assert LanguageRoute.objects.count() == before

    def test_unknown_keys_are_named(self):
        with pytest.raises(errors.ApplicationError, match=r"routes\[0\]: unknown keys \['gpu'\]"):
            routes_import([{"target": "ja", "model": "m", "gpu": 1}])

    def test_shares_that_do_not_add_up_are_refused(self):
        with pytest.raises(errors.ApplicationError, match="add up to 80%"):
            routes_import([
                {"source": "es", "target": "ja", "model": "m", "variant": "a", "traffic_share": 30},
                {"source": "es", "target": "ja", "model": "m", "variant": "b", "traffic_share": 50},
            ])

    def test_null_values_are_refused_with_a_message(self):
        with pytest.raises(errors.ApplicationError, match=r"routes\[0\]: \['variant'\] must not be null"):
            routes_import([{"source": "es", "target": "he", "model": "m", "variant": None}])

    def test_values_of_the_wrong_kind_are_refused_not_converted(self):
        with pytest.raises(errors.ApplicationError) as refused:
            routes_import([{"source": "es", "target": "he", "model": {"path": "x"}, "max_batch_size": 2.9,
                            "max_wait_ms": True, "enabled": 1, "note": 123}])
        assert refused.value.message == (
            'routes[0]: model must be a string, not {"path": "x"}; max_batch_size must be a whole number, not 2.9; '
            "max_wait_ms must be a whole number, not true; enabled must be true or false, not 1; "
            "note must be a string, not 123."
        )
        assert not LanguageRoute.objects.filter(target_language="he").exists()

    def test_fallbacks_name_another_entry_by_position(self):
        first, second = routes_import([
            {"source": "*", "target": "he", "model": "many"},
            {"source": "es", "target": "he", "model": "pair", "enabled": False, "fallback": 0},
        ])
        second.refresh_from_db()
        assert second.fallback_id == first.pk
        with pytest.raises(errors.ApplicationError, match=r"routes\[0\]: fallback must be the position"):
            routes_import([{"source": "es", "target": "nl", "model": "m", "fallback": 5}])


def test_initial_routes_that_cannot_be_read_stop_only_import_routes(tmp_path):
    """A typo in the routes file: every process still starts (a warning at its checks); only
    ``import_routes`` without a file refuses, naming the variable and the problem."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    broken = tmp_path / "routes.json"
    broken.write_text('[{"source": "es",')
    for variable, value, said in (("TRANSLATION_ROUTES_FILE", str(broken), f"TRANSLATION_ROUTES_FILE={broken}"),
                                  ("TRANSLATION_ROUTES_FILE", str(tmp_path / "none.json"), "No such file or directory"),
                                  ("TRANSLATION_ROUTES", "[{bad", "TRANSLATION_ROUTES: Expecting property name")):
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", variable: value}
        checked = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert checked.returncode == 0 and "translation.W001" in checked.stderr and said in checked.stderr, checked.stderr
        imported = subprocess.run([sys.executable, "manage.py", "import_routes"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
        assert imported.returncode == 1, imported.stdout
        assert f"CommandError: The initial routes cannot be read: {variable}" in imported.stderr and said in imported.stderr
