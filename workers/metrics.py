"""A worker's own metrics, served on its own port (``--metrics-port``, or the placement plan's
``metrics_port``): the job series of ``translation.metrics`` as this worker counted them, plus
what only the worker knows — its models and their memory, jobs in flight, its last batch and
its loop's last turn, the time its CPU lanes computed on borrowed cores, and the GPU's
utilisation and memory where NVML is available.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

logger = logging.getLogger(__name__)

WORKER = ("worker",)

worker_info = Gauge("translation_worker_info", "Always 1; the worker's device and queues as labels.", ("worker", "device", "queues"))
worker_ready = Gauge(
    "translation_worker_ready", "1 once the models are loaded, the canary translated and the consumer connected.", WORKER
)
model_memory_bytes = Gauge(
    "translation_worker_model_memory_bytes", "Memory of each loaded model's weights and buffers.",
    ("worker", "model", "precision", "device"),
)
jobs_in_flight = Gauge("translation_worker_jobs_in_flight", "Jobs taken from the broker and not yet answered.", WORKER)
last_batch_timestamp = Gauge(
    "translation_worker_last_batch_timestamp_seconds", "When the worker's last batch ended (Unix time).", WORKER
)
lane_batches = Counter(
    "translation_worker_lane_batches", "Batches each lane (engine process) computed; a worker may run several.",
    ("worker", "lane"),
)
ledger_wakeups = Counter(
    "translation_worker_ledger_wakeups", "Wake-ups for a queue the worker took (ledger dispatch).", ("worker", "queue")
)
ledger_claimed = Counter(
    "translation_worker_ledger_claimed_jobs", "Jobs the worker claimed from a queue's ledger rows (ledger dispatch).",
    ("worker", "queue"),
)
loop_timestamp = Gauge(
    "translation_worker_loop_timestamp_seconds",
    "When the device loop last went round (Unix time); a hung loop stops moving it.", WORKER,
)


class BorrowedCores(Collector):
    """Seconds each CPU lane computed on cores borrowed from idle lanes (``workers.idle_cores``),
    read at scrape time from the memory the lanes share: whether lending happens at all on a
    machine, and how much, shows here."""

    def __init__(self) -> None:
        self.workers: dict[str, object] = {}  # worker name -> its lanes' IdleCores

    def collect(self):
        family = CounterMetricFamily(
            "translation_worker_lane_borrowed_seconds",
            "Seconds each CPU lane computed on cores borrowed from idle lanes (counted as it gives them back).",
            labels=["worker", "lane"],
        )
        for worker, shared in list(self.workers.items()):  # a worker may register during a scrape
            for lane, seconds in enumerate(shared.borrowed_seconds()):
                family.add_metric([worker, str(lane)], seconds)
        yield family


borrowed_cores = BorrowedCores()
REGISTRY.register(borrowed_cores)


class GpuCollector(Collector):
    """Utilisation and memory of the GPUs this process sees, read through NVML at scrape time."""

    def __init__(self, worker: str, pynvml, visible: str = "") -> None:
        self.worker, self.nvml, self.visible = worker, pynvml, visible

    def _handles(self):
        """This worker's own GPU (NVML sees every GPU of the host, whatever CUDA_VISIBLE_DEVICES
        says): by UUID, or by index (the worker sets CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML's order)."""
        if self.visible.startswith("GPU-"):
            yield self.visible, self.nvml.nvmlDeviceGetHandleByUUID(self.visible)
        elif self.visible.isdigit():
            yield self.visible, self.nvml.nvmlDeviceGetHandleByIndex(int(self.visible))
        else:
            for index in range(self.nvml.nvmlDeviceGetCount()):
                yield str(index), self.nvml.nvmlDeviceGetHandleByIndex(index)

    def collect(self):
        utilization = GaugeMetricFamily(
            "translation_worker_gpu_utilization_ratio", "GPU busy fraction over the last sample period (NVML).",
            labels=["worker", "gpu"],
        )
        used = GaugeMetricFamily("translation_worker_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["worker", "gpu"])
        total = GaugeMetricFamily("translation_worker_gpu_memory_total_bytes", "GPU memory (NVML).", labels=["worker", "gpu"])
        try:
            for gpu, handle in self._handles():
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                labels = [self.worker, gpu]
                utilization.add_metric(labels, rates.gpu / 100)
                used.add_metric(labels, memory.used)
                total.add_metric(labels, memory.total)
        except Exception:  # a driver error must not break the scrape of everything else
            logger.warning("NVML read failed", exc_info=True)
        yield from (utilization, used, total)


def gpu_collector(worker: str, device: str) -> GpuCollector | None:
    """The NVML collector for a GPU worker, or None (CPU worker, or no NVML library)."""
    if device == "cpu":
        return None
    try:
        import pynvml  # nvidia-ml-py, in requirements/gpu.txt

        pynvml.nvmlInit()
    except Exception as exc:
        logger.info("No GPU metrics: NVML is not available (%s)", exc)
        return None
    import os

    return GpuCollector(worker, pynvml, os.environ.get("CUDA_VISIBLE_DEVICES", ""))


class WorkerMetrics:
    """The worker's gauges, bound to its name."""

    def __init__(self, worker: str, *, device: str, queues: list[str]) -> None:
        self.worker = worker
        self._queues = ",".join(queues)
        worker_info.labels(worker=worker, device=device, queues=self._queues).set(1)
        worker_ready.labels(worker=worker).set(0)
        self._device = device

    def consuming(self, queues: list[str]) -> None:
        """The worker's queues changed (it follows the routes): one info series, with the new list."""
        old, self._queues = self._queues, ",".join(queues)
        worker_info.labels(worker=self.worker, device=self._device, queues=self._queues).set(1)
        worker_info.remove(self.worker, self._device, old)

    def serve(self, port: int, address: str = "") -> None:
        """Serve /metrics on ``port`` (a daemon thread); GPU gauges join where NVML answers."""
        collector = gpu_collector(self.worker, self._device)
        if collector is not None:
            REGISTRY.register(collector)
        start_http_server(port, addr=address or "0.0.0.0")
        logger.info("Metrics on port %d", port)

    def model_loaded(self, model: str, precision: str, device: str, memory: int) -> None:
        model_memory_bytes.labels(worker=self.worker, model=model, precision=precision, device=device).set(memory)

    def model_unloaded(self, model: str, precision: str, device: str) -> None:
        try:
            model_memory_bytes.remove(self.worker, model, precision, device)
        except KeyError:  # never reported
            pass

    def ready(self) -> None:
        worker_ready.labels(worker=self.worker).set(1)

    def not_ready(self) -> None:
        worker_ready.labels(worker=self.worker).set(0)

    def in_flight(self, count_jobs) -> None:
        """Read jobs in flight from ``count_jobs()`` at every scrape."""
        jobs_in_flight.labels(worker=self.worker).set_function(count_jobs)

    def loop_turned(self) -> None:
        loop_timestamp.labels(worker=self.worker).set(time.time())

    def lending(self, shared) -> None:
        """The worker's CPU lanes lend each other their idle cores through ``shared``
        (``workers.idle_cores.IdleCores``)."""
        borrowed_cores.workers[self.worker] = shared

    def batch_ended(self, lane: int = 0) -> None:
        last_batch_timestamp.labels(worker=self.worker).set(time.time())
        lane_batches.labels(worker=self.worker, lane=str(lane)).inc()

    def ledger_woken(self, queue: str) -> None:
        ledger_wakeups.labels(worker=self.worker, queue=queue).inc()

    def ledger_taken(self, queue: str, jobs: int) -> None:
        ledger_claimed.labels(worker=self.worker, queue=queue).inc(jobs)
