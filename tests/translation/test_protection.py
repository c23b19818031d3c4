import pytest

from translation.engines import EngineSpec, engine_for
from translation.protection import protect, restore, translate_protected


class ProtectTests:
    @pytest.mark.parametrize(
        ("text", "spans"),
        [
            ("Mi pedido #A-12345 no llegó", ["#A-12345"]),
            ("Pedido ORD-2024-0042 y el 123456", ["ORD-2024-0042", "123456"]),
            ("Escribí a ana.lopez+shop@example.co.uk ayer", ["ana.lopez+shop@example.co.uk"]),
            ("Ver https://shop.example.com/orders/42?x=1.", ["https://shop.example.com/orders/42?x=1"]),
            ("Pagué 49.90 EUR, luego €12,50 y 1.234,56 € y $1,234.56", ["49.90 EUR", "€12,50", "1.234,56 €", "$1,234.56"]),
            ("Hola, ¿qué tal? Tengo 3 preguntas", []),
        ],
    )
    def test_automatic_spans(self, text, spans):
        assert protect(text).values == spans

    def test_terms_are_whole_words_and_win_over_patterns(self):
        protected = protect("Acme Phone X200 y AcmeCorp", terms=["Acme Phone X200", "Acme"])
        assert protected.values == ["Acme Phone X200"]
        assert protected.masked == "[0] y AcmeCorp"

    def test_restore_puts_every_span_back(self):
        protected = protect("Pedido #A-12345 para ana@example.com")
        assert restore("Order [0] for [1]", protected) == "Order #A-12345 for ana@example.com"
        assert restore("[1] orders [0]", protected) == "ana@example.com orders #A-12345"  # reordered is fine

    @pytest.mark.parametrize("output", ["Order for", "Order [0] [0] for [1]", "Order [0] for [2]"])
    def test_restore_refuses_a_lost_or_repeated_placeholder(self, output):
        assert restore(output, protect("Pedido #A-12345 para ana@example.com")) is None


class TranslateProtectedTests:
    def test_placeholders_that_survive_are_restored_in_one_call(self):
        calls = []

        def translate(texts):
            calls.append(list(texts))
            return [text.replace("Pedido", "Order") for text in texts]

        assert translate_protected(["Pedido #A-12345"], translate) == ["Order #A-12345"]
        assert calls == [["Pedido [0]"]]

    def test_a_model_that_loses_placeholders_gets_the_words_around_the_spans(self):
        def translate(texts):
            return ["<" + text.strip() + ">" for text in texts] if "[0]" not in texts[0] else ["lost"] * len(texts)

        [result] = translate_protected(["Mi pedido #A-12345 no llegó, escribe a ana@example.com"], translate)
        assert result == "<Mi pedido> #A-12345 <no llegó, escribe a> ana@example.com"

    def test_a_text_holding_brackets_of_its_own_takes_the_safe_way(self):
        [result] = translate_protected(["Ver [0] y #A-12345"], lambda texts: [t.upper() for t in texts])
        assert result.endswith("#A-12345")
        assert result.startswith("VER [0] Y")


class RealModelTests:
    def test_spans_come_back_unchanged_from_a_real_model_run(self, tiny_models):
        engine = engine_for(EngineSpec("hf-seq2seq", str(tiny_models.m2m100)))
        text = "Mi pedido #A-12345 de 49.90 EUR no llegó. Escríbanme a ana.lopez@example.com o vean https://shop.example.com/o/42"
        [translated] = engine.translate([text], "es", "en")
        for span in ("#A-12345", "49.90 EUR", "ana.lopez@example.com", "https://shop.example.com/o/42"):
            assert span in translated
