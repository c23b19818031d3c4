"""The admin's operations page: per-route figures and charts from the ledger, queues, workers."""

from datetime import timedelta

import pytest
from django.utils import timezone

from translation.models import LanguageRoute, Translation, TranslationStatus
from workers.models import WorkerHeartbeat
from workers.operations import (
    MINUTES,
    Figures,
    RouteActivity,
    Sparkline,
    _figures_in_python,
    _figures_in_sql,
    finished_since,
    route_activity,
)

URL = "/admin/operations/"


class SparklineTests:
    def test_a_line_starts_at_each_value_after_a_gap(self):
        line = Sparkline([1.0, None, 2.0, 4.0], width=30, height=10)
        assert line.top == 4.0
        assert line.path == "M0.0,6.5 h2 M20.0,5.0 L30.0,2.0"  # a lone minute is a short dash

    def test_an_empty_hour_draws_nothing(self):
        assert Sparkline([None] * 60).path == ""
        assert Sparkline([0.0] * 3).top == 0.0

    def test_percentiles_are_of_the_values_seen(self):
        activity = RouteActivity(route=None, hour=Figures.of([float(v) for v in range(100, 0, -1)]))
        assert (activity.jobs, activity.p50_ms, activity.p95_ms) == (100, 50.0, 95.0)
        assert RouteActivity(route=None).p95_ms is None


def finished(message_translation: Translation, *, minutes_ago: float, latency_ms: float, status=TranslationStatus.DONE):
    finished_at = timezone.now() - timedelta(minutes=minutes_ago)
    Translation.objects.filter(pk=message_translation.pk).update(
        status=status, created_at=finished_at - timedelta(milliseconds=latency_ms), finished_at=finished_at
    )


class RouteActivityTests:
    def test_the_hours_jobs_land_in_their_minutes_with_their_latency(self, many_translations):
        spanish = [row for row in many_translations if row.source_language == "es"]
        for index, row in enumerate(spanish[:4]):
            finished(row, minutes_ago=10 - index, latency_ms=100 * (index + 1))
        finished(spanish[4], minutes_ago=90, latency_ms=50)  # older than the hour: left out
        failed = [row for row in many_translations if row.source_language == "fr"][0]
        finished(failed, minutes_ago=1, latency_ms=10, status=TranslationStatus.FAILED)

        activity = {entry.route.pk: entry for entry in route_activity()[0]}
        spanish_route = activity[spanish[0].route_id]
        assert spanish_route.jobs == 4
        assert spanish_route.p50_ms == pytest.approx(200, abs=1)
        assert spanish_route.p95_ms == pytest.approx(400, abs=1)
        assert sum(spanish_route.throughput.values) == 4
        assert activity[failed.route_id].failed == 1 and activity[failed.route_id].jobs == 0
        minutes = spanish_route.per_minute
        busy = [minute for minute, figures in enumerate(minutes) if figures.jobs]
        assert len(busy) == 4 and busy == list(range(busy[0], busy[0] + 4)) and 48 <= busy[0] <= 50  # a minute each
        assert minutes[busy[-1]].p95_ms == pytest.approx(400, abs=1)  # the newest job's latency

    def test_postgresql_computes_what_the_rows_read_one_by_one_would_give(self, many_translations):
        """The page's figures come from one statement on PostgreSQL, from the rows elsewhere (SQLite):
        the same figures, route by route and minute by minute."""
        for index, row in enumerate(many_translations):  # a minute of three jobs or more, and minutes of one
            finished(row, minutes_ago=[5.5, 5.5, 5.5, 20.5, 33.5, 5.5][index], latency_ms=37.5 * (index % 5 + 1) + index)
        since = timezone.now() - timedelta(minutes=MINUTES)
        stored = finished_since(since).filter(status=TranslationStatus.DONE).values_list("route_id", "created_at",
                                                                                          "finished_at")
        by_sql = {(route, minute): figures for route, minute, figures in _figures_in_sql(stored, since)}
        in_python, truncated = _figures_in_python(stored, since)
        by_rows = {(route, minute): figures for route, minute, figures in in_python}
        assert not truncated and set(by_sql) == set(by_rows)
        assert max(figures.jobs for (_, minute), figures in by_rows.items() if minute is not None) >= 3
        for key, figures in by_rows.items():
            assert by_sql[key].jobs == figures.jobs, key
            assert by_sql[key].p50_ms == pytest.approx(figures.p50_ms), key
            assert by_sql[key].p95_ms == pytest.approx(figures.p95_ms), key
        assert sum(figures.jobs for (_, minute), figures in by_sql.items() if minute is None) == len(many_translations)


@pytest.mark.django_db
class OperationsPageTests:
    def test_staff_only(self, client):
        response = client.get(URL)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]

    def test_routes_queues_and_workers_with_their_state(self, admin_client, many_translations):
        row = many_translations[0]
        finished(row, minutes_ago=2, latency_ms=250)
        now = timezone.now()
        WorkerHeartbeat.objects.create(
            name="gpu0@host", hostname="host", pid=7, device="cuda:0", queues=["translate.en"], started_at=now,
            beat_at=now, ready=True, loaded_models=[{"model": "opus-mt-es-en", "precision": "fp16", "device": "cuda", "memory_mib": 290.5}],
        )
        WorkerHeartbeat.objects.create(
            name="gpu1@host", hostname="host", pid=8, device="cuda:1", queues=["translate.ja"], started_at=now,
            beat_at=now - timedelta(minutes=5), ready=True, last_error="CUDA error: an illegal memory access",
        )
        assert LanguageRoute.objects.filter(queue="translate.ja", enabled=True).exists()

        response = admin_client.get(URL)
        page = response.content.decode()
        assert response.status_code == 200
        assert f'data-route="{row.route_id}"' in page
        assert '<td class="jobs">1</td>' in page and '<td class="p50">250</td>' in page
        assert "<path d=\"M" in page  # a chart was drawn
        assert 'data-queue="translate.en"' in page and 'data-queue="translate.ja"' in page
        # translate.ja: its only worker went silent, so nobody consumes it.
        ja = page.split('data-queue="translate.ja"', 1)[1].split("</tr>", 1)[0]
        assert '<span class="bad">none</span>' in ja
        gpu1 = page.split('data-worker="gpu1@host"', 1)[1].split("</tr>", 1)[0]
        assert "silent" in gpu1 and "CUDA error: an illegal memory access" in gpu1
        gpu0 = page.split('data-worker="gpu0@host"', 1)[1].split("</tr>", 1)[0]
        assert "ready" in gpu0 and "290.5 MiB" in gpu0

    def test_the_broker_column_says_what_the_broker_holds_in_each_dispatch(self, admin_client, settings):
        assert "<th>waiting in the broker</th>" in admin_client.get(URL).content.decode()
        settings.TRANSLATION_DISPATCH = "ledger"  # the jobs are the ledger's rows, the messages wake-ups
        assert "<th>wake-ups in the broker</th>" in admin_client.get(URL).content.decode()

    def test_the_live_part_alone_is_what_the_page_fetches_to_refresh(self, admin_client):
        whole = admin_client.get(URL).content.decode()
        live = admin_client.get(URL + "?part=live").content.decode()
        assert 'fetch("?part=live"' in whole and "<html" in whole
        assert "<html" not in live and 'id="route-activity"' in live

    def test_the_admin_index_links_operations_flower_and_readiness(self, admin_client, settings):
        page = admin_client.get("/admin/").content.decode()
        assert f'href="{URL}"' in page and 'href="/readyz"' in page
        assert f'href="{settings.FLOWER_URL}"' in page
