"""Settings of the support portal, read from the environment.

Every value has an embedded default that runs on one machine with no configuration (SQLite,
the local Redis, the tiny models); production sets the environment (see README, "Settings").
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)


def _installation_key(path: Path) -> str:
    """This data directory's own secret key, made at its first use (readable by its owner only):
    a run without SECRET_KEY never signs with a value anyone else knows. Written whole to a file
    of its own, then linked into place, so processes starting together read one key."""
    import os
    import secrets
    import tempfile

    def kept() -> str:
        key = path.read_text().strip()
        if not key:
            raise environ.ImproperlyConfigured(f"{path} is empty: delete it (a new key is made) or set SECRET_KEY.")
        return key

    try:
        try:
            return kept()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        descriptor, written = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(key + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(written, path)
            except FileExistsError:  # another process of this installation made it meanwhile
                return kept()
        finally:
            os.unlink(written)
        return key
    except OSError as error:
        raise environ.ImproperlyConfigured(
            f"No SECRET_KEY is set, and none can be kept in {path} ({error.strerror}): set SECRET_KEY.") from error


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not env.bool("ALLOW_INSECURE_SECRET_KEY", default=True):
        raise environ.ImproperlyConfigured("SECRET_KEY must be set in production")
    SECRET_KEY = _installation_key(DATA_DIR / "secret_key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# A refused form gets a page that says why, in the portal's words (Django's own is a bare 403).
CSRF_FAILURE_VIEW = "cs_portal.portal.workspace.access.csrf_failure"
# Behind a proxy or ingress that terminates TLS: trust its X-Forwarded-Proto and the address it
# adds to X-Forwarded-For, send the session and CSRF cookies over HTTPS only, and tell browsers
# to come back over HTTPS only (HSTS, SECURE_HSTS_SECONDS; 0 leaves the header out).
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=86400)
# Served under a path of a shared host (https://support.example.com/portal/): the proxy passes
# requests on without the prefix (nginx: `location /portal/ { proxy_pass http://web:8000/; }`),
# and every address the portal writes (links, redirects, static files, the API's Link headers)
# and its cookies' path carry it.
URL_PREFIX = env.str("URL_PREFIX", default="").rstrip("/")
if URL_PREFIX:
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", URL_PREFIX):
        raise environ.ImproperlyConfigured(
            f"URL_PREFIX must be a path such as /portal (letters, digits, . _ ~ - between slashes), not {URL_PREFIX!r}"
        )
    FORCE_SCRIPT_NAME = URL_PREFIX
    SESSION_COOKIE_PATH = CSRF_COOKIE_PATH = URL_PREFIX + "/"
# The admin's one-time notices (a new API token's key among them) are kept in the session, not in
# a cookie of their own (Django's default: signed, not encrypted, and for the whole host's paths).
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
# Several web processes keep their metrics' counters in this folder (prometheus_client's
# multiprocess mode); any process of the image may count, so it exists before the first count.
if env.str("PROMETHEUS_MULTIPROC_DIR", default=""):
    Path(env.str("PROMETHEUS_MULTIPROC_DIR")).mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Before rest_framework.authtoken: its drf_create_token takes the place of DRF's (keys kept
    # as digests, portal/tokens.py).
    "cs_portal.portal",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "django_prometheus",
    "axes",
    "translation",
    "workers",
]

MIDDLEWARE = [
    # Request counts and latencies by view, for /metrics (first and last, to time everything).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Records who made each change to a route (LanguageRoute.history).
    "simple_history.middleware.HistoryRequestMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Answers a locked-out sign-in (django-axes); last, as its documentation asks.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "cs_portal.urls"
WSGI_APPLICATION = "cs_portal.wsgi.application"
ASGI_APPLICATION = "cs_portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'portal.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The web server and the worker write the same file: wait for the lock instead of failing.
    # IMMEDIATE: a transaction takes the write lock when it begins, so it waits (timeout) instead
    # of failing at once with "database is locked" when it would upgrade a read lock; WAL lets
    # readers go on while one process writes.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
elif DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # A client that stops inside a transaction (a frozen process, a lost host whose connection
    # the server still thinks open) would hold its row locks until TCP gives up, minutes later:
    # the server ends such a session after this long, and its claims are free again.
    idle_ms = env.int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=10_000)
    if idle_ms:
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options["options"] = (options.get("options", "") + f" -c idle_in_transaction_session_timeout={idle_ms}").strip()
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
if URL_PREFIX:  # whole: the web server's WhiteNoise reads it before Django adds the script prefix
    STATIC_URL = URL_PREFIX + "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "workspace:login"
LOGIN_REDIRECT_URL = "workspace:inbox"
# Passwords the admin's forms and create_agent accept: Django's four checks (8 characters at
# least, not a common one, not all digits, not like the username).
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in ("UserAttributeSimilarityValidator", "MinimumLengthValidator", "CommonPasswordValidator",
                 "NumericPasswordValidator")
]
# Password guessing (django-axes): a username that fails LOGIN_FAILURE_LIMIT sign-ins in a row
# from one address (the workspace's form or the admin's) is refused from that address for
# LOGIN_LOCKOUT_MINUTES; a sign-in that succeeds clears its count. Behind a TLS proxy the
# address is the one the proxy saw (``client_address``).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no line at every process's start; failures and lockouts are still logged
AXES_LOCKOUT_CALLABLE = "cs_portal.portal.workspace.access.locked_out"
AXES_CLIENT_IP_CALLABLE = "cs_portal.portal.workspace.access.client_address"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "cs_portal.portal.api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Each API view names its own schemes; the schema and docs pages take a session only (DRF's
    # default also takes HTTP Basic, a password check with no form, no CSRF and no lockout).
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Support portal API",
    "DESCRIPTION": "Customer channel and agent replies of the multilingual support portal.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files ship in drf-spectacular-sidecar: the docs page works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Messages and languages ----------------------------------------------------------------
MESSAGE_MAX_CHARS = env.int("MESSAGE_MAX_CHARS", default=5000)
# The workspace shows a conversation's latest messages (a link shows the whole of it).
WORKSPACE_THREAD_MESSAGES = env.int("WORKSPACE_THREAD_MESSAGES", default=200)
if WORKSPACE_THREAD_MESSAGES < 1:
    raise environ.ImproperlyConfigured(f"WORKSPACE_THREAD_MESSAGES must be 1 or more, not {WORKSPACE_THREAD_MESSAGES}")
# Languages customers may write in (ISO 639-1); each must be known to translation.languages.
SUPPORTED_LANGUAGES = env.list(
    "SUPPORTED_LANGUAGES", default=["en", "zh", "es", "fr", "de", "pt", "ja", "ko", "ru", "ar", "hi", "it"]
)
# Target language of customer messages while a conversation has no assigned agent.
DEFAULT_AGENT_LANGUAGE = env.str("DEFAULT_AGENT_LANGUAGE", default="en")
# Lingua's low-accuracy mode needs ~30 MB instead of ~300 MB, at some cost on short texts.
LANGUAGE_DETECTION_LOW_ACCURACY = env.bool("LANGUAGE_DETECTION_LOW_ACCURACY", default=False)

# --- Translation routing -------------------------------------------------------------------
MODELS_DIR = Path(env.str("MODELS_DIR", default=str(DATA_DIR / "models")))


def _default_routes() -> list[dict]:
    """Embedded defaults: the tiny checkpoints (random weights) written by prepare_models.

    es->en takes the per-pair Marian model; every other pair the many-to-many M2M100 model.
    """
    routes = [{"source": "es", "target": "en", "engine": "hf-seq2seq", "model": str(MODELS_DIR / "marian-es-en")}]
    for target in SUPPORTED_LANGUAGES:
        routes.append({"source": "*", "target": target, "engine": "hf-seq2seq", "model": str(MODELS_DIR / "m2m100")})
    return routes


# Routing lives in the database (LanguageRoute, edited in the admin). These are the *initial*
# routes: `manage.py import_routes` loads them (the run command does so into an empty table).
# TRANSLATION_ROUTES (JSON) or TRANSLATION_ROUTES_FILE (a JSON file) replace the defaults;
# each route: source ("*" for any), target, model, and optionally queue, engine, precision,
# variant, traffic_share, adapter, max_batch_size, max_wait_ms, max_input_chars, enabled, note.
# A file that cannot be read or parsed stops only what needs it (`import_routes`, which names
# the problem: TRANSLATION_ROUTES_PROBLEM), not every process that loads these settings; the
# start-up checks warn about it (translation.W001).
TRANSLATION_ROUTES, TRANSLATION_ROUTES_PROBLEM = None, ""
try:
    if env.str("TRANSLATION_ROUTES_FILE", default=""):
        TRANSLATION_ROUTES = json.loads(Path(env.str("TRANSLATION_ROUTES_FILE")).read_text(encoding="utf-8"))
    elif env.str("TRANSLATION_ROUTES", default=""):
        TRANSLATION_ROUTES = json.loads(env.str("TRANSLATION_ROUTES"))
    else:
        TRANSLATION_ROUTES = _default_routes()
except (OSError, ValueError) as _problem:  # unreadable, not UTF-8, not JSON
    _source = (f"TRANSLATION_ROUTES_FILE={env.str('TRANSLATION_ROUTES_FILE')}" if env.str("TRANSLATION_ROUTES_FILE", default="")
               else "TRANSLATION_ROUTES")
    TRANSLATION_ROUTES_PROBLEM = f"{_source}: {getattr(_problem, 'strerror', None) or _problem}"
# How often a process checks whether the route table changed (one tiny aggregate query): an
# admin's change reaches every portal process and worker within this many seconds.
TRANSLATION_ROUTES_CHECK_S = env.float("TRANSLATION_ROUTES_CHECK_S", default=0.5)

# A job that failed for a passing reason (database blip, device error) is retried this many
# times with exponential backoff before its Translation is marked failed.
TRANSLATION_MAX_ATTEMPTS = env.int("TRANSLATION_MAX_ATTEMPTS", default=3)
# Redeliveries of one job while its row cannot even be claimed (the database is down), with
# backoff up to 60 s: about ten minutes. The row stays queued for `resend_translations` after.
TRANSLATION_TASK_MAX_RETRIES = env.int("TRANSLATION_TASK_MAX_RETRIES", default=12)

# The worker's dynamic batcher (translation/batching.py): a batch leaves when it holds
# MAX_BATCH_SIZE jobs or MAX_BATCH_TOKENS input tokens, or when its oldest job has waited
# MAX_WAIT_MS. Larger batches raise throughput on a busy queue; the wait is what a lone job pays.
TRANSLATION_MAX_BATCH_SIZE = env.int("TRANSLATION_MAX_BATCH_SIZE", default=128)
TRANSLATION_MAX_WAIT_MS = env.float("TRANSLATION_MAX_WAIT_MS", default=5.0)
TRANSLATION_MAX_BATCH_TOKENS = env.int("TRANSLATION_MAX_BATCH_TOKENS", default=8192)
# A CPU worker's lanes: engine processes computing batches side by side, each with an equal
# share of the cores (0: one per core, at most 4). They share the checkpoint's weights mapped
# from its file; converted weights (int8) are a copy per lane, which 1 avoids for a large model.
# Two one-thread lanes computed half as much again as one two-thread process on the slower
# 2-core benchmark machine.
TRANSLATION_CPU_LANES = env.int("TRANSLATION_CPU_LANES", default=0)
if TRANSLATION_CPU_LANES < 0:
    raise environ.ImproperlyConfigured(f"TRANSLATION_CPU_LANES must be 0 (one per core) or more, not {TRANSLATION_CPU_LANES}")
# A CPU lane computing a batch of 16 jobs or more takes the cores that idle lanes leave (cores /
# busy lanes threads; a lane is idle 0.15 s after its last batch), counted after each decoding
# step, so a lane that starts a batch gets its core back within a step (workers/idle_cores.py):
# a burst's last batch, a large batch after a quiet spell.
TRANSLATION_CPU_LEND_IDLE_CORES = env.bool("TRANSLATION_CPU_LEND_IDLE_CORES", default=True)
# Each engine process computes one full batch of every model it loads before the worker
# consumes (the largest batch size of the model's routes, within MAX_BATCH_SIZE and
# MAX_BATCH_TOKENS): the memory a batch of that size needs is in place before the first burst,
# which otherwise computed about a sixth slower (workers/engine_models.py). Off: the warm-up is
# one sentence, the canary.
TRANSLATION_WARMUP_FULL_BATCH = env.bool("TRANSLATION_WARMUP_FULL_BATCH", default=True)
# A GPU worker's lanes: instances of its models on its one card (Triton's instance_group count),
# each an engine process with its own CUDA context and its own copy of the weights on the card,
# computing batches side by side, so that the card computes while one lane launches kernels,
# claims or stores. A placement plan's "lanes" sets it per worker.
TRANSLATION_GPU_LANES = env.int("TRANSLATION_GPU_LANES", default=1)
if not 1 <= TRANSLATION_GPU_LANES <= 8:
    raise environ.ImproperlyConfigured(f"TRANSLATION_GPU_LANES must be 1..8, not {TRANSLATION_GPU_LANES}")
# An engine process stops giving the memory a batch frees back to the system after each batch
# (workers/native_heap.py: the page faults cost a CPU batch about 5 %): blocks up to this size
# come from its heap, and up to this much may stay free at the heap's top, so a batch's peak
# memory stays with the process while it is idle. 0: glibc's own behaviour.
TRANSLATION_ENGINE_HEAP_KEEP_MB = env.int("TRANSLATION_ENGINE_HEAP_KEEP_MB", default=1024)
if not 0 <= TRANSLATION_ENGINE_HEAP_KEEP_MB <= 2047:
    raise environ.ImproperlyConfigured(
        f"TRANSLATION_ENGINE_HEAP_KEEP_MB must be 0..2047 (MiB), not {TRANSLATION_ENGINE_HEAP_KEEP_MB}")
# A model that no route of a worker's queues names any more (an admin changed the route's
# model or precision) is unloaded once no batch has used it for this long, its memory given
# back (workers/loaded_models.py); 0 keeps every model loaded until the worker stops.
TRANSLATION_MODEL_UNLOAD_IDLE_S = env.float("TRANSLATION_MODEL_UNLOAD_IDLE_S", default=600.0)
if TRANSLATION_MODEL_UNLOAD_IDLE_S < 0:
    raise environ.ImproperlyConfigured(
        f"TRANSLATION_MODEL_UNLOAD_IDLE_S must be 0 (never unload) or more seconds, not {TRANSLATION_MODEL_UNLOAD_IDLE_S}")
# How jobs reach the workers (translation/dispatch.py): "jobs", one Celery message per job
# (Flower shows each); "ledger", a wake-up per queue while jobs wait, the worker claiming them
# from the database in batches (a message per batch instead of per job: the throughput mode).
TRANSLATION_DISPATCH = env.str("TRANSLATION_DISPATCH", default="jobs")
if TRANSLATION_DISPATCH not in ("jobs", "ledger"):
    raise environ.ImproperlyConfigured(f"TRANSLATION_DISPATCH must be 'jobs' or 'ledger', not {TRANSLATION_DISPATCH!r}")
# In jobs dispatch, a batching worker's consumer hands each job's message straight to its batcher
# (workers/job_intake.py) instead of to a pool thread that waits for the batch: the same
# messages, acknowledgements, retries and task events, with less of the worker's CPU per job
# (what differs: the README's "The job intake").
# False runs every job through Celery's pool, as a plain Celery task.
TRANSLATION_DIRECT_JOBS = env.bool("TRANSLATION_DIRECT_JOBS", default=True)
# How long a job waits for its batch before it is given back for a retry; well under the
# visibility timeout, so Redis never redelivers a job that is still waiting.
TRANSLATION_JOB_TIMEOUT_S = env.float("TRANSLATION_JOB_TIMEOUT_S", default=300.0)

# A worker that has not beaten for this long is taken as dead: /readyz and `manage.py status`
# say so, and its claimed jobs are handed to another worker (the heartbeat is the lease on its
# claims). It beats every quarter of this, while its loop and its consumer are healthy.
WORKER_HEARTBEAT_STALE_S = env.float("WORKER_HEARTBEAT_STALE_S", default=1.0)
# How often each worker's reconciler looks for dead workers' claims (two small queries).
TRANSLATION_RECOVERY_EVERY_S = env.float("TRANSLATION_RECOVERY_EVERY_S", default=0.25)
# A queued job that no queue holds after this long is sent again (never sent, or the broker
# restarted empty); after TRANSLATION_MAX_RESENDS such resends it fails visibly.
TRANSLATION_LOST_AFTER_S = env.float("TRANSLATION_LOST_AFTER_S", default=10.0)
TRANSLATION_MAX_RESENDS = env.int("TRANSLATION_MAX_RESENDS", default=5)
# A worker whose database is unreachable when a batch's results are ready keeps them and tries
# to store them again, with backoff up to 5 s, for this long (under TRANSLATION_JOB_TIMEOUT_S).
TRANSLATION_STORE_RETRY_S = env.float("TRANSLATION_STORE_RETRY_S", default=240.0)
# A claim still running after this long is handed over by the fleet's reconciler, its worker
# alive or not (a batch that failed with the database away, so that its worker could not give
# the rows back). Longer than a claim can legitimately last: a model's load inside a batch (up
# to 10 minutes), the forward pass (up to 5) and the store's retries.
TRANSLATION_CLAIM_OVERDUE_S = env.float("TRANSLATION_CLAIM_OVERDUE_S", default=1800.0)

# Alert thresholds. /metrics/fleet exports them (translation_alert_*), and the shipped
# Prometheus rules (docker/prometheus/alerts.yml) compare against the exported value, so a
# change here moves the alert without editing the rules.
ALERT_LATENCY_P95_S = env.float("ALERT_LATENCY_P95_S", default=0.5)  # end to end, per target language
ALERT_FAILURE_RATIO = env.float("ALERT_FAILURE_RATIO", default=0.05)
# When set, the web's /metrics and /metrics/fleet answer only "Authorization: Bearer <token>"
# (Prometheus: authorization.credentials_file). Empty: open, for a web reachable only inside.
METRICS_BEARER_TOKEN = env.str("METRICS_BEARER_TOKEN", default="")  # failed / finished over 5 minutes

# --- Celery --------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# The ledger (Translation rows) holds every result; Celery's result store is not used.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# JSON only: a pickle payload from the broker would be code execution on a GPU host.
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Acknowledge a job after it ran, not when received: a worker that dies mid-batch leaves its
# jobs on the broker to be redelivered (the ledger makes the rerun idempotent).
CELERY_TASK_ACKS_LATE = True
# ... and when a prefork child running a job is killed, reject the job so it is redelivered
# rather than acknowledged as failed. (The threads pool we run has no child to lose: a killed
# worker process leaves its unacked jobs to Redis's visibility timeout, and the ledger.)
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Bounded prefetch: one unacked job per pool thread (workers/main.py sizes the pool to two
# batches), so one worker cannot hoard a language's queue while another idles.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis redelivers an unacked job after the visibility timeout. It must exceed the longest a
# job can legitimately wait in prefetch plus run (a CPU batch takes seconds, not minutes), or
# a slow job is delivered twice; the shortest value among all processes wins, so every
# process reads this one setting.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=900),
    # One Redis list per step; a worker takes from step 0 first. Jobs go at 6, and handed-over
    # or resent ones at 0, ahead of the waiting (translation.sending).
    "priority_steps": [0, 3, 6, 9],
}
# A prefix on every broker key lets several installations share one Redis database without
# taking each other's jobs (a job carries only a row id of its own ledger).
if env.str("BROKER_KEY_PREFIX", default=""):
    CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env.str("BROKER_KEY_PREFIX")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing to a broker that is down fails fast (the ledger row stays queued) instead of
# blocking a web request for the default ~minute of retries.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# Task events let Flower show jobs per queue and worker. Three per job (received, started,
# succeeded), buffered into about one publish per consumer loop turn; measured on 2 CPU cores
# (docs/benchmarks.md) within noise beside the small model, 28 % of the throughput beside the
# tiny one: a throughput-bound deployment may turn them off (CELERY_TASK_EVENTS=false).
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_TASK_EVENTS", default=True)
# The portal does not publish a "sent" event per job: the ledger records the send, and Flower
# still sees every job from the worker's received/started/succeeded events.
CELERY_TASK_SEND_SENT_EVENT = False
# Jobs never go to Celery's default queue: each is sent to its route's queue explicitly.
CELERY_TASK_DEFAULT_QUEUE = "translate.default"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Which GPU serves which queues (workers/placement.py); `manage.py start_workers` reads it.
PLACEMENT_FILE = Path(env.str("PLACEMENT_FILE", default=str(BASE_DIR / "docker" / "placement.json")))

# Where the run command and the admin link point for Flower.
FLOWER_URL = env.str("FLOWER_URL", default="http://127.0.0.1:5555/")
