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
EXTERNAL_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE", "FLOWER_BASIC_AUTH", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


class ComposeTests:
    def test_has_the_production_services(self, compose):
        assert {"postgres", "redis", "web", "flower", "worker-gpu0"} <= set(compose["services"])

    def test_every_variable_given_to_the_portal_is_read_by_its_settings(self, compose):
        read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', SETTINGS))
        for name, service in compose["services"].items():
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

    def test_production_secrets_have_no_defaults(self, compose):
        environment = compose["x-portal-env"]
        assert environment["ALLOW_INSECURE_SECRET_KEY"] == "false"
        assert ":?" in environment["SECRET_KEY"]
        assert ":?" in compose["services"]["flower"]["environment"]["FLOWER_BASIC_AUTH"]


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
