"""A worker's models live in a child process of their own, and run in its main thread.

Two measured reasons (2-core CPU, small benchmark model, torch 2.13): generate called from a
non-main thread ran at 49.6 ms per sentence against 31.3 ms from the main thread; and in the
worker process the model shares the GIL with Celery's consumer and its pool threads, whose
per-job work then runs between the model's steps instead of beside them. The parent keeps
Celery, the batcher and the database; the child only translates. Texts cross a pipe, which
costs microseconds per batch.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from translation.engines import EngineLost, EngineSpec, TokenUsage
from workers.engine_models import ModelMemory, compute_full_batch, device_broken, free_memory, memory_of, warm_up

if TYPE_CHECKING:
    from workers.idle_cores import LaneCores

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 600  # loading several large checkpoints from disk can take minutes
# A forward pass that has not answered by then is taken as hung (a wedged driver, a deadlock):
# the engine process is killed and the worker stops for its supervisor to restart it. A full
# batch of a base-size model on a slow CPU takes seconds; this is two orders above.
CALL_TIMEOUT_S = 300
# The exit status of an engine process whose GPU can compute no more (a sticky CUDA error).
DEVICE_LOST_EXIT = 70


def start_lanes(warmups: list[Warmup], *, count: int, threads: int, name: str = "engine",
                device: str = "cpu") -> list[EngineProcess]:
    """``count`` engine processes on ``device``, their models loading side by side; returns once
    every one is ready. If one fails, none is left running. CPU lanes lend each other their idle
    cores (``workers.idle_cores``) unless ``TRANSLATION_CPU_LEND_IDLE_CORES`` is off."""
    from django.conf import settings

    from workers.idle_cores import IdleCores

    keep = settings.TRANSLATION_ENGINE_HEAP_KEEP_MB * 2**20
    lending = device == "cpu" and count > 1 and threads > 0 and settings.TRANSLATION_CPU_LEND_IDLE_CORES
    idle_cores = IdleCores(multiprocessing.get_context("spawn"), count * threads, count) if lending else None
    engines = [EngineProcess(warmups, threads=threads, name=f"{name}-{lane}", heap_keep_bytes=keep,
                             idle_cores=idle_cores.lane(lane) if idle_cores is not None else None)
               for lane in range(count)]
    try:
        for engine in engines:
            engine.launch()
        for engine in engines:
            engine.wait_ready()
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    return engines


class EngineProcessDied(EngineLost):
    """The child process ended (killed, out of memory, a crashed driver) or hung."""


@dataclass(frozen=True)
class Warmup:
    """A model to load at start, the language pair to prove it with, and the size of the full
    batch it then computes (1: the proof only)."""

    spec: EngineSpec
    source: str
    target: str
    batch: int = 1


class RemoteEngine:
    """The ``translate`` of one model in the engine process (what ``engine_for`` returns in-process)."""

    def __init__(self, process: EngineProcess, spec: EngineSpec) -> None:
        self._process, self.spec = process, spec

    def translate(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> list[str]:
        return self.translate_with_usage(texts, source, target, glossary)[0]

    def translate_with_usage(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> tuple[list[str], TokenUsage]:
        return self._process.call(self.spec, list(texts), source, target, dict(glossary or {}))

    def translate_with_usage_while(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None, *,
        meanwhile: Callable[[], None],
    ) -> tuple[list[str], TokenUsage]:
        """``translate_with_usage``, running ``meanwhile`` here while the engine process computes."""
        return self._process.call(self.spec, list(texts), source, target, dict(glossary or {}), meanwhile=meanwhile)


class EngineProcess:
    def __init__(self, warmups: list[Warmup], *, threads: int = 0, name: str = "engine", heap_keep_bytes: int = 0,
                 idle_cores: LaneCores | None = None) -> None:
        """``threads``: the CPU threads each forward pass may use (0: torch's default, one per core);
        ``heap_keep_bytes``: the freed memory the child keeps for its next batches
        (``workers.native_heap``; 0: the C library's default); ``idle_cores``: this lane's place
        in what the lanes share to lend each other their idle cores (``workers.idle_cores``;
        None: no lending)."""
        # spawn, not fork: the child starts clean of the parent's threads, locks and (on GPU
        # hosts) CUDA state, which a fork would copy broken (pytorch#68861).
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_end, warmups, threads, heap_keep_bytes, idle_cores),
                                        name=name, daemon=True)
        self._lock = threading.Lock()
        self.idle_cores = idle_cores
        # Its loaded models: those warmed at start, one loaded with its first batch (a route
        # changed since), less those unloaded. Changed only by the lane's own thread.
        self.memory: dict[EngineSpec, ModelMemory] = {}
        self.last_used: dict[EngineSpec, float] = {}  # monotonic, per loaded model
        self.threads = 0  # the threads its forward passes use, once ready
        self.heap_kept = False  # whether the child keeps freed memory (once ready)
        # Per model warmed with a full batch at start: its size and seconds (None: out of memory).
        self.full_batches: dict[EngineSpec, tuple[int, float | None]] = {}
        # The models that did not load at start, and why (loaded again by their first job).
        self.failed_at_start: dict[EngineSpec, str] = {}
        # Told when ``memory`` changed (the worker's report of its models).
        self.on_change: Callable[[], None] | None = None
        # Told True when a call starts loading a model (its call may then take up to
        # START_TIMEOUT_S more), False once loaded: the heartbeat does not take it for hung.
        self.on_loading: Callable[[bool], None] | None = None

    def start(self) -> dict[EngineSpec, ModelMemory]:
        """Start the child, wait until every model is loaded and warm; returns their memory."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the child, which loads its models (several lanes load side by side)."""
        self._process.start()

    def wait_ready(self) -> dict[EngineSpec, ModelMemory]:
        """Wait until every model of the launched child is loaded and warm; returns their memory."""
        if not self._connection.poll(START_TIMEOUT_S):
            raise EngineProcessDied(f"the engine process did not load its models within {START_TIMEOUT_S}s")
        kind, value = self._receive()
        if kind == "error":
            raise value
        self.memory, self.threads, self.heap_kept, self.full_batches, self.failed_at_start = value
        now = time.monotonic()
        self.last_used = dict.fromkeys(self.memory, now)
        return self.memory

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def engine(self, spec: EngineSpec) -> RemoteEngine:
        return RemoteEngine(self, spec)

    def call(
        self, spec: EngineSpec, texts: list[str], source: str, target: str, glossary: dict | None = None, *,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[str], TokenUsage]:
        """The outputs, and the tokens read and generated. ``meanwhile`` runs in this thread
        while the child computes; what it raises is raised once the answer is in. A model not
        loaded yet loads first (in the child, within the call)."""
        failed = None
        with self._lock:
            if not self._process.is_alive():  # gone before this call: not its inputs' doing
                raise EngineProcessDied(f"the engine process had ended (exit code {self._process.exitcode})",
                                        during_call=False)
            self._send(("translate", spec, texts, source, target, glossary or {}))
            if meanwhile is not None:
                try:
                    meanwhile()
                except Exception as exc:  # the answer is still read: the next call must get its own
                    failed = exc
                except BaseException:  # leaving unread: the child's answer would reach the next call
                    self._process.kill()
                    raise
            kind, value = self._answer()
            loaded = None
            if kind == "loading":  # a model this call needs loads first: as long as at a start
                self._loading(True)
                try:
                    kind, value = self._answer(START_TIMEOUT_S, what="load a model")
                finally:
                    self._loading(False)
                if kind == "loaded":  # its memory, then the answer
                    loaded = value
                    kind, value = self._answer()
        if loaded is not None:
            self._changed(spec, loaded)
        if spec in self.memory:  # idle from now on (a model that did not load is not one)
            self.last_used[spec] = time.monotonic()
        if failed is not None:
            raise failed
        if kind == "error":
            raise value
        return value

    def warm(self, warmup: Warmup) -> ModelMemory:
        """Load ``warmup``'s model in the child, prove it with the warm-up sentence and compute its
        full batch, as at a start (a route named it since); returns its memory. Its errors are
        raised here."""
        with self._lock:
            self._send(("warm", warmup.spec, warmup.source, warmup.target, warmup.batch))
            self._loading(True)
            try:
                kind, value = self._answer(START_TIMEOUT_S, what="load a model")
            finally:
                self._loading(False)
        if kind == "error":
            raise value
        self._changed(warmup.spec, value)
        return value

    def unload(self, spec: EngineSpec) -> None:
        """Drop ``spec``'s model from the child (a later call loads it again)."""
        with self._lock:
            self._send(("unload", spec))
            kind, value = self._answer()
        if kind == "error":
            raise value
        self._changed(spec, None)

    def _answer(self, timeout: float = CALL_TIMEOUT_S, *, what: str = "answer"):
        if not self._connection.poll(timeout):
            self._process.kill()
            # A model's load that hangs is not its inputs' doing; a translation that does may be.
            raise EngineProcessDied(f"the engine process did not {what} within {timeout:g}s; killed",
                                    during_call=what == "answer")
        return self._receive(during_call=what == "answer")

    def _loading(self, loading: bool) -> None:
        if self.on_loading is not None:
            try:
                self.on_loading(loading)
            except Exception:
                logger.warning("Could not report a model load of %s", self._process.name, exc_info=True)

    def _changed(self, spec: EngineSpec, memory: ModelMemory | None) -> None:
        # Replaced, not changed in place: other lanes' threads read it for the worker's report.
        if memory is None:
            self.memory = {key: value for key, value in self.memory.items() if key != spec}
            self.last_used = {key: value for key, value in self.last_used.items() if key != spec}
        else:
            self.memory = {**self.memory, spec: memory}
            self.last_used = {**self.last_used, spec: time.monotonic()}
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a report that failed must not fail the batch
                logger.warning("Could not report the models of %s", self._process.name, exc_info=True)

    def _send(self, request) -> None:
        try:
            self._connection.send(request)
        except (BrokenPipeError, OSError) as exc:
            raise EngineProcessDied(f"the engine process is gone ({exc})", during_call=False) from exc

    def _receive(self, *, during_call: bool = True):
        """The child's next answer. ``during_call``: a death now happened while it computed the
        call's inputs (False: while it loaded a model, which is not their doing)."""
        try:
            return self._connection.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode
            raise EngineProcessDied(f"the engine process ended (exit code {code})", during_call=during_call) from exc

    def alive(self) -> bool:
        return self._process.is_alive()

    def stop(self) -> None:
        if self._process.is_alive() and self._lock.acquire(timeout=5):  # not while a call hangs
            try:
                self._connection.send(None)
            except OSError:
                pass
            finally:
                self._lock.release()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(connection, warmups: list[Warmup], threads: int = 0, heap_keep_bytes: int = 0,
           idle_cores: LaneCores | None = None) -> None:
    """The child's main loop: load and warm every model, then translate what the parent sends."""
    import signal

    from translation.engines import engine_for, engine_unload, loaded_engines, translate_timed
    from workers.frozen_heap import freeze_heap
    from workers.lifecycle import die_with_parent
    from workers.idle_cores import Lending
    from workers.native_heap import keep_freed_memory, trim

    die_with_parent()
    heap_kept = keep_freed_memory(heap_keep_bytes)  # before the models: their loading allocates too
    # Ctrl-C in a terminal reaches the whole process group; the worker decides when this
    # process stops (it tells it, or it dies with it), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # A model that does not load (a route naming a path not on this host, a pair the model does
    # not serve) is left out, said to the worker, and loaded again by its first job (which fails
    # with the reason if it still does not load): the worker serves its other routes. Only when
    # no model loads does the start fail.
    memory, failed = {}, {}
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        for warmup in warmups:
            try:
                memory[warmup.spec] = warm_up(warmup.spec, warmup.source, warmup.target)
            except Exception as exc:
                failed[warmup.spec] = f"{type(exc).__name__}: {exc}"  # warm_up let go of any part of it
        if warmups and not memory:
            raise RuntimeError("; ".join(f"{spec.model} [{spec.precision}]: {why}" for spec, why in failed.items()))
    except Exception as exc:
        connection.send(("error", RuntimeError(f"loading models failed: {type(exc).__name__}: {exc}")))
        return
    import torch

    trim()  # what loading the models freed is not a batch's: given back, not kept
    freeze_heap()  # the models and libraries stay: no full collection walks them during a batch
    try:  # after the trim: the memory a full batch takes stays for the batches
        full_batches = {warmup.spec: (warmup.batch, compute_full_batch(warmup.spec, warmup.source, warmup.target,
                                                                       warmup.batch))
                        for warmup in warmups if warmup.batch > 1 and warmup.spec in memory}
    except Exception as exc:
        connection.send(("error", RuntimeError(f"a full batch failed at start: {type(exc).__name__}: {exc}")))
        return
    own = torch.get_num_threads()
    lending = Lending(idle_cores, own) if idle_cores is not None else None

    def busy(size: int):
        """This lane computes ``size`` jobs (0: a model loading), for the lanes that lend their
        idle cores."""
        return lending.batch(size) if lending is not None else nullcontext()

    connection.send(("ready", (memory, own, heap_kept, full_batches, failed)))
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        kind, spec, *arguments = request
        # A model loaded or unloaded, or a load that failed: the C heap is trimmed and the Python
        # heap frozen again once the answer is sent and the call's exception dropped (a failed
        # load's objects are garbage).
        changed = kind in ("unload", "warm") or spec not in loaded_engines()
        try:
            if kind == "unload":
                engine_unload(spec)
                free_memory(spec.device)
                connection.send(("ok", None))
            elif kind == "warm":  # a load counts as busy: other lanes do not borrow this lane's cores
                source, target, batch = arguments
                with busy(0):
                    memory = warm_up(spec, source, target)
                    trim()  # as at the start: the load's leftovers go, the full batch's memory stays
                    freeze_heap()
                    try:
                        compute_full_batch(spec, source, target, batch)
                    except Exception:  # not ready: not kept, as a model whose canary failed
                        engine_unload(spec)
                        free_memory(spec.device)
                        raise
                    changed = False  # trimmed and frozen already
                connection.send(("ok", memory))
            else:
                with busy(len(arguments[0])):
                    if changed:  # a model no route named at start loads with its first batch: said first
                        connection.send(("loading", None))
                    engine = engine_for(spec)
                    if changed:  # its memory, for the worker's report, whatever the call then answers
                        connection.send(("loaded", memory_of(engine)))
                    answer = translate_timed(engine, *arguments)
                connection.send(("ok", answer))
        except Exception as exc:
            connection.send(("error", _picklable(exc)))
            if device_broken(spec.device, exc):
                # The card's context is gone for good in this process: end it, as a crash would,
                # so that the worker stops and its supervisor starts it on a fresh context
                # (its jobs are sent again meanwhile) instead of failing every job it takes.
                import os

                logger.critical("%s cannot compute any more (%s: %s); the engine process ends",
                                spec.device, type(exc).__name__, exc)
                os._exit(DEVICE_LOST_EXIT)
        if changed:
            if kind != "unload":  # an unload gave its memory back already (free_memory)
                trim()  # a load's leftovers are not kept for the batches
            freeze_heap()


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives the pipe, else an error of the same kind (engine error or not)."""
    import pickle

    from translation.engines import EngineError

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        kind = EngineError if isinstance(exc, EngineError) else RuntimeError
        return kind(f"{type(exc).__name__}: {exc}")
