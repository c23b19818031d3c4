"""Hugging Face encoder-decoder models: Marian (opus-mt, one pair) and M2M100 / NLLB-200 (many to many)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from enum import Enum

from translation import languages
from translation.engines.base import (
    EngineSpec, InputTooLong, TokenUsage, TranslationEngine, UnsupportedPair, between_steps,
)
from translation.protection import translate_protected
from translation.segmentation import join_sentences, split_sentences

logger = logging.getLogger(__name__)

# Output length guard: MT models sometimes repeat words without end (opus-mt #88, CTranslate2
# #1236), so an output may be at most this multiple of the input's tokens, plus a margin for
# very short inputs whose translation is naturally longer.
OUTPUT_LENGTH_RATIO = 2.0
OUTPUT_LENGTH_MARGIN = 16
# Benchmarks only: every output exactly this many tokens, so random weights (which may stop at
# once or never) time like a real model on real text. Unset in production.
FIXED_OUTPUT_TOKENS_VARIABLE = "TRANSLATION_FIXED_OUTPUT_TOKENS"


@contextmanager
def fixed_output_tokens(count: int) -> Iterator[None]:
    """Outputs forced to ``count`` tokens for the engines made, and the processes started, in
    this block (random weights would otherwise stop at once or never); the variable as it was
    after it, so that a command run inside a longer-lived process leaves its later engines be."""
    before = os.environ.get(FIXED_OUTPUT_TOKENS_VARIABLE)
    os.environ[FIXED_OUTPUT_TOKENS_VARIABLE] = str(count)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FIXED_OUTPUT_TOKENS_VARIABLE, None)
        else:
            os.environ[FIXED_OUTPUT_TOKENS_VARIABLE] = before


class Family(Enum):
    PAIR = "pair"  # Marian / opus-mt: the checkpoint is the language pair
    M2M100 = "m2m100"  # ISO 639-1 codes, __xx__ language tokens
    NLLB = "nllb"  # FLORES-200 codes such as spa_Latn


def effective_precision(precision: str, device: str) -> str:
    """The precision a model runs at on ``device``: half precision is GPU-only (slow or missing
    kernels on CPU) and int8 dynamic quantization CPU-only; each falls back to fp32 elsewhere,
    so a route written for a GPU still serves from a CPU worker."""
    if (precision in ("fp16", "bf16") and device == "cpu") or (precision == "int8" and device != "cpu"):
        return "fp32"
    return precision


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}[precision]


class HFSeq2SeqEngine(TranslationEngine):
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.family: Family | None = None
        self.precision = spec.precision
        self._model = None
        self._tokenizer = None
        self._max_input_tokens = 512
        self._dropped_ids: set[int] = set()
        self._fixed_output_tokens = int(os.environ.get(FIXED_OUTPUT_TOKENS_VARIABLE) or 0)
        # A tokenizer holds per-call state (src_lang) and a model runs one forward at a time
        # well; one lock keeps both consistent when several pool threads share the engine.
        self._lock = threading.Lock()
        self._usage = threading.local()  # the tokens of the calling thread's current call

    def load(self) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.precision = effective_precision(self.spec.precision, self.spec.device)
        if self.precision != self.spec.precision:
            logger.warning(
                "%s: %s does not run on %s; loading it in %s", self.spec.model, self.spec.precision,
                self.spec.device, self.precision,
            )
        dtype = _dtype(self.precision)
        tokenizer = AutoTokenizer.from_pretrained(self.spec.model)
        model = AutoModelForSeq2SeqLM.from_pretrained(self.spec.model, dtype=dtype)
        model.eval()
        if self.precision == "int8":
            # torch.ao's dynamic quantization is deprecated in favour of torchao; it still
            # ships with torch 2.13 and needs no extra dependency.
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model.to(self.spec.device)
        self._tokenizer, self._model = tokenizer, model
        self.family = self._detect_family(tokenizer)
        limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
        self._max_input_tokens = min(limit for limit in limits if isinstance(limit, int) and limit > 0)
        # Language tokens are not always registered as special (M2M100's slow tokenizer in
        # transformers 5), so decoding drops them by id rather than trusting the flag.
        self._dropped_ids = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "lang_code_to_id", {}).values())
        logger.info("Loaded %s (%s, %s) on %s", self.spec.model, self.family.value, self.precision, self.spec.device)

    def unload(self) -> None:
        with self._lock:  # not under a forward pass
            self._model = self._tokenizer = None
        logger.info("Unloaded %s (%s) from %s", self.spec.model, self.precision, self.spec.device)

    @staticmethod
    def _detect_family(tokenizer) -> Family:
        name = type(tokenizer).__name__
        if name.startswith("Nllb"):
            return Family.NLLB
        if hasattr(tokenizer, "lang_code_to_id") or name.startswith("M2M100"):
            return Family.M2M100
        return Family.PAIR

    def _model_code(self, code: str) -> str:
        if not languages.is_known(code):
            raise UnsupportedPair(f"Unknown language '{code}'.")
        if self.family is Family.NLLB:
            return languages.nllb_code(code)
        return languages.m2m100_code(code)

    def _target_token_id(self, code: str) -> int:
        tokenizer = self._tokenizer
        token = self._model_code(code)
        if self.family is Family.M2M100:
            token = tokenizer.lang_code_to_token.get(token, f"__{token}__")
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise UnsupportedPair(f"Model {self.spec.model} cannot produce '{code}'.")
        return token_id

    def _pair_inputs(self, texts: Sequence[str], source: str, target: str) -> Sequence[str]:
        """Check a per-pair checkpoint serves the pair; prefix the target token of multi-target ones."""
        tokenizer = self._tokenizer
        declared = (getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None))
        # opus-mt checkpoints name their pair in ISO 639-1 or 639-3 codes; only the former can
        # be compared with ours, the route is trusted otherwise.
        if all(isinstance(code, str) and len(code) == 2 for code in declared) and declared != (source, target):
            raise UnsupportedPair(f"Model {self.spec.model} translates {declared[0]}->{declared[1]}, not {source}->{target}.")
        targets = getattr(tokenizer, "supported_language_codes", None) or []
        if not targets:
            return texts
        # Multi-target opus-mt models (en-ROMANCE, ...) pick the output language from a prefix.
        token = f">>{target}<<"
        if token not in targets:
            raise UnsupportedPair(f"Model {self.spec.model} cannot produce '{target}' (it knows {', '.join(targets[:8])}).")
        return [f"{token} {text}" for text in texts]

    def translate(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> list[str]:
        if self._model is None:
            raise RuntimeError("translate() before load()")
        # Glossary terms, order numbers, e-mail addresses, URLs and amounts come back as given.
        return translate_protected(
            texts, partial(self._translate_sentences, source=source, target=target), glossary or {}
        )

    def translate_with_usage(
        self, texts: Sequence[str], source: str, target: str, glossary: Mapping[str, str] | None = None
    ) -> tuple[list[str], TokenUsage]:
        self._usage.counted = usage = TokenUsage()
        try:
            return self.translate(texts, source, target, glossary), usage
        finally:
            self._usage.counted = None

    def _translate_sentences(self, texts: Sequence[str], source: str, target: str) -> list[str]:
        # Sentence by sentence, all sentences of all texts in one batch.
        segmented = [split_sentences(text) for text in texts]
        sentences = [segment.text for segments in segmented for segment in segments]
        owners = [index for index, segments in enumerate(segmented) for _ in segments]
        try:
            translated = self._generate(sentences, source, target)
        except InputTooLong as exc:
            raise InputTooLong(owners[exc.index], exc.tokens, exc.limit) from None
        results, position = [], 0
        for segments in segmented:
            results.append(join_sentences(translated[position : position + len(segments)], segments))
            position += len(segments)
        return results

    def _generate(self, sentences: list[str], source: str, target: str) -> list[str]:
        import torch

        if not sentences:
            return []
        tokenizer = self._tokenizer
        generate_args: dict = {}
        with self._lock:
            if self.family is Family.PAIR:
                sentences = self._pair_inputs(sentences, source, target)
            else:
                tokenizer.src_lang = self._model_code(source)
                generate_args["forced_bos_token_id"] = self._target_token_id(target)
            encoded = tokenizer(list(sentences), return_tensors="pt", padding=True)
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            for index, length in enumerate(lengths):
                if length > self._max_input_tokens:
                    raise InputTooLong(index, length, self._max_input_tokens)
            # Each sentence's own bound, applied after the batch's generate: an output does not
            # depend on which neighbours shared its batch.
            limits = [min(self._max_input_tokens, int(n * OUTPUT_LENGTH_RATIO) + OUTPUT_LENGTH_MARGIN) for n in lengths]
            if self._fixed_output_tokens:
                limits = [self._fixed_output_tokens] * len(lengths)
                generate_args["min_new_tokens"] = self._fixed_output_tokens
            hook = between_steps()
            if hook is not None:  # called after each decoding step (this process's lanes resize their threads)
                generate_args["stopping_criteria"] = _step_hook(hook)
            encoded = encoded.to(self.spec.device)
            try:
                with torch.inference_mode():
                    output = self._model.generate(
                        **encoded, max_new_tokens=max(limits), num_beams=1, do_sample=False, **generate_args
                    )
            except torch.cuda.OutOfMemoryError:
                # Give the failed batch's memory back before the caller retries it in halves.
                del encoded
                torch.cuda.empty_cache()
                raise
            # Row layout: the decoder start token, then the generated tokens.
            rows = [
                [token for token in row[: 1 + limit] if token not in self._dropped_ids]
                for row, limit in zip(output.tolist(), limits, strict=True)
            ]
            usage = getattr(self._usage, "counted", None)
            if usage is not None:
                usage.add(TokenUsage(input_tokens=sum(lengths), output_tokens=sum(len(row) for row in rows)))
            return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def _weights(self) -> list[tuple[int | None, int]]:
        """Each storage of weights and buffers once (tied weights appear under several names):
        its address (None for int8-packed layers, which are not plain tensors) and its bytes."""
        if self._model is None:
            return []

        def size(value) -> int:
            if isinstance(value, tuple | list):
                return sum(size(item) for item in value)
            if hasattr(value, "element_size") and hasattr(value, "numel"):
                return value.numel() * value.element_size()
            return 0

        weights: dict[int, tuple[int | None, int]] = {}
        for value in self._model.state_dict().values():
            if hasattr(value, "data_ptr") and not getattr(value, "is_quantized", False):
                weights.setdefault(value.data_ptr(), (value.data_ptr(), size(value)))
            else:
                weights.setdefault(id(value), (None, size(value)))
        return list(weights.values())

    @property
    def memory_bytes(self) -> int:
        """Bytes of weights and buffers, int8-packed layers included (they are not parameters)."""
        return sum(size for _, size in self._weights())

    @property
    def shared_bytes(self) -> int:
        """transformers maps the checkpoint's weights file into memory and, on a CPU and where
        the dtype served is the file's, computes on the mapped pages in place; serving never
        writes them. A page that was written anyway (copied on write) is this process's own:
        each mapping's weights count less its copied pages."""
        if self.spec.device != "cpu":
            return 0
        shared = 0
        weights = [(address, size) for address, size in self._weights() if address is not None]
        for mapping in file_mappings():
            inside = sum(size for address, size in weights if mapping.start <= address and address + size <= mapping.end)
            shared += max(0, inside - mapping.copied)
        return shared


def _step_hook(hook):
    """A generate stopping criterion that stops nothing and calls ``hook`` after every step."""
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([_step_hook_type()(hook)])


@cache
def _step_hook_type():
    """The criterion's class, made once (transformers and torch load only with a model)."""
    import torch
    from transformers import StoppingCriteria

    class StepHook(StoppingCriteria):
        def __init__(self, hook) -> None:
            self.hook = hook

        def __call__(self, input_ids, scores, **kwargs):
            self.hook()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepHook


@dataclass(frozen=True)
class FileMapping:
    """Addresses ``start`` to ``end`` of this process map one file; ``copied`` of their bytes
    were written and copied on write (the process's own), the rest are the file's pages, which
    every process mapping the file shares."""

    start: int
    end: int
    copied: int = 0


def file_mappings(smaps: str = "/proc/self/smaps") -> list[FileMapping]:
    """This process's mappings of files, with the pieces the kernel lists separately (one file,
    contiguous addresses and offsets) joined. Empty where the kernel does not say (not Linux)."""
    try:
        with open(smaps) as lines:
            text = lines.read()
    except OSError:
        return []
    # (start, end, (device, inode), offset, copied) of each piece
    pieces: list[list] = []
    current = None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if fields and not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            start, end = (int(address, 16) for address in fields[0].split("-"))
            is_file = len(fields) == 6 and fields[5].startswith("/") and fields[4] != "0"
            current = [start, end, (fields[3], fields[4]), int(fields[2], 16), 0] if is_file else None
            if current is not None:
                pieces.append(current)
        elif current is not None and fields[:1] == ["Anonymous:"]:
            current[4] = int(fields[1]) * 1024  # kB
    joined: list[list] = []
    for start, end, file, offset, copied in pieces:
        last = joined[-1] if joined else None
        if last is not None and last[1] == start and last[2] == file and last[3] + (last[1] - last[0]) == offset:
            last[1], last[4] = end, last[4] + copied
        else:
            joined.append([start, end, file, offset, copied])
    return [FileMapping(start, end, copied) for start, end, _, _, copied in joined]
