"""docker/k8s/'s workloads against the code: the web, the workers (one GPU each, probes,
metrics port), Flower and Prometheus."""

import json
import posixpath
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.k8s_manifests import (
    DOCKER,
    K8S,
    PORTAL_CONFIG,
    SECRET,
    WORKLOADS,
    config_map,
    container_port,
    env,
    find,
    gpu_workers,
    mounts,
    objects,
    pod_template,
    prometheus_config,
    value_of,
    worker_container,
    workers,
)
from translation.models import queue_name
from workers.engine_process import START_TIMEOUT_S
from workers.main import parse_args


class WebTests:
    @pytest.fixture
    def web(self) -> dict:
        return find("Deployment", "web")

    def test_gunicorn_runs_as_in_the_image(self, web):
        [cmd] = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
        [container] = pod_template(web)["spec"]["containers"]
        assert container["command"] == json.loads(cmd[4:])
        assert "--config=python:cs_portal.gunicorn_conf" in container["command"]
        assert web["spec"]["replicas"] == 2

    def test_probes_hit_healthz_and_readyz_on_the_served_port(self, web):
        [container] = pod_template(web)["spec"]["containers"]
        [bind] = [arg for arg in container["command"] if arg.startswith("--bind=")]
        port = int(bind.rsplit(":", 1)[1])
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz/web"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container_port(container, container[probe]["httpGet"]["port"]) == port

    def test_django_admits_the_pod_ip_that_probes_and_scrapes_send(self, web):
        [container] = pod_template(web)["spec"]["containers"]
        names = [variable["name"] for variable in container["env"]]
        assert env(container)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert names.index("POD_IP") < names.index("ALLOWED_HOSTS")  # expanded in order
        assert env(container)["ALLOWED_HOSTS"]["value"] == "$(ALLOWED_HOSTS),$(POD_IP)"
        assert "ALLOWED_HOSTS" in PORTAL_CONFIG  # the $(ALLOWED_HOSTS) that envFrom provides

    def test_the_metrics_folder_of_its_processes_is_an_empty_dir(self, web):
        spec = pod_template(web)["spec"]
        [container] = spec["containers"]
        assert "emptyDir" in mounts(spec, container)[env(container)["PROMETHEUS_MULTIPROC_DIR"]["value"]]

    def test_the_migration_job_migrates_then_imports_the_routes(self):
        [container] = pod_template(find("Job", "portal-migrate"))["spec"]["containers"]
        assert container["command"] == [
            "sh", "-c", "python manage.py migrate --noinput && python manage.py import_routes --if-empty",
        ]


class WorkerTests:
    def test_there_is_a_deployment_per_gpu_class_and_a_cpu_one(self):
        assert len(gpu_workers()) >= 2
        products = {pod_template(w)["spec"]["nodeSelector"]["nvidia.com/gpu.product"] for w in gpu_workers()}
        assert len(products) == len(gpu_workers())
        [cpu] = [w for w in workers() if w not in gpu_workers()]
        assert cpu["spec"]["replicas"] == 0
        args = parse_args(worker_container(cpu)["command"][3:])
        assert args.device == "cpu" and args.queues == "all"

    @pytest.mark.parametrize("name", [w["metadata"]["name"] for w in gpu_workers()])
    def test_each_gpu_worker_takes_exactly_one_gpu_it_sees_as_cuda0(self, name):
        workload = find("Deployment", name)
        spec = pod_template(workload)["spec"]
        container = worker_container(workload)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
        assert parse_args(container["command"][3:]).device == "cuda:0"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        for init in spec.get("initContainers", []):
            assert "nvidia.com/gpu" not in init["resources"].get("limits", {}), init["name"]

    @pytest.mark.parametrize("name", [w["metadata"]["name"] for w in workers()])
    def test_metrics_port_matches_container_port_and_annotation(self, name):
        workload = find("Deployment", name)
        container = worker_container(workload)
        args = parse_args(container["command"][3:])
        annotations = pod_template(workload)["metadata"]["annotations"]
        assert args.metrics_port == 9200
        assert container_port(container, "metrics") == args.metrics_port
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == args.metrics_port
        assert [p["containerPort"] for p in container["ports"]] == [args.metrics_port]  # one scrape target

    @pytest.mark.parametrize("name", [w["metadata"]["name"] for w in workers()])
    def test_probes_run_worker_probe_for_this_pods_worker_name(self, name):
        workload = find("Deployment", name)
        container = worker_container(workload)
        assert env(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        worker_name = parse_args(container["command"][3:]).name
        assert "$(POD_NAME)" in worker_name  # one heartbeat row per pod
        pod = "worker-gpu-7d9f8-x2k4q"
        for probe, ready in (("startupProbe", True), ("livenessProbe", False), ("readinessProbe", True)):
            command = container[probe]["exec"]["command"]
            # Kubernetes does not expand $(VAR) in exec probes: the shell reads $POD_NAME.
            assert command[:2] == ["sh", "-c"] and "$(" not in command[2], f"{probe}: {command}"
            words = shlex.split(command[2])
            assert words[:3] == ["python", "manage.py", "worker_probe"], probe
            assert words[words.index("--name") + 1].replace("$POD_NAME", pod) == worker_name.replace("$(POD_NAME)", pod)
            assert ("--ready" in words) is ready, probe

    @pytest.mark.parametrize("name", [w["metadata"]["name"] for w in workers()])
    def test_start_up_shutdown_and_volumes(self, name):
        workload = find("Deployment", name)
        spec = pod_template(workload)["spec"]
        container = worker_container(workload)
        startup = container["startupProbe"]
        budget = startup.get("initialDelaySeconds", 0) + startup["periodSeconds"] * startup["failureThreshold"]
        assert budget > START_TIMEOUT_S, "the startup probe must outlast the engine's model-loading timeout"
        assert spec["terminationGracePeriodSeconds"] == 120
        volumes = mounts(spec, container)
        assert volumes["/models"]["persistentVolumeClaim"]["claimName"] == "models"
        assert value_of(container, "HF_HOME").startswith("/models/")

    def test_the_gpu_classes_serve_every_routed_queue(self):
        routes = json.loads(config_map("portal-routes")["routes.json"])
        served = set()
        for workload in gpu_workers():
            served |= set(parse_args(worker_container(workload)["command"][3:]).queues.split(","))
        assert {route.get("queue") or queue_name(route["target"]) for route in routes} <= served


class FlowerTests:
    @pytest.fixture
    def flower(self) -> dict:
        return find("Deployment", "flower")

    def test_it_runs_as_in_compose_with_its_credentials(self, flower):
        compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
        [container] = pod_template(flower)["spec"]["containers"]
        assert container["command"] == compose["services"]["flower"]["command"]
        assert env(container)["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "FLOWER_BASIC_AUTH"}
        assert flower["spec"]["replicas"] == 1 and flower["spec"]["strategy"]["type"] == "Recreate"

    def test_its_state_is_on_a_volume(self, flower):
        spec = pod_template(flower)["spec"]
        [container] = spec["containers"]
        [db] = [arg.split("=", 1)[1] for arg in container["command"] if arg.startswith("--db=")]
        assert mounts(spec, container)[posixpath.dirname(db)]["persistentVolumeClaim"]["claimName"] == "flower-data"

    def test_probes_open_the_port_without_logging_in(self, flower):
        [container] = pod_template(flower)["spec"]["containers"]
        [port] = [arg.split("=", 1)[1] for arg in container["command"] if arg.startswith("--port=")]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "httpGet" not in container[probe] and "exec" not in container[probe], probe
            assert container_port(container, container[probe]["tcpSocket"]["port"]) == int(port)


class MonitoringTests:
    def test_the_jobs_of_the_alert_rules(self):
        config = prometheus_config()
        assert {job["job_name"] for job in config["scrape_configs"]} == {"web", "fleet", "translation-workers", "flower"}

    def test_the_alert_rules_are_the_compose_ones(self):
        assert config_map("prometheus-config")["alerts.yml"] == (DOCKER / "prometheus" / "alerts.yml").read_text()

    def test_prometheus_mounts_its_configuration_and_rules(self):
        deployment = find("Deployment", "prometheus")
        spec = pod_template(deployment)["spec"]
        [container] = spec["containers"]
        [config_file] = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--config.file=")]
        for path in [config_file, *prometheus_config()["rule_files"]]:
            volume = mounts(spec, container)[posixpath.dirname(path)]
            assert volume["configMap"]["name"] == "prometheus-config"
            assert posixpath.basename(path) in config_map("prometheus-config")

    @pytest.mark.parametrize(
        "job, component, path", [("web", "web", "/metrics"), ("translation-workers", "worker", "/metrics"), ("flower", "flower", "/metrics")]
    )
    def test_pod_jobs_keep_the_annotated_pods_of_their_component(self, job, component, path):
        [config] = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == job]
        assert config["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["cs-portal"]}}]
        keep = {tuple(rule["source_labels"]): rule["regex"] for rule in config["relabel_configs"] if rule.get("action") == "keep"}
        assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_component",)] == component
        assert keep[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
        pods = [w for w in WORKLOADS if pod_template(w)["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert pods
        for workload in pods:
            annotations = pod_template(workload)["metadata"]["annotations"]
            [container] = [c for c in pod_template(workload)["spec"]["containers"] if c.get("ports")]
            assert annotations["prometheus.io/scrape"] == "true"
            assert annotations["prometheus.io/path"] == path
            assert [str(p["containerPort"]) for p in container["ports"]] == [annotations["prometheus.io/port"]]

    def test_the_fleet_is_scraped_once_through_a_service(self):
        [fleet] = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == "fleet"]
        assert fleet["metrics_path"] == "/metrics/fleet"
        [[target]] = [group["targets"] for group in fleet["static_configs"]]
        host, port = target.rsplit(":", 1)
        name, namespace, svc = host.split(".")
        assert (namespace, svc) == ("cs-portal", "svc")
        service = find("Service", name)
        web = find("Deployment", "web")
        assert pod_template(web)["metadata"]["labels"].items() >= service["spec"]["selector"].items()
        [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        [container] = pod_template(web)["spec"]["containers"]
        assert container_port(container, service_port["targetPort"]) == 8000
        # Django answers 400 to a Host it does not know.
        assert host in PORTAL_CONFIG["ALLOWED_HOSTS"].split(",")
        assert pod_template(web)["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    def test_prometheus_logs_in_to_flower_with_the_documented_user_and_a_mounted_secret(self):
        [job] = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == "flower"]
        user = re.search(r'--from-literal=FLOWER_BASIC_AUTH="(\w+):', (K8S / "README.md").read_text().replace("\\\n", " "))
        assert user and job["basic_auth"]["username"] == user.group(1)
        password_file = job["basic_auth"]["password_file"]
        spec = pod_template(find("Deployment", "prometheus"))["spec"]
        [container] = spec["containers"]
        volume = mounts(spec, container)[posixpath.dirname(password_file)]
        assert [item["path"] for item in volume["secret"]["items"]] == [posixpath.basename(password_file)]

    def test_prometheus_may_list_the_pods_of_the_namespace(self):
        deployment = find("Deployment", "prometheus")
        account = pod_template(deployment)["spec"]["serviceAccountName"]
        find("ServiceAccount", account)
        [binding] = [b for b in objects("RoleBinding") if {"kind": "ServiceAccount", "name": account, "namespace": "cs-portal"} in b["subjects"]]
        role = find(binding["roleRef"]["kind"], binding["roleRef"]["name"])
        assert any("pods" in rule["resources"] and {"list", "watch"} <= set(rule["verbs"]) for rule in role["rules"])

    @pytest.mark.skipif(not shutil.which("promtool"), reason="promtool is missing")
    def test_promtool_accepts_the_configuration(self, tmp_path):
        text = config_map("prometheus-config")["prometheus.yml"]
        check = ["promtool", "check", "config", "--syntax-only", "prometheus.yml"]
        (tmp_path / "prometheus.yml").write_text(text)
        result = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True)
        if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
            # Debian's promtool is built without Kubernetes discovery: check the rest of each job.
            config = yaml.safe_load(text)
            for job in config["scrape_configs"]:
                if job.pop("kubernetes_sd_configs", None):
                    job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            result = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
