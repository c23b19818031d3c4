"""Routing changes made in the admin, followed by the portal and a real worker without a restart."""

import pytest
from django.db import transaction
from django.urls import reverse

from cs_portal.portal.services import conversation_create, message_create_from_customer
from tests.conftest import SPARE_QUEUE, WORKER_NAME, route_update, wait_for
from tests.translation.test_route_admin import es_en, form_data
from translation.models import LanguageRoute, Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)


def finished(ids: list[int], timeout: float = 60) -> list[Translation]:
    def check():
        rows = list(Translation.objects.filter(pk__in=ids).order_by("pk"))
        return rows if all(row.is_finished for row in rows) else None

    return wait_for(check, timeout=timeout, what=f"translations {ids} to finish")


def send_spanish(api_client, count: int = 1) -> list[int]:
    """``count`` customer messages in Spanish, each in its own conversation, committed together."""
    ids = []
    with transaction.atomic():
        for i in range(count):
            conversation = conversation_create(api_client=api_client, customer_name=f"Cliente {i}")
            message = message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no llegó.", language="es")
            ids.append(message.translations.get().pk)
    return ids


class FollowingWorkerTests:
    def test_a_worker_started_with_all_consumes_a_queue_routed_after_its_start(self, api_client_key, tmp_path, tiny_models, broker):
        import os
        import subprocess
        import sys

        from tests.conftest import ROOT, database_url, free_port
        from workers.lifecycle import stop_process, wait_until_consuming
        from workers.models import WorkerHeartbeat

        name, queue = "follower@localhost", "translate.en.followed"
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(), PYTHONUNBUFFERED="1",
                   DATABASE_CONN_MAX_AGE="60")
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.main", "--queues", "all", "--name", name, "--lanes", "1",
                 f"--metrics-port={free_port()}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            assert wait_until_consuming(process, name, 120), log.read_text()[-3000:]
            assert queue not in WorkerHeartbeat.objects.get(name=name).queues
            route_update("es", "en", queue=queue)  # no worker named this queue at its start
            wait_for(lambda: queue in WorkerHeartbeat.objects.get(name=name).queues, timeout=10,
                     what="the worker to follow the new queue")
            [translation] = finished(send_spanish(api_client_key[0]))
            assert translation.status == TranslationStatus.DONE, translation.failure_reason
            assert (translation.consumed_from, translation.worker) == (queue, name)
            assert f"A route names queue {queue}: consuming it" in log.read_text()
        finally:
            stop_process(process, timeout=30)


class ModelNotOnThisHostTests:
    def test_a_disabled_route_whose_model_does_not_load_leaves_the_worker_serving_the_others(
        self, api_client_key, tmp_path, tiny_models, broker
    ):
        """An admin added a disabled A/B variant naming a checkpoint not on this host: a worker
        started for its queue serves the enabled route, and says which model did not load."""
        import os
        import subprocess
        import sys

        from tests.conftest import ROOT, database_url, free_port
        from workers.lifecycle import stop_process, wait_until_consuming
        from workers.models import WorkerHeartbeat

        name, queue, missing = "models@localhost", "translate.en.models", "/srv/models/opus-mt-es-en-typo"
        route_update("es", "en", queue=queue)
        LanguageRoute.objects.create(source_language="es", target_language="en", variant="b", traffic_share=0,
                                     enabled=False, queue=queue, model_name=missing)
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(), PYTHONUNBUFFERED="1")
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.main", "--queues", queue, "--name", name, "--lanes", "1",
                 f"--metrics-port={free_port()}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            assert wait_until_consuming(process, name, 120), log.read_text()[-3000:]
            # It answers pings once its consumer is up; its beat says ready at its next turn.
            beat = wait_for(lambda: WorkerHeartbeat.objects.filter(name=name, ready=True).first(), timeout=30,
                            what="the worker's heartbeat to say ready")
            assert missing in beat.last_error
            assert [model["model"] for model in beat.loaded_models] == [str(tiny_models.marian_es_en)]
            [translation] = finished(send_spanish(api_client_key[0]))
            assert translation.status == TranslationStatus.DONE, translation.failure_reason
            assert (translation.consumed_from, translation.worker) == (queue, name)
            assert "1 model(s) did not load; serving the others" in log.read_text()
        finally:
            stop_process(process, timeout=30)


class AdminChangeTests:
    def test_moving_es_en_to_queue_b_in_the_admin_sends_the_next_message_there(self, worker, http, api_client_key, admin_client):
        route = es_en()
        response = admin_client.post(
            reverse("admin:translation_languageroute_change", args=[route.pk]), form_data(route, queue=SPARE_QUEUE)
        )
        assert response.status_code == 302
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}}, key=key)
        _, message = http.call(
            "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola, ¿y mi pedido?", "language": "es"}, key=key
        )
        [row] = finished([message["translations"][0]["id"]])
        assert (row.status, row.route_id) == (TranslationStatus.DONE, route.pk)
        assert row.queue == row.consumed_from == SPARE_QUEUE
        assert row.worker == WORKER_NAME

    def test_a_disabled_route_hands_the_next_message_to_its_fallback(self, worker, api_client_key, admin_client, tiny_models):
        route = es_en()
        fallback = LanguageRoute.objects.get(source_language="*", target_language="en")
        response = admin_client.post(
            reverse("admin:translation_languageroute_change", args=[route.pk]),
            form_data(route, enabled=False, fallback=fallback.pk),
        )
        assert response.status_code == 302
        [row] = finished(send_spanish(api_client_key[0]))
        assert (row.status, row.route_id, row.model_name) == (TranslationStatus.DONE, fallback.pk, str(tiny_models.m2m100))

    def test_the_worker_follows_batch_size_wait_and_precision_without_a_restart(self, worker, api_client_key):
        client = api_client_key[0]
        route_update("es", "en", max_batch_size=1, max_wait_ms=200)
        rows = finished(send_spanish(client, 6))
        assert {row.batch_size for row in rows} == {1}
        route_update("es", "en", max_batch_size=128, max_wait_ms=300, precision="int8")
        rows = finished(send_spanish(client, 6))
        assert {row.status for row in rows} == {TranslationStatus.DONE}
        assert {row.precision for row in rows} == {"int8"}  # loaded beside the fp32 model, then used
        assert max(row.batch_size for row in rows) > 1  # the longer wait gathers them
        # The worker reports the model it loaded for the change, beside those it warmed at start.
        from workers.models import WorkerHeartbeat

        model = es_en().model_name
        loaded = {(m["model"], m["precision"]): m for m in WorkerHeartbeat.objects.get(name=WORKER_NAME).loaded_models}
        assert (model, "fp32") in loaded and loaded[(model, "int8")]["memory_mib"] > 0, loaded

    def test_translate_a_sample_shows_the_output_and_its_latency(self, worker, admin_client):
        route = es_en()
        url = reverse("admin:translation_languageroute_sample") + f"?ids={route.pk}"
        response = admin_client.post(url, {"text": "Hola, ¿dónde está mi pedido?"})
        sample = Translation.objects.get(input_text="Hola, ¿dónde está mi pedido?")
        assert sample.status == TranslationStatus.DONE, sample.failure_reason
        page = response.content.decode()
        results = page[page.index('id="sample-results"'):]
        assert sample.text in results.replace("&#x27;", "'").replace("&quot;", '"')
        assert f'<td class="latency">{round(sample.latency_seconds * 1000)} ms</td>' in results
        from decimal import ROUND_HALF_UP, Decimal

        model_ms = Decimal(str(sample.forward_ms)).quantize(Decimal(1), ROUND_HALF_UP)  # as floatformat rounds
        assert sample.forward_ms > 0
        assert f'<td class="model-time">{model_ms} ms</td>' in results  # the model's part of it


@pytest.mark.django_db(transaction=False)
class ABSplitTests:
    def test_a_30_percent_variant_gets_30_of_1000_conversations_and_keeps_them(self, api_client_key, django_capture_on_commit_callbacks):
        route = es_en()
        route.variant, route.traffic_share = "a", 70
        variant_b = LanguageRoute(source_language="es", target_language="en", variant="b", traffic_share=30,
                                  model_name=route.model_name, enabled=True)
        with transaction.atomic():
            route.save()
            variant_b.full_clean()
            variant_b.save()
        client = api_client_key[0]
        with django_capture_on_commit_callbacks(execute=False):
            conversations = [conversation_create(api_client=client, customer_name=f"C{i}") for i in range(1000)]
            first = [message_create_from_customer(conversation=c, text="Hola", language="es") for c in conversations]
            again = [message_create_from_customer(conversation=c, text="¿Hay noticias?", language="es") for c in conversations[:200]]
        variants = [m.translations.get().variant for m in first]
        assert 250 <= variants.count("b") <= 350, variants.count("b")
        assert [m.translations.get().variant for m in again] == variants[:200]  # sticky per conversation
        assert {m.translations.get().route_id for m in first} == {route.pk, variant_b.pk}


WATCHER = """
import json, sys, time
import django
django.setup()
from translation.routing import route_for
deadline = time.monotonic() + 20
last = None
while time.monotonic() < deadline:
    queue = route_for("es", "en").queue
    if queue != last:
        print(json.dumps({"queue": queue, "at": time.time()}), flush=True)
        last = queue
    time.sleep(0.02)
"""


class CrossProcessTests:
    def test_another_process_routes_by_a_saved_change_within_two_seconds(self, settings):
        import json
        import os
        import subprocess
        import sys
        import time

        from tests.conftest import ROOT, database_url

        env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url())
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(watcher.stdout.readline())["queue"] == "translate.en"
            saved_at = time.time()
            route_update("es", "en", queue=SPARE_QUEUE)
            seen = json.loads(watcher.stdout.readline())
        finally:
            watcher.kill()
            watcher.wait()
        assert seen["queue"] == SPARE_QUEUE
        delay = seen["at"] - saved_at
        print(f"another process followed the change after {delay * 1000:.0f} ms")
        assert delay < 2.0
