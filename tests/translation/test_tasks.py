import pytest

from translation.tasks import translate


class TranslateTaskPayloadTests:
    @pytest.mark.parametrize("payload", ["12", None, 1.5, True, {"id": 1}])
    def test_a_payload_that_is_not_a_translation_id_is_refused(self, payload):
        result = translate.apply(args=[payload])
        assert result.failed()
        assert isinstance(result.result, ValueError)
        assert "expects a Translation id (int)" in str(result.result)
