"""The engine process with the tiny models: same outputs as in-process, errors cross intact."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from translation.engines import EngineSpec, InputTooLong, UnsupportedPair, engine_for
from workers.engine_process import EngineProcess, EngineProcessDied, ModelMemory, Warmup, start_lanes
from workers.idle_cores import IDLE_AFTER_S, MIN_BATCH
from workers.lane_layout import MAX_AUTO_LANES, MAX_GPU_LANES, cpu_lanes, default_lanes, gpu_lanes, lane_layout, usable_cores


@pytest.fixture(scope="module")
def engines(tiny_models):
    spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
    process = EngineProcess([Warmup(spec, "es", "en")])
    memory = process.start()
    assert memory[spec].total > 0
    yield process, spec
    process.stop()


class EngineProcessTests:
    def test_a_full_batch_computes_at_start_and_the_worker_learns_how_long_it_took(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
        process = EngineProcess([Warmup(spec, "es", "en", batch=32)])
        try:
            process.start()
            size, seconds = process.full_batches[spec]
            assert size == 32 and seconds is not None and seconds > 0
            # A model warmed later (a route changed) computes its full batch too, and serves after.
            other = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
            assert process.warm(Warmup(other, "es", "en", batch=16)).total > 0
            assert process.engine(other).translate(["Hola."], "es", "en") == engine_for(other).translate(["Hola."], "es", "en")
        finally:
            process.stop()

    def test_a_warm_up_of_one_sentence_computes_no_full_batch(self, engines):
        process, _ = engines
        assert process.full_batches == {}

    def test_a_full_batch_that_runs_out_of_memory_is_logged_and_the_model_kept(self, monkeypatch, caplog):
        from translation import engines
        from workers.engine_models import compute_full_batch

        class Exhausted:  # the model loaded; a batch of its route's size does not fit
            def translate(self, texts, source, target):
                raise MemoryError("cannot allocate 3 GiB")

        monkeypatch.setattr(engines, "engine_for", lambda spec: Exhausted())
        spec = EngineSpec("hf-seq2seq", "org/large")
        with caplog.at_level("WARNING", logger="workers.engine_models"):
            assert compute_full_batch(spec, "es", "en", 8) is None
        assert "a full batch of 8 ran out of memory at start (MemoryError: cannot allocate 3 GiB)" in caplog.text

    def test_a_full_batch_that_fails_otherwise_fails_the_start(self, tiny_models):
        from workers.engine_models import compute_full_batch

        with pytest.raises(OSError):  # no such checkpoint: nothing to compute a batch with
            compute_full_batch(EngineSpec("hf-seq2seq", "/nonexistent/model"), "es", "en", 8)
        assert compute_full_batch(EngineSpec("hf-seq2seq", "/nonexistent/model"), "es", "en", 1) is None  # the canary's only

    def test_translations_equal_the_in_process_engine(self, engines):
        process, spec = engines
        texts = ["Hola, mi pedido no ha llegado.", "Gracias. Adiós."]
        assert process.engine(spec).translate(texts, "es", "fr") == engine_for(spec).translate(texts, "es", "fr")

    def test_engine_errors_cross_the_process_boundary_with_their_fields(self, engines):
        process, spec = engines
        with pytest.raises(InputTooLong) as raised:
            process.engine(spec).translate(["Hola.", "palabra " * 600], "es", "en")
        assert (raised.value.index, raised.value.limit) == (1, 512)
        with pytest.raises(UnsupportedPair, match="Unknown language 'xx'"):
            process.engine(spec).translate(["Hola"], "es", "xx")

    def test_work_given_to_do_meanwhile_runs_once_and_its_error_waits_for_the_answer(self, engines):
        process, spec = engines
        ran = []
        engine = process.engine(spec)
        assert engine.translate_with_usage_while(["Hola."], "es", "en", meanwhile=lambda: ran.append(1))[0] == \
            engine.translate(["Hola."], "es", "en")
        assert ran == [1]

        def failing() -> None:
            raise ValueError("the stamp failed")

        with pytest.raises(ValueError, match="the stamp failed"):
            engine.translate_with_usage_while(["Hola."], "es", "en", meanwhile=failing)
        # The failed call's answer was read: the next call gets its own.
        assert engine.translate(["Gracias."], "es", "en") == engine_for(spec).translate(["Gracias."], "es", "en")

    def test_the_usage_times_the_model_call_in_the_child_not_the_work_done_meanwhile(self, engines):
        """The row's ``forward_ms`` is the model's time: what the worker does meanwhile (the batch's
        start stamp, a database write) is not in it."""
        import time

        process, spec = engines
        outputs, usage = process.engine(spec).translate_with_usage_while(["Hola."], "es", "en",
                                                                        meanwhile=lambda: time.sleep(1.0))
        assert outputs and 0 < usage.seconds < 1.0

    def test_a_start_where_no_model_loads_fails_with_the_reason(self):
        process = EngineProcess([Warmup(EngineSpec("hf-seq2seq", "/nonexistent/model"), "es", "en")])
        with pytest.raises(RuntimeError, match="loading models failed.*/nonexistent/model"):
            process.start()
        process.stop()

    def test_a_model_that_does_not_load_is_left_out_and_the_others_serve(self, tiny_models):
        """A route (a disabled one, say) names a path not on this host: the lane starts with the
        other models and says which did not load and why; a call for it fails with the reason."""
        good = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
        bad = EngineSpec("hf-seq2seq", "/srv/models/opus-mt-es-en-typo")
        process = EngineProcess([Warmup(bad, "es", "en"), Warmup(good, "es", "en", batch=8)])
        try:
            memory = process.start()
            assert set(memory) == {good} and set(process.full_batches) == {good}
            assert set(process.failed_at_start) == {bad} and "opus-mt-es-en-typo" in process.failed_at_start[bad]
            assert process.engine(good).translate(["Hola."], "es", "en") == engine_for(good).translate(["Hola."], "es", "en")
            with pytest.raises(Exception, match="opus-mt-es-en-typo"):
                process.engine(bad).translate(["Hola."], "es", "en")
            assert process.alive()
        finally:
            process.stop()


class ModelsLoadedLaterTests:
    """A route changed after the start names a model the lane has not loaded: it loads with its
    first call and is reported; one no longer needed is unloaded, and loads again if asked for."""

    @pytest.fixture
    def lane(self, tiny_models):
        process = EngineProcess([Warmup(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)), "es", "en")])
        process.start()
        assert not process.heap_kept  # not asked to: glibc's own behaviour
        changes = []
        process.on_change = lambda: changes.append(dict(process.memory))
        process.loads = []
        process.on_loading = process.loads.append
        yield process, changes
        process.stop()

    def test_a_model_loaded_by_a_call_is_reported_with_its_memory(self, lane, tiny_models):
        process, changes = lane
        marian = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
        m2m100 = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        outputs, usage = process.call(m2m100, ["Hola", "Gracias"], "es", "en")
        assert len(outputs) == 2 and usage.input_tokens > 0
        assert set(process.memory) == {marian, m2m100} and process.memory[m2m100].total > 0
        assert changes == [process.memory]  # told once, with the new model's memory
        assert process.loads == [True, False]  # while it loaded, the call was a load, not a hung pass
        assert set(process.last_used) == {marian, m2m100}
        process.call(m2m100, ["Hola"], "es", "en")
        assert len(changes) == 1 and len(process.loads) == 2  # loaded already: nothing new to tell
        # Loaded by a call that then fails: loaded all the same, so reported.
        m2m100_int8 = EngineSpec("hf-seq2seq", str(tiny_models.m2m100), precision="int8")
        with pytest.raises(UnsupportedPair):
            process.call(m2m100_int8, ["Hola"], "es", "xx")
        assert m2m100_int8 in process.memory and len(changes) == 2
        # One that does not load fails its call; the lane goes on with what it holds.
        with pytest.raises(OSError):
            process.call(EngineSpec("hf-seq2seq", "/nonexistent/model"), ["Hola"], "es", "en")
        assert len(changes) == 2 and len(process.memory) == 3
        assert process.loads[-2:] == [True, False]  # its load began and ended, if in failure
        assert len(process.call(marian, ["Hola"], "es", "en")[0]) == 1

    def test_an_unloaded_model_leaves_the_child_and_loads_again_when_asked_for(self, lane, tiny_models):
        process, changes = lane
        marian = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
        m2m100 = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        process.call(m2m100, ["Hola"], "es", "en")
        process.unload(m2m100)
        assert set(process.memory) == {marian} and set(process.last_used) == {marian}
        assert changes[-1] == {marian: process.memory[marian]}
        # The child loads it again (it tells its memory again: it no longer held it).
        process.call(m2m100, ["Hola"], "es", "en")
        assert m2m100 in process.memory and len(changes) == 3
        process.unload(marian)  # a model warmed at start goes the same way
        assert set(process.memory) == {m2m100}


class EngineProcessDeathTests:
    def test_a_dead_engine_process_is_reported_not_waited_for(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        process = EngineProcess([Warmup(spec, "es", "en")])
        process.start()
        os.kill(process._process.pid, signal.SIGKILL)
        process._process.join(10)
        assert not process.alive()
        with pytest.raises(EngineProcessDied) as gone:
            process.engine(spec).translate(["Hola"], "es", "en")
        assert not gone.value.during_call  # gone before the call: not its inputs' doing
        process.stop()

    def test_an_engine_process_that_dies_during_a_call_says_so(self, tiny_models):
        """Killed while it computes (as a crash on an input would end it): the call's inputs are
        suspects (translation.execution runs each alone from then on)."""
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        process = EngineProcess([Warmup(spec, "es", "en")])
        process.start()
        try:
            with pytest.raises(EngineProcessDied) as died:
                process.call(spec, ["Hola, ¿dónde está mi pedido?"] * 32, "es", "en",
                             meanwhile=lambda: os.kill(process._process.pid, signal.SIGKILL))
            assert died.value.during_call
        finally:
            process.stop()


class CpuLanesTests:
    @pytest.mark.parametrize(("requested", "cores", "layout"), [
        (0, 1, (1, 1)),  # automatic: one lane per core
        (0, 2, (2, 1)),
        (0, 16, (MAX_AUTO_LANES, 16 // MAX_AUTO_LANES)),  # capped: each lane holds a copy of the models
        (1, 8, (1, 8)),  # one lane: every core in one forward pass
        (2, 6, (2, 3)),
        (3, 2, (3, 1)),  # asked for: kept, at one thread each
    ])
    def test_lanes_share_the_cores(self, requested, cores, layout):
        assert cpu_lanes(requested, cores) == layout

    @pytest.mark.parametrize(("cpu_max", "cap"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("", None)])
    def test_a_containers_cpu_limit_caps_the_cores(self, tmp_path, cpu_max, cap):
        import os

        path = tmp_path / "cpu.max"
        path.write_text(cpu_max)
        affinity = len(os.sched_getaffinity(0))
        assert usable_cores(path) == (affinity if cap is None else min(affinity, cap))
        assert usable_cores(tmp_path / "absent") == affinity

    def test_a_negative_count_is_refused(self):
        with pytest.raises(ValueError, match="0 \\(one per core\\) or more"):
            cpu_lanes(-1, 2)

    def test_lanes_start_side_by_side_each_on_its_share_of_the_threads(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        lanes = start_lanes([Warmup(spec, "es", "en")], count=2, threads=1)
        try:
            texts = ["Hola, mi pedido no ha llegado.", "Gracias. Adiós."]
            expected = engine_for(spec).translate(texts, "es", "fr")
            assert [lane.engine(spec).translate(texts, "es", "fr") for lane in lanes] == [expected, expected]
            assert [lane.threads for lane in lanes] == [1, 1]
            # The worker's lanes keep freed memory for their next batches (the setting's default).
            assert [lane.heap_kept for lane in lanes] == [True, True]
            # and lend each other their idle cores, counting busy lanes together (none computes
            # now: both are idle once IDLE_AFTER_S has passed since their batches).
            shared = lanes[0].idle_cores.shared
            assert shared is lanes[1].idle_cores.shared
            assert [lane.idle_cores.index for lane in lanes] == [0, 1]
            assert (shared.cores, shared.busy(now=time.monotonic() + IDLE_AFTER_S)) == (2, 0)
        finally:
            for lane in lanes:
                lane.stop()

    def test_a_large_batch_on_one_lane_computes_on_the_idle_lanes_core_and_says_for_how_long(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        lanes = start_lanes([Warmup(spec, "es", "en")], count=2, threads=1)
        try:
            shared = lanes[0].idle_cores.shared
            assert shared.borrowed_seconds() == [0.0, 0.0]
            texts = [f"Hola, mi pedido número {n} no ha llegado todavía." for n in range(MIN_BATCH * 2)]
            assert len(lanes[0].engine(spec).translate(texts, "es", "fr")) == len(texts)
            first, second = shared.borrowed_seconds()  # written in the lane's process, read here
            assert first > 0 and second == 0.0
        finally:
            for lane in lanes:
                lane.stop()

    def test_lanes_lend_no_cores_when_told_not_to_nor_alone(self, tiny_models, settings):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        [alone] = start_lanes([Warmup(spec, "es", "en")], count=1, threads=1)
        alone.stop()
        settings.TRANSLATION_CPU_LEND_IDLE_CORES = False
        lanes = start_lanes([Warmup(spec, "es", "en")], count=2, threads=1)
        for lane in lanes:
            lane.stop()
        assert [alone.idle_cores, *(lane.idle_cores for lane in lanes)] == [None, None, None]

    def test_lanes_share_the_weights_mapped_from_the_checkpoint(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        checkpoint = str(tiny_models.m2m100 / "model.safetensors")
        lanes = start_lanes([Warmup(spec, "es", "en")], count=2, threads=1)
        try:
            memory = lanes[0].memory[spec]
            assert 0 < memory.shared <= memory.total
            assert ModelMemory.held_together([lane.memory[spec] for lane in lanes]) < 2 * memory.total
            # The kernel's account: both processes map the checkpoint, and its pages are
            # counted as shared, each process charged half (Pss) of what it maps (Rss).
            for lane in lanes:
                rss, pss, shared = mapped(lane._process.pid, checkpoint)
                assert rss > 0
                assert shared == rss
                assert pss <= rss // 2 + 4  # kB; the last page may be counted whole
        finally:
            for lane in lanes:
                lane.stop()

    def test_what_lanes_hold_together(self):
        assert ModelMemory.held_together([ModelMemory(total=100, shared=80)] * 3) == 80 + 3 * 20
        assert ModelMemory.held_together([ModelMemory(total=100)] * 2) == 200
        assert ModelMemory.held_together([ModelMemory(total=100, shared=100)] * 4) == 100
        # a lane that had to copy a page of the file holds that page itself
        assert ModelMemory.held_together([ModelMemory(100, 80), ModelMemory(100, 76)]) == 80 + 20 + 24

    def test_a_gpu_worker_runs_one_lane_on_torchs_own_threads_unless_told(self):
        assert lane_layout("cuda", 1, cores=16) == (1, 0)
        assert lane_layout("cpu", 0, cores=2) == (2, 1)

    @pytest.mark.parametrize(("requested", "cores", "layout"), [(2, 16, (2, 8)), (3, 16, (3, 5)), (4, 2, (4, 1))])
    def test_gpu_lanes_split_the_cores_for_their_cpu_work(self, requested, cores, layout):
        assert lane_layout("cuda", requested, cores=cores) == layout

    @pytest.mark.parametrize("requested", [-1, 0, MAX_GPU_LANES + 1])
    def test_gpu_lanes_out_of_range_are_refused(self, requested):
        with pytest.raises(ValueError, match=f"GPU lanes must be from 1 to {MAX_GPU_LANES}, not {requested}"):
            gpu_lanes(requested, 16)

    def test_each_device_takes_its_own_setting(self, settings):
        settings.TRANSLATION_CPU_LANES, settings.TRANSLATION_GPU_LANES = 3, 2
        assert (default_lanes("cpu"), default_lanes("cuda")) == (3, 2)


def mapped(pid: int, path: str) -> tuple[int, int, int]:
    """Rss, Pss and Shared_Clean (kB) of the process's mappings of ``path``."""
    totals = {"Rss": 0, "Pss": 0, "Shared_Clean": 0}
    inside = False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and not fields[0].endswith(":"):  # a header: range perms offset dev inode [path]
                inside = line.rstrip("\n").split(maxsplit=5)[5:] == [path]
            elif inside and fields[0][:-1] in totals:
                totals[fields[0][:-1]] += int(fields[1])
    return totals["Rss"], totals["Pss"], totals["Shared_Clean"]


# Run in a process of its own: freezing the test run's own heap would keep its garbage cycles.
FROZEN_HEAP = """
import gc, weakref
from workers.engine_models import free_memory
from workers.frozen_heap import freeze_heap

class Module:  # a model's parts can refer to each other: a cycle only a collection frees
    pass

first, second = Module(), Module()
first.other, second.other = second, first
model = weakref.ref(first)
frozen = freeze_heap()
print(frozen == gc.get_freeze_count(), any(obj is first for obj in gc.get_objects()))
del first, second
gc.collect()
print(model() is not None)
free_memory("cpu")
print(model() is None, gc.get_freeze_count() == 0)
"""


class FrozenHeapTests:
    def test_a_frozen_heap_is_out_of_collections_and_an_unloaded_models_cycles_are_freed_all_the_same(self):
        result = subprocess.run([sys.executable, "-c", FROZEN_HEAP], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        frozen_and_untracked, kept_by_a_collection, freed_and_thawed = result.stdout.split("\n")[:3]
        assert frozen_and_untracked == "True False"  # frozen: no collection walks it
        assert kept_by_a_collection == "True"  # which is why an unload thaws before it collects
        assert freed_and_thawed == "True True"  # the engine process freezes again once it answered


class DeviceBrokenTests:
    def test_a_cpu_or_an_engines_own_error_never_counts_as_a_lost_device(self):
        from workers.engine_models import device_broken

        assert not device_broken("cpu", RuntimeError("CUDA error: an illegal memory access was encountered"))
        assert not device_broken("cuda:0", UnsupportedPair("de->xx is not served by this model"))

    @pytest.mark.gpu
    @pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                        reason="needs a CUDA device: a sticky CUDA error happens only on a GPU (none on this machine)")
    def test_a_device_side_assert_counts_as_a_lost_device_and_out_of_memory_does_not(self):
        """In a process of its own (the error spoils its CUDA context for good)."""
        program = (
            "import torch\n"
            "from workers.engine_models import device_broken\n"
            "try:\n"
            "    torch.cuda.synchronize(); torch.zeros(1, device='cuda')[torch.tensor([5], device='cuda')].item()\n"
            "except Exception as exc:\n"
            "    print('broken' if device_broken('cuda', exc) else 'fine')\n"
        )
        done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "broken", done.stderr
        import torch

        from workers.engine_models import device_broken

        assert not device_broken("cuda", torch.cuda.OutOfMemoryError("CUDA out of memory"))
