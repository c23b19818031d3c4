"""The glossary: kept terms and forced translations, from the admin's table to the model's output."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from translation.engines import EngineSpec, engine_for
from translation.claims import Delivery
from translation.execution import translation_run_batch
from translation.models import GlossaryTerm, Translation
from translation.selectors import glossary_for
from tests.stand_ins import StandInEngine

pytestmark = pytest.mark.django_db


class GlossaryForTests:
    def test_a_languages_own_entry_wins_over_the_one_for_all(self):
        GlossaryTerm.objects.create(term="Garantía Total", translation="Total Warranty")
        GlossaryTerm.objects.create(term="Garantía Total", target_language="fr", translation="Garantie Totale")
        GlossaryTerm.objects.create(term="Acme")
        assert glossary_for("fr") == {"Garantía Total": "Garantie Totale", "Acme": ""}
        assert glossary_for("en") == {"Garantía Total": "Total Warranty", "Acme": ""}

    @pytest.mark.parametrize(
        ("fields", "message"),
        [({"term": " Acme"}, "must not be empty or start or end with spaces"), ({"term": "Acme", "target_language": "xx"}, "Unknown language code 'xx'")],
    )
    def test_bad_entries_are_refused_with_the_reason(self, fields, message):
        with pytest.raises(ValidationError, match=message):
            GlossaryTerm(**fields).full_clean()

    def test_the_admin_lists_and_filters_entries(self, admin_client):
        GlossaryTerm.objects.create(term="Acme", note="our brand")
        response = admin_client.get(reverse("admin:translation_glossaryterm_changelist"), {"q": "Acme"})
        assert response.status_code == 200
        assert "our brand" in response.content.decode()


class GlossaryInTranslationTests:
    def test_the_batch_hands_the_targets_glossary_to_the_engine(self, queued_translation):
        GlossaryTerm.objects.create(term="pedido", target_language="en", translation="order")
        seen = []

        class Recorder(StandInEngine):
            def translate(self, texts, source, target, glossary=None):
                seen.append(glossary)
                return list(texts)

        translation_run_batch([Delivery(queued_translation.pk, "w1", "translate.en")], engines=lambda spec: Recorder())
        assert seen == [{"pedido": "order"}]

    def test_kept_terms_and_forced_translations_come_back_from_a_real_model_run(self, queued_translation, tiny_models):
        GlossaryTerm.objects.create(term="Acme Phone")
        GlossaryTerm.objects.create(term="Garantía Total", target_language="en", translation="Total Warranty")
        message = queued_translation.message
        message.text = "Mi Acme Phone con la Garantía Total no funciona, pedido #A-12345."
        message.save()
        translation_run_batch([Delivery(queued_translation.pk, "w1", "translate.en")])
        text = Translation.objects.get(pk=queued_translation.pk).text
        for kept in ("Acme Phone", "Total Warranty", "#A-12345"):
            assert kept in text
        assert "Garantía Total" not in text

    def test_the_engine_process_carries_the_glossary(self, tiny_models):
        from workers.engine_process import EngineProcess, Warmup

        spec = EngineSpec("hf-seq2seq", str(tiny_models.m2m100))
        process = EngineProcess([Warmup(spec, "es", "en")])
        process.start()
        try:
            glossary = {"Garantía Total": "Total Warranty"}
            text = ["La Garantía Total cubre esto."]
            assert process.engine(spec).translate(text, "es", "en", glossary) == engine_for(spec).translate(text, "es", "en", glossary)
        finally:
            process.stop()
