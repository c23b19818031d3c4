"""docker/ is checked by what runs without a Docker engine: parsing, and agreement with the code."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from translation.services import routes_import
from workers.main import parse_args

DOCKER = Path(__file__).resolve().parent.parent / "docker"
SETTINGS = (DOCKER.parent / "cs_portal" / "settings.py").read_text()
# Read by programs other than the portal's settings.
EXTERNAL_VARIABLES = {
    "HF_HOME", "HF_HUB_OFFLINE", "FLOWER_BASIC_AUTH", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
    "PROMETHEUS_MULTIPROC_DIR",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


class ComposeTests:
    def test_has_the_production_services(self, compose):
        assert {"postgres", "redis", "web", "flower", "worker-gpu0"} <= set(compose["services"])

    def test_every_variable_given_to_the_portal_is_read_by_its_settings(self, compose):
        read = set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', SETTINGS))
        ours = {name: service for name, service in compose["services"].items() if "build" in service}
        for name, service in ours.items():
            for variable in service.get("environment", {}):
                assert variable in read | EXTERNAL_VARIABLES, f"{name} sets {variable}, which nothing reads"

    def test_each_gpu_worker_requests_exactly_one_gpu_and_parses(self, compose):
        workers = {name: s for name, s in compose["services"].items() if name.startswith("worker-gpu")}
        assert workers
        for name, service in workers.items():
            [device] = service["deploy"]["resources"]["reservations"]["devices"]
            assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
            args = parse_args(service["command"][3:])
            assert args.device == "cuda:0", f"{name}: the container sees its one GPU as cuda:0"

    def test_every_service_comes_back_after_a_crash_or_a_reboot(self, compose):
        """A worker ends on purpose for its supervisor to start it again (a dead engine process,
        a GPU lost): in Compose the supervisor is the restart policy."""
        assert {name: service.get("restart") for name, service in compose["services"].items()} == {
            name: "unless-stopped" for name in compose["services"]}

    def test_each_volume_of_an_image_of_ours_is_a_folder_the_image_gives_its_user(self, compose):
        """A named volume mounted on a folder the image lacks is created owned by root, and the
        portal's user cannot write it (Flower lost its state at every restart)."""
        dockerfiles = {"docker/Dockerfile": (DOCKER / "Dockerfile").read_text(),
                       "docker/Dockerfile.gpu": (DOCKER / "Dockerfile.gpu").read_text()}
        for name, service in compose["services"].items():
            if "build" not in service:
                continue
            text = dockerfiles[service["build"]["dockerfile"]]
            [owned] = re.findall(r"chown portal ([^\n]+)", text)
            for volume in service.get("volumes", []):
                if isinstance(volume, str) and ":" in volume:
                    folder = volume.split(":")[1]
                    assert folder in owned.split(), f"{name}: {folder} is not the portal user's in its image"

    def test_the_portal_is_told_when_a_tls_proxy_serves_it(self, compose):
        assert compose["x-portal-env"]["BEHIND_TLS_PROXY"] == "${BEHIND_TLS_PROXY:-false}"

    def test_production_secrets_have_no_defaults(self, compose):
        environment = compose["x-portal-env"]
        assert environment["ALLOW_INSECURE_SECRET_KEY"] == "false"
        assert ":?" in environment["SECRET_KEY"]
        assert ":?" in compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]


class MonitoringTests:
    def test_prometheus_scrapes_every_worker_service_on_its_metrics_port(self, compose):
        config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        assert {"web", "fleet", "translation-workers", "flower"} <= set(jobs)
        targets = {t for group in jobs["translation-workers"]["static_configs"] for t in group["targets"]}
        workers = {name: s for name, s in compose["services"].items() if name.startswith("worker-")}
        assert targets == {f"{name}:{parse_args(s['command'][3:]).metrics_port}" for name, s in workers.items()}
        assert jobs["fleet"]["metrics_path"] == "/metrics/fleet"
        # The web's metrics need the token Compose gives the web; Prometheus reads the same secret.
        for job in ("web", "fleet"):
            assert jobs[job]["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
        assert ":?" in compose["services"]["web"]["environment"]["METRICS_BEARER_TOKEN"]
        assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}

    def test_prometheus_reaches_flower_with_the_password_compose_gives_flower(self, compose):
        config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
        [flower_job] = [job for job in config["scrape_configs"] if job["job_name"] == "flower"]
        username = flower_job["basic_auth"]["username"]
        assert compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(f"{username}:${{FLOWER_PASSWORD")
        assert flower_job["basic_auth"]["password_file"] == "/run/secrets/flower_password"
        assert {"flower_password", "metrics_token"} <= set(compose["services"]["prometheus"]["secrets"])
        assert compose["secrets"]["flower_password"] == {"environment": "FLOWER_PASSWORD"}

    def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_datasource(self, compose):
        grafana = compose["services"]["grafana"]
        mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in grafana["volumes"] if volume.startswith("./")}
        for source in mounts:
            assert (DOCKER / source).is_dir(), source
        [provider] = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/translation.yml").read_text())["providers"]
        assert provider["options"]["path"] == mounts["./grafana/dashboards"]  # the provider reads the mounted folder
        dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "translation.json").read_text())
        [datasource] = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
        uids = {t["datasource"]["uid"] for panel in dashboard["panels"] for t in panel.get("targets", [])}
        assert uids == {datasource["uid"]}
        assert ":?" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


class DockerfileTests:
    @pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
    def test_copied_paths_exist(self, name):
        for line in (DOCKER / name).read_text().splitlines():
            if line.startswith("COPY "):
                for source in shlex.split(line)[1:-1]:
                    assert (DOCKER.parent / source).exists(), f"{name}: COPY {source}"


class ExampleRoutesTests:
    @pytest.mark.django_db
    def test_example_routes_are_valid(self, settings):
        routes = routes_import(json.loads((DOCKER / "routes.example.json").read_text()), replace=True)
        assert any("nllb" in route.model_name for route in routes)
        assert {route.target_language for route in routes} >= set(settings.SUPPORTED_LANGUAGES)  # every reply has a route
