"""Prometheus metrics: read back with prometheus_client's own parser after real translations."""

import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cs_portal.portal.services import agent_create
from tests.conftest import WORKER_METRICS_PORT, WORKER_NAME, wait_for
from translation.claims import Delivery
from translation.execution import RunOutcome, translation_run_batch
from translation.models import LanguageRoute, Translation, TranslationStatus


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    """The sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples, name: str) -> list[dict]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


def worker_metrics():
    return scrape(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics")


@pytest.mark.django_db(transaction=True)
class LiveMetricsTests:
    def test_a_translation_through_the_worker_shows_in_the_worker_web_and_fleet_series(self, worker, http, api_client_key, tiny_models):
        agent_create(username="sam", password="secret-pass", working_language="en")
        route = LanguageRoute.objects.get(source_language="es", target_language="en", enabled=True)
        labels = {"route": str(route.pk), "source": "es", "target": "en", "model": route.model_name}
        before = worker_metrics()
        web_before = scrape(http.base_url + "/metrics")
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}}, key=key)
        _, message = http.call(
            "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola, mi pedido no llegó"}, key=key
        )
        translation_id = message["translations"][0]["id"]
        wait_for(lambda: Translation.objects.get(pk=translation_id).is_finished, what="the translation")
        assert Translation.objects.get(pk=translation_id).status == TranslationStatus.DONE

        after = worker_metrics()
        for name in ("translation_jobs_received_total", "translation_jobs_done_total"):
            assert value(after, name, **labels) - value(before, name, **labels) == 1, name
        for histogram in ("translation_queue_wait_seconds", "translation_compute_seconds", "translation_end_to_end_seconds"):
            assert value(after, f"{histogram}_count", **labels) - value(before, f"{histogram}_count", **labels) == 1
            assert value(after, f"{histogram}_bucket", **labels, le="+Inf") == value(after, f"{histogram}_count", **labels)
        model = {"model": route.model_name}
        assert value(after, "translation_batch_size_count", **model) > value(before, "translation_batch_size_count", **model)
        pair = {"model": route.model_name, "source": "es", "target": "en"}
        assert value(after, "translation_input_tokens_total", **pair) > value(before, "translation_input_tokens_total", **pair)
        assert value(after, "translation_output_tokens_total", **pair) > value(before, "translation_output_tokens_total", **pair)

        # What only the worker knows: its models and their memory, readiness, its loop.
        memory = series(after, "translation_worker_model_memory_bytes")
        assert {s["model"] for s in memory} == {str(tiny_models.marian_es_en), str(tiny_models.m2m100)}
        assert all(s["worker"] == WORKER_NAME and s["device"] == "cpu" for s in memory)
        assert all(value(after, "translation_worker_model_memory_bytes", **s) > 100_000 for s in memory)
        assert value(after, "translation_worker_ready", worker=WORKER_NAME) == 1
        assert value(after, "translation_worker_jobs_in_flight", worker=WORKER_NAME) == 0
        assert value(after, "translation_worker_last_batch_timestamp_seconds", worker=WORKER_NAME) > 0
        # Its two CPU lanes lend each other their idle cores: how long each computed on borrowed ones.
        borrowed = series(after, "translation_worker_lane_borrowed_seconds_total")
        assert sorted(s["lane"] for s in borrowed if s["worker"] == WORKER_NAME) == ["0", "1"]
        # Bounded labels: no series is labelled by a job or message id (a route id or a bucket
        # bound may equal the translation's id by chance: those labels are bounded by design).
        numeric_by_design = {"route", "le", "quantile"}
        assert not any(
            str(translation_id) == v for (_, labels) in after for k, v in labels if k not in numeric_by_design
        )
        assert not {k for (_, labels) in after for k, _ in labels} & {"id", "job", "message", "translation", "message_id"}

        # The web side counted the request; it serves request metrics too (django-prometheus).
        web = scrape(http.base_url + "/metrics")
        assert value(web, "translation_jobs_requested_total", **labels) - value(web_before, "translation_jobs_requested_total", **labels) == 1
        assert any(s.get("view") == "api-messages" or "messages" in s.get("view", "")
                   for s in series(web, "django_http_requests_total_by_view_transport_method_total"))

        fleet = scrape(http.base_url + "/metrics/fleet")
        assert value(fleet, "translation_queue_consumers", queue="translate.en") == 1
        assert value(fleet, "translation_queue_depth", queue="translate.en") == 0
        assert value(fleet, "translation_worker_alive", worker=WORKER_NAME) == 1
        assert value(fleet, "translation_worker_heartbeat_age_seconds", worker=WORKER_NAME) < 5


class ExecutionMetricsTests:
    """Failures and retries are counted by kind, on the worker's side (in this process here)."""

    def test_an_input_the_model_cannot_take_counts_as_an_engine_error(self, queued_translation):
        queued_translation.message.text = "palabra " * 600
        queued_translation.message.save()
        labels = {
            "route": str(queued_translation.route_id), "source": "es", "target": "en",
            "model": queued_translation.model_name, "reason": "engine_error",
        }
        before = REGISTRY.get_sample_value("translation_jobs_failed_total", labels) or 0
        [outcome] = translation_run_batch([Delivery(queued_translation.pk, "w1", "translate.en")])
        assert outcome is RunOutcome.FAILED
        assert REGISTRY.get_sample_value("translation_jobs_failed_total", labels) == before + 1

    def test_a_model_that_does_not_load_counts_a_retry(self, queued_translation):
        Translation.objects.filter(pk=queued_translation.pk).update(model_name="/nonexistent")
        labels = {"route": str(queued_translation.route_id), "source": "es", "target": "en", "model": "/nonexistent"}
        before = REGISTRY.get_sample_value("translation_jobs_retried_total", labels) or 0
        translation_run_batch([Delivery(queued_translation.pk, "w1", "translate.en")])
        assert REGISTRY.get_sample_value("translation_jobs_retried_total", labels) == before + 1

    def test_a_pair_without_a_route_counts_on_the_sending_side(self, api_client_key, db, django_capture_on_commit_callbacks):
        from cs_portal.portal.services import conversation_create, message_create_from_customer

        from translation.routing import routes_changed

        LanguageRoute.objects.filter(target_language="en").delete()
        routes_changed()
        labels = {"route": "none", "source": "es", "target": "en", "model": "", "reason": "no_route"}
        before = REGISTRY.get_sample_value("translation_jobs_failed_total", labels) or 0
        agent_create(username="sam", password="secret-pass", working_language="en")
        conversation = conversation_create(api_client=api_client_key[0], customer_name="Ana")
        with django_capture_on_commit_callbacks(execute=True):  # counted once the request commits
            message = message_create_from_customer(conversation=conversation, text="Hola", language="es")
        assert message.translations.get().status == TranslationStatus.FAILED
        assert REGISTRY.get_sample_value("translation_jobs_failed_total", labels) == before + 1


@pytest.mark.django_db
class MetricsTokenTests:
    def test_with_a_token_set_the_webs_metrics_answer_only_that_bearer(self, client, settings):
        settings.METRICS_BEARER_TOKEN = "s3cret"
        for path in ("/metrics", "/metrics/fleet"):
            assert client.get(path).status_code == 401
            assert client.get(path, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
            response = client.get(path, HTTP_AUTHORIZATION="Bearer s3cret")
            assert response.status_code == 200 and b"# TYPE" in response.content

    def test_with_a_token_set_the_systems_readiness_answers_that_bearer_or_a_staff_member(self, client, settings):
        """/readyz names workers, hosts and the errors' own words; /readyz/web, the load
        balancer's, stays open and names only the kind of a database error."""
        from django.contrib.auth.models import User

        settings.METRICS_BEARER_TOKEN = "s3cret"
        assert client.get("/readyz").status_code == 401
        assert client.get("/readyz", HTTP_AUTHORIZATION="Bearer s3cret").status_code in (200, 503)
        client.force_login(User.objects.create_user("agent", password="agent-pass"))
        assert client.get("/readyz").status_code == 401  # signed in, not staff
        client.force_login(User.objects.create_user("ops", password="ops-pass", is_staff=True))
        assert client.get("/readyz").status_code in (200, 503)
        client.logout()
        assert client.get("/readyz/web").json() == {"status": "ready", "checks": {"database": "ok"}}

    def test_an_open_probe_names_a_database_errors_kind_not_its_words(self, caplog):
        from unittest import mock

        from django.db import OperationalError

        from workers.health import database_readiness

        refused = OperationalError('connection to server at "10.0.0.5", port 5432 failed: role "portal" denied')
        with mock.patch("workers.health.connection.cursor", side_effect=refused):
            assert database_readiness(detail=False).checks == {"database": "unreachable: OperationalError"}
            assert "10.0.0.5" in database_readiness().checks["database"]  # the guarded /readyz's
        assert "10.0.0.5" in caplog.text  # the operator still finds it in the log


class BorrowedCoresTests:
    def test_each_lanes_time_on_borrowed_cores_is_a_counter_read_at_scrape_time(self):
        import multiprocessing

        from workers.idle_cores import IdleCores
        from workers.metrics import WorkerMetrics, borrowed_cores

        shared = IdleCores(multiprocessing.get_context("spawn"), 2, 2)
        WorkerMetrics("lending-worker", device="cpu", queues=["translate.en"]).lending(shared)
        try:
            name = "translation_worker_lane_borrowed_seconds_total"
            assert REGISTRY.get_sample_value(name, {"worker": "lending-worker", "lane": "1"}) == 0.0
            shared.borrowed[1] += 2.5  # what the lane's engine process adds as it gives cores back
            assert REGISTRY.get_sample_value(name, {"worker": "lending-worker", "lane": "1"}) == 2.5
            assert REGISTRY.get_sample_value(name, {"worker": "lending-worker", "lane": "0"}) == 0.0
        finally:
            borrowed_cores.workers.pop("lending-worker")

