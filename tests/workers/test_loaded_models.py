"""What a worker reports of its lanes' models, and the idle models no route names that a lane
lets go of: the choice alone, then a real engine process with the test database's routes."""

from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from translation.engines import EngineSpec
from workers.engine_process import EngineProcess, ModelMemory, Warmup
from workers.loaded_models import CHECK_EVERY_S, LoadedModels, idle_models, models_held

A, B, C = (EngineSpec("hf-seq2seq", f"/models/{name}") for name in "abc")


class IdleModelsTests:
    def test_only_models_no_route_wants_and_unused_long_enough_go(self):
        last_used = {A: 0.0, B: 0.0, C: 500.0}
        assert idle_models(last_used, wanted={A}, now=600.0, idle_s=600) == [B]
        assert idle_models(last_used, wanted={A}, now=599.0, idle_s=600) == []
        assert idle_models(last_used, wanted=set(), now=1100.0, idle_s=600) == [A, B, C]

    def test_a_zero_idle_time_keeps_every_model(self):
        assert idle_models({A: 0.0}, wanted=set(), now=1e9, idle_s=0) == []


@dataclass
class Lane:
    """What ``models_held`` reads of an engine process: its models' memory."""

    memory: dict = field(default_factory=dict)


class ModelsHeldTests:
    def test_each_model_once_with_the_lanes_that_hold_it(self):
        mib = 2**20
        lanes = [Lane({A: ModelMemory(100 * mib, 80 * mib), B: ModelMemory(10 * mib)}),
                 Lane({A: ModelMemory(100 * mib, 80 * mib)})]
        held = {model["model"]: model for model in models_held(lanes)}
        # A: the mapped 80 MiB once, each lane's own 20 MiB; B only in the first lane.
        assert held["/models/a"] | {"bytes": 0} == {"model": "/models/a", "precision": "fp32", "device": "cpu",
                                                    "memory_mib": 120.0, "copies": 2, "shared_mib": 80.0, "bytes": 0}
        assert (held["/models/b"]["memory_mib"], held["/models/b"]["copies"]) == (10.0, 1)
        assert models_held([Lane(), Lane()]) == []


@pytest.mark.django_db
class LoadedModelsTests:
    @pytest.fixture
    def lane(self, tiny_models):
        process = EngineProcess([Warmup(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)), "es", "en")])
        process.start()
        yield process
        process.stop()

    def test_a_model_a_changed_route_loaded_is_reported_then_unloaded_once_idle(self, lane, tiny_models):
        from translation.routing import routes
        from workers.heartbeat import Heartbeat
        from workers.metrics import WorkerMetrics
        from workers.models import WorkerHeartbeat

        queue = next(route.queue for route in routes() if route.source == "es" and route.target == "en")
        name = "loaded-models-test@h"
        heartbeat = Heartbeat(name, device="cpu", queues=[queue])
        heartbeat.register()
        now = [1000.0]
        models = LoadedModels([lane], device="cpu", queues=lambda: heartbeat.queues, idle_s=600,
                              heartbeat=heartbeat, metrics=WorkerMetrics(name, device="cpu", queues=[queue]),
                              clock=lambda: now[0])
        models.report()
        marian = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
        int8 = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en), precision="int8")  # what no route names

        def reported() -> set[tuple[str, str]]:
            return {(model["model"], model["precision"]) for model in WorkerHeartbeat.objects.get(name=name).loaded_models}

        def gauge(spec: EngineSpec) -> float | None:
            return REGISTRY.get_sample_value("translation_worker_model_memory_bytes", {
                "worker": name, "model": spec.model, "precision": spec.precision, "device": "cpu"})

        assert reported() == {(marian.model, "fp32")}
        lane.call(int8, ["Hola"], "es", "en")  # a job queued under a route since changed
        assert reported() == {(marian.model, "fp32"), (int8.model, "int8")}
        assert {(model["model"], model["precision"]) for model in models.held} == reported()
        assert gauge(int8) > 0
        # Idle for less than the time asked: kept.
        lane.last_used = {spec: 1000.0 for spec in lane.memory}
        now[0] = 1599.0
        assert models.unload_idle(0) == []
        # Looked at again only after CHECK_EVERY_S, then idle long enough: the unrouted model goes,
        # the routed one stays however long it idles.
        now[0] = 1599.0 + CHECK_EVERY_S / 2
        lane.last_used = {spec: 0.0 for spec in lane.memory}
        assert models.unload_idle(0) == []
        now[0] = 1599.0 + CHECK_EVERY_S
        assert models.unload_idle(0) == [int8]
        assert set(lane.memory) == {marian}
        assert reported() == {(marian.model, "fp32")} and gauge(int8) is None and gauge(marian) > 0


@pytest.mark.django_db(transaction=True)  # the loop's thread reads the routes on its own connection
def test_a_lane_with_nothing_to_compute_lets_an_idle_unrouted_model_go(tiny_models):
    from tests.conftest import wait_for
    from translation.batching import Batcher, BatchPolicy
    from translation.routing import routes
    from workers.device_loop import DeviceLoop

    queue = next(route.queue for route in routes() if route.source == "es" and route.target == "en")
    marian = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en))
    int8 = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en), precision="int8")
    lane = EngineProcess([Warmup(marian, "es", "en")])
    lane.start()
    loop = DeviceLoop(Batcher(BatchPolicy(max_batch_size=1, max_wait_s=0)), lane,
                      models=LoadedModels([lane], device="cpu", queues=lambda: [queue], idle_s=0.2))
    try:
        lane.call(int8, ["Hola"], "es", "en")
        loop.start()
        wait_for(lambda: int8 not in lane.memory, timeout=20, what="the idle int8 model to be unloaded")
        # The routed one stays; the idle lane also loads the "*"->en route's model it lacked.
        wait_for(lambda: set(lane.memory) == {marian, EngineSpec("hf-seq2seq", str(tiny_models.m2m100))}, timeout=20,
                 what="the routed models held, and only they")
    finally:
        loop.stop()
        loop.join(5)


class OnThisHostTests:
    def test_a_checkpoint_directory_loads_without_a_download_and_unknown_names_do_not(self, tmp_path):
        from workers.loaded_models import on_this_host

        assert on_this_host(str(tmp_path))
        assert not on_this_host(str(tmp_path / "missing"))
        assert not on_this_host("some-org/a-model-never-downloaded-here")  # a hub id not in the cache

    def test_a_hub_id_counts_once_its_configuration_and_weights_are_in_the_cache(self, tmp_path, monkeypatch):
        import huggingface_hub.constants

        from workers.loaded_models import on_this_host

        # The hub cache's own layout: models--<org>--<name>/refs/main names a snapshot's files.
        repo = tmp_path / "models--some-org--opus-mt-es-en"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        snapshot = repo / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
        (snapshot / "config.json").write_text("{}")
        assert not on_this_host("some-org/opus-mt-es-en")  # a download stopped after the configuration
        (snapshot / "model.safetensors").write_bytes(b"")
        assert on_this_host("some-org/opus-mt-es-en")


@pytest.mark.django_db
class LoadAheadTests:
    def test_a_worker_without_batching_loads_ahead_without_a_full_batch(self):
        from translation.routing import routes

        queues = sorted({route.queue for route in routes()})

        def sizes(batching: bool) -> set[int]:
            models = LoadedModels([], device="cpu", queues=lambda: queues, idle_s=0, batching=batching)
            return {warmup.batch for warmup in models._warmups()}

        assert sizes(False) == {1}
        assert max(sizes(True)) > 1  # the routes' batches, as at a batching worker's start

    """A route changed since the start names a model a lane does not hold: an idle lane loads it
    before its jobs come, if it is on this host; one that fails waits before it is tried again."""

    @pytest.fixture
    def lane(self, tiny_models):
        process = EngineProcess([Warmup(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)), "es", "en")])
        process.start()
        process.loads = []
        process.on_loading = process.loads.append
        yield process
        process.stop()

    def test_an_idle_lane_loads_a_routed_model_it_lacks_and_leaves_what_it_cannot(self, lane, tiny_models, tmp_path):
        from translation.models import LanguageRoute
        from translation.routing import routes, routes_changed
        from workers.loaded_models import RETRY_LOAD_S

        queue = next(route.queue for route in routes() if route.source == "es" and route.target == "en")
        for model, precision in [(str(tiny_models.marian_es_en), "int8"), ("some-org/never-downloaded", "fp32"),
                                 (str(tmp_path), "fp32")]:  # int8: loadable; a download; a directory with no model
            LanguageRoute.objects.create(source_language="es", target_language="en", enabled=False, model_name=model,
                                         precision=precision, queue=queue, variant=f"v{precision}{len(model)}")
        routes_changed()
        now = [1000.0]
        models = LoadedModels([lane], device="cpu", queues=lambda: [queue], idle_s=600, clock=lambda: now[0])
        int8 = EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en), precision="int8")
        m2m100 = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))  # the "*"->en route's model

        loaded = []
        for _ in range(4):  # one model per look, looks CHECK_EVERY_S apart
            loaded.append(models.load_wanted(0))
            assert models.load_wanted(0) is None  # too soon to look again
            now[0] += CHECK_EVERY_S
        assert set(loaded) == {int8, m2m100, None} and lane.loads[:2] == [True, False]
        assert {model["precision"] for model in models.held if model["model"] == int8.model} == {"fp32", "int8"}
        held = set(lane.memory)
        assert not any(spec.model in ("some-org/never-downloaded", str(tmp_path)) for spec in held)
        # The directory without a model was tried once (and failed); it is tried again only later,
        # each time later still.
        failed = [spec for (_, spec) in models._failed]
        assert [spec.model for spec in failed] == [str(tmp_path)]
        loads = len(lane.loads)
        now[0] += CHECK_EVERY_S
        models.load_wanted(0)
        assert len(lane.loads) == loads  # not yet
        now[0] += RETRY_LOAD_S
        models.load_wanted(0)
        assert len(lane.loads) == loads + 2  # tried again (and failed again)
        now[0] += RETRY_LOAD_S + CHECK_EVERY_S
        models.load_wanted(0)
        assert len(lane.loads) == loads + 2  # the wait doubled
        now[0] += RETRY_LOAD_S
        models.load_wanted(0)
        assert len(lane.loads) == loads + 4
        assert len(lane.call(int8, ["Hola"], "es", "en")[0]) == 1  # the lane goes on

    def test_one_lane_loads_ahead_at_a_time(self, lane, tiny_models):
        from translation.routing import routes

        queue = next(route.queue for route in routes() if route.source == "es" and route.target == "en")
        models = LoadedModels([lane], device="cpu", queues=lambda: [queue], idle_s=600, clock=lambda: 1000.0)
        with models._loading_ahead:  # another lane is loading
            assert models.load_wanted(0) is None and lane.loads == []
        models._load_checked.clear()
        assert models.load_wanted(0) == EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
