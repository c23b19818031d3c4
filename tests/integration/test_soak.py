"""A short soak in the test suite: real traffic through the API into two real workers, a worker
killed twice and the broker restarted empty; nothing lost, nothing stored twice."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_short_soak_with_worker_kills_and_a_broker_restart_loses_nothing(tiny_models):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=database_url())
    result = subprocess.run(
        [sys.executable, "manage.py", "soak", "--rate", "8", "--seconds", "30", "--kill-worker-every", "10",
         "--restart-broker-at", "15", "--drain-timeout", "120"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    output = result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(re.findall(r"(\w+)=(\d+)", last))
    assert set(figures) == {"sent", "done", "failed_visible", "lost", "duplicates", "p95_ms", "failover_ms_max"}, output
    assert result.returncode == 0, output[-4000:]
    assert int(figures["sent"]) >= 200, output[-4000:]  # 240 offered; a send may meet the broker's restart
    assert figures["lost"] == "0" and figures["duplicates"] == "0", output[-4000:]
    assert int(figures["done"]) + int(figures["failed_visible"]) >= int(figures["sent"])
    assert output.count("fault: SIGKILL worker") == 2 and "fault: redis-server restarted empty" in output
    print("\n" + last)
