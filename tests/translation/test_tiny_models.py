import json

from transformers import AutoConfig, AutoTokenizer

from translation.tiny_models import FORMAT_VERSION, MARKER, corpus_lines, write_tiny_models


class TinyModelsTests:
    def test_corpus_has_a_few_hundred_lines_in_many_scripts(self):
        lines = corpus_lines()
        assert len(lines) >= 250
        text = "".join(lines)
        for sample in ("ñ", "我", "こ", "안", "م", "न", "д"):
            assert sample in text

    def test_checkpoints_load_through_from_pretrained(self, tiny_models):
        marian = AutoTokenizer.from_pretrained(tiny_models.marian_es_en)
        m2m = AutoTokenizer.from_pretrained(tiny_models.m2m100)
        assert type(marian).__name__ == "MarianTokenizer"
        assert type(m2m).__name__ == "M2M100Tokenizer"
        config = AutoConfig.from_pretrained(tiny_models.m2m100)
        assert config.model_type == "m2m_100"
        assert config.vocab_size > max(m2m.lang_code_to_id.values())

    def test_tokenizer_was_trained_on_the_corpus(self, tiny_models):
        tokenizer = AutoTokenizer.from_pretrained(tiny_models.marian_es_en)
        pieces = tokenizer.tokenize("necesito ayuda con mi pedido")
        assert tokenizer.unk_token not in pieces
        assert len(pieces) < len("necesito ayuda con mi pedido")  # real subwords, not characters

    def test_present_models_are_not_rewritten(self, tmp_path):
        lines = []
        write_tiny_models(tmp_path, progress=lines.append)
        stamp = (tmp_path / "m2m100" / "model.safetensors").stat().st_mtime_ns
        assert json.loads((tmp_path / MARKER).read_text())["version"] == FORMAT_VERSION
        write_tiny_models(tmp_path, progress=lines.append)
        assert (tmp_path / "m2m100" / "model.safetensors").stat().st_mtime_ns == stamp
        assert lines[-1].startswith("Tiny models already present")
