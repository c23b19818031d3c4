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


def lanes(cores: int = 2, count: int = 2) -> IdleCores:
    return IdleCores(multiprocessing.get_context("spawn"), cores, count)


class LendingTests:
    def test_a_batch_alone_borrows_the_idle_cores_from_its_first_step(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(0), own=1)
        with lane.batch(128):
            assert shared.busy() == 1
            assert torch.get_num_threads() == 1  # the encoder's pass: the lane's own threads
            between_steps()()  # a decoding step ended
            assert torch.get_num_threads() == 2
        assert shared.busy() == 0
        assert torch.get_num_threads() == 1
        assert between_steps() is None  # the hook ends with the batch

    def test_a_lane_that_starts_takes_its_cores_back_at_the_next_step(self, threads):
        shared = lanes(cores=4)
        first = Lending(shared.lane(0), own=2)
        with first.batch(128):
            first.adjust()
            assert torch.get_num_threads() == 4
            shared.slots[1] = 1  # the other lane's batch starts (in its own process)
            first.adjust()
            assert torch.get_num_threads() == 2
            shared.slots[1] = 0
            first.adjust()
            assert torch.get_num_threads() == 4
        assert torch.get_num_threads() == 2  # the lane's own share again

    def test_a_small_batch_or_a_load_keeps_its_threads_but_counts_as_busy(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(1), own=1)
        for size in (MIN_BATCH - 1, 0):
            with lane.batch(size):
                assert list(shared.slots) == [0, 1]
                assert between_steps() is None
                assert torch.get_num_threads() == 1
        assert shared.busy() == 0

    def test_a_failing_batch_leaves_the_count_and_threads_as_they_were(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(0), own=1)
        with pytest.raises(RuntimeError), lane.batch(128):
            lane.adjust()
            raise RuntimeError("the forward pass failed")
        assert (shared.busy(), torch.get_num_threads(), between_steps()) == (0, 1, None)

    def test_a_child_process_sees_the_lanes_busy(self):
        shared = lanes(cores=2, count=3)
        shared.slots[0] = shared.slots[2] = 1
        context = multiprocessing.get_context("spawn")
        answers = context.Queue()
        child = context.Process(target=report_busy, args=(shared.lane(1), answers))
        child.start()
        assert answers.get(timeout=60) == 2
        child.join(timeout=60)
        assert list(shared.slots) == [1, 1, 1]  # its own byte, written there, read here

    def test_an_inner_hook_gives_the_outer_one_back(self):
        with between_steps_call(print):
            with between_steps_call(len):
                assert between_steps() is len
            assert between_steps() is print
        assert between_steps() is None


def report_busy(lane, answers) -> None:
    answers.put(lane.shared.busy())
    lane.shared.slots[lane.index] = 1


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
