"""What a worker warms at start: each model once, with the largest full batch of its routes."""

import pytest
from django.test import override_settings

from translation.batching import estimate_tokens
from translation.engines import EngineSpec
from workers.engine_models import FULL_BATCH_TEXT
from workers.warmup import full_batch_size, warmups_for_queues


class FullBatchTests:
    @override_settings(TRANSLATION_WARMUP_FULL_BATCH=True, TRANSLATION_MAX_BATCH_SIZE=128,
                       TRANSLATION_MAX_BATCH_TOKENS=8192)
    def test_the_routes_batch_size_within_the_workers_own(self):
        assert full_batch_size(64) == 64
        assert full_batch_size(512) == 128  # the batcher caps a route's batches at the worker's size

    @override_settings(TRANSLATION_WARMUP_FULL_BATCH=True, TRANSLATION_MAX_BATCH_SIZE=1024,
                       TRANSLATION_MAX_BATCH_TOKENS=200)
    def test_and_within_the_token_budget(self):
        per_sentence = estimate_tokens(FULL_BATCH_TEXT)
        assert 1 < 200 // per_sentence < 512
        assert full_batch_size(512) == 200 // per_sentence

    @override_settings(TRANSLATION_WARMUP_FULL_BATCH=False)
    def test_off_the_warm_up_is_the_canary_sentence_only(self):
        assert full_batch_size(128) == 1


@pytest.mark.django_db
class WarmupsForQueuesTests:
    @override_settings(TRANSLATION_WARMUP_FULL_BATCH=True, TRANSLATION_MAX_BATCH_SIZE=128,
                       TRANSLATION_MAX_BATCH_TOKENS=8192)
    def test_a_model_shared_by_routes_loads_once_with_the_largest_of_their_batches(self):
        from translation.models import LanguageRoute
        from translation.routing import routes_changed

        queue = "translate.en.warmup-test"
        for source, size in [("es", 32), ("fr", 96), ("de", 64)]:
            LanguageRoute.objects.create(source_language=source, target_language="en", model_name="org/many-to-many",
                                         queue=queue, max_batch_size=size, enabled=source != "de",
                                         variant="warm-up")
        LanguageRoute.objects.create(source_language="es", target_language="en", model_name="org/other", queue=queue,
                                     max_batch_size=16, enabled=False, variant="b")
        routes_changed()
        warmups = {warmup.spec.model: warmup for warmup in warmups_for_queues({queue}, device="cpu")}
        assert set(warmups) == {"org/many-to-many", "org/other"}
        shared = warmups["org/many-to-many"]
        assert (shared.spec, shared.source, shared.target, shared.batch) == (
            EngineSpec("hf-seq2seq", "org/many-to-many", device="cpu"), "es", "en", 96)
        assert warmups["org/other"].batch == 16  # a disabled route's model is warmed too, at its own size
        # A worker without batching computes no full batch: its batches hold one job.
        assert {warmup.batch for warmup in warmups_for_queues({queue}, device="cpu", batching=False)} == {1}
