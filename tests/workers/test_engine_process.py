"""The engine process with the tiny models: same outputs as in-process, errors cross intact."""

import os
import signal

import pytest

from translation.engines import EngineSpec, InputTooLong, UnsupportedPair, engine_for
from workers.engine_process import EngineProcess, EngineProcessDied, Warmup


@pytest.fixture(scope="module")
def engines(tiny_models):
    spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
    process = EngineProcess([Warmup(spec, "es", "en")])
    memory = process.start()
    assert memory[spec] > 0
    yield process, spec
    process.stop()


class EngineProcessTests:
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

    def test_a_model_that_does_not_load_fails_the_start_with_the_reason(self):
        process = EngineProcess([Warmup(EngineSpec("hf-seq2seq", "/nonexistent/model"), "es", "en")])
        with pytest.raises(RuntimeError, match="loading models failed"):
            process.start()
        process.stop()


class EngineProcessDeathTests:
    def test_a_dead_engine_process_is_reported_not_waited_for(self, tiny_models):
        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        process = EngineProcess([Warmup(spec, "es", "en")])
        process.start()
        os.kill(process._process.pid, signal.SIGKILL)
        process._process.join(10)
        assert not process.alive()
        with pytest.raises(EngineProcessDied):
            process.engine(spec).translate(["Hola"], "es", "en")
        process.stop()
