import pytest

from translation.segmentation import join_sentences, split_sentences


class SplitSentencesTests:
    @pytest.mark.parametrize(
        ("text", "sentences"),
        [
            ("Hola. ¿Dónde está mi pedido? Gracias!", ["Hola.", "¿Dónde está mi pedido?", "Gracias!"]),
            ("Cuesta 49.90 EUR, ver example.com. Vale", ["Cuesta 49.90 EUR, ver example.com.", "Vale"]),
            ("你好。我的包裹还没有到！谢谢", ["你好。", "我的包裹还没有到！", "谢谢"]),
            ("Line one\n\nLine two", ["Line one", "Line two"]),
            ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
            ("one sentence", ["one sentence"]),
        ],
    )
    def test_splits_at_sentence_ends(self, text, sentences):
        assert [segment.text for segment in split_sentences(text)] == sentences

    @pytest.mark.parametrize("text", ["A. B.\n\n  C?", "  leading. trailing  ", "a\n\n\nb", "...", "你好。 谢谢"])
    def test_joining_gives_the_text_back(self, text):
        segments = split_sentences(text)
        assert "".join(segment.text + segment.separator for segment in segments) == text

    def test_translations_keep_the_line_breaks(self):
        segments = split_sentences("Hola.\n\nAdiós.")
        assert join_sentences(["Hello.", "Bye."], segments) == "Hello.\n\nBye."
