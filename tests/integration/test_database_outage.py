"""The database stops while a worker is writing, and comes back: nothing lost, nothing stored
twice. The PostgreSQL cluster is the test's own (Debian's initdb and pg_ctl, in a temporary
directory, on a free port), and so is the broker's database (Redis db 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis

from tests.conftest import ROOT, broker_url, wait_for
from workers.lifecycle import stop_process
from workers.pg_cluster import PG_BIN, Cluster

MESSAGES = 900  # several batches after the first stored one: some are still to do when the database stops

SEND = """
import json, sys, django
django.setup()
from cs_portal.portal.services import agent_create, api_client_create, conversation_create, message_create_from_customer
agent_create(username="sam", password="secret-pass", working_language="en")
client, _ = api_client_create(name="outage")
conversation = conversation_create(api_client=client, customer_name="Lucía")
from django.db import transaction
with transaction.atomic():  # sent together on commit: the worker is still busy with them when the database stops
    ids = [message_create_from_customer(conversation=conversation, text=f"¿Dónde está mi pedido {n}?", language="es").translations.get().pk
           for n in range(int(sys.argv[1]))]
print(json.dumps(ids))
"""


@pytest.fixture
def cluster():
    cluster = Cluster()
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.remove()


def test_a_database_outage_while_the_worker_writes_loses_and_duplicates_nothing(cluster, tmp_path, tiny_models):
    assert PG_BIN is not None, "Debian's PostgreSQL server binaries (initdb, pg_ctl) are on the CI machines"
    broker = broker_url(12)
    redis.Redis.from_url(broker).flushdb()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=cluster.url, CELERY_BROKER_URL=broker,
               DATABASE_CONN_MAX_AGE="60", PYTHONUNBUFFERED="1")
    for command in (["migrate", "--noinput"], ["import_routes", "--if-empty"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "workers.main", "--queues", "all", "--name", "outage@localhost"],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: cluster.query("SELECT count(*) FROM workers_workerheartbeat WHERE ready")[0][0] == 1,
                 timeout=120, interval=0.3, what="the worker to be ready")
        sent = subprocess.run([sys.executable, "-c", SEND, str(MESSAGES)], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True, timeout=120)
        ids = json.loads(sent.stdout.strip().splitlines()[-1])
        assert len(ids) == MESSAGES

        def done() -> int:
            return cluster.query("SELECT count(*) FROM translation_translation WHERE status = 3")[0][0]

        wait_for(lambda: done() >= 20, timeout=60, interval=0.05, what="the worker to be writing")
        cluster.stop()  # while the worker claims, computes and stores
        stopped_at = time.time()
        time.sleep(3)
        cluster.start()

        def quiet() -> bool:
            return cluster.query("SELECT count(*) FROM translation_translation WHERE status IN (1, 2)")[0][0] == 0

        try:
            wait_for(quiet, timeout=240, interval=0.5, what="every job to finish after the outage")
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nthe worker's log:\n{log.read_text()[-3000:]}") from None
        rows = cluster.query("SELECT id, status, failure_reason, extract(epoch FROM finished_at) FROM translation_translation")
        assert sorted(row[0] for row in rows) == sorted(ids)  # one row per message: nothing lost, none added
        for _, status, reason, _ in rows:
            assert status == 3 or reason == "The model produced an empty translation.", reason
        assert any(finished > stopped_at for *_, finished in rows), "some jobs were finished only after the outage"
        assert "unreachable" in log.read_text() or "OperationalError" in log.read_text()
    finally:
        stop_process(worker, timeout=30)
