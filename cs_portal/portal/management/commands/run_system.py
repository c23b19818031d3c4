import os
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError

from cs_portal.commands import database_unreachable
from cs_portal.embedded import Credentials, EmbeddedSystem, port_is_free
from workers.lifecycle import StopRequested, install_stop_signals, raise_if_stop_requested
from cs_portal.portal.demo import demo_data_ensure


def tcp_port(value: str) -> int:
    """A port to listen on, 1-65535 (argparse also applies it to a default taken from the
    environment, so PORTAL_PORT=abc is refused as clearly as --port abc)."""
    import argparse

    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


class Command(BaseCommand):
    help = "Start the whole system on embedded defaults (web, one CPU worker, Flower); Ctrl-C stops it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=tcp_port, default=os.environ.get("PORTAL_PORT", "8000"),
                            help="the portal's port (default: PORTAL_PORT, else 8000)")
        parser.add_argument("--flower-port", type=tcp_port, default=os.environ.get("FLOWER_PORT", "5555"),
                            help="Flower's port (default: FLOWER_PORT, else 5555)")
        parser.add_argument(
            "--worker-metrics-port", type=tcp_port, default=os.environ.get("WORKER_METRICS_PORT", "9191"),
            help="the worker's Prometheus metrics port (default: WORKER_METRICS_PORT, else 9191)",
        )

    def say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def handle(self, *args, port: int, flower_port: int, worker_metrics_port: int, **options) -> None:
        started = time.monotonic()
        ports = (("--port", port), ("--flower-port", flower_port), ("--worker-metrics-port", worker_metrics_port))
        for name, value in ports:
            if not port_is_free(value):
                raise CommandError(f"Port {value} ({name}) is taken; pick another, e.g. {name}={value + 1}")
        data_dir = settings.DATA_DIR
        self.say(f"Data directory: {data_dir}")
        system = EmbeddedSystem(
            port=port, flower_port=flower_port, say=self.say, data_dir=data_dir, worker_metrics_port=worker_metrics_port
        )
        # From here on, Ctrl-C or SIGTERM stops whatever has started, in order.
        install_stop_signals()
        status = 1
        try:
            broker_url = system.choose_broker()
            raise_if_stop_requested()
            self.say("[1/4] Database migrations ...")
            # With the system checks, the database ones included (an SQLite too old for the ledger).
            call_command("migrate", interactive=False, verbosity=0, skip_checks=False)
            call_command("collectstatic", interactive=False, verbosity=0)
            raise_if_stop_requested()
            self.say("[2/4] Tiny models (random weights: output is not a real translation) ...")
            call_command("prepare_models", verbosity=0, stdout=self.stdout)
            raise_if_stop_requested()
            self.say("[3/4] Routes and demo data ...")
            # A first start gets the initial routes; later starts keep what admins changed.
            call_command("import_routes", if_empty=True, stdout=self.stdout)
            credentials = self.demo_data(data_dir / "credentials.json")
            raise_if_stop_requested()
            self.say("[4/4] Starting processes ...")
            system.start(credentials, broker_url)
            system.wait_ready(credentials)
            self.print_summary(port, flower_port, worker_metrics_port, credentials, time.monotonic() - started)
            status = system.supervise()
        except StopRequested:
            self.say("Stopping ...")
            status = 0
        except RuntimeError as exc:
            self.stderr.write(str(exc))
        except (OperationalError, InterfaceError) as exc:  # the database of DATABASE_URL is away
            self.stderr.write(database_unreachable(exc))
        finally:
            system.stop()
        self.say("Stopped.")
        if status:
            raise SystemExit(status)

    def demo_data(self, path) -> Credentials:
        credentials, created = Credentials.load_or_create(path)
        credentials.api_key, credentials.agent_token = demo_data_ensure(
            admin_password=credentials.admin_password,
            agent_password=credentials.agent_password,
            api_key=credentials.api_key,
            agent_token=credentials.agent_token,
            reset_passwords=created,  # the old credentials file was lost: the printed passwords must work
        )
        credentials.save(path)
        return credentials

    def print_summary(
        self, port: int, flower_port: int, worker_metrics_port: int, credentials: Credentials, seconds: float
    ) -> None:
        web = f"http://127.0.0.1:{port}"
        self.say(
            f"""
Support portal is running ({seconds:.0f}s to start).

  Agent workspace                 {web}/workspace/      agent / {credentials.agent_password}
  Customer chat (demo)            {web}/chat/#key={credentials.api_key}
  Admin (routes, ledger, teams)   {web}/admin/          admin / {credentials.admin_password}
  API docs (OpenAPI)              {web}/api/docs/       schema: {web}/api/schema/
  Flower (queues, workers)        http://127.0.0.1:{flower_port}/   admin / {credentials.admin_password}
  Operations (latency, queues)    {web}/admin/operations/
  Health                          {web}/healthz   {web}/readyz   python manage.py status
  Prometheus metrics              {web}/metrics   {web}/metrics/fleet   http://127.0.0.1:{worker_metrics_port}/metrics
  Customer API key                {credentials.api_key}
  Agent API token                 {credentials.agent_token}
  Credentials file                {settings.DATA_DIR / 'credentials.json'}
  Logs                            {settings.DATA_DIR / 'logs'}

Try it:
  curl -s -H "Authorization: Bearer {credentials.api_key}" {web}/api/v1/conversations/1/messages

Ready. Press Ctrl-C to stop."""
        )
