"""The Hugging Face seq2seq engine on the tiny checkpoints, loaded through from_pretrained."""

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from translation.engines import EngineSpec, InputTooLong, UnsupportedPair, engine_for
from translation.engines.hf_seq2seq import (
    OUTPUT_LENGTH_MARGIN,
    OUTPUT_LENGTH_RATIO,
    Family,
    FileMapping,
    HFSeq2SeqEngine,
    file_mappings,
)


@pytest.fixture(scope="module")
def m2m100(tiny_models):
    return engine_for(EngineSpec("hf-seq2seq", str(tiny_models.m2m100)))


@pytest.fixture(scope="module")
def marian(tiny_models):
    return engine_for(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)))


class HFSeq2SeqEngineTests:
    def test_families_are_recognised_from_the_checkpoint(self, m2m100, marian):
        assert m2m100.family is Family.M2M100
        assert marian.family is Family.PAIR

    def test_many_to_many_output_is_what_generate_produces_with_the_forced_target(self, m2m100, tiny_models):
        tokenizer = AutoTokenizer.from_pretrained(tiny_models.m2m100)
        model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models.m2m100)
        tokenizer.src_lang = "es"
        encoded = tokenizer(["Mi paquete no ha llegado"], return_tensors="pt")
        limit = int(encoded["input_ids"].shape[1] * OUTPUT_LENGTH_RATIO) + OUTPUT_LENGTH_MARGIN
        ids = model.generate(**encoded, forced_bos_token_id=tokenizer.get_lang_id("fr"), max_new_tokens=limit, num_beams=1)
        # The forced language token is the first generated token, and not part of the text.
        assert ids[0, 1].item() == tokenizer.get_lang_id("fr")
        [text] = m2m100.translate(["Mi paquete no ha llegado"], "es", "fr")
        assert text
        assert "__fr__" not in text
        lang_ids = set(tokenizer.lang_code_to_id.values())
        expected = tokenizer.decode([i for i in ids[0].tolist() if i not in lang_ids], skip_special_tokens=True).strip()
        assert text == expected

    def test_target_language_changes_the_output(self, m2m100):
        [to_en] = m2m100.translate(["Hola"], "es", "en")
        [to_ar] = m2m100.translate(["Hola"], "es", "ar")
        assert to_en != to_ar

    def test_batch_gives_one_output_per_input_in_order(self, m2m100):
        texts = ["Hola", "Mi paquete no ha llegado todavía, ¿pueden ayudarme?", "Gracias"]
        batched = m2m100.translate(texts, "es", "en")
        singles = [m2m100.translate([text], "es", "en")[0] for text in texts]
        assert len(batched) == 3
        assert batched == singles

    def test_pair_model_refuses_another_pair(self, marian):
        with pytest.raises(UnsupportedPair, match="translates es->en, not en->es"):
            marian.translate(["Hello"], "en", "es")

    def test_pair_model_translates_its_pair(self, marian):
        [text] = marian.translate(["Hola, necesito ayuda"], "es", "en")
        assert text

    def test_unknown_language_is_refused(self, m2m100):
        with pytest.raises(UnsupportedPair, match="Unknown language 'xx'"):
            m2m100.translate(["Hola"], "es", "xx")

    def test_input_longer_than_the_model_accepts_is_refused(self, m2m100):
        with pytest.raises(InputTooLong) as raised:
            m2m100.translate(["short", "palabra " * 600], "es", "en")
        assert raised.value.index == 1
        assert raised.value.limit == 512

    def test_a_spec_loads_once_per_process(self, m2m100, tiny_models):
        assert engine_for(EngineSpec("hf-seq2seq", str(tiny_models.m2m100))) is m2m100
        assert m2m100.memory_bytes > 0

    def test_int8_on_cpu_translates(self, tiny_models):
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.m2m100), precision="int8"))
        engine.load()
        [text] = engine.translate(["Hola"], "es", "en")
        assert text
        assert engine.shared_bytes == 0  # quantized copies, none of it read from the file

    def test_fp32_weights_are_read_in_place_from_the_checkpoint_file(self, m2m100, tiny_models):
        # transformers maps the safetensors file; a second process mapping it shares the pages.
        checkpoint = tiny_models.m2m100 / "model.safetensors"
        assert checkpoint.exists()
        assert 0.9 * checkpoint.stat().st_size < m2m100.shared_bytes <= m2m100.memory_bytes

    def test_half_precision_on_cpu_falls_back_to_fp32_and_says_so(self, tiny_models, caplog):
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.m2m100), precision="fp16"))
        engine.load()
        assert engine.precision == "fp32"
        assert "fp16 does not run on cpu; loading it in fp32" in caplog.text
        # Against an fp32 engine loaded here too, not the process's cached one (which earlier
        # tests of this process may have loaded under their own settings).
        fp32 = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.m2m100)))
        fp32.load()
        assert engine.translate(["Hola"], "es", "en") == fp32.translate(["Hola"], "es", "en")


class FileMappingsTests:
    SMAPS = """\
55d1c0a00000-55d1c0b00000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Anonymous:          1024 kB
7f0000000000-7f0000100000 rw-p 00000000 fe:00 5521820                    /models/a/model.safetensors
Size:               1024 kB
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd wr mr mw me ac sd
7f0000100000-7f0000180000 r--p 00100000 fe:00 5521820                    /models/a/model.safetensors
Anonymous:             0 kB
THPeligible:    0
7f0000200000-7f0000300000 rw-p 00000000 fe:00 5521821                    /models/my models/b.safetensors
Size:               1024 kB
Anonymous:             8 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Anonymous:             0 kB
7f0000500000-7f0000600000 rw-p 00300000 fe:00 5521820                    /models/a/model.safetensors
Anonymous:             0 kB
"""

    def test_files_mapped_with_their_pieces_joined_and_their_copied_pages(self, tmp_path):
        smaps = tmp_path / "smaps"
        smaps.write_text(self.SMAPS)
        assert file_mappings(str(smaps)) == [
            # a's first two pieces follow each other in memory and in the file: one mapping
            FileMapping(0x7F0000000000, 0x7F0000180000),
            # a path with a space; 8 kB of it written, so copied on write
            FileMapping(0x7F0000200000, 0x7F0000300000, copied=8 * 1024),
            # a's third piece is elsewhere in the file: a mapping of its own
            FileMapping(0x7F0000500000, 0x7F0000600000),
        ]  # the heap and the anonymous mapping are no file's

    def test_no_kernel_account_means_nothing_is_counted_as_shared(self, tmp_path):
        assert file_mappings(str(tmp_path / "absent")) == []


class NllbCodeTests:
    def test_nllb_family_speaks_flores_codes(self):
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", "unused"))
        engine.family = Family.NLLB
        assert engine._model_code("es") == "spa_Latn"
        assert engine._model_code("zh") == "zho_Hans"
        engine.family = Family.M2M100
        assert engine._model_code("es") == "es"


class MultiTargetPairModelTests:
    @pytest.fixture
    def engine(self, tiny_models):
        engine = HFSeq2SeqEngine(EngineSpec("hf-seq2seq", str(tiny_models.marian_es_en)))
        engine.load()
        # As an opus-mt en-ROMANCE tokenizer declares its targets (and no single pair).
        engine._tokenizer.source_lang = engine._tokenizer.target_lang = None
        engine._tokenizer.supported_language_codes = [">>fr<<", ">>es<<"]
        return engine

    def test_target_token_is_prefixed(self, engine):
        assert engine._pair_inputs(["Hello"], "en", "fr") == [">>fr<< Hello"]

    def test_target_the_model_lacks_is_refused(self, engine):
        with pytest.raises(UnsupportedPair, match="cannot produce 'de'"):
            engine.translate(["Hello"], "en", "de")


class LongMessageTests:
    def test_a_long_message_is_translated_sentence_by_sentence(self, m2m100):
        sentences = ["Mi paquete no ha llegado todavía y necesito ayuda con el pedido número 4711."] * 40
        text = " ".join(sentences) + "\n\nGracias."
        [translated] = m2m100.translate([text], "es", "en")
        [one] = m2m100.translate([sentences[0]], "es", "en")
        [thanks] = m2m100.translate(["Gracias."], "es", "en")
        assert translated == " ".join([one] * 40) + "\n\n" + thanks

    def test_the_offending_text_is_named_when_one_sentence_is_too_long(self, m2m100):
        with pytest.raises(InputTooLong) as raised:
            m2m100.translate(["Hola. Adiós.", "Bien. " + "palabra " * 600], "es", "en")
        assert raised.value.index == 1
