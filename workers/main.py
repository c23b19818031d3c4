"""Worker entry point: one process, one device, the given queues; models load before consuming.

    python -m workers.main --queues translate.en,translate.es --device cpu
    python -m workers.main --queues all --device cuda:0

``--device cuda:N`` sets CUDA_VISIBLE_DEVICES=N before torch is imported, so the process
sees exactly one GPU (as ``cuda``). The worker loads every model that a route on its queues
names, runs one warm-up translation through each and then one full batch (the memory a batch
of that size needs is in place before the first burst), and only then starts consuming.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time

from workers.lane_layout import MAX_GPU_LANES

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.main", description=__doc__.split("\n")[0])
    parser.add_argument("--queues", required=True, help="comma-separated queue names; 'all' stands for every enabled route's queue (e.g. all,translate.en.b)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda:N' (N: the GPU index or UUID)")
    parser.add_argument(
        "--concurrency", type=int, default=0,
        help="jobs taken from the broker and not finished, at most: the prefetch, and the pool's threads for what takes "
             "Celery's default path (default: 2 x lanes x max batch size + 16, so a full batch waits for every lane while "
             "each computes one)",
    )
    parser.add_argument(
        "--no-batching", dest="batching", action="store_false",
        help="run each job on its own forward pass (the baseline the batcher is measured against)",
    )
    parser.add_argument(
        "--lanes", type=int, default=None,
        help="engine processes computing batches side by side: on a CPU each with a share of the cores "
             "(default $TRANSLATION_CPU_LANES; 0: one per core, at most 4); on a GPU, instances of the models "
             f"on the one card, 1 to {MAX_GPU_LANES} (default $TRANSLATION_GPU_LANES, 1)",
    )
    parser.add_argument(
        "--cores", type=int, default=0,
        help="the cores this worker's lanes share (default 0: every core it may run on); a GPU worker's lanes, "
             "when more than one, split them for their CPU work",
    )
    parser.add_argument("--name", default="", help="worker name (default: translate-<device>@<host>)")
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("WORKER_METRICS_PORT") or 0),
        help="serve Prometheus metrics on this port (0: none; default $WORKER_METRICS_PORT)",
    )
    parser.add_argument("--metrics-address", default="0.0.0.0", help="address the metrics port listens on")
    parser.add_argument("--loglevel", default="INFO")
    return parser.parse_args(argv)


def pin_device(device: str) -> str:
    """Restrict the process to one GPU before torch loads; returns the device torch should use."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    if not device.startswith("cuda:"):
        raise SystemExit(f"--device must be 'cpu' or 'cuda:N', not '{device}'")
    os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's indexes then match nvidia-smi's and NVML's
    return "cuda"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.lanes is not None and args.lanes < 0:
        raise SystemExit(f"--lanes must be 0 (one per core) or more, not {args.lanes}")
    if args.lanes is not None and args.device != "cpu" and not 1 <= args.lanes <= MAX_GPU_LANES:
        raise SystemExit(f"--lanes on a GPU must be from 1 to {MAX_GPU_LANES} (instances of the models on the card), "
                         f"not {args.lanes}")
    if args.cores < 0:
        raise SystemExit(f"--cores must be 0 (every core) or more, not {args.cores}")
    # One process, its own metrics port: the web's multiprocess files are not for it.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ["TRANSLATION_DEVICE"] = pin_device(args.device)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cs_portal.settings")

    import django

    django.setup()
    from workers.warmup import warmups_for_queues

    from cs_portal.celery import app
    from translation.routing import routes
    from translation.task_events import TRANSLATE_TASK

    # "all": the queues of the enabled routes, at start-up and as routes change (follow_routes).
    named = [name.strip() for name in args.queues.split(",") if name.strip()]
    queues = set(named) - {"all"}
    if "all" in named:
        queues |= {route.queue for route in routes() if route.enabled}
    queues = sorted(queues)
    if not queues:
        raise SystemExit("No queues to consume: no enabled route (add one in the admin, or run `manage.py import_routes`)")
    from django.conf import settings

    from workers.lane_layout import default_lanes
    from workers.heartbeat import Heartbeat

    name = args.name or f"translate-{args.device.replace(':', '')}@{socket.gethostname()}"
    name = name.replace("%h", socket.gethostname())
    from workers.consumer_clock import CONSUMER_CLOCK, ConsumerTick

    app.steps["consumer"].add(ConsumerTick)
    from workers.event_buffer import GroupedTaskEvents

    app.steps["consumer"].add(GroupedTaskEvents)
    from workers.metrics import WorkerMetrics

    metrics = WorkerMetrics(name, device=args.device, queues=queues)
    heartbeat = Heartbeat(name, device=args.device, queues=queues, consumer_clock=CONSUMER_CLOCK, on_ready=metrics.ready)
    follower = None
    if "all" in named:
        from workers import follow_routes

        def consuming(now: list[str]) -> None:
            heartbeat.consuming(now)
            metrics.consuming(now)

        follower = follow_routes.FOLLOWER = follow_routes.QueueFollower(
            queues, on_added=consuming, every_s=max(1.0, settings.TRANSLATION_ROUTES_CHECK_S)
        )
        app.steps["consumer"].add(follow_routes.FollowRoutes)
    heartbeat.register(starting=True)
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_address)
        print(f"Metrics on http://{args.metrics_address}:{args.metrics_port}/metrics", flush=True)
    started = time.monotonic()
    # Until Celery installs its own handlers, SIGTERM ends the start-up cleanly (the engine
    # process is told to stop) instead of killing this process mid-load.
    signal.signal(signal.SIGTERM, _exit_during_start_up)
    try:
        lanes = start_device_loop(
            settings, warmups_for_queues(set(queues), device=os.environ["TRANSLATION_DEVICE"], batching=args.batching),
            args.batching, heartbeat,
            metrics, lanes=default_lanes(args.device) if args.lanes is None else args.lanes, cores=args.cores,
        )
    except BaseException as exc:
        if not isinstance(exc, (SystemExit, KeyboardInterrupt)):  # not a requested stop: say why
            heartbeat.error(f"Start-up failed: {type(exc).__name__}: {exc}")
        heartbeat.stopped()
        raise
    print(f"Models ready in {time.monotonic() - started:.1f}s; consuming {', '.join(queues)}"
          + (" and the queue of every route enabled later" if follower else ""), flush=True)
    if follower is not None:
        follower.start()

    if settings.TRANSLATION_DIRECT_JOBS:  # each job's message straight into the batcher
        import translation.tasks  # noqa: F401 (registers the task before the worker's own discovery)
        from workers.job_intake import DirectJobs

        app.tasks[TRANSLATE_TASK].Strategy = "workers.job_intake:strategy"
        app.steps["consumer"].add(DirectJobs)

    concurrency = args.concurrency or prefetch(lanes, settings.TRANSLATION_MAX_BATCH_SIZE, batching=args.batching)
    from workers.frozen_heap import FrozenHeap

    # Once the consumer is up (Celery's own modules loaded too), what this process keeps stays out
    # of the garbage collector's full collections, each of which would stop the event loop.
    app.steps["consumer"].add(FrozenHeap)
    try:
        app.worker_main(
            [
                "worker",
                f"--queues={','.join(queues)}",
                # Threads, not prefork: the models loaded above stay shared in this one process,
                # CUDA is never forked, and heartbeats and remote control keep answering while a
                # job runs (the solo pool would block them). A job message the consumer cannot
                # hand straight to the batcher (workers/job_intake.py) holds a thread while it
                # waits for its batch.
                "--pool=threads",
                f"--concurrency={concurrency}",
                # Prefetch = concurrency: more than a batch (celery-batches #17: a prefetch below
                # the batch size caps every batch), yet bounded, so one worker cannot hoard a queue.
                "--prefetch-multiplier=1",
                f"--hostname={name}",
                f"--loglevel={args.loglevel}",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        if follower is not None:
            follower.stop()
        metrics.not_ready()
        from translation.dispatch import current_intake

        intake = current_intake()
        if intake is not None:  # the jobs it claimed finish before the worker says it stopped
            left = intake.drain(timeout=settings.TRANSLATION_JOB_TIMEOUT_S / 10)
            if left:
                print(f"{left} claimed job(s) did not finish; the reconciler hands them over", flush=True)
        from translation.recovery import lost_look_release

        lost_look_release(name)  # the reconciler's turn goes to another worker at once
        heartbeat.stopped()


def prefetch(lanes: int, batch: int, *, batching: bool = True) -> int:
    """How many job messages a worker takes from the broker and holds unfinished: its prefetch,
    and its pool's threads for the jobs that take Celery's default path.

    Each waiting job holds an unacknowledged message. With a batch's worth per lane and one more
    (the rule until 2026-11-28), lanes that finish together found one full batch between them:
    the next messages come only once a batch's acknowledgements are sent, and trickle in over
    tens of milliseconds while the lanes compute, so the second lane took what had come (batches
    of 107, then 20, at the end of a 512-job burst) — the in-flight cap Ray Serve users hit
    (ray#43288). Two batches per lane, one computing and one gathering, and 16 more, so that a
    batch can form while every lane has one waiting. A prefetch below the batch size would cap
    every batch (celery-batches #17); it stays bounded, so one worker cannot hoard a queue.
    Without batching: one job per lane and one more."""
    if not batching:
        return lanes + 1
    return 2 * lanes * batch + 16


def _exit_during_start_up(signum, frame) -> None:
    raise SystemExit(0)


def start_device_loop(
    settings, warmups, batching: bool, heartbeat=None, metrics=None, *, lanes: int = 1, cores: int = 0
) -> int:
    """Load the models in the engine processes (one per lane), start the
    batcher and a device loop per lane, and route this process's jobs through them. Without
    batching, every batch holds one job. Returns the number of lanes."""
    from translation.batching import Batcher, BatchPolicy
    from translation.dispatch import use_intake
    from translation.execution import use_batcher
    from workers.ledger_intake import LedgerIntake
    from workers.device_loop import DeviceLoop
    from workers.engine_process import start_lanes
    from workers.lane_layout import lane_layout

    device = os.environ.get("TRANSLATION_DEVICE", "cpu")
    count, threads = lane_layout(device, lanes, cores)
    engines = start_lanes(warmups, count=count, threads=threads, device=device)
    from workers.control import lanes_note  # also registers the "models" inspect command
    from workers.loaded_models import LoadedModels

    if device != "cpu" and count > 1:
        print(f"  {count} lanes on the card, each an instance of the models with {engines[0].threads} CPU thread(s)",
              flush=True)
    elif threads:
        kept = (f", each keeping the memory its batches free (blocks up to {settings.TRANSLATION_ENGINE_HEAP_KEEP_MB} MiB)"
                if engines[0].heap_kept else "")
        print(f"  {count} lane(s) of {engines[0].threads} CPU thread(s){kept}", flush=True)
    # What the lanes hold (every lane's own part included), reported now and as routes change it.
    # Without a heartbeat it cannot tell which queues it serves: it unloads nothing.
    models = LoadedModels(engines, device=device, queues=lambda: heartbeat.queues if heartbeat is not None else [],
                          idle_s=settings.TRANSLATION_MODEL_UNLOAD_IDLE_S if heartbeat is not None else 0,
                          heartbeat=heartbeat, metrics=metrics, batching=batching)
    for loaded in models.report():
        print(f"  loaded {loaded['model']} [{loaded['precision']}] on {loaded['device']}: "
              f"{loaded['memory_mib']:.1f} MiB{lanes_note(loaded)}", flush=True)
    for spec, (size, _) in engines[0].full_batches.items():
        took = [engine.full_batches[spec][1] for engine in engines if spec in engine.full_batches]  # a lane may lack it
        print(f"  {spec.model}: a full batch of {size} computed at start in {max(took):.1f}s" if None not in took else
              f"  {spec.model}: a full batch of {size} ran out of memory at start; batches that size will be split",
              flush=True)
    if batching:
        policy = BatchPolicy(
            max_batch_size=settings.TRANSLATION_MAX_BATCH_SIZE,
            max_wait_s=settings.TRANSLATION_MAX_WAIT_MS / 1000,
            max_batch_tokens=settings.TRANSLATION_MAX_BATCH_TOKENS,
        )
    else:
        policy = BatchPolicy(max_batch_size=1, max_wait_s=0)
    batcher = Batcher(policy)
    if heartbeat is not None:
        heartbeat.ready(models.held)  # every model translated its warm-up sentence: the canary
    failed = {spec: why for engine in engines for spec, why in engine.failed_at_start.items()}
    for spec, why in failed.items():
        logger.error("Model %s [%s] did not load; its routes' jobs load it again, and fail with the reason "
                     "if it still does not: %s", spec.model, spec.precision, why)
        models.failed_at_start(spec)
    if failed:
        print(f"  {len(failed)} model(s) did not load; serving the others (see the errors above)", flush=True)
        if heartbeat is not None:
            heartbeat.error("Models that did not load at start (their jobs load them again): " + "; ".join(
                f"{spec.model} [{spec.precision}]: {why}" for spec, why in failed.items()))
    loops = [DeviceLoop(batcher, engine, heartbeat, metrics, lane=lane, models=models) for lane, engine in enumerate(engines)]
    if metrics is not None and engines[0].idle_cores is not None:
        metrics.lending(engines[0].idle_cores.shared)
    if metrics is not None:
        # Jobs taken from the broker and not answered yet: waiting in the batcher or computing.
        metrics.in_flight(lambda: batcher.pending() + sum(loop.running for loop in loops))
        if heartbeat is None:
            metrics.ready()
    if heartbeat is not None:
        heartbeat.lanes(count)
    for loop in loops:
        loop.start()
    if heartbeat is not None:
        # Beats while the loop and the consumer are healthy (the lease on its claims), listing the
        # jobs waiting in the batcher: a supervisor or reconciler resends exactly those if it dies.
        heartbeat.start(holding=lambda: [payload.translation_id for payload in batcher.payloads()])
    from workers.reconciler import Reconciler

    Reconciler(heartbeat.name if heartbeat is not None else "").start()
    # Ledger dispatch's wake-ups (translation/dispatch.py) are taken whatever this process's own
    # setting says: during a switch of the fleet, the portal may already send them.
    from cs_portal.celery import app
    from translation.task_events import LedgerTaskEvents

    worker_name = heartbeat.name if heartbeat is not None else ""
    # Its jobs' task events, so Flower lists them as it lists jobs dispatch's tasks.
    intake = LedgerIntake(batcher, worker_name, room=(count + 1) * policy.max_batch_size,
                          batch=policy.max_batch_size, metrics=metrics, events=LedgerTaskEvents(app, worker_name))
    intake.start()
    use_batcher(batcher)
    use_intake(intake)
    print(
        f"Batching: up to {policy.max_batch_size} jobs or {policy.max_batch_tokens} tokens, "
        f"waiting at most {policy.max_wait_s * 1000:g} ms",
        flush=True,
    )
    return count


if __name__ == "__main__":
    main()
