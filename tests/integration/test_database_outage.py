"""The database stops while a worker is writing, and comes back: nothing lost, nothing stored
twice. The PostgreSQL cluster is the test's own (Debian's initdb and pg_ctl, in a temporary
directory, on a free port), and so is the broker's database (Redis db 12)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import ROOT, broker_url, free_port, wait_for
from workers.lifecycle import stop_process

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
MESSAGES = 300

SEND = """
import json, sys, django
django.setup()
from cs_portal.portal.services import agent_create, api_client_create, conversation_create, message_create_from_customer
agent_create(username="sam", password="secret-pass", working_language="en")
client, _ = api_client_create(name="outage")
conversation = conversation_create(api_client=client, customer_name="Lucía")
ids = [message_create_from_customer(conversation=conversation, text=f"¿Dónde está mi pedido {n}?", language="es").translations.get().pk
       for n in range(int(sys.argv[1]))]
print(json.dumps(ids))
"""


class Cluster:
    """A PostgreSQL cluster of the test's own. initdb refuses to run as root: as root, the
    cluster belongs to the postgres user."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory / "pg", free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/portal"

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        self.directory.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.run(str(PG_BIN / "initdb"), "-D", str(self.directory), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE portal")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} -c fsync=off"
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory), "-o", options, "-l", str(self.directory / "log"),
                 "-w", "start")

    def stop(self) -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory), "-m", "fast", "-w", "stop")

    def query(self, sql: str):
        with psycopg.connect(self.url) as connection:
            return connection.execute(sql).fetchall()


@pytest.fixture
def cluster():
    # Not under pytest's tmp_path, whose parents only root may enter: the postgres user must.
    directory = Path(tempfile.mkdtemp(prefix="pg-outage-"))
    directory.chmod(0o755)
    cluster = Cluster(directory)
    try:
        cluster.create()
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(directory, ignore_errors=True)


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
