import io
import os

import pytest
import torch
from django.core.management import call_command

from translation.engines import EngineSpec
from translation.engines.hf_seq2seq import FIXED_OUTPUT_TOKENS_VARIABLE, HFSeq2SeqEngine, fixed_output_tokens
from workers.precision import measure_drift, precisions_for

NO_GPU = "needs a CUDA device: fp16 and bf16 run only on a GPU (none on this machine)"


class PrecisionDriftTests:
    def test_int8_on_cpu_is_measured_against_fp32(self, tiny_models):
        texts = ["Hola, mi pedido no ha llegado.", "Gracias por su ayuda.", "¿Dónde está mi paquete?"] * 3
        fp32_memory, [drift] = measure_drift(str(tiny_models.m2m100), texts, device="cpu", source="es", target="en",
                                             say=lambda line: None)
        assert drift.precision == "int8"
        assert 0 < drift.memory_mib < fp32_memory  # packed int8 layers are smaller

    def test_fp32_against_itself_is_identical(self, tiny_models):
        texts = ["Hola, mi pedido no ha llegado.", "Gracias por su ayuda."]
        _, [drift] = measure_drift(str(tiny_models.m2m100), texts, device="cpu", source="es", target="en",
                                   precisions=["fp32"], say=lambda line: None)
        assert (drift.identical, round(drift.chrf, 1)) == (1.0, 100.0)

    def test_the_command_prints_a_row_per_precision(self, tiny_models):
        out = io.StringIO()
        call_command("precision_drift", "--model", "tiny", stdout=out)
        rows = [line.split()[0] for line in out.getvalue().splitlines() if line[:4] in ("fp32", "int8")]
        assert rows == ["fp32", "int8"]
        # The forced output length was the command's own: engines made after it in this process
        # translate as before (it had stayed set, and changed a later test's outputs).
        assert FIXED_OUTPUT_TOKENS_VARIABLE not in os.environ

    def test_a_forced_output_length_ends_with_its_block(self, monkeypatch):
        monkeypatch.setenv(FIXED_OUTPUT_TOKENS_VARIABLE, "3")
        with fixed_output_tokens(20):
            assert os.environ[FIXED_OUTPUT_TOKENS_VARIABLE] == "20"
        assert os.environ[FIXED_OUTPUT_TOKENS_VARIABLE] == "3"
        monkeypatch.delenv(FIXED_OUTPUT_TOKENS_VARIABLE)
        with fixed_output_tokens(20):
            pass
        assert FIXED_OUTPUT_TOKENS_VARIABLE not in os.environ

    def test_gpu_precisions_are_fp16_and_bf16(self):
        assert precisions_for("cuda") == ["fp16", "bf16"]
        assert precisions_for("cpu") == ["int8"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
class GpuPrecisionTests:
    @pytest.mark.parametrize("precision", ["fp16", "bf16"])
    def test_half_precision_translates_on_the_gpu(self, tiny_models, precision):
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.m2m100), precision=precision, device="cuda"))
        engine.load()
        [text] = engine.translate(["Hola, mi pedido no ha llegado."], "es", "en")
        assert text
        assert engine.memory_bytes > 0

    def test_drift_of_fp16_and_bf16_is_measured(self, tiny_models):
        _, drifts = measure_drift(str(tiny_models.m2m100), ["Hola.", "Gracias."], device="cuda", source="es",
                                  target="en", say=lambda line: None)
        assert [d.precision for d in drifts] == ["fp16", "bf16"]
