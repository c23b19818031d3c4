"""The reconciler's look for lost jobs against PostgreSQL and the real Redis broker
(translation/recovery.py: lost_jobs_resend): queued jobs no queue holds sent again after two
looks, the search bounded to each queue's oldest, retried jobs looked for behind a backlog."""

from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from tests.conftest import broker_url
from translation.models import Translation, TranslationStatus
from translation.recovery import LOST, lost_jobs_resend

pytestmark = pytest.mark.django_db


@pytest.mark.usefixtures("empty_broker")  # conftest: the test broker emptied before and after
class LostJobsTests:
    def age(self, rows, seconds: float) -> None:
        past = timezone.now() - timedelta(seconds=seconds)
        Translation.objects.filter(pk__in=[row.pk for row in rows]).update(created_at=past, enqueued_at=past)

    def test_a_queued_job_no_queue_holds_is_sent_again_and_one_the_broker_holds_is_not(
        self, many_translations, sent, django_capture_on_commit_callbacks
    ):
        from translation.sending import translation_enqueue

        held, lost = many_translations[0], many_translations[1]
        translation_enqueue(translation=held)  # a real message in the real queue
        self.age([held, lost], 60)
        Translation.objects.exclude(pk__in=[held.pk, lost.pk]).update(status=TranslationStatus.DONE)
        sent.clear()
        with django_capture_on_commit_callbacks(execute=True):
            result = lost_jobs_resend(older_than_s=10)
        assert result.sent == [lost.pk] and sent == [lost.pk]
        assert Translation.objects.get(pk=lost.pk).resends == 1

    def test_a_job_missing_at_one_look_only_is_not_resent(self, many_translations, sent):
        """A long transaction commits rows whose sent stamp is already old, and their sends take
        a while: a job missing once may be on its way. The reconciler resends a job only when
        it was missing at its previous look too."""
        from translation.sending import translation_enqueue

        on_its_way, lost = many_translations[0], many_translations[1]
        self.age([on_its_way, lost], 60)
        Translation.objects.exclude(pk__in=[on_its_way.pk, lost.pk]).update(status=TranslationStatus.DONE)
        sent.clear()
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        assert (first.sent, first.missing) == ([], {(on_its_way.pk, 0), (lost.pk, 0)})
        translation_enqueue(translation=on_its_way)  # its transaction's send arrives
        second = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        assert second.sent == [lost.pk] and second.missing == set()
        assert Translation.objects.get(pk=on_its_way.pk).resends == 0

    def test_a_look_that_cannot_search_the_broker_forgets_nothing(self, many_translations, monkeypatch):
        import translation.queues as queues

        lost = many_translations[1]
        self.age([lost], 60)
        Translation.objects.exclude(pk=lost.pk).update(status=TranslationStatus.DONE)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        monkeypatch.setattr(queues, "broker_search", lambda *args, **kwargs: None)  # Redis unreachable
        blind = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        assert (blind.sent, blind.missing) == ([], first.missing)
        monkeypatch.undo()
        assert lost_jobs_resend(older_than_s=10, seen_missing=blind.missing).sent == [lost.pk]

    def test_a_job_claimed_and_queued_again_between_two_looks_starts_over(self, many_translations):
        lost = many_translations[1]
        self.age([lost], 60)
        Translation.objects.exclude(pk=lost.pk).update(status=TranslationStatus.DONE)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        Translation.objects.filter(pk=lost.pk).update(attempts=1, claims=1)  # claimed, failed, queued again, its retry on its way
        second = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        assert (second.sent, second.missing) == ([], {(lost.pk, 1)})

    def test_a_job_never_sent_is_sent_and_one_lost_too_often_fails_visibly(self, many_translations, settings):
        settings.TRANSLATION_MAX_RESENDS = 2
        never_sent, hopeless = many_translations[0], many_translations[1]
        self.age([never_sent, hopeless], 60)
        Translation.objects.filter(pk=never_sent.pk).update(enqueued_at=None)
        Translation.objects.filter(pk=hopeless.pk).update(resends=2)
        Translation.objects.exclude(pk__in=[never_sent.pk, hopeless.pk]).update(status=TranslationStatus.DONE)
        from prometheus_client import REGISTRY

        from translation import metrics

        labels = {**metrics.job_labels(route_id=hopeless.route_id, source=hopeless.source_language,
                                       target=hopeless.target_language, model=hopeless.model_name), "reason": "lost"}
        counted = REGISTRY.get_sample_value("translation_jobs_failed_total", labels) or 0
        result = lost_jobs_resend(older_than_s=10)
        assert result.sent == [never_sent.pk] and result.failed == [hopeless.pk]
        failed = Translation.objects.get(pk=hopeless.pk)
        assert failed.status == TranslationStatus.FAILED and failed.failure_reason == LOST.format(times=3)
        assert REGISTRY.get_sample_value("translation_jobs_failed_total", labels) == counted + 1  # the dashboard's

    def test_the_installations_key_prefix_is_searched(self, many_translations, monkeypatch):
        """With a key prefix (bin/run sets one per data directory), the waiting and taken
        messages live under prefixed keys."""
        import json

        from cs_portal.celery import app
        from translation.queues import translation_ids_in_broker, translation_ids_waiting

        waiting, taken = many_translations[0], many_translations[1]
        options = {**(app.conf.get("broker_transport_options") or {}), "global_keyprefix": "install-a:"}
        monkeypatch.setitem(app.conf, "broker_transport_options", options)
        client = redis.Redis.from_url(broker_url(15))

        def message(pk):
            return json.dumps({"body": "", "headers": {"argsrepr": f"[{pk}]"}, "properties": {}})

        client.lpush("install-a:translate.en\x06\x166", message(waiting.pk))
        client.hset("install-a:unacked", "tag-1", json.dumps([json.loads(message(taken.pk)), "", "translate.en"]))
        client.lpush("translate.en", message(999_999))  # another installation's, unprefixed
        assert translation_ids_waiting(["translate.en"]) == {waiting.pk}
        assert translation_ids_in_broker(["translate.en"]) == {waiting.pk, taken.pk}

    def test_a_job_taken_long_ago_and_never_claimed_is_sent_again(self, many_translations):
        """Taken by a worker that was lost with its claim transaction open: the message sits
        unacknowledged until Redis's visibility timeout (15 minutes); the ledger does not wait."""
        import json
        import time as clock

        from translation.recovery import UNCLAIMED_AFTER_S

        stuck, fresh = many_translations[0], many_translations[1]
        self.age([stuck, fresh], UNCLAIMED_AFTER_S + 60)
        Translation.objects.exclude(pk__in=[stuck.pk, fresh.pk]).update(status=TranslationStatus.DONE)
        client = redis.Redis.from_url(broker_url(15))
        for tag, row, delivered in (("old", stuck, clock.time() - UNCLAIMED_AFTER_S - 5), ("new", fresh, clock.time() - 1)):
            message = {"body": "", "headers": {"argsrepr": f"[{row.pk}]"}, "properties": {}}
            client.hset("unacked", tag, json.dumps([message, "", "translate.en"]))
            client.zadd("unacked_index", {tag: delivered})
        assert lost_jobs_resend(older_than_s=10).sent == [stuck.pk]

    def test_recent_jobs_are_left_alone(self, many_translations):
        assert lost_jobs_resend(older_than_s=10).sent == []

    def test_a_look_searches_for_the_oldest_sent_jobs_of_each_queue_and_every_job_never_sent(
        self, many_translations, monkeypatch
    ):
        """A backlog older than the cutoff is not read whole at every look: of each queue, the
        oldest sent jobs (here two) are searched for; found, the search stops, and the younger
        ones are looked at once those are taken. A queue of its own is looked at whatever the
        other holds."""
        import translation.recovery as recovery
        from translation.sending import translation_enqueue

        monkeypatch.setattr(recovery, "LOST_LOOK_PER_QUEUE", 2)
        first_en, second_en, third_en, fourth_en, never_sent, elsewhere = many_translations
        for row in (first_en, second_en):  # the broker holds the oldest two; the younger were lost
            translation_enqueue(translation=row)
        self.age(many_translations, 60)
        Translation.objects.filter(pk=elsewhere.pk).update(queue="translate.other")
        Translation.objects.filter(pk=never_sent.pk).update(enqueued_at=None)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        assert first.sent == [never_sent.pk]
        assert first.missing == {(elsewhere.pk, 0)}  # translate.en's window was held: the search stopped
        Translation.objects.filter(pk__in=[first_en.pk, second_en.pk]).update(status=TranslationStatus.DONE)
        second = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        assert second.sent == [elsewhere.pk]
        assert second.missing == {(third_en.pk, 0), (fourth_en.pk, 0)}  # the window moved on

    def test_a_job_retried_behind_a_backlog_is_looked_for_once_the_window_reaches_its_retry(
        self, many_translations, monkeypatch
    ):
        """A retried job keeps its id and first send stamp, and Celery pushes its new message
        behind the jobs then waiting. Looked for among the queue's oldest, it would make each look
        read the queue to its end; it is looked for once the window's sends reach its retry."""
        import translation.queues as queues
        import translation.recovery as recovery
        from translation.sending import translation_enqueue

        monkeypatch.setattr(recovery, "LOST_LOOK_PER_QUEUE", 2)
        monkeypatch.setattr(queues, "SEARCH_CHUNK", 2)  # two messages a read, from the oldest end
        monkeypatch.setattr(queues, "SEARCH_OVERLAP", 0)
        retried, *backlog = many_translations  # the retried job is the oldest by id
        for row in [*backlog, retried]:  # the backlog's messages, then the retry's behind them
            translation_enqueue(translation=row)
        now = timezone.now()
        self.age(many_translations, 60)
        Translation.objects.filter(pk__in=[row.pk for row in backlog[2:]]).update(enqueued_at=now - timedelta(seconds=15))
        Translation.objects.filter(pk=retried.pk).update(  # as translation_requeue leaves it, 20 s ago
            retry_at=now - timedelta(seconds=18), updated_at=now - timedelta(seconds=20), attempts=1)
        # A job of the window sent again 12 s ago (a fresh stamp on an old id, its message ahead of
        # the queue) says nothing of how far the window reaches.
        Translation.objects.filter(pk=backlog[1].pk).update(resends=1, enqueued_at=now - timedelta(seconds=12))
        searches, search = [], queues.broker_search

        def spied(*args, **kwargs):
            found = search(*args, **kwargs)
            searches.append((kwargs["wanted"]["translate.en"], found.read_whole))
            return found

        monkeypatch.setattr(queues, "broker_search", spied)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        # The window (the two oldest sends, 60 s ago) is before the retry: only they are looked
        # for, found in the first read, and the queue is not read to its end.
        assert searches == [({backlog[0].pk, backlog[1].pk}, set())]
        assert (first.sent, first.missing) == ([], set())
        Translation.objects.filter(pk__in=[backlog[0].pk, backlog[1].pk]).update(status=TranslationStatus.DONE)
        second = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        # Sends 15 s ago reach the retry's 20: it is looked for, found behind the backlog without
        # reading the queue to its end.
        assert searches[-1] == ({backlog[2].pk, backlog[3].pk, retried.pk}, set())
        assert (second.sent, second.missing) == ([], set())

    def test_a_retried_job_whose_message_was_lost_is_sent_again(self, many_translations):
        retried = many_translations[0]
        Translation.objects.exclude(pk=retried.pk).update(status=TranslationStatus.DONE)
        self.age([retried], 60)
        Translation.objects.filter(pk=retried.pk).update(  # its retry sent 20 s ago; no queue holds it
            retry_at=timezone.now() - timedelta(seconds=18), updated_at=timezone.now() - timedelta(seconds=20))
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        assert (first.sent, first.missing) == ([], {(retried.pk, 0)})
        assert lost_jobs_resend(older_than_s=10, seen_missing=first.missing).sent == [retried.pk]
        assert Translation.objects.get(pk=retried.pk).retry_at is None  # sent again now, at once

    def test_a_job_retried_within_the_cutoff_is_left_alone(self, many_translations, monkeypatch):
        import translation.queues as queues

        retried, lost = many_translations[:2]
        Translation.objects.exclude(pk__in=[retried.pk, lost.pk]).update(status=TranslationStatus.DONE)
        self.age([retried, lost], 60)
        Translation.objects.filter(pk=retried.pk).update(retry_at=timezone.now(), updated_at=timezone.now())
        searches, search = [], queues.broker_search
        monkeypatch.setattr(queues, "broker_search", lambda *args, **kwargs: searches.append(kwargs["wanted"])
                            or search(*args, **kwargs))
        assert lost_jobs_resend(older_than_s=10, seen_missing=set()).missing == {(lost.pk, 0)}
        assert searches == [{"translate.en": {lost.pk}}]  # its retry's message was sent a moment ago

    def test_a_search_for_given_jobs_reads_a_queue_from_its_oldest_end_until_it_has_found_them(self, monkeypatch):
        """Chunks of five overlapping by two, from the right end of the list (where workers pop)."""
        import json

        import translation.queues as queues

        monkeypatch.setattr(queues, "SEARCH_CHUNK", 5)
        monkeypatch.setattr(queues, "SEARCH_OVERLAP", 2)
        client = redis.Redis.from_url(broker_url(15))
        for pk in range(1, 13):  # kombu's LPUSH: job 1, the oldest, at the right end
            message = {"body": "", "headers": {"argsrepr": f"[{pk}]"}, "properties": {}}
            client.lpush("translate.en\x06\x166", json.dumps(message))  # the list of priority 6
        everything = set(range(1, 13))

        def search(*wanted):
            found = queues.broker_search(["translate.en"], wanted={"translate.en": set(wanted)})
            return found.ids, found.read_whole

        assert queues.translation_ids_in_broker(["translate.en"]) == everything
        assert search(1, 2) == ({1, 2, 3, 4, 5}, set())  # one read
        assert search(2, 7) == (set(range(1, 9)), set())  # two
        assert search(12) == (everything, set())  # the newest: every read
        assert search(12, 99) == (everything, {"translate.en"})  # 99 is not there: read to the end
        assert search() == (set(), set())  # nothing to find

    def test_a_queue_read_to_its_end_has_every_job_looked_at(self, many_translations, monkeypatch):
        """A broker restarted empty lost every job: once a look finds none of a queue's oldest
        jobs, having read the whole queue, it takes the younger ones for missing too."""
        import translation.recovery as recovery

        monkeypatch.setattr(recovery, "LOST_LOOK_PER_QUEUE", 2)
        self.age(many_translations, 60)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())
        assert {row.queue for row in many_translations} == {"translate.en"}
        assert first.missing == {(row.pk, 0) for row in many_translations}  # six, where the window held two
        assert sorted(lost_jobs_resend(older_than_s=10, seen_missing=first.missing).sent) == [
            row.pk for row in many_translations
        ]

    def test_a_look_that_cannot_search_the_broker_keeps_the_suspects_beyond_its_windows(
        self, many_translations, monkeypatch
    ):
        import translation.queues as queues
        import translation.recovery as recovery

        monkeypatch.setattr(recovery, "LOST_LOOK_PER_QUEUE", 2)
        self.age(many_translations, 60)
        first = lost_jobs_resend(older_than_s=10, seen_missing=set())  # all six, the queue read to its end
        Translation.objects.filter(pk=many_translations[5].pk).update(status=TranslationStatus.DONE)  # one came
        monkeypatch.setattr(queues, "broker_search", lambda *args, **kwargs: None)  # Redis unreachable
        blind = lost_jobs_resend(older_than_s=10, seen_missing=first.missing)
        assert (blind.sent, blind.missing) == ([], {(row.pk, 0) for row in many_translations[:5]})

    def test_a_job_taken_while_its_queue_is_searched_is_found_among_the_unacknowledged(self, monkeypatch):
        """Workers move messages from a queue to the unacknowledged ones: one taken after those
        were read and before its queue was is not called missing."""
        import json
        import time as clock

        import translation.queues as queues

        client = redis.Redis.from_url(broker_url(15))
        messages = {
            pk: json.dumps({"body": "", "headers": {"argsrepr": f"[{pk}]"}, "properties": {}}) for pk in (1, 2, 3)
        }
        for pk in (1, 2, 3):
            client.lpush("translate.en\x06\x166", messages[pk])
        real, moved = queues._read_list, []

        def a_worker_takes_job_1_first(connection, key, start, end):
            if not moved:
                moved.append(client.rpop("translate.en\x06\x166"))
                client.hset("unacked", "tag-1", json.dumps([json.loads(messages[1]), "", "translate.en"]))
                client.zadd("unacked_index", {"tag-1": clock.time()})
            return real(connection, key, start, end)

        monkeypatch.setattr(queues, "_read_list", a_worker_takes_job_1_first)
        found = queues.broker_search(["translate.en"], delivered_within_s=60, wanted={"translate.en": {1}})
        assert moved and 1 in found.ids
