"""How far each precision's output drifts from fp32 on the same inputs.

Per precision: the share of outputs identical to fp32's, and chrF of its outputs against the
fp32 outputs as references (100 = the same text). Random-weight models are measured with
outputs forced to a fixed length, like the benchmark; their drift bounds nothing for a trained
checkpoint, whose logits are far less flat, so rerun this on the real model before changing a
route's precision.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

from translation.engines import EngineSpec
from translation.engines.hf_seq2seq import HFSeq2SeqEngine


@dataclass(frozen=True)
class Drift:
    precision: str
    device: str
    identical: float  # share of outputs equal to fp32's
    chrf: float  # chrF against the fp32 outputs
    memory_mib: float


def precisions_for(device: str) -> list[str]:
    return ["int8"] if device == "cpu" else ["fp16", "bf16"]


def measure_drift(model: str, texts: list[str], *, device: str, source: str, target: str,
                  precisions: list[str] | None = None, say: Callable[[str], None] = print) -> tuple[float, list[Drift]]:
    """fp32's memory (MiB) and the drift of every other precision this device runs."""
    from sacrebleu.metrics import CHRF

    def outputs(precision: str) -> tuple[list[str], float]:
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", model, precision=precision, device=device))
        engine.load()
        translated = []
        for start in range(0, len(texts), 32):
            translated += engine.translate(texts[start : start + 32], source, target)
        memory = engine.memory_bytes / 2**20
        del engine
        gc.collect()
        return translated, memory

    say(f"  fp32 on {device} ...")
    reference, fp32_memory = outputs("fp32")
    drifts = []
    for precision in precisions or precisions_for(device):
        say(f"  {precision} on {device} ...")
        candidate, memory = outputs(precision)
        identical = sum(a == b for a, b in zip(candidate, reference, strict=True)) / len(texts)
        chrf = CHRF().corpus_score(candidate, [reference]).score
        drifts.append(Drift(precision, device, identical, chrf, memory))
    return fp32_memory, drifts
