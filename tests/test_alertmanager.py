"""The shipped Alertmanager configuration (docker/alertmanager/alertmanager.yml): valid for the
real tools, wired into Compose and Kubernetes, and routing and holding back alerts as the README
says, checked with Debian's Alertmanager itself."""

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.conftest import free_port, wait_for
from tests.k8s_manifests import DOCKER, K8S, config_map, container_port, find, mounts, pod_template, prometheus_config

CONFIG = DOCKER / "alertmanager" / "alertmanager.yml"
RULES = DOCKER / "prometheus" / "alerts.yml"
RECEIVER_OF = {"page": "pager", "ticket": "tickets"}

needs_amtool = pytest.mark.skipif(
    not shutil.which("amtool"), reason="amtool is missing: bin/test installs Debian's prometheus-alertmanager package"
)
needs_alertmanager = pytest.mark.skipif(
    not shutil.which("prometheus-alertmanager"),
    reason="prometheus-alertmanager is missing: bin/test installs Debian's prometheus-alertmanager package",
)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def examples_uncommented(text: str) -> str:
    """The file with every commented receiver example (``    # key:`` and what it holds) in force."""
    return "".join(re.sub(r"^    # (?=[a-z_]+:|  )", "    ", line) for line in text.splitlines(True))


def amtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["amtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


class ConfigurationTests:
    @needs_amtool
    def test_amtool_accepts_the_file_and_its_commented_examples(self, tmp_path):
        done = amtool("check-config", str(CONFIG))
        assert done.returncode == 0, done.stdout + done.stderr
        examples = tmp_path / "alertmanager.yml"
        examples.write_text(examples_uncommented(CONFIG.read_text()))
        assert "email_configs:" in examples.read_text().replace("# email_configs", "")  # the examples were in force
        done = amtool("check-config", str(examples))
        # The examples' *_file settings are Alertmanager 0.25's (the image is 0.27); an older amtool
        # (Ubuntu 22.04's 0.23) refuses them by name, nothing else.
        version = tuple(int(n) for n in re.search(r"version (\d+)\.(\d+)", amtool("--version").stdout).groups())
        older = version < (0, 25) and "field routing_key_file not found" in done.stdout + done.stderr
        assert done.returncode == 0 or older, done.stdout + done.stderr

    @needs_amtool
    @pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
    def test_every_rule_goes_to_the_receiver_of_its_severity(self, rule):
        labels = {"alertname": rule["alert"], **rule["labels"]}
        done = amtool("config", "routes", "test", f"--config.file={CONFIG}", *(f"{k}={v}" for k, v in labels.items()))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == RECEIVER_OF[rule["labels"]["severity"]]

    def test_the_held_back_alerts_are_alerts_of_the_rules(self):
        names = {rule["alert"] for rule in alert_rules()}
        for inhibit in yaml.safe_load(CONFIG.read_text())["inhibit_rules"]:
            for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
                name, _, pattern = matcher.partition("=")
                assert name.rstrip("=~") == "alertname"
                alternatives = pattern.lstrip("~").strip('"').split("|")
                assert set(alternatives) <= names, alternatives


class WiringTests:
    def test_compose_runs_it_with_this_folder_and_prometheus_sends_to_it(self):
        compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
        service = compose["services"]["alertmanager"]
        [config_file] = [arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--config.file=")]
        assert f"./alertmanager:{config_file.rsplit('/', 1)[0]}:ro" in service["volumes"]
        assert config_file.endswith("/alertmanager.yml")
        storage = [arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--storage.path=")]
        assert [f"alertmanager-data:{storage[0]}"] == [v for v in service["volumes"] if v.startswith("alertmanager-data:")]
        assert "alertmanager-data" in compose["volumes"] and service["restart"] == "unless-stopped"
        prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
        [[target]] = [c["targets"] for a in prometheus["alerting"]["alertmanagers"] for c in a["static_configs"]]
        assert target == "alertmanager:9093"  # the service's name, Alertmanager's own port
        assert "alertmanager" in compose["services"]["prometheus"]["depends_on"]

    def test_kubernetes_runs_the_same_file_and_prometheus_sends_to_its_service(self):
        assert config_map("alertmanager-config")["alertmanager.yml"] == CONFIG.read_text()
        deployment = find("Deployment", "alertmanager")
        spec = pod_template(deployment)["spec"]
        [container] = spec["containers"]
        [config_file] = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--config.file=")]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == config_file]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes[mount["name"]]["configMap"]["name"] == "alertmanager-config"
        assert mount["subPath"] == "alertmanager.yml"
        # The receivers' secret files, where the file's examples (and Compose) have them.
        secrets = mounts(spec, container)["/etc/alertmanager/secrets"]["secret"]
        examples = examples_uncommented(CONFIG.read_text())
        for item in secrets["items"]:
            assert f"/etc/alertmanager/secrets/{item['path']}" in examples
        [[target]] = [c["targets"] for a in prometheus_config()["alerting"]["alertmanagers"] for c in a["static_configs"]]
        host, port = target.rsplit(":", 1)
        name, namespace, _ = host.split(".")
        service = find("Service", name)
        assert namespace == service["metadata"]["namespace"]
        assert pod_template(deployment)["metadata"]["labels"].items() >= service["spec"]["selector"].items()
        [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        assert container_port(container, service_port["targetPort"]) == 9093
        assert "alertmanager.yaml" in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


class Webhook(ThreadingHTTPServer):
    """Collects what Alertmanager posts: (receiver, alertname, labels) per alert."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received += [(body["receiver"], a["labels"]["alertname"], a["labels"]) for a in body["alerts"]]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def names(self, receiver: str) -> set[str]:
        return {name for got, name, _ in self.received if got == receiver}


@needs_alertmanager
class RunningTests:
    @pytest.fixture
    def alertmanager(self, tmp_path):
        """The shipped file with each receiver posting to a webhook of the test's, and the group
        waits shortened from seconds and minutes to a second (nothing else changed)."""
        webhook = Webhook()
        threading.Thread(target=webhook.serve_forever, daemon=True).start()
        config = yaml.safe_load(CONFIG.read_text())
        for receiver in config["receivers"]:
            assert set(receiver) == {"name"}  # shipped notifying no one
            receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{webhook.server_port}/", "send_resolved": False}]
        config["route"].update(group_wait="1s", group_interval="1s")
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "alertmanager.log").open("wb")  # a file: a pipe nobody reads would fill and stall it
        process = subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=log,
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=30, what="Alertmanager ready")
            yield base, webhook
        finally:
            process.terminate()
            process.wait(timeout=10)
            log.close()
            webhook.shutdown()

    @staticmethod
    def fire(base: str, *alerts: dict) -> None:
        body = json.dumps([{"labels": labels} for labels in alerts]).encode()
        request = urllib.request.Request(f"{base}/api/v2/alerts", data=body, headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=10).status == 200

    def test_pages_and_tickets_reach_their_receivers(self, alertmanager):
        base, webhook = alertmanager
        self.fire(base, {"alertname": "TranslationQueueNotConsumed", "severity": "page", "queue": "translate.es"},
                  {"alertname": "TranslationGpuMemoryFull", "severity": "ticket", "worker": "gpu0"})
        wait_for(lambda: webhook.names("pager") and webhook.names("tickets"), timeout=20, what="both notifications")
        assert webhook.names("pager") == {"TranslationQueueNotConsumed"}
        assert webhook.names("tickets") == {"TranslationGpuMemoryFull"}

    def test_while_the_broker_is_unreachable_only_the_broker_pages(self, alertmanager):
        base, webhook = alertmanager
        self.fire(base, {"alertname": "TranslationBrokerUnreachable", "severity": "page"})
        wait_for(lambda: webhook.names("pager"), timeout=20, what="the broker's page")
        self.fire(base, {"alertname": "TranslationQueueNotConsumed", "severity": "page", "queue": "translate.fr"},
                  {"alertname": "TranslationBacklogStuck", "severity": "page", "queue": "translate.fr"},
                  {"alertname": "TranslationFailureRateHigh", "severity": "ticket", "target": "fr"})
        wait_for(lambda: webhook.names("tickets"), timeout=20, what="the ticket no broker explains")
        time.sleep(3)  # three group intervals: a held-back page would have been sent by now
        assert webhook.names("pager") == {"TranslationBrokerUnreachable"}
        assert webhook.names("tickets") == {"TranslationFailureRateHigh"}
