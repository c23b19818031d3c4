import pytest

from workers.benchmark import Figures, percentile, spanish_texts


class BenchmarkFiguresTests:
    def test_last_line_is_machine_readable_with_ratios(self):
        figures = Figures(limit=300.0, pipeline=150.0, batch1=15.0, mean_batch=85.3, light=(40.0, 60.5, 70.0))
        line = figures.last_line()
        assert line == (
            "limit=300.0 pipeline=150.0 batch1=15.0 vs_limit=0.500 vs_batch1=10.00 p95_light_ms=60.5 mean_batch=85.3"
        )
        assert dict(part.split("=") for part in line.split()).keys() == {
            "limit", "pipeline", "batch1", "vs_limit", "vs_batch1", "p95_light_ms", "mean_batch",
        }

    def test_each_burst_is_judged_against_the_better_raw_round_beside_it(self):
        from workers.benchmark_figures import Round

        burst = Round(pipeline=450.0, before=500.0, after=540.0)
        assert (burst.limit, round(burst.ratio, 4)) == (540.0, 0.8333)
        assert Round(pipeline=1.0, before=0.0, after=0.0).ratio == 0.0  # no limit measured

    def test_the_figures_are_the_median_rounds(self):
        from workers.benchmark_figures import Round, median_round

        rounds = [Round(360.0, 510.0, 500.0), Round(430.0, 500.0, 520.0), Round(480.0, 520.0, 530.0)]
        assert median_round(rounds) == 1  # ratios 0.706, 0.827, 0.906
        assert median_round(rounds[:2]) == 0  # of two, the lower: the figure errs low
        assert median_round(rounds[2:]) == 0
        with pytest.raises(ValueError):
            median_round([])

    def test_percentiles(self):
        values = [float(v) for v in range(1, 101)]
        assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (51.0, 95.0, 99.0)

    def test_benchmark_texts_are_spanish(self):
        from translation.detection import detect_language

        texts = spanish_texts()
        assert len(texts) == 16
        assert {detect_language(text).language for text in texts} == {"es"}

    def test_a_burst_job_waits_from_the_commit_not_from_its_save(self):
        from datetime import datetime, timedelta, timezone

        from translation.models import Translation
        from workers.benchmark import Benchmark

        committed = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
        saved_before = Translation(created_at=committed - timedelta(seconds=20), finished_at=committed + timedelta(seconds=2))
        saved_after = Translation(created_at=committed + timedelta(seconds=1), finished_at=committed + timedelta(seconds=3))
        unfinished = Translation(created_at=committed, finished_at=None)
        rows = [saved_before, saved_after, unfinished]
        # Saving the burst's other messages before the commit is the benchmark's setup: not counted.
        assert Benchmark.latencies_ms(rows, committed) == [2000.0, 2000.0]
        # A light-load job commits on its own: from its save.
        assert Benchmark.latencies_ms(rows) == [22000.0, 2000.0]

    def test_the_pipelines_part_of_a_light_job_is_its_latency_less_its_own_model_call(self):
        from datetime import datetime, timedelta, timezone

        from translation.models import Translation
        from workers.benchmark import Benchmark

        saved = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
        made = Translation(created_at=saved, finished_at=saved + timedelta(milliseconds=95), forward_ms=70.5)
        failed_at_once = Translation(created_at=saved, finished_at=saved, forward_ms=None)  # no model call
        unfinished = Translation(created_at=saved, finished_at=None, forward_ms=None)
        assert Benchmark.beyond_model_ms([made, failed_at_once, unfinished]) == [24.5]

    def test_the_models_share_of_the_cores_is_its_cpu_over_cores_times_the_burst(self):
        from workers.benchmark import model_share

        assert model_share(3.0, 2, 2.0) == 0.75
        assert model_share(3.0, 2, 0.0) == 0.0  # no burst measured
        assert model_share(3.0, 0, 2.0) == 0.0

    def test_how_long_each_number_of_batches_ran_at_once(self):
        from workers.benchmark_figures import overlap

        # Two lanes: one batch alone at first, then both, then the last one alone, then none.
        spans = [(0.0, 2.0), (1.0, 3.0), (3.0, 3.5)]
        assert overlap(spans, 0.0, 4.0) == {1: 2.5, 2: 1.0, 0: 0.5}
        # Spans reaching outside the burst count only inside it; none at all is idle throughout.
        assert overlap([(-1.0, 0.5), (0.75, 9.0)], 0.0, 1.0) == {1: 0.75, 0: 0.25}
        assert overlap([], 0.0, 1.0) == {0: 1.0}

    def test_waiting_for_no_jobs_returns_at_once(self, api_client_key):
        from cs_portal.portal.services import conversation_create
        from workers.benchmark import Benchmark

        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Benchmark")
        told = []
        assert Benchmark.__new__(Benchmark).wait_done(conversation, 0, timeout=1, on_done=lambda: told.append(1)) == []
        assert told == [1]

    def test_the_burst_is_told_done_before_its_rows_are_read_back(self, api_client_key, tiny_models):
        """The CPU reading that ends a burst comes before the benchmark reads the burst's rows."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from cs_portal.portal.services import conversation_create, message_create_from_customer
        from translation.models import Translation, TranslationStatus
        from workers.benchmark import Benchmark

        client, _ = api_client_key
        conversation = conversation_create(api_client=client, customer_name="Benchmark")
        for n in range(2):
            message_create_from_customer(conversation=conversation, text=f"Pedido {n}", language="es")
        Translation.objects.filter(message__conversation=conversation).update(status=TranslationStatus.DONE)
        with CaptureQueriesContext(connection) as queries:
            told_at = []
            rows = Benchmark.__new__(Benchmark).wait_done(conversation, 2, timeout=5,
                                                          on_done=lambda: told_at.append(len(queries.captured_queries)))
        assert len(rows) == 2 and len(told_at) == 1
        read_back = [i for i, query in enumerate(queries.captured_queries) if '"text"' in query["sql"] or "input_text" in query["sql"]]
        assert read_back and min(read_back) >= told_at[0]  # the rows' full read came after

    def test_each_burst_after_the_first_runs_on_vacuumed_tables_between_raw_rounds(self):
        """The order of a saturation run: a raw round, then each burst followed by a raw round,
        the tables vacuumed before every burst but the first (the light load's were, at start).
        Stand-ins for the raw model, the bursts and the vacuum: the order is the logic tested."""
        from workers.benchmark import Benchmark, Figures

        calls = []

        class RawModel:
            def limit_round(self):
                calls.append("raw")
                return 500.0

        benchmark = Benchmark(model="small", jobs=4, say=lambda line: None, rounds=3)
        benchmark.vacuum = lambda: calls.append("vacuum")
        benchmark.new_conversation = lambda client: None

        def burst(conversation, count, worker):
            calls.append("burst")
            benchmark.model_share = 0.9
            return 400.0, [], None

        benchmark.burst = burst
        benchmark.latencies_ms = lambda rows, committed=None: [1.0]
        figures = Figures()
        benchmark.saturation(figures, client=None, worker=None, raw=RawModel())
        assert calls == ["raw", "burst", "raw", "vacuum", "burst", "raw", "vacuum", "burst", "raw"]
        assert (figures.limit, figures.pipeline, len(figures.rounds)) == (500.0, 400.0, 3)

    def test_the_lanes_time_on_borrowed_cores_is_read_from_the_workers_metrics(self):
        """A real metrics endpoint (prometheus_client's server, in this process) serving a
        worker's lanes: the benchmark sums them; with nothing to read it says so by None."""
        import multiprocessing

        from prometheus_client import start_http_server

        from workers.benchmark import Benchmark
        from workers.idle_cores import IdleCores
        from workers.lifecycle import free_port
        from workers.metrics import WorkerMetrics, borrowed_cores

        benchmark = Benchmark(model="small", jobs=4, say=lambda line: None)
        assert benchmark.borrowed_seconds() is None  # no worker started
        benchmark.metrics_port = free_port()
        assert benchmark.borrowed_seconds() is None  # nothing answers there
        shared = IdleCores(multiprocessing.get_context("spawn"), 2, 2)
        shared.borrowed[0], shared.borrowed[1] = 0.25, 1.5
        server, thread = start_http_server(benchmark.metrics_port, addr="127.0.0.1")
        WorkerMetrics("bench-lending", device="cpu", queues=["translate.en"]).lending(shared)
        try:
            assert benchmark.borrowed_seconds() == 1.75
        finally:
            borrowed_cores.workers.pop("bench-lending")
            server.shutdown()
            server.server_close()
            thread.join(5)
