"""One loaded engine per spec per process: a many-to-many model serving ten pairs loads once."""

from __future__ import annotations

import threading

from translation.engines.base import EngineSpec, TranslationEngine
from translation.engines.hf_seq2seq import HFSeq2SeqEngine

ENGINE_CLASSES: dict[str, type[TranslationEngine]] = {"hf-seq2seq": HFSeq2SeqEngine}

_engines: dict[EngineSpec, TranslationEngine] = {}
_lock = threading.Lock()


def engine_for(spec: EngineSpec) -> TranslationEngine:
    """The loaded engine for ``spec``, loading it on first use."""
    engine = _engines.get(spec)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(spec)
        if engine is None:
            engine = ENGINE_CLASSES[spec.engine](spec)
            engine.load()
            _engines[spec] = engine
    return engine


def engine_unload(spec: EngineSpec) -> bool:
    """Drop the engine of ``spec`` from this process (a later ``engine_for`` loads it again).
    False when none was loaded."""
    with _lock:
        engine = _engines.pop(spec, None)
    if engine is None:
        return False
    engine.unload()
    return True


def loaded_engines() -> dict[EngineSpec, TranslationEngine]:
    return dict(_engines)
