"""Test settings: the machine's real PostgreSQL and Redis, and tiny models under var/test-models.

Every value can still be overridden from the environment.
"""

import os
from pathlib import Path

_base = Path(__file__).resolve().parent.parent
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
# A Redis database of its own, flushed at the start of a run.
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("MODELS_DIR", str(_base / "var" / "test-models"))
os.environ.setdefault("DATA_DIR", str(_base / "var" / "test-data"))
# The live server starts a thread per request: a connection kept open per thread would outlive
# its thread and hold the test database open at the end (worker processes keep theirs: see
# tests/conftest.py).
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "0")

from cs_portal.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast sign-ins in tests

# WhiteNoise serves from STATIC_ROOT; tests need no collected files, only the folder.
STATIC_ROOT = DATA_DIR / "static"  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
