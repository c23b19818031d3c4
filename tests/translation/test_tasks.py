import threading
import time

import pytest

from translation.batching import Batcher, BatchPolicy
from translation.execution import RunOutcome, use_batcher
from translation.tasks import translate


class TranslateTaskPayloadTests:
    @pytest.mark.parametrize("payload", ["12", None, 1.5, True, {"id": 1}])
    def test_a_payload_that_is_not_a_translation_id_is_refused(self, payload):
        result = translate.apply(args=[payload])
        assert result.failed()
        assert isinstance(result.result, ValueError)
        assert "expects a Translation id (int)" in str(result.result)

    @pytest.mark.parametrize("queued_at", ["yesterday", -1, True, None])
    def test_a_queued_at_that_is_not_epoch_seconds_is_refused(self, queued_at):
        result = translate.apply(args=[1], kwargs={"queued_at": queued_at})
        assert result.failed() and "expects queued_at as epoch seconds" in str(result.result)


class TranslateTaskBatchingTests:
    def test_a_job_that_waited_since_it_was_queued_does_not_wait_in_the_batcher_again(self):
        # Its wait for batch-mates counts from its queueing: the send and the delivery spent it.
        batcher = Batcher(BatchPolicy(max_batch_size=8, max_wait_s=10))
        use_batcher(batcher)
        answered = {}
        task = threading.Thread(target=lambda: answered.update(
            result=translate.apply(args=[1], kwargs={"queued_at": time.time() - 60})))
        try:
            task.start()
            deadline = time.monotonic() + 10
            while not batcher.pending() and time.monotonic() < deadline:
                time.sleep(0.01)
            [job] = batcher.next_batch(timeout=0)  # due now, not in 10 s
            assert job.payload.translation_id == 1
            job.future.set_result(RunOutcome.DONE)
            task.join(10)
            assert answered["result"].result == "done"
        finally:
            use_batcher(None)
            batcher.close()
