"""The benchmark's limit: the raw model laid out as the worker lays it out, computing alone.

Its engine processes (one per lane, each with its share of the cores, or instances on one card)
are started once and kept through the light load and the saturation bursts, idle on their pipes
while a pipeline runs, so that the limit is measured again beside each burst
(``workers.benchmark``). Those rounds run while the batching worker is started but idle (its
consumer and heartbeat wake now and then; its lanes wait for jobs).
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable

from translation.tiny_models import corpus_lines
from workers.benchmark_figures import Figures, light_interval, percentile
from workers.cpu_usage import cpu_seconds


def spanish_texts() -> list[str]:
    """The corpus's Spanish support sentences, without order numbers or addresses: random weights
    lose every placeholder of a protected span, so each such text would be translated twice,
    which a trained model rarely needs (translation/protection.py)."""
    return corpus_lines()[16:32]


def cpu_note(cpu_ms: float | None) -> str:
    """The raw model's CPU per sentence, as its lines print it ("" without /proc)."""
    return "" if cpu_ms is None else f", its CPU {cpu_ms:.2f} ms per sentence"


class RawModel:
    def __init__(self, engines: list, spec, *, lanes: int, batch_size: int, jobs: int, target: str,
                 say: Callable[[str], None]) -> None:
        self.engines, self.spec = engines, spec
        self.lanes, self.batch_size, self.jobs, self.target, self.say = lanes, batch_size, jobs, target, say
        self.texts = spanish_texts()

    @classmethod
    def start(cls, spec, *, lanes: int, threads: int, **kwargs) -> RawModel:
        """The worker's layout: ``lanes`` engine processes of ``threads`` threads each (on a GPU,
        instances of the model on the card), their models loaded and warmed up as a worker's."""
        from workers.engine_process import Warmup, start_lanes
        from workers.warmup import full_batch_size

        # Warmed up as the worker's lanes are: a full batch computed before the first round.
        warmup = Warmup(spec, "es", kwargs["target"], batch=full_batch_size(kwargs["batch_size"]))
        engines = start_lanes([warmup], count=lanes, threads=threads, name="benchmark-engine", device=spec.device)
        return cls(engines, spec, lanes=lanes, **kwargs)

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()
        gc.collect()

    def measure(self, figures: Figures) -> None:
        """Full batches on every lane side by side, before any worker starts; then one sentence at
        a time through one lane, as a lone job goes through the pipeline."""
        # Two rounds, the better one: a lane's first batches run slower (allocations, caches).
        rate, cpu_ms = max((self.batched_rate() for _ in range(2)), key=lambda rate_and_cpu: rate_and_cpu[0])
        singles = 20
        started = time.perf_counter()
        for i in range(singles):
            self.engines[0].call(self.spec, [self.texts[i % len(self.texts)]], "es", self.target)
        elapsed = time.perf_counter() - started
        figures.raw_batch1, figures.model_ms_back_to_back = singles / elapsed, elapsed / singles * 1000
        self.say(f"  raw model: {rate:.1f} sent/s at batch {self.batch_size}{cpu_note(cpu_ms)} "
                 f"(the better of two rounds; measured again beside each saturation burst), "
                 f"{figures.raw_batch1:.1f} sent/s one at a time ({figures.model_ms_back_to_back:.1f} ms each)")
        # The model time the light load is judged against: one sentence at the light load's
        # pace. After an idle pause a forward pass takes longer than back to back (measured
        # on the 2-core machine: 159 against 111 ms with one thread, 155 against 141 with two).
        figures.light_interval = light_interval(figures.raw_batch1)
        paced = []
        for i in range(singles):
            time.sleep(figures.light_interval)
            started = time.perf_counter()
            self.engines[0].call(self.spec, [self.texts[i % len(self.texts)]], "es", self.target)
            paced.append((time.perf_counter() - started) * 1000)
        figures.model_ms = statistics.fmean(paced)
        # The target compares the pipeline's p95 with the mean: the model's own spread counts
        # against it. Its p95 is printed beside, to tell the two apart.
        figures.model_ms_p95 = percentile(paced, 95)
        self.say(f"  raw model at the light load's pace (one every {figures.light_interval:.2f} s): "
                 f"{figures.model_ms:.1f} ms each (p95 {figures.model_ms_p95:.1f} ms)")

    def batched_rate(self) -> tuple[float, float | None]:
        """Sentences/s of every lane computing full batches side by side (at least two each), and
        the lanes' CPU per sentence in ms (None without /proc): beside the burst's, it tells a
        model slowed by what runs beside it from the time that runs beside it."""
        per_lane = max(2, self.jobs // self.batch_size // self.lanes)
        failures: list[BaseException] = []

        def batches(engine, lane: int) -> None:
            try:
                for i in range(per_lane):
                    start = (lane * per_lane + i) * self.batch_size
                    engine.call(self.spec, [self.texts[(start + j) % len(self.texts)] for j in range(self.batch_size)],
                                "es", self.target)
            except BaseException as exc:  # the figure would count batches that never ran
                failures.append(exc)

        threads = [threading.Thread(target=batches, args=(engine, lane)) for lane, engine in enumerate(self.engines)]
        cpu_before = cpu_seconds(engine.pid for engine in self.engines)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu_after = time.perf_counter() - started, cpu_seconds(engine.pid for engine in self.engines)
        if failures:
            raise RuntimeError(f"the raw model failed in a lane: {failures[0]}") from failures[0]
        sentences = self.lanes * per_lane * self.batch_size
        cpu_ms = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / sentences * 1000
        return sentences / elapsed, cpu_ms

    def limit_round(self) -> float:
        """One round of the raw batched model beside a burst, said with its CPU per sentence."""
        rate, cpu_ms = self.batched_rate()
        self.say(f"  raw model: {rate:.1f} sent/s at batch {self.batch_size}{cpu_note(cpu_ms)}")
        return rate
