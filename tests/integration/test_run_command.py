"""The README's run command itself, started in the background on free ports, used, and stopped."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, Http, broker_url, free_port, wait_for

READY_TIMEOUT_S = 300


def processes_of(data_dir: Path) -> list[int]:
    """Pids of live processes started for ``data_dir`` (found by DATA_DIR in their environment)."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def get_text(url: str, authorization: str = "") -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample_sum(text: str, name: str) -> float:
    """The sum of a metric's samples over all its label sets (parsed by prometheus_client)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name
    )


def start_run_command(data_dir: Path) -> tuple[subprocess.Popen, list[str], int, int]:
    port, flower_port, metrics_port = free_port(), free_port(), free_port()
    broker = broker_url(14)
    redis.Redis.from_url(broker).flushdb()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MODELS_DIR", "DJANGO_SETTINGS_MODULE")}
    env.update(
        DATA_DIR=str(data_dir), PORTAL_PORT=str(port), FLOWER_PORT=str(flower_port), CELERY_BROKER_URL=broker,
        WORKER_METRICS_PORT=str(metrics_port),
    )
    process = subprocess.Popen(
        [str(ROOT / "bin" / "run")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    return process, lines, port, flower_port


def kill_leftovers(data_dir: Path) -> None:
    """Only does something when a test failed midway: nothing of a run may outlive its test."""
    for pid in processes_of(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def run_command(tmp_path: Path):
    process, lines, port, flower_port = start_run_command(tmp_path)
    try:
        wait_for(
            lambda: any(line.startswith("Ready.") for line in lines) or process.poll() is not None,
            timeout=READY_TIMEOUT_S, interval=0.5, what="the run command to say it is ready",
        )
        assert process.poll() is None, "".join(lines)
        yield process, lines, tmp_path, port, flower_port
    finally:
        kill_leftovers(tmp_path)
        process.wait()


class RunCommandTests:
    def test_starts_translates_and_stops_cleanly(self, run_command):
        process, lines, data_dir, port, flower_port = run_command
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/api/docs/" in output
        assert f"http://127.0.0.1:{flower_port}/" in output
        child_pids = [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", output)]
        assert len(child_pids) == 3

        credentials = json.loads((data_dir / "credentials.json").read_text())
        assert credentials["admin_password"] in output
        api = Http(f"http://127.0.0.1:{port}")
        key = credentials["api_key"]
        status, conversation = api.call("POST", "/api/v1/conversations", {"customer": {"name": "Smoke"}}, key=key)
        assert status == 201
        status, message = api.call(
            "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola, ¿dónde está mi pedido?"}, key=key
        )
        assert status == 201

        def translated():
            _, listed = api.call("GET", f"/api/v1/conversations/{conversation['id']}/messages", key=key)
            translation = listed[-1]["translations"][0]
            return translation if translation["status"] in ("done", "failed") else None

        translation = wait_for(translated, timeout=60, interval=0.3, what="the translation")
        assert translation["status"] == "done", (data_dir / "logs" / "worker.log").read_text()[-3000:]
        assert translation["text"]

        flower = Http(f"http://127.0.0.1:{flower_port}")
        assert flower.call("GET", "/api/workers")[0] == 401  # behind a login
        import base64

        auth = "Basic " + base64.b64encode(f"admin:{credentials['admin_password']}".encode()).decode()
        status, queues = flower.call("GET", "/api/queues/length", headers={"Authorization": auth})
        assert status == 200
        assert {"translate.en", "translate.es"} <= {queue["name"] for queue in queues["active_queues"]}
        status, workers = flower.call("GET", "/api/workers?refresh=1", headers={"Authorization": auth})
        assert status == 200
        [(name, worker)] = workers.items()
        assert name.startswith("embedded-")
        assert {"translate.en", "translate.es"} <= {queue["name"] for queue in worker["active_queues"]}

        # Flower's own metrics and health answer only with its credentials.
        assert get_text(f"http://127.0.0.1:{flower_port}/metrics")[0] == 401
        assert get_text(f"http://127.0.0.1:{flower_port}/healthcheck")[0] == 401
        status, text = get_text(f"http://127.0.0.1:{flower_port}/metrics", auth)
        assert status == 200 and "flower_events_total" in text

        # Metrics: the web runs two processes; their counts add up to every message sent.
        jobs = len(message["translations"])
        [summary_line] = [line for line in output.splitlines() if "Prometheus metrics" in line]
        worker_port = re.findall(r":(\d+)/metrics", summary_line)[-1]

        def finished_jobs() -> float:  # random weights may answer nothing: an empty output fails
            text = get_text(f"http://127.0.0.1:{worker_port}/metrics")[1]
            return sample_sum(text, "translation_jobs_done_total") + sample_sum(text, "translation_jobs_failed_total")

        finished_before = finished_jobs()  # the demo conversation's jobs, and the first message's
        for number in range(8):
            _, sent = api.call(
                "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": f"¿Dónde está mi pedido {number}?"},
                key=key,
            )
            jobs += len(sent["translations"])
        assert jobs >= 9
        status, text = get_text(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert sample_sum(text, "translation_jobs_requested_total") == jobs
        new_jobs = jobs - len(message["translations"])
        wait_for(lambda: finished_jobs() == finished_before + new_jobs, timeout=60, what="the worker to count the new jobs")

        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(60) == 0
        time.sleep(0.2)
        assert "Stopped." in "".join(lines)
        assert list(data_dir.glob("flower.db*")), "Flower saves its state at exit"
        assert [pid for pid in child_pids if alive(pid)] == []
        assert processes_of(data_dir) == []  # gunicorn's workers included
        # Each web process froze what it had loaded (cs_portal/gunicorn_conf.py).
        frozen = [int(count) for count in re.findall(r"Froze (\d+) objects", (data_dir / "logs" / "web.log").read_text())]
        assert len(frozen) >= 2 and min(frozen) > 10_000  # two processes (more if one was restarted)

    def test_a_stop_during_start_up_stops_what_had_started(self, tmp_path):
        process, lines, _, _ = start_run_command(tmp_path)
        try:
            wait_for(lambda: any("started worker" in line for line in lines), timeout=READY_TIMEOUT_S, what="the worker to start")
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail("the run command did not stop:\n" + "".join(lines))
            assert process.returncode == 0
            time.sleep(0.2)
            output = "".join(lines)
            assert "Stopped." in output
            assert "Traceback" not in output
            assert processes_of(tmp_path) == []
        finally:
            kill_leftovers(tmp_path)
            process.wait()
