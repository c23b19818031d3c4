"""The claim and store statements on SQLite (the embedded default), in a process of its own: the test
session's database is PostgreSQL."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from cs_portal.portal.services import api_client_create, conversation_create, message_create_from_customer
from translation.claims import Delivery, translations_claim
from translation.dispatch import translations_claim_queued
from translation.execution import translations_complete
from translation.models import Translation, TranslationStatus

call_command("migrate", verbosity=0)
client, _ = api_client_create(name="sqlite-claim")
conversation = conversation_create(api_client=client, customer_name="SQLite")
with override_settings(TRANSLATION_DISPATCH="jobs"):
    messages = [message_create_from_customer(conversation=conversation, text=f"Mi pedido {i} no ha llegado.",
                                             language="es") for i in range(3)]
rows = list(Translation.objects.filter(message__in=messages).order_by("pk"))
Translation.objects.filter(pk__in=[row.pk for row in rows]).update(
    queue="translate.sqlite", status=TranslationStatus.QUEUED, attempts=0, failure_reason="")
Translation.objects.filter(pk=rows[0].pk).update(attempts=99)
jobs = translations_claim_queued("translate.sqlite", worker="w@h", limit=5)
stored = {str(pk): [status, attempts, worker, reason[:26]] for pk, status, attempts, worker, reason in
          Translation.objects.filter(pk__in=[row.pk for row in rows]).values_list(
              "pk", "status", "attempts", "worker", "failure_reason")}
again = len(translations_claim_queued("translate.sqlite", worker="w@h", limit=5))
# Jobs dispatch: two queued rows by the statement, one running row of a worker that never beat
# taken over by the ORM's way.
with override_settings(TRANSLATION_DISPATCH="jobs"):
    more = [message_create_from_customer(conversation=conversation, text=f"Mi paquete {i} no ha llegado.",
                                         language="es") for i in range(2)]
more_rows = list(Translation.objects.filter(message__in=more).order_by("pk"))
Translation.objects.filter(pk__in=[row.pk for row in more_rows]).update(status=TranslationStatus.QUEUED, attempts=0)
delivered = translations_claim([Delivery(row.pk, "w2@h", "translate.es") for row in [*more_rows, rows[1]]])
delivered_stored = {str(pk): [status, worker, consumed_from, started is not None] for pk, status, worker,
                    consumed_from, started in Translation.objects.filter(pk__in=delivered).values_list(
                        "pk", "status", "worker", "consumed_from", "started_at")}
# The store's statement (a VALUES list on SQLite), with the forward pass's size and time.
completed = translations_complete([(job, "Done " + str(pk)) for pk, job in delivered.items()], batch_size=3, forward_ms=7.5)
print(json.dumps({
    "vendor": connection.vendor,
    "completed": sorted(completed),
    "done": sorted([pk, status, text, size, took] for pk, status, text, size, took in Translation.objects.filter(
        pk__in=delivered).values_list("pk", "status", "text", "batch_size", "forward_ms")),
    "rows": [row.pk for row in rows],
    "jobs": [{"id": job.id, "attempt": job.attempt, "text": job.text, "requested": job.requested_at.isoformat(),
              "aware": job.queued_at.tzinfo is not None} for job in jobs],
    "stored": stored,
    "again": again,
    "more": [row.pk for row in more_rows],
    "delivered": {str(pk): [job.attempt, job.text, job.queued_at.tzinfo is not None and job.requested_at.tzinfo is not None]
                  for pk, job in delivered.items()},
    "delivered_stored": delivered_stored,
}))
"""


def test_the_claim_and_store_statements_run_on_sqlite(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="cs_portal.settings", DATA_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["vendor"] == "sqlite"
    first, second, third = found["rows"]
    # The row out of attempts is failed, the two others claimed in order, with their messages' texts.
    assert [(job["id"], job["attempt"]) for job in found["jobs"]] == [(second, 1), (third, 1)]
    assert [job["text"] for job in found["jobs"]] == ["Mi pedido 1 no ha llegado.", "Mi pedido 2 no ha llegado."]
    assert all(job["aware"] for job in found["jobs"])
    assert found["stored"][str(first)] == [4, 99, "", "Gave up after 99 attempts."]
    assert found["stored"][str(second)][:3] == [2, 1, "w@h"]
    assert found["again"] == 0
    fourth, fifth = found["more"]
    assert found["delivered"] == {
        str(fourth): [1, "Mi paquete 0 no ha llegado.", True],
        str(fifth): [1, "Mi paquete 1 no ha llegado.", True],
        str(second): [2, "Mi pedido 1 no ha llegado.", True],  # taken over from a worker that never beat
    }
    assert set(map(tuple, found["delivered_stored"].values())) == {(2, "w2@h", "translate.es", True)}
    assert found["completed"] == sorted([second, fourth, fifth])
    assert found["done"] == sorted([pk, 3, f"Done {pk}", 3, 7.5] for pk in (second, fourth, fifth))
