"""Split a message into sentences for translation, and put the translations back together.

MT models are trained on sentences (NLLB-200 on at most 512 tokens) and drift or truncate on
long inputs; a support message of several paragraphs is translated sentence by sentence, in
one batch, and reassembled with its original line breaks and spacing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at ., !, ?, … followed by whitespace (so "49.90" and "example.com" stay
# whole), at CJK full stops with or without whitespace, and at line breaks. Closing quotes
# and brackets stay with their sentence.
_BOUNDARY = re.compile(r"([.!?…]+[\"'”’»)\]]*\s+|[。！？]+[”’」』)]*\s*|\s*\n\s*)")


@dataclass(frozen=True)
class Segment:
    text: str  # the sentence, with its closing punctuation
    separator: str  # the whitespace that followed it ("" at the end, "\n" between lines, ...)


def split_sentences(text: str) -> list[Segment]:
    """The sentences of ``text``; joining each text with its separator gives ``text`` back."""
    parts = _BOUNDARY.split(text)
    segments: list[Segment] = []
    leading = ""
    for index in range(0, len(parts), 2):
        chunk = parts[index]
        boundary = parts[index + 1] if index + 1 < len(parts) else ""
        separator_start = len(boundary.rstrip())
        sentence, separator = chunk + boundary[:separator_start], boundary[separator_start:]
        if sentence.strip():
            segments.append(Segment(leading + sentence, separator))
            leading = ""
        elif segments:
            last = segments[-1]
            segments[-1] = Segment(last.text, last.separator + sentence + separator)
        else:
            leading += sentence + separator
    return segments


def join_sentences(translations: list[str], segments: list[Segment]) -> str:
    """The translated sentences with the original separators between them."""
    return "".join(text + segment.separator for text, segment in zip(translations, segments, strict=True)).strip()
