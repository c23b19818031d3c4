"""docker/k8s/ against the Kubernetes schemas (kubernetes-validate, strict), and its
configuration, secrets and security settings against the code."""

import json
import posixpath
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.k8s_manifests import (
    DOCKER,
    EXTERNAL_VARIABLES,
    K8S,
    KUBERNETES_VERSION,
    MANIFESTS,
    OBJECTS,
    PORTAL_CONFIG,
    PORTAL_IMAGES,
    READ_BY_SETTINGS,
    SECRET,
    WORKLOADS,
    all_containers,
    config_map,
    container_port,
    containers,
    documented_secrets,
    env,
    environment_names,
    find,
    image_name,
    mounts,
    pod_template,
    portal_containers,
    value_of,
)


class SchemaTests:
    def test_the_schemas_of_the_version_are_bundled(self):
        assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()

    def test_strict_validation_rejects_an_unknown_field(self):
        deployment = json.loads(json.dumps(find("Deployment", "web")))
        deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)

    @pytest.mark.parametrize(
        "document", [d for _, d in OBJECTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in OBJECTS]
    )
    def test_every_object_is_valid(self, document):
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True) == "1.37"

    def test_every_object_is_in_the_namespace_and_unique(self):
        seen = set()
        for filename, document in OBJECTS:
            key = (document["kind"], document["metadata"]["name"])
            assert key not in seen, f"{filename}: {key} twice"
            seen.add(key)
            if document["kind"] != "Namespace":
                assert document["metadata"].get("namespace") == "cs-portal", f"{filename}: {key}"
        assert ("Namespace", "cs-portal") in seen


class KustomizationTests:
    def test_it_lists_every_manifest(self):
        kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Kustomization"
        assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]

    @pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is missing")
    def test_kubectl_builds_every_object(self):
        result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout) if d}
        assert built == {(d["kind"], d["metadata"]["name"]) for _, d in OBJECTS}


class ConfigTests:
    def test_every_variable_is_read_by_the_settings_or_a_known_program(self):
        for workload, _, container in all_containers():
            for name in environment_names(container):
                assert name in READ_BY_SETTINGS | EXTERNAL_VARIABLES, (
                    f"{workload['metadata']['name']}/{container['name']} sets {name}, which nothing reads"
                )

    def test_production_values(self):
        compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-portal-env"]
        assert PORTAL_CONFIG["ALLOW_INSECURE_SECRET_KEY"] == "false"
        assert PORTAL_CONFIG["CELERY_VISIBILITY_TIMEOUT"] == compose["CELERY_VISIBILITY_TIMEOUT"] == "900"
        assert PORTAL_CONFIG["TRANSLATION_ROUTES_FILE"] == compose["TRANSLATION_ROUTES_FILE"]
        assert PORTAL_CONFIG["HF_HOME"] == compose["HF_HOME"]
        for name in ("ALERT_LATENCY_P95_S", "ALERT_FAILURE_RATIO", "WORKER_HEARTBEAT_STALE_S", "CELERY_VISIBILITY_TIMEOUT"):
            float(PORTAL_CONFIG[name])

    def test_the_broker_is_the_redis_service(self):
        match = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", PORTAL_CONFIG["CELERY_BROKER_URL"])
        assert match, PORTAL_CONFIG["CELERY_BROKER_URL"]
        service = find("Service", match.group(1))
        [port] = [p for p in service["spec"]["ports"] if p["port"] == int(match.group(2))]
        [redis] = [w for w in WORKLOADS if pod_template(w)["metadata"]["labels"].items() >= service["spec"]["selector"].items()]
        assert container_port(pod_template(redis)["spec"]["containers"][0], port["targetPort"]) == port["port"]
        command = pod_template(redis)["spec"]["containers"][0]["args"]
        assert "noeviction" in command and "--appendonly" in command

    def test_the_routes_are_the_example_routes(self):
        assert config_map("portal-routes")["routes.json"] == (DOCKER / "routes.example.json").read_text()

    def test_every_portal_container_mounts_the_routes_its_settings_read(self):
        routes_file = PORTAL_CONFIG["TRANSLATION_ROUTES_FILE"]
        for workload, spec, container in portal_containers():
            assert value_of(container, "TRANSLATION_ROUTES_FILE") == routes_file, container["name"]
            volume = mounts(spec, container).get(posixpath.dirname(routes_file))
            assert volume and volume["configMap"]["name"] == "portal-routes", f"{workload['metadata']['name']}/{container['name']}"
            assert posixpath.basename(routes_file) in config_map("portal-routes")

    def test_every_portal_container_has_the_secret_key_and_the_database(self):
        # ALLOW_INSECURE_SECRET_KEY is "false": the settings refuse to load without SECRET_KEY.
        for workload, _, container in portal_containers():
            for name in ("SECRET_KEY", "DATABASE_URL"):
                reference = env(container).get(name, {}).get("valueFrom", {}).get("secretKeyRef")
                assert reference == {"name": SECRET, "key": name}, f"{workload['metadata']['name']}/{container['name']}: {name}"

    def test_a_multiprocess_metrics_folder_is_an_empty_dir(self):
        for workload, spec, container in portal_containers():
            folder = value_of(container, "PROMETHEUS_MULTIPROC_DIR")
            if folder is not None:
                assert "emptyDir" in mounts(spec, container).get(folder, {}), f"{workload['metadata']['name']}: {folder}"


class SecretTests:
    def test_no_secret_is_kept_in_the_repository(self):
        for filename, document in OBJECTS:
            assert document["kind"] != "Secret" or not (document.get("data") or document.get("stringData")), filename
        for path in K8S.iterdir():
            assert "kind: Secret\n" not in path.read_text(), path.name

    def test_every_secret_reference_is_documented(self):
        documented = documented_secrets()
        used: dict[str, set[str]] = {}
        for workload, _spec, container in all_containers():
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] == SECRET, f"{workload['metadata']['name']}: {variable['name']}"
                    used.setdefault(reference["name"], set()).add(reference["key"])
            assert not any("secretRef" in source for source in container.get("envFrom", [])), "secrets by key only"
        for workload in WORKLOADS:
            for volume in pod_template(workload)["spec"].get("volumes", []):
                if "secret" in volume:
                    keys = {item["key"] for item in volume["secret"]["items"]}
                    used.setdefault(volume["secret"]["secretName"], set()).update(keys)
        assert used[SECRET] == {"SECRET_KEY", "DATABASE_URL", "FLOWER_BASIC_AUTH"}
        assert used == documented


class SecurityTests:
    @pytest.mark.parametrize("workload", WORKLOADS, ids=[w["metadata"]["name"] for w in WORKLOADS])
    def test_pods_meet_the_restricted_pod_security_standard(self, workload):
        spec = pod_template(workload)["spec"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(spec):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"]["drop"] == ["ALL"], container["name"]
            assert security["readOnlyRootFilesystem"] is True, container["name"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], container["name"]
            if image_name(container) in PORTAL_IMAGES:
                assert context["runAsUser"] == 10001  # the images' user "portal"
        # Only Prometheus talks to the Kubernetes API.
        assert spec.get("automountServiceAccountToken", True) is (spec.get("serviceAccountName") == "prometheus")
        namespace = find("Namespace", "cs-portal")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
