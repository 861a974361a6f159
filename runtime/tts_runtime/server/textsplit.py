"""Split text into pieces a model generates one at a time.

Sentence-sized pieces bound the work between two cancellation points and make streaming cost
linear in the text length (XTTS's own ``inference_stream`` re-decodes everything generated so far
at every chunk, PINS.md). A sentence longer than ``max_chars`` is cut at the last clause mark or
space that fits, and only as a last resort inside a word.
"""

from __future__ import annotations

import re

# a sentence ends with . ! ? … or CJK/Devanagari stops, followed by whitespace or the end of text
_STOPS = "[.!?\u2026\u3002\uff01\uff1f\u0964]"
_CLOSERS = "[\"'\u201d\u2019)\\]]"
#: split on the whitespace after a stop, or after a stop and one closing quote or bracket (kept)
_SENTENCE_END = re.compile(rf"(?<={_STOPS})\s+|(?<={_STOPS}{_CLOSERS})\s+")
#: comma, semicolon, colon, em dash, en dash, hyphen
_CLAUSE_MARKS = ",;:\u2014\u2013-"


def split_text(text: str, max_chars: int) -> list[str]:
    """Non-empty pieces of at most ``max_chars`` characters, in order, whitespace-normalised."""
    text = " ".join(text.split())
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > max_chars:
            cut = _cut_point(sentence, max_chars)
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return [p for p in pieces if p]


def _cut_point(sentence: str, max_chars: int) -> int:
    # a cut very near the start would leave a useless crumb: accept only cuts past a third
    floor = max_chars // 3
    mark = max(sentence.rfind(m, 0, max_chars) for m in _CLAUSE_MARKS)
    if mark > floor:
        return mark + 1  # keep the mark with the text before it
    space = sentence.rfind(" ", 0, max_chars + 1)
    if space > floor:
        return space
    return max_chars
