import socket

from django.utils import timezone

from cs_portal.commands import DatabaseCommand
from workers.models import WorkerHeartbeat


class Command(DatabaseCommand):
    help = (
        "Exit 0 when the named worker is alive (--ready: and ready), 1 otherwise, with the reason: "
        "a liveness or readiness probe for the worker's container (exec probe)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="the worker's name, as given to workers.main (%%h: this host)")
        parser.add_argument("--ready", action="store_true", help="also require readiness (models warm, canary done)")

    def handle(self, *args, name: str, ready: bool, **options) -> None:
        name = name.replace("%h", socket.gethostname())
        beat = WorkerHeartbeat.objects.filter(name=name).first()
        now = timezone.now()
        if beat is None:
            self._fail(f"{name}: no heartbeat yet (starting, or never started)")
        elif not beat.is_running(now):
            last = beat.loop_at or beat.beat_at
            state = "stopped" if beat.stopped_at else f"silent for {(now - last).total_seconds():.0f}s"
            self._fail(f"{name}: not alive ({state})")
        elif ready and not beat.is_ready(now):
            why = "consumer not turning: broker unreachable?" if beat.ready else "models loading or consumer not connected"
            self._fail(f"{name}: alive, not ready ({why})")
        else:
            self.stdout.write(f"{name}: {'ready' if beat.is_ready(now) else 'alive'}")

    def _fail(self, reason: str) -> None:
        self.stderr.write(reason)
        raise SystemExit(1)
