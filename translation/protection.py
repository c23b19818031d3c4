"""Spans a translation must carry through unchanged: order numbers, e-mail addresses, URLs,
amounts, and a glossary's terms (kept as they are, or replaced by a forced translation).

Before translation each protected span is replaced by a numbered placeholder, so the model still
sees a whole sentence; afterwards the placeholders are replaced by the original spans. A model
may drop, duplicate or mangle a placeholder (random-weight models always do; trained ones now
and then): then the text is translated piece by piece around its spans instead, and the spans
are put back verbatim. Either way every span comes back exactly as the customer wrote it.

Plain Python: ``translate_protected`` takes the translate function of an engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Most specific first: an e-mail address contains what looks like a domain, a URL digits.
PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("url", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)]")),
    # 49.90 EUR, €49.90, $1,234.56, 1.234,56 €, 20 USD
    ("amount", re.compile(
        r"(?:[€$£¥]\s?\d[\d.,\u00a0 ]*\d|\d[\d.,\u00a0]*\d?\s?(?:[€$£¥]|EUR|USD|GBP|JPY|CNY|CHF)(?!\w))"
    )),
    # #A-12345, ORD-2024-0042, A1B2C3D4 (letters and digits mixed), 5+ digit numbers
    ("order", re.compile(r"#?\b(?=[A-Z0-9-]*\d)[A-Z]{1,5}-?[A-Z0-9-]*\d[A-Z0-9-]*\b|#\d+\b|\b\d{5,}\b")),
)

PLACEHOLDER = "[{}]"  # short, and copied through by opus-mt and NLLB more often than not
_PLACEHOLDER_PATTERN = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Protected:
    original: str
    masked: str
    spans: tuple[tuple[int, int], ...]  # (start, end) of each protected span in ``original``
    outputs: tuple[str, ...] = ()  # what each span becomes: itself, or a glossary's forced translation

    @property
    def values(self) -> list[str]:
        return list(self.outputs) or [self.original[start:end] for start, end in self.spans]


Glossary = Mapping[str, str]  # term -> its forced translation ("" keeps the term as it is)


def protect(text: str, terms: Glossary | Sequence[str] = ()) -> Protected:
    """Mask the protected spans of ``text``: the glossary's terms (brand and product names, matched
    whole-word and case-sensitively; longest first) and the automatic patterns."""
    glossary = dict(terms) if isinstance(terms, Mapping) else dict.fromkeys(terms, "")
    taken: list[tuple[int, int]] = []
    forced: dict[tuple[int, int], str] = {}

    def free(start: int, end: int) -> bool:
        return all(end <= s or start >= e for s, e in taken)

    for term in sorted(glossary, key=len, reverse=True):
        if not term.strip():
            continue
        for match in re.finditer(rf"(?<!\w){re.escape(term)}(?!\w)", text):
            if free(*match.span()):
                taken.append(match.span())
                if glossary[term]:
                    forced[match.span()] = glossary[term]
    for _, pattern in PATTERNS:
        for match in pattern.finditer(text):
            if free(*match.span()):
                taken.append(match.span())
    taken.sort()
    pieces, position = [], 0
    for index, (start, end) in enumerate(taken):
        pieces += [text[position:start], PLACEHOLDER.format(index)]
        position = end
    pieces.append(text[position:])
    outputs = tuple(forced.get(span, text[span[0]:span[1]]) for span in taken)
    return Protected(original=text, masked="".join(pieces), spans=tuple(taken), outputs=outputs)


def restore(translated: str, protected: Protected) -> str | None:
    """The translation with its spans put back, or None when a placeholder was lost or repeated."""
    found = [int(number) for number in _PLACEHOLDER_PATTERN.findall(translated)]
    if sorted(found) != list(range(len(protected.spans))):
        return None
    values = protected.values
    return _PLACEHOLDER_PATTERN.sub(lambda match: values[int(match.group(1))], translated)


def _pieces(protected: Protected) -> list[tuple[str, bool]]:
    """``(text, is_span)`` in order: the fallback translates the first kind only."""
    pieces, position = [], 0
    for (start, end), output in zip(protected.spans, protected.values, strict=True):
        pieces += [(protected.original[position:start], False), (output, True)]
        position = end
    pieces.append((protected.original[position:], False))
    return [(text, span) for text, span in pieces if text]


def translate_protected(
    texts: Sequence[str], translate: Callable[[list[str]], list[str]], terms: Glossary | Sequence[str] = ()
) -> list[str]:
    """Translate ``texts`` with ``translate`` (one call for all), keeping every protected span."""
    protected = [protect(text, terms) for text in texts]
    outputs = translate([p.masked for p in protected])
    results: list[str | None] = [
        out if not p.spans else None if _PLACEHOLDER_PATTERN.search(p.original) else restore(out, p)
        for out, p in zip(outputs, protected, strict=True)
    ]  # a text that already holds "[n]" goes the safe way: placeholders would be ambiguous
    retry = [i for i, result in enumerate(results) if result is None]
    if retry:
        # Fallback: the words around the spans, translated in one more call, spans verbatim.
        plans = {i: _pieces(protected[i]) for i in retry}
        words = [text for i in retry for text, span in plans[i] if not span and text.strip()]
        translated = iter(translate(words) if words else [])
        for i in retry:
            parts = []
            for text, span in plans[i]:
                if span or not text.strip():
                    parts.append(text)
                else:
                    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
                    parts.append(lead + next(translated) + trail)
            results[i] = "".join(parts)
    return [result for result in results if result is not None]
