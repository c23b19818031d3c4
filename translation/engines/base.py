"""The engine interface and the errors an engine reports."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


class EngineError(Exception):
    """The input cannot be translated by this engine; retrying will not help."""


class UnsupportedPair(EngineError):
    pass


class EngineLost(RuntimeError):
    """The engine stopped answering: its process died (a crash, the kernel's out-of-memory
    killer) or hung and was killed. ``during_call``: it stopped during this call, whose inputs
    may have caused it; False: it was gone before the call."""

    def __init__(self, message: str, *, during_call: bool = True) -> None:
        super().__init__(message)
        self.during_call = during_call

    def __reduce__(self):
        return (type(self), (str(self),), {"during_call": self.during_call})


class InputTooLong(EngineError):
    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"Input has {tokens} tokens; the model accepts at most {limit}.")
        self.index, self.tokens, self.limit = index, tokens, limit

    def __reduce__(self):
        # Crosses a process boundary (workers/engine_process.py) with its fields intact.
        return (InputTooLong, (self.index, self.tokens, self.limit))


@dataclass(frozen=True)
class EngineSpec:
    """What identifies one loaded model in a process: two routes with the same spec share it."""

    engine: str
    model: str
    precision: str = "fp32"
    device: str = "cpu"


@dataclass
class TokenUsage:
    """Tokens a translate call read and generated, and the seconds the model call took, timed
    where the engine runs (for the worker's metrics and the row's ``forward_ms``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def add(self, other: TokenUsage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.seconds += other.seconds


def translate_timed(
    engine: TranslationEngine, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
) -> tuple[list[str], TokenUsage]:
    """``engine.translate_with_usage``, its usage's ``seconds`` the model call's own time, taken
    where the engine runs (in the worker, or in its engine process: no load, no hand-over)."""
    began = time.perf_counter()
    outputs, usage = engine.translate_with_usage(texts, source, target, glossary)
    usage.seconds = time.perf_counter() - began
    return outputs, usage


# What an engine calls between the decoding steps of a batch, per thread (an engine process's
# CPU lanes resize their threads to the cores idle now: workers/idle_cores.py).
_steps = threading.local()


@contextmanager
def between_steps_call(hook: Callable[[], None]) -> Iterator[None]:
    """Have engines call ``hook`` between the decoding steps of this thread's batches, until the
    block ends."""
    outer = getattr(_steps, "hook", None)
    _steps.hook = hook
    try:
        yield
    finally:
        _steps.hook = outer


def between_steps() -> Callable[[], None] | None:
    """The hook this thread's batches call between decoding steps, if any."""
    return getattr(_steps, "hook", None)


class TranslationEngine(ABC):
    """One model on one device. ``load`` once, then ``translate`` from any thread."""

    spec: EngineSpec

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer; called once before the first ``translate``."""

    @abstractmethod
    def translate(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> list[str]:
        """Translate ``texts`` from ``source`` to ``target`` (ISO 639-1 codes).

        Args:
            texts: non-empty strings, all of the same language pair.
            source: the texts' language.
            target: the language to produce.
            glossary: terms that must come back as given: term -> forced translation, or ""
                to keep the term itself (brand and product names).

        Returns:
            One output per input, in the same order.

        Raises:
            UnsupportedPair: the model cannot produce this pair.
            InputTooLong: one of the texts exceeds the model's input length.
        """

    def translate_with_usage(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> tuple[list[str], TokenUsage]:
        """``translate``, and the tokens it read and generated (zero for an engine that cannot count)."""
        return self.translate(texts, source, target, glossary), TokenUsage()

    @abstractmethod
    def unload(self) -> None:
        """Let go of the weights and tokenizer (no route needs the model any more); the engine is
        not used after this."""

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes held by the model's parameters and buffers."""

    @property
    def shared_bytes(self) -> int:
        """The part of ``memory_bytes`` read in place from the checkpoint's files (memory-mapped),
        which every process loading the same checkpoint shares through the page cache: a CPU
        worker's lanes hold it once. 0 where the weights were copied (converted, quantized)."""
        return 0
