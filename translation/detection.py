"""Offline language detection with Lingua (it ships its own language models)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

from django.conf import settings

# Lingua abstains on texts too short or ambiguous to tell apart; below this confidence we
# abstain too, and the caller falls back to the conversation's language.
MIN_CONFIDENCE = 0.25

_lock = threading.Lock()


@dataclass(frozen=True)
class Detection:
    language: str  # ISO 639-1
    confidence: float


@cache
def _detector():
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in settings.SUPPORTED_LANGUAGES]
    builder = LanguageDetectorBuilder.from_languages(*languages)
    if settings.LANGUAGE_DETECTION_LOW_ACCURACY:
        builder = builder.with_low_accuracy_mode()
    return builder.build()


def detect_language(text: str) -> Detection | None:
    """The most likely supported language of ``text``, or None when Lingua cannot tell."""
    with _lock:  # building the detector once; detection itself is thread-safe
        detector = _detector()
    language = detector.detect_language_of(text)
    if language is None:
        return None
    confidence = detector.compute_language_confidence(text, language)
    if confidence < MIN_CONFIDENCE:
        return None
    return Detection(language=language.iso_code_639_1.name.lower(), confidence=round(confidence, 3))
