"""The soak: real traffic through the HTTP API into real workers, with faults injected, then a
count of what became of every message (``python manage.py soak``).

Everything it starts is its own and listens on 127.0.0.1 only: a redis-server on a free port
(so it can restart it empty, as the machine's Redis would come back), two CPU workers under
``start_workers`` (hot standbys of each other; one is SIGKILLed every ``--kill-worker-every``
seconds), and the web server (gunicorn). The database is the configured one. Every loop is
bounded in count and time.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workers.lifecycle import ROOT, free_port, free_ports

TEXTS = [
    "Hola, mi pedido no ha llegado todavía.", "¿Dónde está mi paquete?", "Quiero cambiar la dirección de entrega.",
    "Mi factura tiene un error.", "Gracias por la ayuda.", "¿Pueden devolverme el dinero?",
]
START_TIMEOUT_S = 240
SENDERS = 8


@dataclass
class Fault:
    at: float  # seconds since the soak started
    kind: str  # "kill" or "broker"
    detail: str = ""
    wall: float = 0.0  # Unix time it happened


@dataclass
class Report:
    sent: int = 0
    refused: int = 0  # 429 (backpressure): nothing stored, not counted as sent
    errors: int = 0  # any other answer, or none (a timeout): not counted as sent
    done: int = 0
    failed_visible: int = 0
    lost: int = 0
    duplicates: int = 0
    p95_ms: float = 0.0
    failover_ms: list[float] = field(default_factory=list)  # per kill or lost host, in order
    faults: list[Fault] = field(default_factory=list)

    def last_line(self) -> str:
        failover = max(self.failover_ms) if self.failover_ms else 0.0
        return (
            f"sent={self.sent} done={self.done} failed_visible={self.failed_visible} lost={self.lost} "
            f"duplicates={self.duplicates} p95_ms={self.p95_ms:.0f} failover_ms_max={failover:.0f}"
        )


class Broker:
    """A redis-server of the soak's own, restartable (empty, as a Redis without persistence)."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory, self.process = free_port(), directory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("The soak needs redis-server (Debian's redis-server package)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the soak's redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Soak:
    def __init__(self, *, rate: float, seconds: float, kill_every: float, restart_broker_at: float,
                 drain_timeout: float, say, lose_host_at: float = -1.0, stop_db_at: float = -1.0, database=None) -> None:
        self.rate, self.seconds, self.kill_every, self.lose_host_at = rate, seconds, kill_every, lose_host_at
        self.stop_db_at, self.database = stop_db_at, database  # database: a workers.pg_cluster.Cluster
        self.restart_broker_at, self.drain_timeout, self.say = restart_broker_at, drain_timeout, say
        from django.conf import settings

        self.directory = Path(settings.DATA_DIR) / "soak" / time.strftime("%Y%m%d-%H%M%S")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.broker = Broker(self.directory)
        self.workers: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.worker_lines: list[str] = []
        self.translation_ids: list[int] = []
        self.report = Report()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen_done: dict[int, object] = {}

    # --- set-up ---

    def environment(self) -> dict[str, str]:
        return dict(os.environ, CELERY_BROKER_URL=self.broker.url, PYTHONUNBUFFERED="1")

    def start(self) -> tuple[str, str]:
        from django.conf import settings

        from cs_portal.portal.services import agent_create, api_client_create
        from translation.routing import routes

        self.broker.start()
        self.say(f"  broker: redis-server on 127.0.0.1:{self.broker.port} (the soak's own)")
        stamp = str(int(time.time()))
        agent_create(username=f"soak-{stamp}", password=os.urandom(8).hex(), working_language="en")
        _, key = api_client_create(name=f"soak-{stamp}")
        queues = sorted({route.queue for route in routes() if route.enabled})
        plan = self.directory / "plan.json"
        plan.write_text(json.dumps({"workers": [
            # Two CPU workers: this port and the next (start_workers numbers them on).
            {"name": "soak", "device": "cuda:0", "queues": queues, "metrics_port": free_ports(2)},
        ]}))
        self.workers = subprocess.Popen(
            [sys.executable, "manage.py", "start_workers", "--plan", str(plan), "--cpu", "--cpu-workers", "2"],
            cwd=ROOT, env=self.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        threading.Thread(target=lambda: self.worker_lines.extend(iter(self.workers.stdout.readline, "")), daemon=True).start()
        port = free_port()
        self.web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "cs_portal.wsgi", f"--bind=127.0.0.1:{port}", "--workers=1",
             "--threads=16", "--graceful-timeout=5"],
            cwd=ROOT, env=self.environment(), stdout=(self.directory / "web.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any(line.startswith("Ready:") for line in self.worker_lines):
            if self.workers.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the workers did not start:\n" + "".join(self.worker_lines[-30:]))
            time.sleep(0.2)
        self.say(f"  workers: two CPU workers on {', '.join(queues)} (logs in {settings.DATA_DIR / 'logs'})")
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                if self.web.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the web server did not start; see " + str(self.directory / "web.log")) from None
                time.sleep(0.2)
        self.say(f"  web: {base}")
        return base, key

    def worker_pids(self) -> list[int]:
        """The live worker processes of the soak's supervisor (children running workers.main)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.workers.pid and b"workers.main" in command:
                found.append(int(entry.name))
        return found

    # --- traffic and faults ---

    def send(self, base: str, key: str, conversation: int, text: str) -> None:
        body = json.dumps({"text": text, "language": "es"}).encode()
        request = urllib.request.Request(
            f"{base}/api/v1/conversations/{conversation}/messages", data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                message = json.loads(response.read())
        except urllib.error.HTTPError as error:
            with self._lock:
                if error.code == 429:
                    self.report.refused += 1
                else:
                    self.report.errors += 1
            return
        except (urllib.error.URLError, OSError, ValueError):
            with self._lock:
                self.report.errors += 1
            return
        with self._lock:
            self.report.sent += 1
            self.translation_ids.extend(t["id"] for t in message.get("translations", []))

    def conversations(self, base: str, key: str, count: int) -> list[int]:
        ids = []
        for n in range(count):
            request = urllib.request.Request(
                f"{base}/api/v1/conversations", data=json.dumps({"customer": {"name": f"Soak {n}"}, "language": "es"}).encode(),
                method="POST", headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                ids.append(json.loads(response.read())["id"])
        return ids

    def inject(self, started: float) -> None:
        """The faults, at their times (a bounded loop: it ends with the traffic)."""
        next_kill = self.kill_every if self.kill_every > 0 else math.inf
        broker_at = self.restart_broker_at if self.restart_broker_at >= 0 else math.inf
        lose_at = self.lose_host_at if self.lose_host_at >= 0 else math.inf
        db_at = self.stop_db_at if self.stop_db_at >= 0 and self.database is not None else math.inf
        frozen: tuple[int, float] | None = None
        while not self._stop.wait(0.05):
            now = time.monotonic() - started
            if now >= lose_at:
                lose_at = math.inf
                pids = self.worker_pids()
                if len(pids) >= 2:
                    # A lost host: the process stops answering and its supervisor sees no exit;
                    # only its stale heartbeat tells the standby (ended for good 10 s later).
                    victim = random.choice(pids)
                    os.kill(victim, signal.SIGSTOP)
                    frozen = (victim, now + 10)
                    self.fault(Fault(at=now, kind="host", detail=f"SIGSTOP worker pid {victim} (a lost host)", wall=time.time()))
            if now >= db_at:
                db_at = math.inf
                wall = time.time()
                self.database.stop()
                self.fault(Fault(at=now, kind="database", detail="PostgreSQL stopped for 3 s", wall=wall))
                time.sleep(3)
                self.database.start()
            if frozen is not None and now >= frozen[1]:
                os.kill(frozen[0], signal.SIGKILL)
                frozen = None
            if now >= next_kill and next_kill < self.seconds:  # within the traffic's time, however long it runs
                next_kill += self.kill_every
                pids = self.worker_pids()
                if len(pids) >= 2:  # a standby must be there to take over
                    victim = random.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    self.fault(Fault(at=now, kind="kill", detail=f"SIGKILL worker pid {victim}", wall=time.time()))
            if now >= broker_at:
                broker_at = math.inf
                wall = time.time()
                self.broker.stop()
                time.sleep(0.5)
                self.broker.start()
                self.fault(Fault(at=now, kind="broker", detail="redis-server restarted empty", wall=wall))

    def fault(self, fault: Fault) -> None:
        self.report.faults.append(fault)
        self.say(f"  t={fault.at:5.1f}s fault: {fault.detail}")

    def traffic(self, base: str, key: str) -> None:
        conversations = self.conversations(base, key, 20)
        started = time.monotonic()
        injector = threading.Thread(target=self.inject, args=(started,), daemon=True)
        injector.start()
        total = int(self.rate * self.seconds)
        next_report = 5.0
        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            for n in range(total):
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.send, base, key, conversations[n % len(conversations)], TEXTS[n % len(TEXTS)])
                elapsed = time.monotonic() - started
                if elapsed >= next_report:
                    next_report += 5.0
                    try:
                        self.say(f"  t={elapsed:5.1f}s sent {self.report.sent}, refused {self.report.refused}, "
                                 f"errors {self.report.errors}, {self.progress()}")
                        self.look_for_second_stores()
                    except Exception as exc:  # the database is down (--stop-db-at): look again later
                        self.say(f"  t={elapsed:5.1f}s sent {self.report.sent}, errors {self.report.errors}, "
                                 f"the ledger cannot be read ({type(exc).__name__})")
                        from django.db import connection

                        connection.close()
        self._stop.set()
        injector.join(5)
        for pid in self.worker_pids():  # a worker still frozen by the lost-host fault
            try:
                if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def progress(self) -> str:
        from translation.models import Translation, TranslationStatus

        with self._lock:
            ids = list(self.translation_ids)
        counts = {s: 0 for s in TranslationStatus}
        for status, count in _counted(Translation.objects.filter(pk__in=ids)):
            counts[status] = count
        return ", ".join(f"{status.label} {counts[status]}" for status in TranslationStatus)

    # --- the count ---

    def look_for_second_stores(self) -> list:
        """Every done row's finish time, compared with the last look: a done row finished again
        is a second store. Looked at every 5 s of traffic and every turn of the drain."""
        from translation.models import Translation, TranslationStatus

        with self._lock:
            ids = list(self.translation_ids)
        rows = list(Translation.objects.filter(pk__in=ids).values_list("pk", "status", "finished_at"))
        for pk, status, finished_at in rows:
            if status == TranslationStatus.DONE:
                if pk in self._seen_done and self._seen_done[pk] != finished_at:
                    self.report.duplicates += 1
                self._seen_done[pk] = finished_at
        return rows

    def drain(self) -> None:
        from translation.models import TranslationStatus

        deadline = time.monotonic() + self.drain_timeout
        while True:
            rows = self.look_for_second_stores()
            unfinished = sum(1 for _, status, _ in rows if status in (TranslationStatus.QUEUED, TranslationStatus.RUNNING))
            if not unfinished or time.monotonic() > deadline:
                break
            self.say(f"  draining: {unfinished} unfinished, {self.progress()}")
            time.sleep(2)

    def count(self) -> None:
        from translation.models import Translation, TranslationStatus

        rows = list(
            Translation.objects.filter(pk__in=self.translation_ids)
            .select_related("message").only("pk", "status", "finished_at", "started_at", "resends", "message__created_at")
        )
        report = self.report
        report.done = sum(1 for row in rows if row.status == TranslationStatus.DONE)
        report.failed_visible = sum(1 for row in rows if row.status == TranslationStatus.FAILED)
        report.lost = len(self.translation_ids) - report.done - report.failed_visible
        latencies = sorted(
            (row.finished_at - row.message.created_at).total_seconds() * 1000
            for row in rows if row.status == TranslationStatus.DONE
        )
        if latencies:
            report.p95_ms = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
        # Failover: from each kill to the first claim of a handed-over job after it (the
        # standby's pick-up; its compute time is not counted).
        kills = [fault.wall for fault in report.faults if fault.kind in ("kill", "host")]
        others = sorted(fault.wall for fault in report.faults)
        for kill in kills:
            later = [wall for wall in others if wall > kill]
            window_end = min(later) if later else math.inf
            claims = [
                row.started_at.timestamp() for row in rows
                if row.resends and row.started_at and kill < row.started_at.timestamp() < window_end
            ]
            if claims:
                report.failover_ms.append((min(claims) - kill) * 1000)

    def stop(self) -> None:
        if self.web is not None and self.web.poll() is None:
            self.web.terminate()
            try:
                self.web.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.web.pid, signal.SIGKILL)
        if self.workers is not None and self.workers.poll() is None:
            self.workers.send_signal(signal.SIGINT)
            try:
                self.workers.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.workers.pid, signal.SIGKILL)
        self.broker.stop()


def _counted(queryset):
    from django.db.models import Count

    return queryset.values_list("status").annotate(n=Count("id")).values_list("status", "n")
