"""Small but real translation checkpoints written to disk, for tests and the embedded run.

Each checkpoint has a real configuration, a real SentencePiece tokenizer trained on the
customer-support sentences in ``corpus.txt`` (12 languages, a few hundred lines) and random
weights, saved with ``save_pretrained``. They load through the same ``from_pretrained`` path
as opus-mt, M2M100 or NLLB-200 checkpoints, so every layer above the model is exercised for
real — but **their output is not a translation**: random weights produce random tokens.

Two families are written:

- ``marian-es-en``: a Marian model for one language pair (the opus-mt layout: ``source.spm``,
  ``target.spm``, ``vocab.json``).
- ``m2m100``: an M2M100 many-to-many model (``sentencepiece.bpe.model`` + ``vocab.json``, with
  the ``__xx__`` language tokens that force the target language).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.txt")

# Bump when the checkpoints' shape changes, so an old directory is rewritten.
FORMAT_VERSION = 1
MARKER = "tiny-model.json"

# Small enough that a CPU loads one in well under a second and a test batch takes
# milliseconds; large enough (several layers, several heads) to run every code path of the
# real architectures.
D_MODEL = 64
LAYERS = 2
HEADS = 4
FFN = 128
VOCAB_SIZE = 1000
MAX_POSITIONS = 512

# Random weights often emit end-of-sentence first, which decodes to an empty string. A few
# forced tokens make every output non-empty; this lives in the tiny checkpoints' own
# generation config, never in the engine.
MIN_NEW_TOKENS = 4


@dataclass(frozen=True)
class Shape:
    """The architecture sizes of a Marian checkpoint."""

    d_model: int = D_MODEL
    layers: int = LAYERS
    heads: int = HEADS
    ffn: int = FFN
    vocab_size: int | None = None  # None: the trained tokenizer's size


# Benchmark models: random weights in the shapes that matter for speed. "small" is the
# CPU target of the benchmarks; "base" has opus-mt-base's shape (d512, 6+6 layers, ~58k vocab).
BENCHMARK_SHAPES = {
    "tiny": Shape(),
    "small": Shape(d_model=256, layers=3, heads=4, ffn=1024),
    "base": Shape(d_model=512, layers=6, heads=8, ffn=2048, vocab_size=58101),
}


@dataclass(frozen=True)
class TinyModels:
    marian_es_en: Path
    m2m100: Path


def corpus_lines() -> list[str]:
    """The corpus, plus variants carrying order numbers, amounts and e-mail addresses."""
    base = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    variants = [f"{line} #A-{10000 + i * 37} 49.90 EUR help{i}@example.com" for i, line in enumerate(base)]
    return base + variants


def write_tiny_models(directory: Path, *, force: bool = False, progress: Callable[[str], None] = print) -> TinyModels:
    """Write both tiny checkpoints under ``directory`` (skipped when already current)."""
    directory = Path(directory)
    models = TinyModels(marian_es_en=directory / "marian-es-en", m2m100=directory / "m2m100")
    marker = directory / MARKER
    if not force and marker.exists() and json.loads(marker.read_text()).get("version") == FORMAT_VERSION:
        progress(f"Tiny models already present in {directory}")
        return models
    directory.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines say what happens

    torch.manual_seed(0)  # the same weights on every machine, so outputs are reproducible
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
        progress("Training the Marian tokenizer (SentencePiece) ...")
        _write_marian(models.marian_es_en, corpus, Path(tmp))
        progress(f"Wrote {models.marian_es_en}")
        progress("Training the M2M100 tokenizer (SentencePiece) ...")
        _write_m2m100(models.m2m100, corpus, Path(tmp))
        progress(f"Wrote {models.m2m100}")
    marker.write_text(json.dumps({"version": FORMAT_VERSION, "note": "random weights: output is not a translation"}))
    return models


def _train_spm(corpus: Path, prefix: Path, **ids: int) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,  # a small corpus may not fill the vocabulary
        character_coverage=1.0,  # keep every CJK, Arabic and Devanagari character
        model_type="unigram",
        minloglevel=2,
        **{f"{name}_id": value for name, value in ids.items()},
    )
    return prefix.with_suffix(".model")


def _pieces(spm_file: Path) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_file))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def write_benchmark_model(directory: Path, size: str, *, progress: Callable[[str], None] = print) -> Path:
    """A Marian es->en checkpoint of ``size`` (see BENCHMARK_SHAPES) under ``directory``."""
    target = Path(directory) / f"bench-{size}"
    marker = target / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == FORMAT_VERSION:
        return target
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    progress(f"Writing the {size} benchmark model to {target} ...")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
        _write_marian(target, corpus, Path(tmp), BENCHMARK_SHAPES[size])
    marker.write_text(json.dumps({"version": FORMAT_VERSION, "note": "random weights: output is not a translation"}))
    return target


def _write_marian(target: Path, corpus: Path, tmp: Path, shape: Shape = Shape()) -> None:
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    # opus-mt layout: "</s>" is id 0, "<unk>" id 1, "<pad>" the last id and the decoder start.
    spm_file = _train_spm(corpus, tmp / "marian", eos=0, unk=1, bos=-1, pad=-1)
    vocab = {piece: i for i, piece in enumerate(_pieces(spm_file))}
    vocab["<pad>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(
        source_spm=str(spm_file), target_spm=str(spm_file), vocab=str(tmp / "vocab.json"),
        source_lang="es", target_lang="en",
    )
    config = MarianConfig(
        vocab_size=shape.vocab_size or len(vocab), d_model=shape.d_model,
        encoder_layers=shape.layers, decoder_layers=shape.layers,
        encoder_attention_heads=shape.heads, decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn, decoder_ffn_dim=shape.ffn, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"],
        forced_eos_token_id=0, share_encoder_decoder_embeddings=True,
    )
    model = MarianMTModel(config)
    if config.vocab_size > len(vocab):
        # A vocabulary wider than the tokenizer's (base: opus-mt's ~58k) costs what it costs
        # at the output layer, but its extra ids must never be produced: they have no piece.
        with torch.no_grad():
            model.final_logits_bias[:, len(vocab):] = -1e4
    model.generation_config.min_new_tokens = MIN_NEW_TOKENS
    model.generation_config.num_beams = 1
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _write_m2m100(target: Path, corpus: Path, tmp: Path) -> None:
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    # fairseq layout: <s>=0, <pad>=1, </s>=2, <unk>=3; the tokenizer appends the language
    # tokens (__en__, __es__, ...) after the vocabulary.
    spm_file = _train_spm(corpus, tmp / "m2m100", bos=0, pad=1, eos=2, unk=3)
    vocab = {piece: i for i, piece in enumerate(_pieces(spm_file))}
    (tmp / "m2m-vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = M2M100Tokenizer(vocab_file=str(tmp / "m2m-vocab.json"), spm_file=str(spm_file))
    # The embedding must cover the language tokens and fairseq's "madeup" words after them.
    vocab_size = max(tokenizer.lang_code_to_id.values()) + 1 + tokenizer.num_madeup_words
    config = M2M100Config(
        vocab_size=vocab_size, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, max_position_embeddings=MAX_POSITIONS,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    model = M2M100ForConditionalGeneration(config)
    model.generation_config.min_new_tokens = MIN_NEW_TOKENS
    model.generation_config.num_beams = 1
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
