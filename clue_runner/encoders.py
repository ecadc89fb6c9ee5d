"""Input encoders: turn one data row into the item(s) a head tokenizes.

Most tasks need only `text` (one or two fields; list-valued fields joined). Tasks whose
input needs code get a named encoder here, with its settings as data in the task YAML.
Encoders of structured tasks (reading comprehension, cloze, NER) live in `structured_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .registry import Registry


class RowError(ValueError):
    """A problem with one field of one row; the reader adds file and line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class Item:
    """What one example of a row holds. A row may give several (questions of a passage, blanks)."""

    text_a: str
    text_b: Optional[str] = None
    label: Any = None  # set by encoders whose label is not a plain field (the index of the right choice)
    id: Any = None  # None: the row's own id
    extra: dict = field(default_factory=dict)  # structure a head needs: choices, answers, entity spans


@dataclass
class RowContext:
    training: bool = False  # a training split: its targets must be locatable (answer spans)
    answers: Optional[dict] = None  # a split's separate answer file (official CHID), keyed by blank id
    labels: tuple = ()  # the task's label values (entity types of a NER task)


Encoder = Callable[[dict, "InputSpec", RowContext], list[Item]]  # noqa: F821
ENCODERS: Registry[Encoder] = Registry("input encoder")


def field_text(row: dict, field: str, join: str) -> str:
    if field not in row:
        raise RowError(field, "missing")
    value = row[field]
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise RowError(field, "expected a list of strings")
        return join.join(value)
    if not isinstance(value, str):
        raise RowError(field, f"expected text, got {type(value).__name__}")
    return value


@ENCODERS.register("text")
def encode_text(row: dict, spec, ctx: RowContext) -> list[Item]:
    text_a = field_text(row, spec.text_a, spec.join)
    text_b = field_text(row, spec.text_b, spec.join) if spec.text_b else None
    return [Item(text_a, text_b)]


@ENCODERS.register("wsc_spans")
def encode_wsc_spans(row: dict, spec, ctx: RowContext) -> list[Item]:
    """CLUEWSC: mark the candidate (span1) and the pronoun (span2) inside the text.

    Markers come from the task YAML (`inputs.options.markers`), default `_…_` and `[…]`
    as in the CLUE baseline.
    """
    text = field_text(row, spec.text_a, spec.join)
    target = row.get("target")
    if not isinstance(target, dict):
        raise RowError("target", "missing or not an object")
    markers = spec.options.get("markers", {"span1": ["_", "_"], "span2": ["[", "]"]})
    spans = []
    for key in ("span1", "span2"):
        try:
            start, surface = int(target[f"{key}_index"]), target[f"{key}_text"]
        except (KeyError, TypeError, ValueError):
            raise RowError(f"target.{key}_index", "missing or not an integer") from None
        if text[start : start + len(surface)] != surface:
            raise RowError(
                f"target.{key}_text",
                f"{surface!r} is not at index {start} (text there: {text[start:start + len(surface)]!r})",
            )
        spans.append((start, start + len(surface), *markers[key]))
    # Insert from the right so earlier offsets stay valid.
    for start, end, left, right in sorted(spans, reverse=True):
        text = text[:start] + left + text[start:end] + right + text[end:]
    return [Item(text)]


# The structured tasks' encoders (reading comprehension, multiple choice, cloze, NER) register themselves.
from . import structured_inputs  # noqa: E402, F401
