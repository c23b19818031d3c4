"""The shipped Prometheus rules and Grafana dashboard, checked by the real tools: promtool, and a
Prometheus server scraping a running worker, the web server, the fleet collector and Flower."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, WORKER_METRICS_PORT, broker_url, free_port, wait_for
from translation.models import Translation, TranslationStatus

PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "translation.json"
# Exported by the worker only where NVML reads a GPU: checked against the collector itself below.
GPU_ONLY = {
    "translation_worker_gpu_utilization_ratio", "translation_worker_gpu_memory_used_bytes",
    "translation_worker_gpu_memory_total_bytes",
}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "le",
    "inf", "nan",
}

needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool is missing: bin/test installs Debian's prometheus package"
)
needs_prometheus = pytest.mark.skipif(
    not shutil.which("prometheus"), reason="prometheus is missing: bin/test installs Debian's prometheus package"
)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping clauses, ranges,
    strings and functions taken out first)."""
    text = re.sub(r'"[^"]*"', "", expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def exported_sample_names(text: str) -> set[str]:
    """Sample names an endpoint declares, whether or not a labelled series has a value yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count", ""]}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
        names |= {sample.name for sample in family.samples}
    return names


def get(url: str, authorization: str = "") -> str:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


class PromtoolTests:
    @needs_promtool
    def test_the_alert_rules_are_valid(self):
        result = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr

    @needs_promtool
    def test_the_alerts_fire_on_synthetic_series_and_only_then(self):
        result = subprocess.run(
            ["promtool", "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr

    @needs_promtool
    def test_the_compose_scrape_configuration_is_valid(self):
        result = subprocess.run(
            ["promtool", "check", "config", "--syntax-only", "prometheus.yml"], cwd=PROMETHEUS_DIR, capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


class MetricNameTests:
    def test_names_are_read_out_of_expressions(self):
        expression = 'histogram_quantile(0.95, sum by (le, target) (rate(a_bucket{target=~"$x"}[5m]))) / on() group_left() b'
        assert metric_names(expression) == {"a_bucket", "b"}

    def test_the_gpu_series_are_what_the_nvml_collector_yields(self):
        from workers.metrics import GpuCollector

        class Nvml:  # a stand-in for the NVML library of a machine with one GPU
            def nvmlDeviceGetCount(self):
                return 1

            def nvmlDeviceGetHandleByIndex(self, index):
                return index

            def nvmlDeviceGetUtilizationRates(self, handle):
                return type("Rates", (), {"gpu": 40})()

            def nvmlDeviceGetMemoryInfo(self, handle):
                return type("Memory", (), {"used": 2 * 2**30, "total": 80 * 2**30})()

        families = {family.name: family for family in GpuCollector("gpu0@h", Nvml()).collect()}
        assert set(families) == GPU_ONLY
        assert families["translation_worker_gpu_utilization_ratio"].samples[0].value == 0.4
        # A worker pinned to one GPU reports that one only (NVML sees the whole host).
        pinned = {family.name: family for family in GpuCollector("gpu1@h", Nvml(), "1").collect()}
        assert [s.labels["gpu"] for s in pinned["translation_worker_gpu_memory_used_bytes"].samples] == ["1"]


@pytest.fixture
def flower(broker):
    """Flower as the run command starts it: behind a login, on a free port."""
    port = free_port()
    env = dict(os.environ, CELERY_BROKER_URL=broker_url(15), DJANGO_SETTINGS_MODULE="tests.settings")
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.flower", "--address=127.0.0.1", f"--port={port}", "--basic-auth=ops:flower-secret"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    authorization = "Basic " + base64.b64encode(b"ops:flower-secret").decode()

    def answers():
        try:
            return bool(get(f"http://127.0.0.1:{port}/healthcheck", authorization))
        except OSError:
            return False

    try:
        wait_for(answers, timeout=30, what="Flower")
        yield port, authorization
    finally:
        process.terminate()
        process.wait(10)


@needs_prometheus
@pytest.mark.django_db(transaction=True)
class LivePrometheusTests:
    def test_prometheus_scrapes_every_target_and_the_dashboard_reads_only_exported_metrics(
        self, worker, live_server, http, api_client_key, flower, tmp_path
    ):
        from cs_portal.portal.services import agent_create

        flower_port, flower_authorization = flower
        web = live_server.url.removeprefix("http://")
        (tmp_path / "flower_password").write_text("flower-secret")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "web", "metrics_path": "/metrics", "static_configs": [{"targets": [web]}]},
                {"job_name": "fleet", "metrics_path": "/metrics/fleet", "static_configs": [{"targets": [web]}]},
                {"job_name": "translation-workers", "static_configs": [{"targets": [f"127.0.0.1:{WORKER_METRICS_PORT}"]}]},
                {
                    "job_name": "flower", "static_configs": [{"targets": [f"127.0.0.1:{flower_port}"]}],
                    "basic_auth": {"username": "ops", "password_file": str(tmp_path / "flower_password")},
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        server = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}/api/v1"

        def query(expression: str) -> dict:
            return json.loads(get(f"{api}/query?" + urllib.parse.urlencode({"query": expression})))

        try:
            # A real translation through the worker, so its series have values to scrape.
            agent_create(username="sam", password="secret-pass", working_language="en")
            _, key = api_client_key
            _, conversation = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Lucía"}}, key=key)
            _, message = http.call(
                "POST", f"/api/v1/conversations/{conversation['id']}/messages", {"text": "Hola, mi pedido no llegó"}, key=key
            )
            translation_id = message["translations"][0]["id"]
            wait_for(lambda: Translation.objects.get(pk=translation_id).status == TranslationStatus.DONE,
                     what="the translation")

            def all_up():
                try:
                    result = query("up")["data"]["result"]
                except OSError:
                    return None
                jobs = {sample["metric"]["job"]: sample["value"][1] for sample in result}
                return jobs if len(jobs) == 4 and set(jobs.values()) == {"1"} else None

            wait_for(all_up, timeout=60, interval=0.5, what="Prometheus to scrape all four targets")
            # The worker's series, read back through Prometheus's HTTP API.
            done = wait_for(
                lambda: query('translation_jobs_done_total{job="translation-workers", source="es", target="en"}')["data"]["result"],
                timeout=30, interval=0.5, what="the worker's done counter in Prometheus",
            )
            assert float(done[0]["value"][1]) >= 1
            assert done[0]["metric"]["model"] and done[0]["metric"]["route"] != "none"
            depth = query('translation_queue_depth{queue="translate.en"}')["data"]["result"]
            assert depth and depth[0]["metric"]["job"] == "fleet"

            # Every dashboard expression is valid PromQL for the real engine, and reads only
            # metrics that some endpoint declares.
            exported = set(GPU_ONLY)
            for url, authorization in [
                (f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics", ""),
                (live_server.url + "/metrics", ""),
                (live_server.url + "/metrics/fleet", ""),
                (f"http://127.0.0.1:{flower_port}/metrics", flower_authorization),
            ]:
                exported |= exported_sample_names(get(url, authorization))
            expressions = [e.replace("$__rate_interval", "1m").replace("$target", ".*") for e in dashboard_expressions()]
            assert len(expressions) >= 15
            for expression in expressions:
                assert query(expression)["status"] == "success", expression
                unknown = metric_names(expression) - exported
                assert not unknown, f"{expression} reads {unknown}, which nothing exports"

            # The recording rules run on the scraped series; the alert rules load without error.
            rules = json.loads(get(f"{api}/rules"))["data"]["groups"]
            assert {group["name"] for group in rules} == {"translation-recording", "translation-alerts"}
            assert all(rule["health"] in ("ok", "unknown") for group in rules for rule in group["rules"])
        finally:
            server.terminate()
            server.wait(10)
