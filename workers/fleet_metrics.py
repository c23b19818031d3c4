"""What no single process can count: queue depths as the broker holds them, the ledger's queued
jobs, and every worker's heartbeat as the database holds it. Read once per scrape by one
collector (the web's ``/metrics/fleet``, scraped through one address), never by every worker,
so each series exists once however many processes run.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class FleetCollector(Collector):
    def collect(self):
        from translation.models import Translation, TranslationStatus
        from translation.queues import queue_depths
        from translation.routing import routes
        from workers.models import WorkerHeartbeat

        now = timezone.now()
        beats = list(WorkerHeartbeat.objects.filter(stopped_at__isnull=True))
        ledger = (
            Translation.objects.filter(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
            .exclude(queue="")
            .values("queue", "status")
            .annotate(jobs=Count("id"), oldest=Min("created_at"))
        )
        ledger = list(ledger)
        queues = sorted(
            {route.queue for route in routes() if route.enabled}
            | {queue for beat in beats for queue in beat.queues}
            | {row["queue"] for row in ledger}
        )

        depth = GaugeMetricFamily(
            "translation_queue_depth", "Messages waiting in the broker's queue (-1: the broker did not answer).",
            labels=["queue"],
        )
        for queue, count in queue_depths(queues).items():
            depth.add_metric([queue], -1 if count is None else count)
        yield depth

        consumers = GaugeMetricFamily(
            "translation_queue_consumers", "Workers consuming the queue that are ready and alive (fresh heartbeat).",
            labels=["queue"],
        )
        for queue in queues:
            consumers.add_metric([queue], sum(1 for beat in beats if queue in beat.queues and beat.is_ready(now)))
        yield consumers

        jobs = GaugeMetricFamily(
            "translation_ledger_jobs", "Ledger rows not finished, by queue and status (queued, running).",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "translation_ledger_oldest_unfinished_age_seconds", "Age of the oldest unfinished job on the queue.",
            labels=["queue"],
        )
        ages: dict[str, float] = {}
        for row in ledger:
            jobs.add_metric([row["queue"], TranslationStatus(row["status"]).label.lower()], row["jobs"])
            age = (now - row["oldest"]).total_seconds()
            ages[row["queue"]] = max(age, ages.get(row["queue"], 0.0))
        for queue in queues:
            oldest.add_metric([queue], ages.get(queue, 0.0))
        yield jobs
        yield oldest

        age = GaugeMetricFamily(
            "translation_worker_heartbeat_age_seconds", "Seconds since the worker's device loop last wrote its heartbeat.",
            labels=["worker"],
        )
        alive = GaugeMetricFamily(
            "translation_worker_alive",
            "1 while the worker beats, or its batch has not outlasted the engine's call timeout.", labels=["worker"],
        )
        # Workers still loading their models are not reported yet (they beat once they serve);
        # a worker presumed dead or stopped leaves the list (``stopped_at``).
        for beat in beats:
            if not beat.ready:
                continue
            age.add_metric([beat.name], (now - beat.beat_at).total_seconds())
            alive.add_metric([beat.name], 1 if beat.is_alive(now) else 0)
        yield age
        yield alive

        yield GaugeMetricFamily(
            "translation_alert_latency_p95_seconds", "The p95 end-to-end latency the latency alert fires above (a setting).",
            value=settings.ALERT_LATENCY_P95_S,
        )
        yield GaugeMetricFamily(
            "translation_alert_failure_ratio", "The share of failed jobs the failure alert fires above (a setting).",
            value=settings.ALERT_FAILURE_RATIO,
        )
