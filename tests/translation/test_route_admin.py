"""The route admin through Django's test client: forms, list editing, figures, audit."""

import pytest
from django.urls import reverse

from translation.claims import translation_claim
from translation.execution import translations_complete
from translation.models import LanguageRoute, Translation
from translation.routing import route_for

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:translation_languageroute_changelist"


def es_en() -> LanguageRoute:
    return LanguageRoute.objects.get(source_language="es", target_language="en", enabled=True)


def form_data(route: LanguageRoute, **changes) -> dict:
    data = {
        "source_language": route.source_language, "target_language": route.target_language,
        "variant": route.variant, "traffic_share": route.traffic_share, "queue": route.queue,
        "engine": route.engine, "model_name": route.model_name, "adapter": route.adapter,
        "precision": route.precision, "max_batch_size": route.max_batch_size, "max_wait_ms": route.max_wait_ms,
        "max_input_chars": route.max_input_chars, "max_queued": route.max_queued, "enabled": "on" if route.enabled else "",
        "fallback": route.fallback_id or "", "note": route.note,
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not False}


def list_data(rows: list[LanguageRoute], **per_row) -> dict:
    """The route list's formset, with ``per_row[pk] = {"traffic_share": ..., "enabled": ...}``."""
    data = {"form-TOTAL_FORMS": len(rows), "form-INITIAL_FORMS": len(rows), "_save": "Save"}
    for index, row in enumerate(rows):
        values = {"traffic_share": row.traffic_share, "enabled": row.enabled} | per_row.get(str(row.pk), {})
        data[f"form-{index}-id"] = row.pk
        data[f"form-{index}-traffic_share"] = values["traffic_share"]
        if values["enabled"]:
            data[f"form-{index}-enabled"] = "on"
    return data


class RouteChangeFormTests:
    def test_moving_a_pair_to_another_queue_routes_the_next_job_there(self, admin_client):
        route = es_en()
        url = reverse("admin:translation_languageroute_change", args=[route.pk])
        response = admin_client.post(url, form_data(route, queue="translate.en.b"))
        assert response.status_code == 302, response.content.decode()[:2000]
        assert route_for("es", "en").queue == "translate.en.b"

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"queue": "English queue"}, "must look like &#x27;translate.&lt;lang&gt;&#x27;"),
            ({"target_language": "xx"}, "Unknown language code &#x27;xx&#x27;"),
            ({"max_batch_size": 0}, "greater than or equal to 1"),
            ({"max_batch_size": 2000}, "less than or equal to 1024"),
            ({"traffic_share": 60}, "add up to 60%"),
        ],
    )
    def test_a_bad_change_is_refused_with_its_reason_and_nothing_changes(self, admin_client, changes, message):
        route = es_en()
        url = reverse("admin:translation_languageroute_change", args=[route.pk])
        response = admin_client.post(url, form_data(route, **changes))
        assert response.status_code == 200
        assert message in response.content.decode()
        assert es_en().queue == route.queue and es_en().max_batch_size == route.max_batch_size

    def test_a_second_active_route_for_the_pair_is_refused(self, admin_client):
        route = es_en()
        response = admin_client.post(reverse("admin:translation_languageroute_add"), form_data(route, note="twin"))
        assert response.status_code == 200
        assert "is already the active route for es→en" in response.content.decode()

    def test_a_fallback_cycle_is_refused(self, admin_client):
        route = es_en()
        backup = LanguageRoute.objects.create(
            source_language="es", target_language="en", variant="backup", enabled=False, model_name="m", fallback=route
        )
        url = reverse("admin:translation_languageroute_change", args=[route.pk])
        response = admin_client.post(url, form_data(route, fallback=backup.pk))
        assert "Fallback cycle" in response.content.decode()


class RouteListTests:
    def test_an_ab_split_is_set_in_one_save_of_the_list(self, admin_client):
        route = es_en()
        variant_b = LanguageRoute.objects.create(
            source_language="es", target_language="en", variant="b", traffic_share=30, enabled=False,
            model_name=route.model_name,
        )
        rows = list(LanguageRoute.objects.filter(pk__in=[route.pk, variant_b.pk]).order_by("target_language", "source_language", "variant"))
        url = reverse(CHANGELIST) + "?target_language__exact=en&source_language__exact=es"
        data = list_data(rows, **{str(route.pk): {"traffic_share": 70, "enabled": True},
                                  str(variant_b.pk): {"traffic_share": 30, "enabled": True}})
        response = admin_client.post(url, data)
        assert response.status_code == 302, response.content.decode()[-3000:]
        assert {(r.variant, r.traffic_share, r.enabled) for r in LanguageRoute.objects.filter(source_language="es", target_language="en")} == {
            ("", 70, True), ("b", 30, True)
        }

    def test_a_pairs_active_route_is_swapped_in_one_save_of_the_list(self, admin_client):
        route = es_en()
        spare = LanguageRoute.objects.create(
            source_language="es", target_language="en", enabled=False, model_name="other-model", queue="translate.en.b"
        )
        rows = list(LanguageRoute.objects.filter(pk__in=[route.pk, spare.pk]).order_by("pk"))
        url = reverse(CHANGELIST) + "?target_language__exact=en&source_language__exact=es"
        data = list_data(rows, **{str(route.pk): {"traffic_share": 100, "enabled": False},
                                  str(spare.pk): {"traffic_share": 100, "enabled": True}})
        response = admin_client.post(url, data)
        assert response.status_code == 302, response.content.decode()[-3000:]
        assert route_for("es", "en").id == spare.pk

    def test_two_active_routes_for_one_pair_are_refused_in_the_list(self, admin_client):
        route = es_en()
        spare = LanguageRoute.objects.create(source_language="es", target_language="en", enabled=False, model_name="m")
        rows = list(LanguageRoute.objects.filter(pk__in=[route.pk, spare.pk]).order_by("pk"))
        url = reverse(CHANGELIST) + "?target_language__exact=en&source_language__exact=es"
        data = list_data(rows, **{str(spare.pk): {"traffic_share": 100, "enabled": True}})
        response = admin_client.post(url, data)
        assert "Only one route may be active for es→en" in response.content.decode()

    def test_deleting_a_variant_that_would_break_the_split_is_refused(self, admin_client):
        route = es_en()
        route.variant, route.traffic_share = "a", 70
        route.save()
        variant_b = LanguageRoute.objects.create(
            source_language="es", target_language="en", variant="b", traffic_share=30, model_name="m"
        )
        url = reverse("admin:translation_languageroute_delete", args=[variant_b.pk])
        response = admin_client.post(url, {"post": "yes"}, follow=True)
        assert "was not deleted" in response.content.decode()
        assert LanguageRoute.objects.filter(pk=variant_b.pk).exists()

    def test_shares_that_do_not_add_up_are_refused_in_the_list(self, admin_client):
        route = es_en()
        url = reverse(CHANGELIST) + "?target_language__exact=en&source_language__exact=es"
        response = admin_client.post(url, list_data([route], **{str(route.pk): {"traffic_share": 40, "enabled": True}}))
        assert response.status_code == 200
        assert "add up to 40%" in response.content.decode()
        assert es_en().traffic_share == 100

    def test_the_list_filters_by_language_and_shows_ledger_figures(self, admin_client, queued_translation):
        job = translation_claim(translation_id=queued_translation.pk, worker="w1", consumed_from="translate.en")
        translations_complete([(job, "Hello")], batch_size=1)
        response = admin_client.get(reverse(CHANGELIST), {"target_language__exact": "en"})
        page = response.content.decode()
        assert response.status_code == 200
        assert "es→en (#" in page and "*→fr" not in page
        row = page[page.index(f"es→en (#{es_en().pk})"):]
        row = row[: row.index("</tr>")]
        assert '<td class="field-jobs_last_hour">1</td>' in row
        assert '<td class="field-p50_ms">-</td>' not in row  # a latency is shown

    def test_a_queue_nobody_consumes_is_shown(self, admin_client):
        route = es_en()
        route.queue = "translate.en.nobody"
        route.save()
        response = admin_client.get(reverse(CHANGELIST))
        assert "No worker consumes translate.en.nobody" in response.content.decode()


class RouteAuditTests:
    def test_who_changed_what_and_when_is_kept(self, admin_client, admin_user):
        route = es_en()
        admin_client.post(
            reverse("admin:translation_languageroute_change", args=[route.pk]), form_data(route, max_batch_size=64)
        )
        response = admin_client.get(reverse("admin:translation_historicallanguageroute_changelist"))
        page = response.content.decode()
        assert response.status_code == 200
        assert "max_batch_size: 128 → 64" in page
        record = LanguageRoute.history.filter(id=route.pk).latest("history_date")
        assert record.history_user == admin_user and record.history_type == "~"
        history = admin_client.get(reverse("admin:translation_languageroute_history", args=[route.pk]))
        assert history.status_code == 200 and admin_user.username in history.content.decode()


class SampleViewTests:
    def test_a_sample_is_sent_along_the_routes_queue_and_kept_out_of_the_figures(self, admin_client, django_capture_on_commit_callbacks, monkeypatch):
        from translation import admin as route_admin

        monkeypatch.setattr(route_admin, "SAMPLE_WAIT_S", 0.1)  # no worker here: it stays queued
        route = es_en()
        url = reverse("admin:translation_languageroute_sample") + f"?ids={route.pk}"
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = admin_client.post(url, {"text": "Hola, ¿dónde está mi pedido?", "source_language": ""})
        page = response.content.decode()
        assert response.status_code == 200
        assert "still queued" in page and "translate.en" in page
        sample = Translation.objects.get(input_text="Hola, ¿dónde está mi pedido?")
        assert (sample.route_id, sample.queue, sample.message_id) == (route.pk, "translate.en", None)
        assert len(callbacks) == 1  # sent to the broker on commit

    def test_a_route_for_any_source_needs_the_samples_language(self, admin_client):
        route = LanguageRoute.objects.get(source_language="*", target_language="fr")
        url = reverse("admin:translation_languageroute_sample") + f"?ids={route.pk}"
        response = admin_client.post(url, {"text": "Hello", "source_language": ""})
        assert "takes any source language: choose the sample&#x27;s language" in response.content.decode()
        assert not Translation.objects.filter(input_text="Hello").exists()
