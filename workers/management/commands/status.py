from collections import Counter

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from cs_portal.commands import DatabaseCommand
from translation.models import Translation, TranslationStatus
from translation.queues import queue_depths
from translation.routing import routes
from workers.control import lanes_note
from workers.health import readiness
from workers.models import WorkerHeartbeat


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) for row in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


# What the broker's "messages" are under each dispatch (translation/dispatch.py).
DISPATCH = {
    "jobs": "jobs, a message per job",
    "ledger": "ledger, the messages are wake-ups and the jobs are the ledger's rows",
}


class Command(DatabaseCommand):
    help = "Routes, queues with their depth, and workers with device, models, heartbeat age and last error."

    def handle(self, *args, **options) -> None:
        now = timezone.now()
        table_routes = routes()
        self.stdout.write("Routes\n" + table(
            [[f"{r.source}→{r.target}" + (f" [{r.variant} {r.traffic_share}%]" if r.variant else ""), r.queue, r.model,
              r.precision, "yes" if r.enabled else "no"] for r in table_routes],
            ["pair", "queue", "model", "precision", "enabled"],
        ))
        queues = sorted({r.queue for r in table_routes})
        depths = queue_depths(queues)
        # The ledger's count: in ledger dispatch the broker holds wake-ups, not jobs.
        unfinished = Counter(
            {(row["queue"], row["status"]): row["jobs"] for row in
             Translation.objects.filter(queue__in=queues, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING])
             .values("queue", "status").annotate(jobs=Count("id")).order_by()}
        )
        beats = list(WorkerHeartbeat.objects.all())
        dispatch = DISPATCH.get(settings.TRANSLATION_DISPATCH, settings.TRANSLATION_DISPATCH)
        self.stdout.write(f"\nQueues (dispatch: {dispatch})\n" + table(
            [[q, "?" if depths[q] is None else str(depths[q]), str(unfinished[(q, TranslationStatus.QUEUED)]),
              str(unfinished[(q, TranslationStatus.RUNNING)]),
              ", ".join(b.name for b in beats if q in b.queues and b.is_alive(now)) or "NONE"] for q in queues],
            ["queue", "messages", "jobs queued", "jobs running", "live workers"],
        ))
        rows = []
        for b in beats:
            state = "stopped" if b.stopped_at else ("ready" if b.is_ready(now) else ("alive" if b.is_alive(now) else "STALE"))
            busy = f", busy {(now - b.busy_since).total_seconds():.0f}s" if b.busy_since else ""
            models = ", ".join(f"{m['model'].rstrip('/').rsplit('/', 1)[-1]} [{m['precision']}] {m['memory_mib']} MiB{lanes_note(m)}"
                               for m in b.loaded_models) or "-"
            rows.append([b.name, b.device, state, f"{(now - b.beat_at).total_seconds():.1f}s{busy}", models,
                         (b.last_error[:60] + f" ({b.last_error_at:%H:%M:%S})") if b.last_error else "-"])
        self.stdout.write("\nWorkers\n" + (table(rows, ["name", "device", "state", "heartbeat", "models", "last error"])
                                           if rows else "(no worker has registered)"))
        result = readiness()
        verdict = "READY" if result.ready else f"NOT READY: {', '.join(k for k, v in result.checks.items() if v != 'ok' and k != 'queues')}"
        self.stdout.write(f"\n{verdict}")
