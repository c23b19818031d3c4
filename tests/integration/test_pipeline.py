"""End to end with real parts: HTTP API -> PostgreSQL -> Redis -> a worker process -> model -> ledger."""

import pytest

from cs_portal.portal.services import agent_create
from cs_portal.portal.tokens import agent_token_issue
from tests.conftest import WORKER_LANES, WORKER_NAME, route_update, tasks_processed, wait_for
from translation.engines import EngineSpec, engine_for
from translation.models import Translation, TranslationStatus
from translation.tasks import translate

pytestmark = pytest.mark.django_db(transaction=True)


def wait_done(translation_id: int, timeout: float = 60) -> Translation:
    def finished():
        row = Translation.objects.get(pk=translation_id)
        return row if row.is_finished else None

    return wait_for(finished, timeout=timeout, what=f"translation {translation_id} to finish")


@pytest.fixture(params=["jobs", "ledger"])
def dispatch(request, settings):
    """How the portal (this process, and its live server's thread) sends jobs: the worker takes both."""
    settings.TRANSLATION_DISPATCH = request.param
    return request.param


@pytest.fixture
def agent():
    return agent_create(username="sam", password="secret-pass", working_language="en")


class CustomerToAgentTests:
    def test_spanish_message_ends_as_an_english_translation_made_by_the_model(
        self, worker, http, api_client_key, agent, tiny_models, dispatch
    ):
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}}, key=key)
        text = "Hola, mi paquete todavía no ha llegado"
        messages_before = tasks_processed()
        status, message = http.call("POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": text}, key=key)
        assert status == 201
        translation = wait_done(message["translations"][0]["id"])
        # A message per job in jobs dispatch; in ledger dispatch the row is the job, no message names it.
        assert tasks_processed() - messages_before == (1 if dispatch == "jobs" else 0)

        assert translation.status == TranslationStatus.DONE, translation.failure_reason
        assert (translation.source_language, translation.target_language) == ("es", "en")
        # The es->en route takes the pair model; its output for this text, computed here, is the stored text.
        assert translation.model_name == str(tiny_models.marian_es_en)
        expected = engine_for(EngineSpec("hf-seq2seq", translation.model_name)).translate([text], "es", "en")[0]
        assert translation.text == expected
        assert (translation.worker, translation.consumed_from) == (WORKER_NAME, "translate.en")
        assert translation.attempts == 1
        assert translation.enqueued_at <= translation.started_at <= translation.finished_at

        _, listed = http.call("GET", f"/api/v1/conversations/{conversation['id']}/messages", key=key)
        assert listed[0]["translations"][0]["status"] == "done"
        assert listed[0]["translations"][0]["text"] == expected


class AgentToCustomerTests:
    def test_agent_reply_reaches_the_customer_in_spanish_through_its_own_queue(
        self, worker, http, api_client_key, agent, tiny_models, dispatch
    ):
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}, "language": "es"}, key=key)
        http.call("POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola"}, key=key)
        token = agent_token_issue(user=agent.user)
        reply = "Your parcel ships tomorrow."
        status, message = http.call(
            "POST", f"/api/v1/agent/conversations/{conversation['id']}/messages", {"text": reply},
            headers={"Authorization": f"Token {token}"},
        )
        assert status == 201
        assert message["original_language"] == "en"
        assert message["delivery"] in ("pending", "delivered")  # a fast worker may already be done

        translation = wait_done(message["translations"][0]["id"])
        assert translation.status == TranslationStatus.DONE, translation.failure_reason
        assert (translation.source_language, translation.target_language) == ("en", "es")
        assert (translation.worker, translation.consumed_from) == (WORKER_NAME, "translate.es")
        expected = engine_for(EngineSpec("hf-seq2seq", str(tiny_models.m2m100))).translate([reply], "en", "es")[0]
        assert translation.text == expected

        _, listed = http.call("GET", f"/api/v1/conversations/{conversation['id']}/messages", key=key)
        agent_message = listed[-1]
        assert agent_message["sender"] == "agent"
        assert (agent_message["text"], agent_message["language"], agent_message["delivery"]) == (expected, "es", "delivered")
        assert agent_message["original_text"] == reply

    def test_agent_endpoint_refuses_a_customer_key(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("POST", "/api/v1/agent/conversations/1/messages", {"text": "Hi"}, key=key)
        assert (status, body["error"]["code"]) == (401, "unauthenticated")


class DuplicateDeliveryTests:
    def test_a_job_delivered_twice_leaves_one_done_translation_with_unchanged_text(self, worker, broker, http, api_client_key, agent):
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Jean"}}, key=key)
        _, message = http.call(
            "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Bonjour, mon colis est en retard"}, key=key
        )
        first = wait_done(message["translations"][0]["id"])
        assert first.status == TranslationStatus.DONE

        taken = tasks_processed()
        for _ in range(2):  # the broker redelivers the same job (e.g. after a visibility timeout)
            translate.apply_async(args=[first.pk], queue="translate.en")
        wait_for(lambda: tasks_processed() >= taken + 2, what="the worker to take both redelivered jobs")
        from translation.queues import _translation_id

        wait_for(lambda: first.pk not in {_translation_id(raw) for raw in broker.hvals("unacked")},
                 what="both jobs to be acknowledged")

        again = Translation.objects.get(pk=first.pk)
        assert Translation.objects.filter(message_id=message["id"]).count() == 1
        assert (again.status, again.text, again.finished_at, again.attempts) == (
            TranslationStatus.DONE, first.text, first.finished_at, first.attempts,
        )


class RetryTests:
    def test_a_passing_failure_is_retried_on_the_same_queue_then_failed_visibly(self, worker, http, api_client_key, agent):
        # The route names a model the worker cannot load: every attempt fails the same way.
        route_update("*", "en", model_name="/nonexistent/checkpoint")
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Jean"}}, key=key)
        _, message = http.call(
            "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Bonjour", "language": "fr"}, key=key
        )
        translation = wait_done(message["translations"][0]["id"], timeout=90)
        assert translation.status == TranslationStatus.FAILED
        assert translation.attempts == 3  # TRANSLATION_MAX_ATTEMPTS of the worker
        assert translation.failure_reason.startswith("Gave up after 3 attempts.")
        assert "/nonexistent/checkpoint" in translation.failure_reason
        assert translation.consumed_from == "translate.en"  # the retries came back through the same queue


class WorkerReportTests:
    def test_the_worker_reports_each_loaded_model_and_its_memory(self, worker, tiny_models):
        from cs_portal.celery import app

        [reply] = app.control.broadcast("models", destination=[WORKER_NAME], reply=True, timeout=5)
        # The models the routes name at fp32, as warmed at the start (a test that changed a route's
        # precision may have had the worker load another precision beside them: reported too).
        models = {entry["model"]: entry for entry in reply[WORKER_NAME] if entry["precision"] == "fp32"}
        assert set(models) == {str(tiny_models.marian_es_en), str(tiny_models.m2m100)}  # m2m100 once, for every pair
        assert all(entry["memory_mib"] > 0 and entry["device"] == "cpu" for entry in models.values())
        # Its lanes map the fp32 checkpoints' weights once between them: they hold one lane's
        # mapped weights and, each, what a lane computed for itself (sinusoidal positions).
        for model, entry in models.items():
            one_lane = engine_for(EngineSpec("hf-seq2seq", model))  # the same checkpoint, in this process
            total, shared = one_lane.memory_bytes / 2**20, one_lane.shared_bytes / 2**20
            assert shared > total / 2
            assert entry["copies"] == WORKER_LANES
            assert entry["shared_mib"] == pytest.approx(shared, abs=0.051)  # rounded to 0.1 MiB
            assert entry["memory_mib"] == pytest.approx(shared + WORKER_LANES * (total - shared), abs=0.051)
