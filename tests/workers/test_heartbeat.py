"""Worker heartbeats: the liveness rule on its own, then a real worker's row, /readyz and status."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import WORKER_NAME, free_port, wait_for
from translation.models import LanguageRoute
from workers.engine_process import CALL_TIMEOUT_S
from workers.models import WorkerHeartbeat

NOW = timezone.now()


def beat(**fields) -> WorkerHeartbeat:
    values = {"name": "w", "hostname": "h", "pid": 1, "device": "cpu", "started_at": NOW, "beat_at": NOW, "ready": True}
    return WorkerHeartbeat(**(values | fields))


class LivenessRuleTests:
    @pytest.fixture(autouse=True)
    def five_seconds(self, settings):
        settings.WORKER_HEARTBEAT_STALE_S = 5

    def test_a_recent_beat_is_alive_and_a_stale_one_is_not(self):
        assert beat(beat_at=NOW - timedelta(seconds=4)).is_alive(NOW)
        assert not beat(beat_at=NOW - timedelta(seconds=6)).is_alive(NOW)

    def test_a_stopped_worker_is_not_alive_however_recent_its_beat(self):
        assert not beat(stopped_at=NOW).is_alive(NOW)


class BeatRuleTests:
    """When the heartbeat thread beats: the device loop's health as it reports it in memory."""

    @pytest.fixture
    def clocked(self, settings):
        from workers.heartbeat import Heartbeat

        settings.WORKER_HEARTBEAT_STALE_S = 1
        now = [0.0]
        heartbeat = Heartbeat("w@h", device="cpu", queues=["translate.en"], clock=lambda: now[0])
        heartbeat.error = lambda text: None  # the row is not under test here
        return heartbeat, now

    def test_an_idle_loop_that_keeps_turning_keeps_the_beat(self, clocked):
        heartbeat, now = clocked
        now[0] = 10.0
        heartbeat.idle()
        now[0] = 11.4
        assert heartbeat._loop_healthy()

    def test_a_loop_that_stopped_turning_stops_it(self, clocked):
        heartbeat, now = clocked
        heartbeat.idle()
        now[0] = 1.6  # its wait (0.5 s) plus the staleness limit
        assert not heartbeat._loop_healthy()

    def test_a_long_but_healthy_batch_keeps_the_beat_and_a_hung_one_stops_it(self, clocked):
        heartbeat, now = clocked
        heartbeat.batch_started()
        now[0] = 60.0
        assert heartbeat._loop_healthy()
        now[0] = CALL_TIMEOUT_S + 1
        assert not heartbeat._loop_healthy()
        heartbeat.batch_ended()
        assert heartbeat._loop_healthy()

    def test_a_batch_waiting_for_its_model_to_load_may_take_a_starts_time_then_its_pass_is_timed_afresh(self, clocked):
        from workers.engine_process import START_TIMEOUT_S

        heartbeat, now = clocked
        heartbeat.lanes(2)
        heartbeat.batch_started(lane=1)
        now[0] = 10.0
        heartbeat.loading(1, True)  # a route changed: the batch's model loads first
        now[0] = 10.0 + CALL_TIMEOUT_S + 1
        heartbeat.idle(lane=0)
        assert heartbeat._loop_healthy()  # a load, not a hung call
        now[0] = 10.0 + START_TIMEOUT_S + 1
        heartbeat.idle(lane=0)
        assert not heartbeat._loop_healthy()  # longer than any start may load
        now[0] = 500.0
        heartbeat.idle(lane=0)
        heartbeat.loading(1, False)  # loaded: the forward pass counts from here
        now[0] = 500.0 + CALL_TIMEOUT_S - 1
        heartbeat.idle(lane=0)
        assert heartbeat._loop_healthy()
        now[0] = 500.0 + CALL_TIMEOUT_S + 1
        heartbeat.idle(lane=0)
        assert not heartbeat._loop_healthy()

    def test_every_lane_must_be_healthy(self, clocked):
        heartbeat, now = clocked
        heartbeat.lanes(2)
        heartbeat.batch_started(lane=1)  # lane 1 computes a batch that never ends
        for second in range(1, 20):
            now[0] = float(second)
            heartbeat.idle(lane=0)  # lane 0 keeps turning
            assert heartbeat._loop_healthy()
        now[0] = CALL_TIMEOUT_S + 1
        heartbeat.idle(lane=0)
        assert not heartbeat._loop_healthy()  # lane 1's call outlasted the engine's timeout
        heartbeat.batch_ended(lane=1)
        assert heartbeat._loop_healthy()

    def test_a_lane_that_stopped_turning_stops_the_beat(self, clocked):
        heartbeat, now = clocked
        heartbeat.lanes(2)
        now[0] = 1.6
        heartbeat.idle(lane=0)
        assert not heartbeat._loop_healthy()  # lane 1 said nothing for the wait plus the limit

    def test_ready_needs_the_canary_and_life(self):
        assert not beat(ready=False).is_ready(NOW)
        assert not beat(stopped_at=NOW).is_ready(NOW)
        assert beat().is_ready(NOW)


@pytest.mark.django_db(transaction=True)
class RealWorkerTests:
    @pytest.fixture(autouse=True)
    def beating(self, worker):
        """The worker's row: each test starts from an emptied database, and the worker writes
        its row again at its next beat (about a second)."""
        wait_for(lambda: WorkerHeartbeat.objects.filter(name=WORKER_NAME, ready=True).exists(), timeout=10,
                 what="the worker's heartbeat")

    def test_the_worker_beats_and_is_ready_with_its_models(self, worker, tiny_models):
        row = WorkerHeartbeat.objects.get(name=WORKER_NAME)
        assert row.ready and row.is_alive(timezone.now())
        assert {m["model"] for m in row.loaded_models} == {str(tiny_models.marian_es_en), str(tiny_models.m2m100)}
        assert "translate.en" in row.queues

    def test_readyz_is_ready_with_the_worker_and_names_a_queue_nobody_serves(self, worker, http):
        status, body = http.call("GET", "/readyz")
        assert status == 200, body
        assert WORKER_NAME in body["checks"]["queues"]["translate.en"]
        LanguageRoute.objects.create(source_language="es", target_language="ja", model_name="m", queue="translate.ja.nobody")
        status, body = http.call("GET", "/readyz")
        assert status == 503 and body["checks"]["unserved_queues"] == ["translate.ja.nobody"]

    def test_readyz_is_not_ready_when_the_only_worker_went_stale(self, worker, http):
        # Another worker's row, stale, on a queue of its own: as if its loop had stopped beating.
        old = timezone.now() - timedelta(seconds=60)
        WorkerHeartbeat.objects.create(name="stuck@h", hostname="h", pid=1, device="cpu", queues=["translate.ja.stuck"],
                                       started_at=old, beat_at=old, ready=True)
        LanguageRoute.objects.create(source_language="es", target_language="ja", model_name="m", queue="translate.ja.stuck")
        status, body = http.call("GET", "/readyz")
        assert status == 503 and body["checks"]["unserved_queues"] == ["translate.ja.stuck"]
        # The real worker's reconciler takes it as lost (and is done with its rows before the
        # test's tables are emptied: a flush racing its row locks deadlocks).
        wait_for(lambda: WorkerHeartbeat.objects.get(name="stuck@h").stopped_at is not None, timeout=10,
                 what="the reconciler to mark the stale worker stopped")

    def test_status_prints_routes_queues_and_workers(self, worker, capsys, settings):
        call_command("status")
        out = capsys.readouterr().out
        assert "Routes" in out and "es→en" in out
        assert "translate.en" in out and WORKER_NAME in out and "ready" in out
        assert "jobs queued" in out  # the ledger's count beside the broker's
        assert "Queues (dispatch: jobs, a message per job)" in out
        assert "READY" in out.splitlines()[-1]
        settings.TRANSLATION_DISPATCH = "ledger"  # what the broker's messages are then
        call_command("status")
        assert "Queues (dispatch: ledger, the messages are wake-ups" in capsys.readouterr().out


@pytest.mark.django_db
class HousekeepingTests:
    def test_workers_silent_for_a_day_leave_the_list_when_another_registers(self):
        from workers.heartbeat import Heartbeat

        old = timezone.now() - timedelta(days=2)
        WorkerHeartbeat.objects.create(name="gone@h", hostname="h", pid=1, device="cpu", started_at=old, beat_at=old)
        WorkerHeartbeat.objects.create(name="recent@h", hostname="h", pid=2, device="cpu", started_at=NOW, beat_at=NOW)
        Heartbeat("new@h", device="cpu", queues=["translate.en"]).register()
        assert set(WorkerHeartbeat.objects.values_list("name", flat=True)) == {"recent@h", "new@h"}


@pytest.mark.django_db
class ProbeTests:
    def test_the_probe_passes_a_live_ready_worker_and_fails_a_silent_one(self, capsys):
        WorkerHeartbeat.objects.create(name="ok@h", hostname="h", pid=1, device="cpu", started_at=NOW,
                                       beat_at=timezone.now(), loop_at=timezone.now(), ready=True)
        call_command("worker_probe", "--name", "ok@h", "--ready")
        assert "ok@h: ready" in capsys.readouterr().out
        old = timezone.now() - timedelta(seconds=60)
        WorkerHeartbeat.objects.create(name="silent@h", hostname="h", pid=2, device="cpu", started_at=old, beat_at=old,
                                       loop_at=old)
        with pytest.raises(SystemExit) as exited:
            call_command("worker_probe", "--name", "silent@h")
        assert exited.value.code == 1 and "not alive (silent for 60s)" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            call_command("worker_probe", "--name", "never@h")
        assert "no heartbeat yet" in capsys.readouterr().err

    def test_a_worker_whose_broker_is_down_stays_live_but_is_not_ready(self, capsys):
        """A restart would not bring the broker back: liveness holds, readiness does not."""
        old = timezone.now() - timedelta(seconds=60)
        WorkerHeartbeat.objects.create(name="waiting@h", hostname="h", pid=3, device="cpu", started_at=old, beat_at=old,
                                       loop_at=timezone.now(), ready=True)
        call_command("worker_probe", "--name", "waiting@h")
        with pytest.raises(SystemExit):
            call_command("worker_probe", "--name", "waiting@h", "--ready")
        assert "consumer not turning" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
class BrokerReadinessTests:
    def test_a_broker_that_stops_makes_readiness_and_its_worker_false_and_both_come_back(
        self, tmp_path, monkeypatch, settings
    ):
        """A redis-server of the test's own, on its own port: the broker of a worker started for
        this test, and of the readiness check. Running, stopped, started again (empty)."""
        import os
        import shutil
        import subprocess
        import sys

        from cs_portal.celery import app
        from tests.conftest import ROOT, database_url
        from workers.health import readiness
        from workers.lifecycle import stop_process

        settings.WORKER_HEARTBEAT_STALE_S = 2
        port = free_port()

        def start() -> subprocess.Popen:
            server = subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG",
                     timeout=10, what="the test's redis-server")
            return server

        def own_worker() -> WorkerHeartbeat | None:
            return WorkerHeartbeat.objects.filter(name="own-broker@localhost").first()

        def own_worker_alive() -> bool:
            row = own_worker()
            return bool(row and row.is_ready(timezone.now()))

        broker = f"redis://127.0.0.1:{port}/0"
        monkeypatch.setattr(app.conf, "broker_write_url", broker)  # what connection_for_write reads
        server = start()
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(),
                   CELERY_BROKER_URL=broker, WORKER_HEARTBEAT_STALE_S="2", PYTHONUNBUFFERED="1")
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.main", "--queues", "translate.en", "--name", "own-broker@localhost",
                 "--concurrency", "4"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            wait_for(own_worker_alive, timeout=120, interval=0.3, what="the test's worker to be ready")
            assert readiness().checks["broker"] == "ok"

            server.terminate()
            server.wait(10)
            result = readiness()
            assert not result.ready and result.checks["broker"].startswith("unreachable")
            # The worker cannot receive jobs: its consumer is reconnecting, so its loop stops beating.
            wait_for(lambda: not own_worker_alive(), timeout=20, interval=0.3, what="the worker to go stale")
            assert "consumer stopped turning" in own_worker().last_error

            server = start()
            assert readiness().checks["broker"] == "ok"
            wait_for(own_worker_alive, timeout=60, interval=0.3, what="the worker to come back")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nthe worker's log:\n{log.read_text()[-3000:]}") from None
        finally:
            stop_process(process, timeout=30)
            server.terminate()
            server.wait(10)


class ConsumerClockTests:
    def test_the_clock_measures_the_time_the_consumer_stood_still(self):
        from workers.consumer_clock import TICK_S, ConsumerClock

        now = [100.0]
        clock = ConsumerClock(clock=lambda: now[0])
        assert clock.stalled_for() == 0  # not started: nothing to judge
        clock.tick()
        now[0] += TICK_S
        assert clock.stalled_for() == 0  # a tick is due only now
        now[0] += 4
        assert clock.stalled_for() == 4
        clock.tick()
        assert clock.stalled_for() == 0


@pytest.mark.django_db
class WedgedConsumerTests:
    def test_a_stalled_consumer_stops_the_beats_and_says_why_then_they_resume(self, settings):
        from workers.consumer_clock import ConsumerClock
        from workers.heartbeat import Heartbeat

        settings.WORKER_HEARTBEAT_STALE_S = 5
        now = [0.0]
        clock = ConsumerClock(clock=lambda: now[0])
        heartbeat = Heartbeat("w@h", device="cpu", queues=["translate.en"], consumer_clock=clock)
        heartbeat.register()
        clock.tick()
        old = timezone.now() - timedelta(seconds=30)
        WorkerHeartbeat.objects.filter(name="w@h").update(beat_at=old)

        now[0] = 10.0  # the consumer has not turned for 10 s
        heartbeat.idle()  # while the device loop turns
        assert heartbeat.beat() is False
        row = WorkerHeartbeat.objects.get(name="w@h")
        assert row.beat_at == old and not row.is_alive(timezone.now())
        assert "consumer stopped turning" in row.last_error

        assert row.loop_at is not None and row.is_running(timezone.now())  # the process itself is fine
        clock.tick()  # it turns again
        assert heartbeat.beat() is True
        assert WorkerHeartbeat.objects.get(name="w@h").is_alive(timezone.now())


def child_pids(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of ``parent``'s children, from /proc."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            pass
    return found


@pytest.mark.django_db(transaction=True)
class StuckWorkerTests:
    """The session's real worker, frozen with SIGSTOP and thawed with SIGCONT."""

    @pytest.fixture(autouse=True)
    def quick_staleness(self, worker, settings):
        settings.WORKER_HEARTBEAT_STALE_S = 2  # as this process judges the worker's rows
        wait_for(lambda: WorkerHeartbeat.objects.filter(name=WORKER_NAME, ready=True).exists(), timeout=10,
                 what="the worker's heartbeat")

    def test_a_frozen_worker_makes_readiness_false_and_it_comes_back(self, worker, http):
        import os
        import signal

        assert http.call("GET", "/readyz")[0] == 200
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: http.call("GET", "/readyz")[0] == 503, timeout=10, what="readiness to go false")
            status, body = http.call("GET", "/readyz")
            assert "translate.en" in body["checks"]["unserved_queues"]
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        wait_for(lambda: http.call("GET", "/readyz")[0] == 200, timeout=10, what="readiness to come back")

    def test_a_long_but_healthy_batch_keeps_the_worker_live(self, worker, http, api_client_key):
        import os
        import signal
        import time

        from cs_portal.portal.services import agent_create
        from translation.models import Translation, TranslationStatus

        # Every lane's engine process: the job may reach any of them.
        engines = [pid for pid, command in child_pids(worker.pid) if "spawn_main" in command]
        assert engines
        agent_create(username="sam", password="secret-pass", working_language="en")
        _, key = api_client_key
        _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}}, key=key)
        for engine in engines:  # the model call now takes as long as the engines are frozen
            os.kill(engine, signal.SIGSTOP)
        try:
            _, message = http.call(
                "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola, mi pedido no llegó"}, key=key
            )
            translation_id = message["translations"][0]["id"]
            wait_for(lambda: Translation.objects.get(pk=translation_id).status == TranslationStatus.RUNNING,
                     what="the job to be in a batch")
            wait_for(lambda: WorkerHeartbeat.objects.get(name=WORKER_NAME).busy_since is not None,
                     what="the heartbeat to say the worker is in a batch")
            deadline = time.monotonic() + 3 * settings_stale()
            while time.monotonic() < deadline:  # well past the staleness limit: no flapping
                assert http.call("GET", "/readyz")[0] == 200
                assert WorkerHeartbeat.objects.get(name=WORKER_NAME).busy_since is not None
                time.sleep(0.5)
        finally:
            for engine in engines:
                os.kill(engine, signal.SIGCONT)
        wait_for(lambda: Translation.objects.get(pk=translation_id).status == TranslationStatus.DONE, what="the job")


def settings_stale() -> float:
    from django.conf import settings

    return settings.WORKER_HEARTBEAT_STALE_S


@pytest.mark.django_db
class WebReadinessTests:
    def test_the_webs_own_readiness_needs_only_its_database(self, client):
        # No worker serves any queue: the system is not ready, yet the web can take messages.
        WorkerHeartbeat.objects.all().delete()  # in this test's transaction only
        assert client.get("/readyz").status_code == 503
        response = client.get("/readyz/web")
        assert response.status_code == 200 and response.json()["checks"] == {"database": "ok"}
