"""A PostgreSQL cluster of one's own, in a temporary directory, on a free port: for a soak or a
test that must stop the database and start it again (Debian's initdb and pg_ctl). initdb
refuses to run as root: as root, the cluster belongs to the postgres user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from workers.lifecycle import free_port

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


class Cluster:
    def __init__(self) -> None:
        if PG_BIN is None:
            raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are missing: apt-get install postgresql")
        # Not under a directory only root may enter: the postgres user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
        self.base.chmod(0o755)
        self.directory, self.port = self.base / "pg", free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/portal"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def create(self) -> None:
        import psycopg

        self.directory.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.directory), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE portal")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory), "-o", options, "-l", str(self.directory / "log"),
                  "-w", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.base, ignore_errors=True)

    def query(self, sql: str):
        import psycopg

        with psycopg.connect(self.url) as connection:
            return connection.execute(sql).fetchall()
