import socket
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from cs_portal.embedded import port_is_free
from workers.control import lanes_note
from workers.lane_layout import usable_cores
from workers.lifecycle import Child, StopRequested, install_stop_signals, raise_if_stop_requested
from workers.placement import PlacementError, for_this_machine, gpu_count, load_placement

READY_TIMEOUT_S = 600
MAX_RESTART_DELAY_S = 30
# A warm shutdown lets the jobs a worker holds (up to two batches) finish; killed earlier, they
# would wait for the broker's visibility timeout.
WORKER_STOP_TIMEOUT_S = 120
# How often the supervisor looks at its workers: a dead worker's jobs are handed over within this.
SUPERVISE_EVERY_S = 0.02


class Command(BaseCommand):
    help = (
        "Start one worker process per GPU of the placement plan (one CPU worker on a machine "
        "without a GPU), each loading its models before it consumes; restart any that dies."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--plan", default=str(settings.PLACEMENT_FILE), help="placement plan (JSON)")
        parser.add_argument("--cpu", action="store_true", help="ignore GPUs: CPU workers for every queue of the plan")
        parser.add_argument(
            "--cpu-workers", type=int, default=1, metavar="N",
            help="on a machine without GPU (or with --cpu): N CPU workers on every queue, hot standbys of each other",
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def handle(self, *args, plan: str, cpu: bool, cpu_workers: int, **options) -> None:
        if not 1 <= cpu_workers <= 16:
            raise CommandError("--cpu-workers must be from 1 to 16")
        try:
            placements = for_this_machine(load_placement(Path(plan)), 0 if cpu else gpu_count(), cpu_workers=cpu_workers)
        except PlacementError as exc:
            raise CommandError(str(exc)) from exc
        for placement in placements:  # a worker that cannot serve its metrics would die at start-up
            if not port_is_free(placement.metrics_port, host="0.0.0.0"):  # as its metrics server binds
                raise CommandError(
                    f"{placement.name}'s metrics port {placement.metrics_port} is in use by another process; "
                    f"give it another metrics_port in {plan}"
                    + (" (CPU workers take the first worker's port and the ones after it)" if cpu_workers > 1 else "")
                )
        host = socket.gethostname()
        # CPU workers on one machine share its cores (hot standbys of each other still compute
        # side by side): each gets its share, split into its lanes. So do GPU workers, for the
        # CPU work of their lanes where they run several.
        on_cpu = sum(1 for placement in placements if placement.device == "cpu")
        on_gpu = len(placements) - on_cpu
        share = {"cpu": max(1, usable_cores() // on_cpu) if on_cpu > 1 else 0,
                 "gpu": max(1, usable_cores() // on_gpu) if on_gpu > 1 else 0}
        workers = {
            placement.name: Child(
                name=f"{placement.name}@{host}",
                command=[sys.executable, "-m", "workers.main", *placement.worker_arguments(
                    host=host, cores=share["cpu" if placement.device == "cpu" else "gpu"])],
                log=settings.DATA_DIR / "logs" / f"worker-{placement.name}.log",
                stop_timeout_s=WORKER_STOP_TIMEOUT_S,
            )
            for placement in placements
        }
        install_stop_signals()
        try:
            for placement in placements:
                child = workers[placement.name]
                child.start(_environment())
                gpu_lanes = placement.lanes or settings.TRANSLATION_GPU_LANES
                lanes = f" in {gpu_lanes} lanes" if placement.device != "cpu" and gpu_lanes > 1 else ""
                self.say(
                    f"  {child.name}: {placement.device}{lanes}, queues {', '.join(placement.queues)}, "
                    f"metrics :{placement.metrics_port} (pid {child.process.pid}, log {child.log})"
                )
            self.wait_ready(workers.values())
            self.report_models([child.name for child in workers.values()])
            self.say(f"Ready: {len(workers)} worker(s). Ctrl-C stops them.")
            self.supervise(workers.values())
        except StopRequested:
            self.say("Stopping ...")
        finally:
            for child in workers.values():
                child.stop()
        self.say("Stopped.")

    def wait_ready(self, children) -> None:
        from cs_portal.celery import app

        waiting = {child.name: child for child in children}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting:
            raise_if_stop_requested()
            for name, child in list(waiting.items()):
                if not child.alive():
                    raise CommandError(f"{name} exited while loading its models; see {child.log}")
            answered = app.control.ping(destination=list(waiting), timeout=0.5) or []
            for reply in answered:
                for name in reply:
                    if waiting.pop(name, None):
                        self.say(f"  {name} is consuming")
            if time.monotonic() > deadline:
                raise CommandError(f"Timed out waiting for {', '.join(waiting)}")

    def report_models(self, names: list[str]) -> None:
        """Each worker's models and their memory, as the workers report them."""
        from cs_portal.celery import app

        for reply in app.control.broadcast("models", destination=names, reply=True, timeout=2) or []:
            for name, models in reply.items():
                for model in models:
                    self.say(f"  {name} serves {model['model']} [{model['precision']}, {model['device']}]: {model['memory_mib']} MiB{lanes_note(model)}")

    def supervise(self, children) -> None:
        """Hand a dead worker's claimed jobs to the others at once, then restart it, with a
        growing delay so a crash loop does not spin."""
        from django.db import close_old_connections

        from translation.recovery import worker_lost

        delays = {child.name: 1.0 for child in children}
        restart_at: dict[str, float] = {}
        while True:
            raise_if_stop_requested()
            now = time.monotonic()
            for child in children:
                if child.name in restart_at:
                    if now >= restart_at[child.name]:
                        del restart_at[child.name]
                        child.start(_environment())
                elif not child.alive():
                    status = child.process.returncode
                    try:
                        close_old_connections()  # the database may have restarted since the last look
                        released, resent = worker_lost(worker=child.name, reason=f"its process exited with status {status}")
                        handed = f"{len(released)} job(s) handed over, {len(resent)} taken but unclaimed sent again"
                    except Exception as exc:  # the database is down: the reconcilers hand over later
                        handed = f"its jobs not handed over ({type(exc).__name__}: {exc}); the reconcilers will"
                    self.say(f"{child.name} exited with status {status}; {handed}; restarting in {delays[child.name]:.0f}s")
                    restart_at[child.name] = now + delays[child.name]
                    delays[child.name] = min(delays[child.name] * 2, MAX_RESTART_DELAY_S)
            time.sleep(SUPERVISE_EVERY_S)


def _environment() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONUNBUFFERED="1")

