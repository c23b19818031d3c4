import os
import subprocess
import time

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from workers.soak import Soak


class Command(BaseCommand):
    help = (
        "Drive real traffic through the HTTP API into two real workers, inject faults (worker kills, "
        "a broker restart), wait until the ledger is quiet and count what became of every message. "
        "The last line is machine-readable: sent= done= failed_visible= lost= duplicates= p95_ms= failover_ms_max="
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rate", type=float, default=20.0, help="messages per second (default 20)")
        parser.add_argument("--seconds", type=float, default=60.0, help="how long the traffic lasts (default 60)")
        parser.add_argument("--kill-worker-every", type=float, default=0.0, metavar="K",
                            help="SIGKILL one of the two workers every K seconds (its supervisor restarts it)")
        parser.add_argument("--restart-broker-at", type=float, default=-1.0, metavar="T",
                            help="restart the soak's redis-server, empty, T seconds in")
        parser.add_argument("--lose-host-at", type=float, default=-1.0, metavar="T",
                            help="freeze one worker T seconds in (SIGSTOP: no exit for its supervisor to see), as a lost host")
        parser.add_argument("--stop-db-at", type=float, default=-1.0, metavar="T",
                            help="stop the database for 3 s, T seconds in: the soak then runs on a PostgreSQL cluster "
                                 "of its own (Debian's initdb and pg_ctl), not on the configured database")
        parser.add_argument("--drain-timeout", type=float, default=180.0, help="longest wait for the ledger to be quiet")

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def handle(self, *args, rate, seconds, kill_worker_every, restart_broker_at, lose_host_at, stop_db_at, drain_timeout,
               **options):
        if not 0.1 <= rate <= 500:
            raise CommandError("--rate must be from 0.1 to 500 messages per second")
        if not 1 <= seconds <= 3600:
            raise CommandError("--seconds must be from 1 to 3600")
        if kill_worker_every < 0 or (0 < kill_worker_every < 2):
            raise CommandError("--kill-worker-every must be 0 (never) or at least 2 seconds")
        if restart_broker_at >= seconds or lose_host_at >= seconds:
            raise CommandError("--restart-broker-at and --lose-host-at must fall inside the traffic (less than --seconds)")
        if stop_db_at >= seconds:
            raise CommandError("--stop-db-at must fall inside the traffic (less than --seconds)")
        if not 1 <= drain_timeout <= 3600:
            raise CommandError("--drain-timeout must be from 1 to 3600 seconds")
        started = time.monotonic()
        self.say(f"Soak: {rate:g} messages/s for {seconds:g} s"
                 + (f", a worker killed every {kill_worker_every:g} s" if kill_worker_every else "")
                 + (f", the broker restarted at {restart_broker_at:g} s" if restart_broker_at >= 0 else ""))
        cluster = None
        if stop_db_at >= 0:
            from workers.pg_cluster import Cluster

            self.say("[0/4] A PostgreSQL cluster of the soak's own (it will be stopped and started) ...")
            try:
                cluster = Cluster()
                cluster.create()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                raise CommandError(f"Could not create the soak's PostgreSQL cluster: {exc}") from exc
            use_database(cluster.url)
            self.say(f"  database: {cluster.url}")
        self.say("[1/4] Database and models ...")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("prepare_models", verbosity=0, stdout=self.stdout)
        call_command("import_routes", "--if-empty", verbosity=0, stdout=self.stdout)
        soak = Soak(rate=rate, seconds=seconds, kill_every=kill_worker_every, restart_broker_at=restart_broker_at,
                    drain_timeout=drain_timeout, say=self.say, lose_host_at=lose_host_at, stop_db_at=stop_db_at,
                    database=cluster)
        try:
            self.say("[2/4] Broker, workers and web (all on 127.0.0.1) ...")
            try:
                base, key = soak.start()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from exc
            self.say("[3/4] Traffic ...")
            soak.traffic(base, key)
            self.say("[4/4] Waiting for the ledger to be quiet ...")
            soak.drain()
            soak.count()
        finally:
            soak.stop()
            if cluster is not None:
                from django.db import connection

                connection.close()
                cluster.remove()
        report = soak.report
        self.say(
            f"\nSoak finished in {time.monotonic() - started:.0f} s: {report.sent} messages accepted "
            f"({report.refused} refused with 429, {report.errors} errors or unanswered), "
            f"{len(soak.translation_ids)} translations: {report.done} done, "
            f"{report.failed_visible} failed visibly, {report.lost} lost, {report.duplicates} stored twice."
        )
        for fault in report.faults:
            self.say(f"  t={fault.at:5.1f}s {fault.detail}")
        if report.failover_ms:
            self.say("  failover per kill or lost host (the fault to the standby's first claim of a handed-over job): "
                     + ", ".join(f"{ms:.0f} ms" for ms in report.failover_ms))
        self.say(f"  logs: {soak.directory}")
        self.say(report.last_line())
        if report.lost or report.duplicates:
            raise SystemExit(1)


def use_database(url: str) -> None:
    """Point this process, and the processes it starts, at ``url``."""
    import environ
    from django.conf import settings
    from django.db import connections

    config = environ.Env.db_url_config(url)
    connections["default"].close()
    for target in (settings.DATABASES["default"], connections["default"].settings_dict):
        target.update({key: value for key, value in config.items() if key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")})
    os.environ["DATABASE_URL"] = url

