"""The portal served under a path of a shared host (URL_PREFIX): in a process of its own, started
the way the web server starts it (the prefix read once, at start-up), on an SQLite database of
its own; every address it writes carries the prefix."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import redis

from tests.conftest import broker_url

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from cs_portal.wsgi import application  # Django started as the web server starts it (WhiteNoise included)
from django.conf import settings
from django.core.handlers.wsgi import get_script_name
from django.urls import set_script_prefix
# What the WSGI handler does at each request, and the test client does not.
set_script_prefix(get_script_name({}))
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from cs_portal.portal.services import agent_create, api_client_create, conversation_create, message_create_from_customer

call_command("migrate", verbosity=0)
agent = agent_create(username="sam", password="secret-pass", working_language="en")
client, key = api_client_create(name="widget")
conversation = conversation_create(api_client=client, customer_name="Ana")
for n in range(3):
    message_create_from_customer(conversation=conversation, text=f"Hola {n}", language="es")
User.objects.create_superuser("root", password="root-pass")
browser = Client()
seen = {"cookies": {}}
seen["login_redirect"] = browser.get("/workspace/")["Location"]
seen["login"] = browser.get("/workspace/login/").content.decode()
browser.post("/workspace/login/", {"username": "sam", "password": "secret-pass"})
seen["cookies"].update({name: morsel["path"] for name, morsel in browser.cookies.items()})
seen["inbox"] = browser.get("/workspace/").content.decode()
seen["cookies"].update({name: morsel["path"] for name, morsel in browser.cookies.items()})
back = browser.post(f"/workspace/conversations/{conversation.pk}/take/", {"next": "/support/workspace/?status=open"})
seen["back"] = back["Location"]
seen["unknown_api"] = [Client().get("/api/v1/nowhere").status_code, Client().get("/api/v1/nowhere")["Content-Type"]]
seen["conversation"] = browser.get(f"/workspace/conversations/{conversation.pk}/").content.decode()
seen["chat"] = Client().get("/chat/").content.decode()
api = Client(headers={"Authorization": f"Bearer {key}"}).get(f"/api/v1/conversations/{conversation.pk}/messages?limit=1")
seen["link"] = api["Link"]
admin = Client()
admin.force_login(User.objects.get(username="root"))
seen["admin"] = admin.get("/admin/").content.decode()
seen["operations"] = admin.get("/admin/operations/").content.decode()
seen["script_name"] = settings.FORCE_SCRIPT_NAME
print(json.dumps(seen))
"""


def served(tmp_path, prefix: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "URL_PREFIX": prefix,
           "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}", "DATA_DIR": str(tmp_path),
           "TRANSLATION_DISPATCH": "jobs", "CELERY_BROKER_URL": broker_url(10)}  # its jobs wait there, unconsumed
    try:
        return subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
    finally:
        redis.Redis.from_url(broker_url(10)).flushdb()


def addresses(page: str) -> list[str]:
    """Every address a page links, loads or posts to (outside the page itself and the outside world)."""
    found = re.findall(r'(?:href|src|action|data-refresh|data-live)="([^"#?][^"]*)"', page)
    return [url for url in found if not url.startswith(("http://", "https://", "mailto:", "data:", "{"))]


def test_every_address_the_portal_writes_carries_the_prefix(tmp_path):
    done = served(tmp_path, "/support/")  # a trailing slash is taken off
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["script_name"] == "/support"
    assert seen["login_redirect"] == "/support/workspace/login/?next=/support/workspace/"
    assert seen["cookies"] == {"sessionid": "/support/", "csrftoken": "/support/", "workspace_agent": "/support/"}
    assert seen["back"] == "/support/workspace/?status=open"  # a form's way back, under the prefix
    assert seen["unknown_api"] == [404, "application/json"]
    for page in ("login", "inbox", "conversation", "chat", "admin", "operations"):
        urls = addresses(seen[page])
        assert urls, page
        assert [url for url in urls if not url.startswith("/support/")] == [], page
    assert '"/support/api/v1"' in seen["chat"]
    for path in ("/support/readyz", "/support/metrics", "/support/metrics/fleet"):
        assert f'href="{path}"' in seen["operations"], path
    assert re.fullmatch(r'<http://testserver/support/api/v1/conversations/\d+/messages\?before=\d+&limit=1>; rel="prev"',
                        seen["link"])


def test_a_prefix_that_is_not_a_path_is_refused_at_start(tmp_path):
    done = served(tmp_path, "support portal")
    assert done.returncode != 0
    assert "URL_PREFIX must be a path such as /portal (letters, digits, . _ ~ - between slashes), not 'support portal'" \
        in done.stderr
