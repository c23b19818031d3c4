"""Flower itself, started as ops start it (``python -m workers.flower``), on the test broker: its task
list holds every job of the real worker, in jobs dispatch and in ledger dispatch alike."""

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction

from cs_portal.embedded import http_ok
from cs_portal.portal.services import conversation_create, message_create_from_customer
from tests.conftest import ROOT, WORKER_NAME, database_url, free_ports, wait_for
from translation.models import Translation, TranslationStatus
from translation.tasks import TRANSLATE_TASK
from workers.lifecycle import stop_process

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = ("ops", "flower-test")
JOBS = 30


@pytest.fixture
def flower(tmp_path):
    """Flower on a free port, behind its login, reading the test broker's events."""
    port = free_ports(1)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url(),
               CELERY_BROKER_URL=settings.CELERY_BROKER_URL, FLOWER_BASIC_AUTH=":".join(LOGIN))
    log = Path(tmp_path) / "flower.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "workers.flower", "--address=127.0.0.1", f"--port={port}"],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or http_ok(f"{url}/healthcheck", LOGIN), timeout=60,
                 what="Flower to answer")
        assert process.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        stop_process(process, timeout=10)


def flower_tasks(url: str) -> dict[str, dict]:
    """Flower's task list (its API), by task id."""
    request = urllib.request.Request(f"{url}/api/tasks?taskname={TRANSLATE_TASK}")
    request.add_header("Authorization", "Basic " + base64.b64encode(":".join(LOGIN).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def listed(url: str, rows) -> dict[int, dict]:
    """The rows Flower lists as translate tasks, by row id (from the task's argument)."""
    ids = {f"[{row.pk}]": row.pk for row in rows}
    return {ids[task["args"]]: task for task in flower_tasks(url).values() if task.get("args") in ids}


def burst(client, name: str, count: int):
    with transaction.atomic():  # sent together, on commit
        conversation = conversation_create(api_client=client, customer_name=name)
        for i in range(count):
            message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.", language="es")
    rows = Translation.objects.filter(message__conversation=conversation)
    wait_for(lambda: not rows.filter(status__in=[TranslationStatus.QUEUED, TranslationStatus.RUNNING]).exists(),
             timeout=120, interval=0.2, what=f"{count} translations to finish")
    return list(rows)


def test_flower_lists_every_job_in_both_dispatches(worker, api_client_key, flower, settings):
    client, _ = api_client_key
    # Flower hears only what is sent once it listens: a job at a time until it lists one.
    for attempt in range(10):
        first = burst(client, f"Flower {attempt}", 1)
        try:
            wait_for(lambda first=first: listed(flower, first), timeout=3, what="Flower to list a job")
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("Flower never listed a job of the worker")
    jobs = burst(client, "Jobs", JOBS)
    settings.TRANSLATION_DISPATCH = "ledger"  # this process, the portal, rings; the worker takes both kinds
    ledger = burst(client, "Ledger", JOBS)
    for rows in (jobs, ledger):
        wait_for(lambda rows=rows: len([t for t in listed(flower, rows).values() if t["state"] == "SUCCESS"]) == JOBS,
                 timeout=15, what="Flower to list each job as succeeded")
        tasks = listed(flower, rows)
        assert {(task["name"], task["worker"], task["result"]) for task in tasks.values()} == {
            (TRANSLATE_TASK, WORKER_NAME, "'done'")}
        assert all(task["received"] and task["started"] and task["succeeded"] for task in tasks.values())
    assert all("'dispatch': 'ledger'" in task["kwargs"] for task in listed(flower, ledger).values())
