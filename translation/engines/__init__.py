"""Translation engines: load a model once, translate lists of texts for one language pair.

Engines import neither Django nor Celery; they take texts and return texts.
"""

from translation.engines.base import (
    EngineError, EngineLost, EngineSpec, InputTooLong, TokenUsage, TranslationEngine, UnsupportedPair, between_steps,
    between_steps_call, translate_timed,
)
from translation.engines.registry import engine_for, engine_unload, loaded_engines

__all__ = [
    "between_steps",
    "between_steps_call",
    "EngineError",
    "EngineLost",
    "EngineSpec",
    "InputTooLong",
    "TokenUsage",
    "translate_timed",
    "TranslationEngine",
    "UnsupportedPair",
    "engine_for",
    "engine_unload",
    "loaded_engines",
]
