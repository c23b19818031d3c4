import pytest

from translation.detection import detect_language


class DetectLanguageTests:
    @pytest.mark.parametrize(
        ("text", "language"),
        [
            ("Hola, necesito ayuda con mi pedido", "es"),
            ("Bonjour, mon colis n'est pas encore arrivé", "fr"),
            ("مرحبا، أحتاج إلى مساعدة بخصوص طلبي", "ar"),
            ("你好，我的订单需要帮助", "zh"),
            ("Where can I download my invoice?", "en"),
        ],
    )
    def test_detects_the_language_offline(self, text, language):
        detection = detect_language(text)
        assert detection is not None
        assert detection.language == language
        assert 0 < detection.confidence <= 1

    def test_abstains_on_text_without_language(self):
        assert detect_language("12345 !!! ???") is None
