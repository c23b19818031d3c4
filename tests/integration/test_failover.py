"""Hot standby: two CPU workers under `manage.py start_workers` consume one queue; one is killed
(SIGKILL) in the middle of a batch, and its supervisor hands the batch to the other at once."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from cs_portal.portal.services import agent_create, api_client_create, conversation_create, message_create_from_customer
from tests.conftest import ROOT, broker_url, database_url, free_ports, route_update, wait_for
from tests.integration.test_run_command import alive, processes_of
from translation.execution import EMPTY_OUTPUT
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "translate.en.failover"  # a queue of this test's own: no other worker takes its jobs
JOBS = 240


def start_two_workers(tmp_path, lines: list[str]) -> subprocess.Popen:
    plan = tmp_path / "plan.json"
    plan.write_text(f'{{"workers": [{{"name": "gpu0", "device": "cuda:0", "queues": ["{QUEUE}"], "metrics_port": {free_ports(2)}}}]}}')
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", CELERY_BROKER_URL=broker_url(15),
               DATA_DIR=str(tmp_path), DATABASE_URL=database_url())
    process = subprocess.Popen(
        [sys.executable, "manage.py", "start_workers", "--plan", str(plan), "--cpu", "--cpu-workers", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return process


def test_a_killed_workers_batch_is_done_once_by_its_standby(tmp_path, tiny_models):
    route_update("es", "en", queue=QUEUE)
    agent_create(username="sam", password="secret-pass", working_language="en")
    client, _ = api_client_create(name="failover")
    lines: list[str] = []
    process = start_two_workers(tmp_path, lines)
    try:
        wait_for(lambda: any(line.startswith("Ready:") for line in lines) or process.poll() is not None,
                 timeout=180, interval=0.2, what="the two workers")
        output = "".join(lines)
        assert "Ready: 2 worker(s)." in output, output
        pids = {name.split("@")[0]: int(pid) for name, pid in re.findall(r"(\S+@\S+): cpu, .*\(pid (\d+),", output)}
        assert set(pids) == {"cpu", "cpu2"}

        conversation = conversation_create(api_client=client, customer_name="Lucía")
        ids = [
            message_create_from_customer(conversation=conversation, text=f"Mi pedido {n} no ha llegado todavía.",
                                         language="es").translations.get().pk
            for n in range(JOBS)
        ]
        victim = next(name for name in lines_names(output) if name.startswith("cpu@"))
        batch = batch_frozen(pids["cpu"], victim, ids)
        os.kill(pids["cpu"], signal.SIGKILL)
        killed_at = time.time()

        def all_finished():
            return Translation.objects.filter(pk__in=ids, status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).count() == 0

        wait_for(all_finished, timeout=120, interval=0.2, what="every job to finish")
        rows = {row.pk: row for row in Translation.objects.filter(pk__in=ids)}
        # Every job finished, once: done, or failed visibly (random weights may answer nothing).
        for row in rows.values():
            assert row.status == TranslationStatus.DONE or row.failure_reason == EMPTY_OUTPUT, row.failure_reason
        handed_over = [rows[pk] for pk in batch if rows[pk].resends]
        assert handed_over, "the supervisor handed the killed worker's batch over"
        standby = next(name for name in lines_names(output) if name.startswith("cpu2@"))
        assert all(row.worker == standby and row.attempts == 2 for row in handed_over)
        failover_ms = (min(row.started_at.timestamp() for row in handed_over) - killed_at) * 1000
        print(f"\nfailover: {len(handed_over)} job(s) of the killed batch; standby claimed the first "
              f"{failover_ms:.0f} ms after the kill")
        assert "job(s) handed over" in "".join(lines)
    finally:
        forget_unacked(QUEUE)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        for leftover in processes_of(tmp_path):
            if alive(leftover):
                os.kill(leftover, signal.SIGKILL)


def batch_frozen(pid: int, worker: str, ids: list[int]) -> list[int]:
    """The jobs ``worker`` has claimed, with its process stopped (SIGSTOP) so the batch cannot
    finish between the look and the kill. A batch that finished just before the stop (nothing
    claimed once a commit in flight has landed) is let go, and the next one caught."""

    def running() -> list[int]:
        return list(Translation.objects.filter(pk__in=ids, status=TranslationStatus.RUNNING, worker=worker)
                    .values_list("pk", flat=True))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait_for(running, timeout=60, interval=0.005, what="a batch on the first worker")
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)  # a commit the worker sent before the stop lands meanwhile
        claimed = running()
        if claimed:
            return claimed
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("no batch of the first worker was caught running in 60s")


def forget_unacked(queue: str) -> None:
    """The killed worker's messages wait, unacknowledged, for Redis's visibility timeout; they
    are this test's, and must not outlive it in the shared test broker."""
    import json

    import redis

    broker = redis.Redis.from_url(broker_url(15))
    for tag, raw in broker.hgetall("unacked").items():
        if json.loads(raw)[2] == queue:
            broker.hdel("unacked", tag)
            broker.zrem("unacked_index", tag)


def lines_names(output: str) -> list[str]:
    return re.findall(r"^\s+(\S+@\S+): cpu,", output, flags=re.M)
