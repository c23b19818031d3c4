"""The manifests of docker/k8s/ as the tests read them: every object, and helpers to find
workloads, containers, their environment, mounts and ports (tests/test_k8s*.py)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
# The newest schemas kubernetes-validate bundles (offline).
KUBERNETES_VERSION = "1.37.0"
SETTINGS = (ROOT / "cs_portal" / "settings.py").read_text()
# Digits included: ALERT_LATENCY_P95_S.
READ_BY_SETTINGS = set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', SETTINGS))
# Read by programs other than the portal's settings: Flower (through workers.flower), Hugging
# Face, prometheus_client; and the downward-API variables the manifests themselves expand.
EXTERNAL_VARIABLES = {"FLOWER_BASIC_AUTH", "HF_HOME", "HF_HUB_OFFLINE", "PROMETHEUS_MULTIPROC_DIR", "POD_NAME", "POD_IP"}
PORTAL_IMAGES = {"cs-portal", "cs-portal-gpu"}
SECRET = "portal-secrets"
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def load(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


OBJECTS = [(path.name, document) for path in MANIFESTS for document in load(path)]


def objects(kind: str) -> list[dict]:
    return [document for _, document in OBJECTS if document["kind"] == kind]


def find(kind: str, name: str) -> dict:
    [found] = [document for document in objects(kind) if document["metadata"]["name"] == name]
    return found


def pod_template(document: dict) -> dict | None:
    if document["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return document["spec"]["template"]
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]
    return None


WORKLOADS = [document for _, document in OBJECTS if pod_template(document) is not None]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def all_containers() -> list[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container, init containers included."""
    return [(w, pod_template(w)["spec"], c) for w in WORKLOADS for c in containers(pod_template(w)["spec"])]


def image_name(container: dict) -> str:
    return container["image"].rsplit("/", 1)[-1].split(":")[0]


def portal_containers() -> list[tuple[dict, dict, dict]]:
    return [(w, s, c) for w, s, c in all_containers() if image_name(c) in PORTAL_IMAGES]


def config_map(name: str) -> dict:
    return find("ConfigMap", name)["data"]


PORTAL_CONFIG = config_map("portal-config")


def env(container: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def environment_names(container: dict) -> set[str]:
    names = set(env(container))
    for source in container.get("envFrom", []):
        names |= set(config_map(source["configMapRef"]["name"]))
    return names


def value_of(container: dict, name: str) -> str | None:
    """The literal value a container gets for ``name`` (env wins over envFrom), as written."""
    if name in env(container):
        return env(container)[name].get("value")
    for source in container.get("envFrom", []):
        data = config_map(source["configMapRef"]["name"])
        if name in data:
            return data[name]
    return None


def mounts(spec: dict, container: dict) -> dict[str, dict]:
    """Mount path -> the volume mounted there."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in container.get("volumeMounts", [])}


def container_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return number


def documented_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic` commands of the README."""
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    secrets: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.search(r"create secret generic ([\w-]+)(.*)", line)
        if match:
            secrets.setdefault(match.group(1), set()).update(re.findall(r"--from-literal=(\w+)=", match.group(2)))
    return secrets


def prometheus_config() -> dict:
    return yaml.safe_load(config_map("prometheus-config")["prometheus.yml"])


def workers() -> list[dict]:
    return [w for w in WORKLOADS if pod_template(w)["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def worker_container(workload: dict) -> dict:
    [container] = [c for c in pod_template(workload)["spec"]["containers"] if c["command"][:3] == ["python", "-m", "workers.main"]]
    return container


def gpu_workers() -> list[dict]:
    return [w for w in workers() if "nvidia.com/gpu" in worker_container(w)["resources"].get("limits", {})]
