"""The benchmark's figures: what one run measured, its last machine-readable line, and the
arithmetic behind them."""

from __future__ import annotations

from dataclasses import dataclass


def light_interval(batch1_rate: float) -> float:
    """Seconds between light-load jobs: well below what one job at a time can serve."""
    return max(0.05, 4 / batch1_rate)


def model_share(model_cpu_s: float, cores: int, elapsed_s: float) -> float:
    """The fraction of ``cores`` x ``elapsed_s`` the model's processes computed."""
    return model_cpu_s / (cores * elapsed_s) if cores > 0 and elapsed_s > 0 else 0.0


def overlap(spans: list[tuple[float, float]], start: float, end: float) -> dict[int, float]:
    """Seconds of ``start``..``end`` during which exactly k of ``spans`` (start, end) ran, by k:
    how much of a burst every lane computed, and how much only some of them did."""
    edges = sorted([(max(a, start), 1) for a, b in spans if b > start and a < end]
                   + [(min(b, end), -1) for a, b in spans if b > start and a < end])
    seconds: dict[int, float] = {}
    running, at = 0, start
    for moment, step in edges:
        if moment > at:
            seconds[running] = seconds.get(running, 0.0) + moment - at
            at = moment
        running += step
    if end > at:
        seconds[running] = seconds.get(running, 0.0) + end - at
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Round:
    """One saturation burst (``pipeline``, sentences/s) between two rounds of the raw batched
    model, the one just ``before`` it and the one just ``after``: a shared host's speed drifts
    over minutes, so the burst is compared with the model measured seconds from it, and with the
    better of those two rounds (the ratio errs low, never high)."""

    pipeline: float
    before: float
    after: float

    @property
    def limit(self) -> float:
        return max(self.before, self.after)

    @property
    def ratio(self) -> float:
        return self.pipeline / self.limit if self.limit > 0 else 0.0


def median_round(rounds: list[Round]) -> int:
    """The index of the round whose ratio to its limit is the median; of an even number, the
    lower of the middle two."""
    if not rounds:
        raise ValueError("no rounds measured")
    order = sorted(range(len(rounds)), key=lambda index: rounds[index].ratio)
    return order[(len(order) - 1) // 2]


@dataclass
class Figures:
    limit: float = 0.0  # sentences/s, raw batched model (the median round's, beside its burst)
    raw_batch1: float = 0.0  # sentences/s, raw model one at a time
    model_ms: float = 0.0  # one sentence's forward pass alone, at the light load's pace (mean)
    model_ms_p95: float = 0.0  # the same, its p95
    model_ms_back_to_back: float = 0.0  # the same, one right after another
    light_interval: float = 0.5  # seconds between light-load jobs
    pipeline: float = 0.0  # sentences/s, the median round's burst
    rounds: tuple[Round, ...] = ()  # every saturation round, in the order they ran
    batch1: float = 0.0
    mean_batch: float = 0.0
    light: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p95, p99 in ms
    # p50, p95 of each light job's latency less its own model call (the row's ``forward_ms``):
    # what the pipeline adds, timed in the same run as the model (no drift between the two).
    light_beyond_model: tuple[float, float] = (0.0, 0.0)
    saturated: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # The model's share of the cores during the burst (0: not measured, no /proc): its engine
    # processes' CPU over cores x the burst's time. A shared host's speed drifts over minutes and
    # moves the pipeline's ratio to a limit measured before and after it; this share it does not
    # move (docs/benchmarks.md, 2026-11-28). With full batches it is that ratio on a steady host.
    model_share: float = 0.0

    def last_line(self) -> str:
        return (
            f"limit={self.limit:.1f} pipeline={self.pipeline:.1f} batch1={self.batch1:.1f} "
            f"vs_limit={self.pipeline / self.limit:.3f} vs_batch1={self.pipeline / self.batch1:.2f} "
            f"p95_light_ms={self.light[1]:.1f} mean_batch={self.mean_batch:.1f}"
        )
