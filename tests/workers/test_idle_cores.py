"""CPU lanes lending their idle cores: the threads a batch runs as other lanes start and end."""

import multiprocessing

import pytest
import torch

from translation.engines import EngineSpec, between_steps, between_steps_call
from translation.engines.hf_seq2seq import FIXED_OUTPUT_TOKENS_VARIABLE, HFSeq2SeqEngine
from workers.idle_cores import MIN_BATCH, IdleCores, Lending


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lanes(cores: int = 2) -> IdleCores:
    return IdleCores(multiprocessing.get_context("spawn"), cores)


class LendingTests:
    def test_a_batch_alone_borrows_the_idle_cores_from_its_first_step(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared, own=1)
        with lane.batch(128):
            assert shared.busy.value == 1
            assert torch.get_num_threads() == 1  # the encoder's pass: the lane's own threads
            between_steps()()  # a decoding step ended
            assert torch.get_num_threads() == 2
        assert shared.busy.value == 0
        assert torch.get_num_threads() == 1
        assert between_steps() is None  # the hook ends with the batch

    def test_a_lane_that_starts_takes_its_cores_back_at_the_next_step(self, threads):
        shared = lanes(cores=4)
        first, second = Lending(shared, own=2), Lending(shared, own=2)
        with first.batch(128):
            first.adjust()
            assert torch.get_num_threads() == 4
            with shared.busy.get_lock():  # the other lane's batch starts (in its own process)
                shared.busy.value += 1
            first.adjust()
            assert torch.get_num_threads() == 2
            with shared.busy.get_lock():
                shared.busy.value -= 1
        assert second.current == 2

    def test_a_small_batch_keeps_its_threads_but_counts_as_busy(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared, own=1)
        with lane.batch(MIN_BATCH - 1):
            assert shared.busy.value == 1
            assert between_steps() is None
            assert torch.get_num_threads() == 1
        assert shared.busy.value == 0

    def test_a_failing_batch_leaves_the_count_and_threads_as_they_were(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared, own=1)
        with pytest.raises(RuntimeError), lane.batch(128):
            lane.adjust()
            raise RuntimeError("the forward pass failed")
        assert (shared.busy.value, torch.get_num_threads(), between_steps()) == (0, 1, None)


class BetweenStepsTests:
    def test_the_engine_calls_the_hook_after_each_decoding_step_and_outputs_do_not_change(self, tiny_models,
                                                                                          monkeypatch):
        monkeypatch.setenv(FIXED_OUTPUT_TOKENS_VARIABLE, "7")  # every output 7 tokens: 7 decoding steps
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)))
        engine.load()
        texts = ["Hola, mi pedido no ha llegado.", "Gracias por su ayuda."]
        plain = engine.translate(texts, "es", "en")
        steps = []
        with between_steps_call(lambda: steps.append(torch.get_num_threads())):
            hooked = engine.translate(texts, "es", "en")
        assert hooked == plain
        assert len(steps) == 7
        assert engine.translate(texts, "es", "en") == plain  # no hook once the block ended
        assert len(steps) == 7
