"""How much of a text is worth reading: a bound in characters, derived from `data.max_length` (and a
head's windows), applied when rows become examples, before any tokenizer sees them.

A fast tokenizer builds every token of a text, and when it truncates, every overflowing piece of
`max_length` tokens too (for a pair, every combination of the two texts' pieces), while the heads keep
at most `max_length` tokens: one 20-million-character row took 13 GB to keep 32 tokens. So a text is cut
at `max_length × CHARS_PER_TOKEN` characters first. A token spans at least one character of Chinese;
over all 480,875 distinct texts of the shared CLUE/FewCLUE data, the first k tokens spanned at most 7.6
characters per token for k = 8 (the e5 SentencePiece vocabulary on a run of "......"), 4.6 for k = 32
and 2.8 for k = 128 (4.8 and less with a BERT character vocabulary). At 16 the cut lies well past a
normal row's first `max_length` tokens, so no truncation result changes (tests/test_long_rows.py
compares the encodings of real rows cut at a small `max_length` with and without the cut); only rows of
mostly whitespace or control characters (which make no tokens) could lose tokens.
What one cut row may still cost the tokenizer (measured, CPU): a single text nothing to speak of; a pair
of two cut texts grows with CHARS_PER_TOKEN² × max_length: +90 MB at max_length 512 with factor 8, +360 MB
with 16 (the factor chosen), +1.4 GB with 32.

A head that reads more than `max_length` tokens of a text declares its own limit (the span head: its
windows); a head that must see a whole text refuses a row past a hard limit (a bad row: `data.on_bad_row`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .parsers import RowError

CHARS_PER_TOKEN = 16  # characters kept per token a head reads (see the module docstring)


@dataclass(frozen=True)
class TextLimit:
    keep: Optional[int] = None  # characters kept; the rest is cut, with a warning naming the row
    refuse: Optional[int] = None  # a longer text makes its row a bad row (kept whole up to here)
    why: str = ""  # what the limit follows from (the setting to change), for the messages

    @classmethod
    def tokens(cls, tokens: int, why: str) -> "TextLimit":
        """Keep the characters that `tokens` tokens can come from."""
        return cls(keep=tokens * CHARS_PER_TOKEN, why=f"{why} × {CHARS_PER_TOKEN} characters per token")


@dataclass(frozen=True)
class TextLimits:
    """The limits of an example's two texts (a pair's first and second; a question and its context)."""

    text_a: TextLimit = field(default_factory=TextLimit)
    text_b: TextLimit = field(default_factory=TextLimit)

    @classmethod
    def within(cls, max_length: int) -> "TextLimits":
        """Both texts read up to `max_length` tokens (what most heads do)."""
        limit = TextLimit.tokens(max_length, f"data.max_length {max_length}")
        return cls(limit, limit)


@dataclass
class Cut:
    field: Optional[str]
    before: int  # characters
    after: int
    why: str


def bound_texts(item, names: tuple, limits: TextLimits) -> list[Cut]:
    """Cut `item`'s texts (an `Item` of data.parsers) to `limits`; RowError for a text past a hard limit.
    `names`: the fields the two texts came from, for the messages."""
    cuts = []
    for attr, name in zip(("text_a", "text_b"), names):
        name = name or attr  # a parser-built text (C3 choices): named by its slot
        text, limit = getattr(item, attr), getattr(limits, attr)
        if not isinstance(text, str):
            continue
        if limit.refuse is not None and len(text) > limit.refuse:
            raise RowError(name, f"the text has {len(text):,} characters, more than the {limit.refuse:,} read "
                                 f"whole ({limit.why})")
        if limit.keep is not None and len(text) > limit.keep:
            setattr(item, attr, text[: limit.keep])
            cuts.append(Cut(name, len(text), limit.keep, limit.why))
    return cuts
