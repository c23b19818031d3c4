"""`manage.py start_workers` on this machine (no GPU): one CPU worker, restarted when it dies."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
import redis

from tests.conftest import ROOT, broker_url, database_url, free_port, wait_for
from tests.integration.test_run_command import alive, processes_of

pytestmark = pytest.mark.django_db(transaction=True)


class StartWorkersTests:
    def test_one_cpu_worker_serves_the_plan_and_comes_back_after_a_kill(self, tmp_path, tiny_models):
        plan, metrics_port = tmp_path / "plan.json", free_port()
        plan.write_text(json.dumps({"workers": [
            {"name": "gpu0", "device": "cuda:0", "queues": ["translate.en"], "metrics_port": metrics_port},
            {"name": "gpu1", "device": "cuda:1", "queues": ["translate.es", "translate.en"]},
        ]}))
        broker = broker_url(13)
        redis.Redis.from_url(broker).flushdb()
        env = dict(
            os.environ, DJANGO_SETTINGS_MODULE="tests.settings", CELERY_BROKER_URL=broker, DATA_DIR=str(tmp_path),
            DATABASE_URL=database_url(),
        )
        process = subprocess.Popen(
            [sys.executable, "manage.py", "start_workers", "--plan", str(plan)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
        try:
            wait_for(lambda: any(line.startswith("Ready:") for line in lines) or process.poll() is not None,
                     timeout=180, interval=0.2, what="the workers to be ready")
            output = "".join(lines)
            assert "Ready: 1 worker(s)." in output, output
            assert re.search(rf"cpu@\S+: cpu, queues translate.en, translate.es, metrics :{metrics_port}", output)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                assert b"translation_worker_ready{" in response.read()
            assert re.search(r"cpu@\S+ serves \S+/m2m100 \[fp32, cpu\]: [\d.]+ MiB", output), output
            [pid] = [int(p) for p in re.findall(r"\(pid (\d+),", output)]

            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: "restarting in 1s" in "".join(lines), timeout=30, what="the restart")
            wait_for(lambda: [p for p in processes_of(tmp_path) if p not in (pid, process.pid)], timeout=30,
                     what="a new worker process")

            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0
            assert "Stopped." in "".join(lines)
            assert processes_of(tmp_path) == []
        finally:
            for leftover in processes_of(tmp_path):
                if alive(leftover):
                    os.kill(leftover, signal.SIGKILL)
            if process.poll() is None:
                process.kill()
            process.wait()
