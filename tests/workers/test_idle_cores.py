"""CPU lanes lending their idle cores: the threads a batch runs as other lanes start and end."""

import math
import multiprocessing
import time
from types import SimpleNamespace

import pytest
import torch

from translation.engines import EngineSpec, between_steps, between_steps_call
from translation.engines.hf_seq2seq import FIXED_OUTPUT_TOKENS_VARIABLE, HFSeq2SeqEngine
from workers import idle_cores
from workers.idle_cores import IDLE_AFTER_S, MIN_BATCH, IdleCores, Lending


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The lanes' clock, moved by the test: ``time.monotonic()`` is ``clock[0]``."""
    now = [1000.0]
    monkeypatch.setattr(idle_cores, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def lanes(cores: int = 2, count: int = 2) -> IdleCores:
    return IdleCores(multiprocessing.get_context("spawn"), cores, count)


def later() -> float:
    """A moment at which a batch that ended now no longer counts."""
    return time.monotonic() + IDLE_AFTER_S


class LendingTests:
    def test_a_batch_alone_borrows_the_idle_cores_from_its_first_step(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(0), own=1)
        with lane.batch(128):
            assert shared.busy() == 1
            assert torch.get_num_threads() == 1  # the encoder's pass: the lane's own threads
            between_steps()()  # a decoding step ended
            assert torch.get_num_threads() == 2
            ending = time.monotonic()
        assert (shared.busy(now=ending), shared.busy(now=later())) == (1, 0)  # idle once IDLE_AFTER_S has passed
        assert torch.get_num_threads() == 1
        assert between_steps() is None  # the hook ends with the batch

    def test_a_lane_that_starts_takes_its_cores_back_at_the_next_step(self, threads):
        shared = lanes(cores=4)
        first = Lending(shared.lane(0), own=2)
        with first.batch(128):
            first.adjust()
            assert torch.get_num_threads() == 4
            shared.start(1)  # the other lane's batch starts (in its own process)
            first.adjust()
            assert torch.get_num_threads() == 2
            shared.end(1, now=time.monotonic() - IDLE_AFTER_S)  # it ended a while ago
            first.adjust()
            assert torch.get_num_threads() == 4
        assert torch.get_num_threads() == 2  # the lane's own share again

    def test_a_lane_between_two_batches_keeps_its_cores_for_a_while(self, threads, clock):
        """Jobs still coming: its worker stores and claims on those cores before the next batch."""
        shared = lanes(cores=2)
        first = Lending(shared.lane(0), own=1)
        with first.batch(128):
            shared.start(1)
            shared.end(1)  # the other lane's batch ended
            clock[0] += IDLE_AFTER_S / 2
            first.adjust()
            assert (shared.busy(), torch.get_num_threads()) == (2, 1)
            clock[0] += IDLE_AFTER_S / 2 + 0.001  # no batch came: its core is idle
            first.adjust()
            assert (shared.busy(), torch.get_num_threads()) == (1, 2)

    def test_the_time_on_borrowed_cores_is_counted_per_lane_as_they_go_back(self, threads, clock):
        shared = lanes(cores=2)
        first = Lending(shared.lane(0), own=1)
        with first.batch(128):
            clock[0] += 0.1  # the encoder's pass, on its own thread
            first.adjust()  # the other lane idle: both cores
            clock[0] += 0.5
            shared.start(1)
            first.adjust()  # the other lane started: its core goes back
            assert shared.borrowed_seconds() == [pytest.approx(0.5), 0.0]
            shared.end(1, now=clock[0] - IDLE_AFTER_S)
            first.adjust()  # borrowed again until the batch ends
            clock[0] += 0.25
        assert shared.borrowed_seconds() == [pytest.approx(0.75), 0.0]
        with first.batch(MIN_BATCH - 1):  # a small batch borrows nothing
            clock[0] += 1
        assert shared.borrowed_seconds() == [pytest.approx(0.75), 0.0]

    def test_a_small_batch_or_a_load_keeps_its_threads_but_counts_as_busy(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(1), own=1)
        for size in (MIN_BATCH - 1, 0):
            with lane.batch(size):
                assert list(shared.slots) == [0.0, math.inf]
                assert between_steps() is None
                assert torch.get_num_threads() == 1
        assert shared.busy(now=later()) == 0

    def test_a_failing_batch_leaves_the_count_and_threads_as_they_were(self, threads):
        shared = lanes(cores=2)
        lane = Lending(shared.lane(0), own=1)
        with pytest.raises(RuntimeError), lane.batch(128):
            lane.adjust()
            raise RuntimeError("the forward pass failed")
        assert (shared.busy(now=later()), torch.get_num_threads(), between_steps()) == (0, 1, None)

    def test_a_child_process_sees_the_lanes_busy(self):
        shared = lanes(cores=2, count=3)
        shared.start(0)
        shared.start(2)
        context = multiprocessing.get_context("spawn")
        answers = context.Queue()
        child = context.Process(target=report_busy, args=(shared.lane(1), answers))
        child.start()
        assert answers.get(timeout=60) == 2
        child.join(timeout=60)
        assert list(shared.slots) == [math.inf] * 3  # its own slot, written there, read here

    def test_an_inner_hook_gives_the_outer_one_back(self):
        with between_steps_call(print):
            with between_steps_call(len):
                assert between_steps() is len
            assert between_steps() is print
        assert between_steps() is None


def report_busy(lane, answers) -> None:
    answers.put(lane.shared.busy())
    lane.shared.start(lane.index)


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
