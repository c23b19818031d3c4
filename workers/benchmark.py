"""The serving benchmark: the full pipeline against the raw batched model and batch-1 serving.

(a) limit: the raw model, in engine processes laid out as the worker's (its lanes), on
    batches of the configured size (workers/benchmark_raw.py), measured again beside each
    saturation burst;
(b) pipeline: ORM -> Celery -> Redis -> a batching worker process -> database;
(c) batch1: the same pipeline with one job per forward pass (``--no-batching``).
Outputs are forced to FIXED_OUTPUT_TOKENS so that random weights time like a real model.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings

from translation.engines.hf_seq2seq import FIXED_OUTPUT_TOKENS_VARIABLE, fixed_output_tokens
from translation.models import Translation, TranslationStatus
from translation.routing import Route, pinned_route
from translation.tiny_models import write_benchmark_model
from workers.benchmark_figures import Figures, Round, median_round, model_share, overlap, percentile
from workers.benchmark_raw import RawModel, spanish_texts
from workers.cpu_usage import cpu_by_part, processes, unmatched_by_name
from workers.lifecycle import free_port, stop_process, wait_until_consuming

FIXED_OUTPUT_TOKENS = 20
LIGHT_LOAD_JOBS = 40
BATCH1_PIPELINE_JOBS = 100
SATURATION_ROUNDS = 3  # bursts at saturation, each between two rounds of the raw model
ROOT = Path(__file__).resolve().parent.parent


class Benchmark:
    def __init__(self, *, model: str, jobs: int, say: Callable[[str], None], device: str = "cpu",
                 precision: str = "fp32", lanes: int | None = None, dispatch: str | None = None,
                 rounds: int = SATURATION_ROUNDS) -> None:
        from workers.lane_layout import default_lanes, lane_layout

        self.model, self.jobs, self.say, self.rounds = model, jobs, say, rounds
        self.device, self.precision = device, precision  # device: "cpu" or "cuda" (the first GPU)
        # The worker's layout: its lanes (``TRANSLATION_CPU_LANES`` or ``TRANSLATION_GPU_LANES``
        # unless given), the raw model's too.
        requested = default_lanes(device) if lanes is None else lanes
        self.lanes, self.threads = lane_layout(device, requested)
        # How the summary names the layout: ", 2 lane(s) of 1 thread(s)" on a CPU, ", 2 lanes" on a
        # GPU running more than one.
        self.layout = (f", {self.lanes} lane(s) of {self.threads} thread(s)" if device == "cpu"
                       else f", {self.lanes} lanes" if self.lanes > 1 else "")
        self.batch_size = settings.TRANSLATION_MAX_BATCH_SIZE
        self.texts = spanish_texts()
        self.metrics_port = 0  # the pipeline worker's, once started
        self.target = settings.DEFAULT_AGENT_LANGUAGE
        self.queue = f"translate.{self.target}.benchmark"
        self.prefix = f"bench-{os.getpid()}:"
        # How jobs reach the worker (translation/dispatch.py): the settings' unless given.
        self.dispatch = dispatch or settings.TRANSLATION_DISPATCH

    def spec(self):
        from translation.engines import EngineSpec

        return EngineSpec("hf-seq2seq", str(self.model_dir), precision=self.precision, device=self.device)

    # --- the pipeline ----------------------------------------------------------------------
    def start_worker(self, *, batching: bool) -> subprocess.Popen:

        name = f"bench-{'batched' if batching else 'batch1'}-{os.getpid()}@localhost"
        env = dict(os.environ, BROKER_KEY_PREFIX=self.prefix, TRANSLATION_DISPATCH=self.dispatch,
                   PYTHONUNBUFFERED="1", **{FIXED_OUTPUT_TOKENS_VARIABLE: str(FIXED_OUTPUT_TOKENS)})
        command = [sys.executable, "-m", "workers.main", "--queues", self.queue, "--name", name,
                   "--loglevel", "WARNING", "--device", "cuda:0" if self.device == "cuda" else "cpu"]
        command.append(f"--lanes={self.lanes}")
        self.metrics_port = free_port()  # where the burst reads the lanes' time on borrowed cores
        command += ["--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"]
        if not batching:
            command.append("--no-batching")
        log = (settings.DATA_DIR / "logs" / "benchmark-worker.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        if not wait_until_consuming(process, name, timeout=180):
            stop_process(process)
            raise RuntimeError(f"the benchmark worker did not start; see {log}")
        return process

    def borrowed_seconds(self) -> float | None:
        """How long the worker's CPU lanes have computed on cores borrowed from idle lanes
        (``translation_worker_lane_borrowed_seconds_total``, all lanes); None where they lend
        none (one lane, a GPU, lending off) or the worker's metrics did not answer."""
        import http.client
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        if not self.metrics_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
                text = response.read().decode()
            seconds = [sample.value for family in text_string_to_metric_families(text)
                       if family.name == "translation_worker_lane_borrowed_seconds" for sample in family.samples
                       if sample.name.endswith("_total")]
        except (OSError, ValueError, http.client.HTTPException):  # an optional reading: never the run's end
            return None
        return sum(seconds) if seconds else None

    @staticmethod
    def stop_worker(process: subprocess.Popen) -> None:
        stop_process(process, timeout=60)

    def send(self, conversation, count: int, offset: int = 0) -> None:
        from cs_portal.portal.services import message_create_from_customer

        for i in range(count):
            text = self.texts[(offset + i) % len(self.texts)]
            message_create_from_customer(conversation=conversation, text=text, language="es")

    def wait_done(self, conversation, count: int, timeout: float, on_done=None) -> list[Translation]:
        """The conversation's ``count`` rows, once each is done or failed. Each poll asks for the
        unfinished rows in the burst's range of ids (cheaper than a count over the burst or a list
        of the waiting ids: docs/benchmarks.md); rows of others in the range are not waited for.
        ``on_done()`` runs once they are, before the rows are read (the burst's CPU reading: the
        read of thousands of rows is the benchmark's, not the pipeline's)."""
        deadline = time.monotonic() + timeout
        rows = Translation.objects.filter(message__conversation=conversation)
        waiting = set(rows.values_list("pk", flat=True))
        if len(waiting) != count:
            raise RuntimeError(f"expected {count} jobs, found {len(waiting)}")
        if not waiting:
            if on_done is not None:
                on_done()
            return []
        unfinished = (Translation.objects.filter(pk__range=(min(waiting), max(waiting)))
                      .exclude(status__in=[TranslationStatus.DONE, TranslationStatus.FAILED]).values_list("pk", flat=True))
        while time.monotonic() < deadline:
            waiting &= set(unfinished.all())  # .all(): a fresh query at each poll
            if not waiting:
                if on_done is not None:
                    on_done()
                return list(rows)
            # The figures come from the rows' own timestamps, not from this loop: polling more
            # often would only take CPU (here and in the database) from the pipeline it measures.
            time.sleep(0.25)
        raise RuntimeError(f"{count} jobs did not finish within {timeout:.0f}s")

    @staticmethod
    def latency_parts(rows: list[Translation]) -> dict[str, list[float]]:
        """Saved -> claimed by the worker -> stored, in ms, per job; and the model call's own time."""
        def ms(later, earlier) -> float:
            return (later - earlier).total_seconds() * 1000

        parts = {
            "commit, send, broker, worker and batcher wait": [ms(r.started_at, r.created_at) for r in rows],
            "claim, model and store": [ms(r.finished_at, r.started_at) for r in rows],
            "of which the model call": [r.forward_ms for r in rows if r.forward_ms is not None],
        }
        return {name: values for name, values in parts.items() if values}

    @staticmethod
    def latencies_ms(rows: list[Translation], visible_from=None) -> list[float]:
        """Per job, from its row's save to its stored result; for a burst saved in one transaction,
        from ``visible_from`` (the commit) at the earliest: until then no worker can see a row, and
        saving the burst's other messages is the benchmark's setup, not the pipeline's time."""
        return [(row.finished_at - max(row.created_at, visible_from or row.created_at)).total_seconds() * 1000
                for row in rows if row.finished_at]

    @classmethod
    def beyond_model_ms(cls, rows: list[Translation]) -> list[float]:
        """Per job made by the model, its latency less its own model call: the pipeline's part."""
        made = [row for row in rows if row.finished_at and row.forward_ms is not None]
        return [latency - row.forward_ms for latency, row in zip(cls.latencies_ms(made), made, strict=True)]

    def burst(self, conversation, count: int, worker: subprocess.Popen) -> tuple[float, list[Translation], datetime]:
        """``count`` jobs sent at once (one commit); sentences/s from the commit to the last result,
        the rows, and the commit's time.

        The clock starts once the messages are committed, as the first send begins: the sends are
        the pipeline's, the commit of ``count`` messages in one transaction is not (it is the
        benchmark's way of creating them at once; PostgreSQL spends seconds on it, checking every
        deferred foreign key, where a customer's message commits on its own in milliseconds).
        """
        from django.utils import timezone

        stamps = {}
        borrowed_before = self.borrowed_seconds()

        def at_commit() -> None:  # runs before the sends
            # The CPU reading first, so that reading /proc stays outside the measured time. The
            # second reading comes when the results are seen, before they are read back (the
            # polling's last quarter second is inside it).
            stamps.update(cpu=processes(), cpu_at=time.monotonic())
            stamps["committed"] = timezone.now()

        with transaction.atomic():
            transaction.on_commit(at_commit)
            self.send(conversation, count)
        if "committed" not in stamps:
            raise RuntimeError("the benchmark's burst must run outside a transaction: its clock starts at the commit")
        committed = stamps["committed"]
        sending = (timezone.now() - committed).total_seconds()  # the on-commit sends, after the stamp
        done = {}
        rows = self.wait_done(conversation, count, timeout=60 + count * 2,
                              on_done=lambda: done.update(cpu=processes(), at=time.monotonic()))
        cpu_after, cpu_span = done["cpu"], done["at"] - stamps["cpu_at"]
        borrowed_after = self.borrowed_seconds()
        failed = [row for row in rows if row.status != TranslationStatus.DONE]
        if failed:
            raise RuntimeError(f"{len(failed)} benchmark jobs failed, e.g.: {failed[0].failure_reason}")
        elapsed = (max(row.finished_at for row in rows) - committed).total_seconds()
        batches = {}
        # One forward pass per (claim, store): its rows share the claim's time and the store's. A
        # ledger claim can feed several (its rows then wait in the batcher from the claim on).
        for row in rows:
            batches.setdefault((row.started_at, row.finished_at), []).append(row)
        compute = sum((finished - started).total_seconds() for started, finished in batches)
        # The worker's idle stretches: from the commit or a batch's end to the next batch's claim.
        spans = sorted(batches)
        gaps, free_since = [], committed
        for started, finished in spans:
            gaps.append(((started - free_since).total_seconds(), (started - committed).total_seconds()))
            free_since = max(free_since, finished)
        idle, (longest, longest_until) = sum(max(0.0, gap) for gap, _ in gaps), max(gaps)
        # How long every lane ran a forward pass, and how long only some did (a burst's start and
        # end): each pass as its model call's time just before its store (a ledger claim can
        # feed several passes: claim-to-store spans would overlap).
        passes = [((finished - committed).total_seconds() - members[0].forward_ms / 1000,
                   (finished - committed).total_seconds()) for (_, finished), members in batches.items()
                  if members[0].forward_ms]
        side_by_side = overlap(passes, 0.0, elapsed)
        self.say(f"  where the time goes: {elapsed:.2f}s in all; sending {sending:.2f}s; "
                 f"{len(batches)} batches computing {compute:.2f}s ({compute / elapsed:.0%} of the time); "
                 f"no batch running for {idle:.2f}s (longest {max(0.0, longest):.2f}s, until {longest_until:.1f}s); "
                 f"forward passes at once: {', '.join(f'{k} for {side_by_side[k]:.2f}s' for k in sorted(side_by_side))}; "
                 + (f"lanes on borrowed cores {borrowed_after - borrowed_before:.2f}s; "
                    if None not in (borrowed_before, borrowed_after) else "")
                 + f"batch sizes {sorted((len(b) for b in batches.values()), reverse=True)[:12]}")
        self.model_share = 0.0
        if stamps["cpu"] is not None and cpu_after is not None:  # None: no /proc (not Linux)
            self.model_share = self.report_cpu(stamps["cpu"], cpu_after, cpu_span, count, worker.pid, elapsed)
        return count / elapsed, rows, committed

    def report_cpu(self, before, after, span: float, count: int, worker_pid: int, elapsed: float) -> float:
        """Which process took the cores while the burst ran, and the per-job CPU beside the model;
        returns the model's share of the cores over the burst's ``elapsed`` seconds (the readings'
        ``span`` ends up to a polling interval later, with the model idle by then)."""
        model, this_process = "model (engine process)", "this process (the portal's sends, its polling)"
        pipeline = {
            model: lambda p: p.ppid == worker_pid,
            "worker (consumer, batcher, claims, stores)": lambda p: p.pid == worker_pid,
            this_process: lambda p: p.pid == os.getpid(),
        }
        if connection.vendor == "postgresql":  # SQLite works inside the worker and this process
            pipeline["PostgreSQL"] = lambda p: p.name.startswith("postgres")
        pipeline["Redis"] = lambda p: p.name.startswith("redis-server")
        used = cpu_by_part(before, after, pipeline)
        beside = sum(seconds for name, seconds in used.items() if name not in (model, "everything else"))
        cores = os.cpu_count() or 1
        self.say(f"  CPU over {span:.2f}s on {cores} cores ({cores * span:.1f} CPU-seconds): "
                 + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in used.items())
                 + f"; per job: model {used[model] / count * 1000:.2f} ms, beside it {beside / count * 1000:.2f} ms; "
                 f"the model had {model_share(used[model], cores, elapsed):.1%} of the cores over the burst's {elapsed:.2f}s")
        if used["everything else"] >= 0.1 * cores * span:  # a neighbour took a tenth of the machine: name it
            others = unmatched_by_name(before, after, pipeline).most_common(4)
            self.say("  everything else: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in others))
        return model_share(used[model], cores, elapsed)

    def new_conversation(self, client):
        from cs_portal.portal.services import conversation_create

        conversation = conversation_create(api_client=client, customer_name="Benchmark")
        conversation.assignee = None  # jobs go to DEFAULT_AGENT_LANGUAGE, the route's target
        conversation.save(update_fields=["assignee"])
        return conversation

    @contextmanager
    def benchmark_route(self):
        """The benchmark's own es->target route, on its own queue, for the length of the run. It
        is saved disabled, so no other process routes a job by it; this thread's jobs take it
        (``pinned_route``). The admins' routes are left as they are."""
        from translation.models import LanguageRoute

        route = LanguageRoute(
            source_language="es", target_language=self.target, queue=self.queue, model_name=str(self.model_dir),
            precision=self.precision, max_batch_size=self.batch_size, enabled=False,
            max_wait_ms=round(settings.TRANSLATION_MAX_WAIT_MS), note=f"benchmark run {os.getpid()} (deleted after it)",
        )
        route.full_clean()
        route.save()
        try:
            with pinned_route(Route.of(route)):
                yield route
        finally:
            route.delete()  # its ledger rows keep their queue and model; their route becomes empty

    def vacuum(self) -> None:
        """On PostgreSQL, vacuum the tables the pipeline writes: where autovacuum is off or behind,
        each run's deleted rows would slow the next."""
        if connection.vendor != "postgresql" or connection.in_atomic_block:  # VACUUM runs outside a transaction
            return
        from cs_portal.portal.models import Conversation, Message
        from workers.models import WorkerHeartbeat

        tables = [model._meta.db_table for model in (Translation, Message, Conversation, WorkerHeartbeat)]
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM (ANALYZE) {', '.join(map(connection.ops.quote_name, tables))}")
        self.say(f"  vacuumed {', '.join(tables)} in {time.monotonic() - started:.1f}s")

    def run(self) -> Figures:
        figures = Figures()
        self.model_dir = write_benchmark_model(settings.MODELS_DIR, self.model, progress=self.say)
        self.say(f"[1/3] Raw model ({self.model}, {self.precision} on {self.device}{self.layout}, "
                 f"{FIXED_OUTPUT_TOKENS} output tokens) ...")
        with fixed_output_tokens(FIXED_OUTPUT_TOKENS):  # the raw model's engine processes inherit it
            raw = RawModel.start(self.spec(), lanes=self.lanes, threads=self.threads, batch_size=self.batch_size,
                                 jobs=self.jobs, target=self.target, say=self.say)
        try:
            raw.measure(figures)
            self.pipelines(figures, raw)
        finally:
            raw.stop()
        return figures

    def pipelines(self, figures: Figures, raw: RawModel) -> None:
        from cs_portal.celery import app
        from cs_portal.portal.services import api_client_create

        saved_options = dict(app.conf.broker_transport_options)
        app.conf.broker_transport_options = {**saved_options, "global_keyprefix": self.prefix}
        client, _ = api_client_create(name=f"benchmark-{os.getpid()}-{time.time_ns()}")
        try:
            with self.benchmark_route(), override_settings(TRANSLATION_DISPATCH=self.dispatch):
                self.say("[2/3] Pipeline with batching: light load, then saturation "
                         f"({self.rounds} burst(s), each between two rounds of the raw model) ...")
                self.vacuum()
                worker = self.start_worker(batching=True)
                try:
                    self.light_load(figures, client)
                    self.saturation(figures, client, worker, raw)
                finally:
                    self.stop_worker(worker)
                raw.stop()  # its rounds are done: on a GPU its memory goes back before the batch-1 worker loads
                self.say("[3/3] Pipeline with one job per forward pass ...")
                worker = self.start_worker(batching=False)
                try:
                    count = min(self.jobs, BATCH1_PIPELINE_JOBS)
                    figures.batch1, _, _ = self.burst(self.new_conversation(client), count, worker)
                    self.say(f"  batch-1 pipeline ({count} jobs at once): {figures.batch1:.1f} sent/s")
                finally:
                    self.stop_worker(worker)
        finally:
            app.conf.broker_transport_options = saved_options
            client.customers.all().delete()
            client.delete()

    def light_load(self, figures: Figures, client) -> None:
        """One job at a time, well below what one job at a time can serve: latency, and its parts."""
        light = self.new_conversation(client)
        interval = figures.light_interval
        for i in range(LIGHT_LOAD_JOBS):
            with transaction.atomic():
                self.send(light, 1, offset=i)
            time.sleep(interval)
        rows = self.wait_done(light, LIGHT_LOAD_JOBS, timeout=120)
        figures.light = tuple(percentile(self.latencies_ms(rows), q) for q in (50, 95, 99))
        beyond = self.beyond_model_ms(rows)
        if not beyond:  # every light job failed before its model call: nothing to judge
            raise RuntimeError("no light-load job reached the model; see the benchmark worker's log")
        figures.light_beyond_model = (percentile(beyond, 50), percentile(beyond, 95))
        self.say("  light load, median parts: " + ", ".join(
            f"{name} {statistics.median(values):.1f} ms" for name, values in self.latency_parts(rows).items()))
        self.say(f"  light load ({1 / interval:.0f} jobs/s): p50 {figures.light[0]:.1f} ms, "
                 f"p95 {figures.light[1]:.1f} ms, p99 {figures.light[2]:.1f} ms; beyond each job's own "
                 f"model call p50 {figures.light_beyond_model[0]:.1f} ms, p95 {figures.light_beyond_model[1]:.1f} ms")

    def saturation(self, figures: Figures, client, worker: subprocess.Popen, raw: RawModel) -> None:
        """``rounds`` bursts of ``jobs`` at once, each between two rounds of the raw model (a
        round after one burst is the round before the next). A shared host's speed drifts over
        minutes: each burst is judged against the model measured seconds from it, and the figures
        are those of the round whose ratio is the median."""
        rounds, bursts = [], []
        before = raw.limit_round()
        for number in range(1, self.rounds + 1):
            if number > 1:  # each burst on tables as clean as the first's, not over the last bursts' dead rows
                self.vacuum()
            rate, rows, committed = self.burst(self.new_conversation(client), self.jobs, worker)
            after = raw.limit_round()
            rounds.append(Round(rate, before, after))
            bursts.append((rows, committed, self.model_share))
            self.say(f"  saturation round {number}/{self.rounds} ({self.jobs} jobs at once): {rate:.1f} sent/s, "
                     f"{rounds[-1].ratio:.1%} of the better raw round beside it ({rounds[-1].limit:.1f})")
            before = after
        chosen = median_round(rounds)
        rows, committed, figures.model_share = bursts[chosen]
        figures.rounds, figures.limit, figures.pipeline = tuple(rounds), rounds[chosen].limit, rounds[chosen].pipeline
        figures.saturated = tuple(percentile(self.latencies_ms(rows, committed), q) for q in (50, 95, 99))
        executions = sum(1 / row.batch_size for row in rows if row.batch_size)
        figures.mean_batch = len(rows) / executions if executions else 0.0
        self.say(f"  saturation: round {chosen + 1} has the median ratio; mean batch {figures.mean_batch:.1f}, "
                 f"p95 {figures.saturated[1]:.0f} ms")
