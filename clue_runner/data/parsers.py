"""Row parsers: turn one data row into the item(s) a head tokenizes.

Most tasks need only `text` (one or two fields; list-valued fields joined). Tasks whose input
needs code get a named parser here (listed in `plugins.PARSERS`), with its settings as data in
the task YAML (`inputs.parser`, `inputs.options`).

The structured tasks' parsers (reading comprehension, multiple choice, idiom cloze, NER) turn a
row (a paragraph with its questions, a document, a line of passages) into examples whose `label`
is the gold the task scores against. Bad input (answers not where they claim to be, blanks
without candidates, entity offsets outside the text) raises `RowError`; the reader adds the file
and location.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


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


Parser = Callable[[dict, "InputSpec", RowContext], list[Item]]  # noqa: F821


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


def parse_text(row: dict, spec, ctx: RowContext) -> list[Item]:
    text_a = field_text(row, spec.text_a, spec.join)
    text_b = field_text(row, spec.text_b, spec.join) if spec.text_b else None
    return [Item(text_a, text_b)]


def parse_wsc_spans(row: dict, spec, ctx: RowContext) -> list[Item]:
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


# -- structured tasks ------------------------------------------------------------------

BLANK = re.compile(r"#idiom\d*#")


def choice_text(prefix: str, choice: str) -> str:
    """What a multiple-choice head reads first for one choice: the question (if any) and the choice."""
    return prefix + choice


def _list(row: dict, key: str, where: str = "") -> list:
    value = row.get(key)
    if not isinstance(value, list):
        raise RowError(where + key, "missing or not a list")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RowError(where, "missing or empty text")
    return value


def parse_mrc_span(row: dict, spec, ctx: RowContext) -> list[Item]:
    """A SQuAD-style paragraph: one example per question; label = the gold answer texts.

    Scoring uses the answer texts only, as the official CMRC2018 evaluation does; the span of
    the first answer is the training target, so in a training split it must be where
    `answer_start` says.
    """
    context = field_text(row, "context", "")
    items = []
    for k, qa in enumerate(_list(row, "qas")):
        where = f"qas[{k}]."
        if not isinstance(qa, dict):
            raise RowError(f"qas[{k}]", "expected an object")
        if qa.get("id") is None:
            raise RowError(where + "id", "missing")
        question = _text(qa.get("question"), where + "question")
        answers = qa.get("answers")
        texts, span = None, None
        if answers:
            texts = [_text(a.get("text") if isinstance(a, dict) else None, f"{where}answers[{j}].text")
                     for j, a in enumerate(answers)]
            start = answers[0].get("answer_start")
            if isinstance(start, int) and start >= 0 and context[start : start + len(texts[0])] == texts[0]:
                span = (start, start + len(texts[0]))
            elif ctx.training:
                found = context[start : start + len(texts[0])] if isinstance(start, int) and start >= 0 else ""
                raise RowError(f"{where}answers[0].answer_start",
                               f"answer {texts[0]!r} is not at {start} (context there: {found!r})")
        items.append(Item(question, context, label=texts, id=qa["id"], extra={"span": span}))
    return items


def parse_multiple_choice(row: dict, spec, ctx: RowContext) -> list[Item]:
    """A C3 document: one example per question; label = index of the answer among the choices."""
    document = spec.join.join(_text(line, "document") for line in _list(row, "document"))
    items = []
    for k, q in enumerate(_list(row, "questions")):
        where = f"questions[{k}]."
        question = _text(q.get("question"), where + "question")
        choices = [_text(c, f"{where}choice[{j}]") for j, c in enumerate(_list(q, "choice", where))]
        if not choices:
            raise RowError(where + "choice", "no choices")
        label = None
        if q.get("answer") is not None:
            if q["answer"] not in choices:
                raise RowError(where + "answer", f"{q['answer']!r} is not one of the choices {choices}")
            label = choices.index(q["answer"])
        qid = q.get("id", f"{row.get('id')}-{k}")
        items.append(Item(question, document, label=label, id=qid, extra={"choices": choices}))
    return items


def parse_idiom_cloze(row: dict, spec, ctx: RowContext) -> list[Item]:
    """CHID: one example per blank, scored against the row's candidate idioms.

    Two layouts: FewCLUE (one passage, one `#idiom#` blank, `answer` = candidate index) and the
    official CLUE one (a list of passages with `#idiomNNNNNN#` blanks sharing one candidate list;
    answers in a separate file keyed by blank id). The passage shown with a blank is a window of
    `inputs.options.window` characters either side, the blank (and any other blank) replaced by
    `inputs.options.marker`; `extra["blank"]` gives the blank's (start, end) in that window.
    """
    window = int(spec.options.get("window", 64))
    marker = spec.options.get("marker", "____")
    candidates = [_text(c, f"candidates[{j}]") for j, c in enumerate(_list(row, "candidates"))]
    if not candidates:
        raise RowError("candidates", "no candidates")
    content = row.get("content")
    passages = [content] if isinstance(content, str) else content
    if not isinstance(passages, list) or not passages:
        raise RowError("content", "missing: expected a passage or a list of passages")
    items = []
    for p, passage in enumerate(passages):
        passage = _text(passage, f"content[{p}]" if isinstance(content, list) else "content")
        blanks = list(BLANK.finditer(passage))
        if not blanks:
            raise RowError("content", f"passage {p} has no #idiom# blank")
        for blank in blanks:
            tag = blank.group()
            shown = BLANK.sub(marker, passage[: blank.start()]), BLANK.sub(marker, passage[blank.end() :])
            left = shown[0][-window:]
            text = left + marker + shown[1][:window]
            if tag == "#idiom#":  # FewCLUE: one blank per row, the row's own id and answer
                item_id, answer, where = row.get("id"), row.get("answer"), "answer"
            else:
                item_id, answer, where = tag, (ctx.answers or {}).get(tag), f"answers[{tag}]"
                if ctx.answers is not None and answer is None:
                    raise RowError(where, "no answer for this blank in the answer file")
            if answer is not None and (not isinstance(answer, int) or not 0 <= answer < len(candidates)):
                raise RowError(where, f"{answer!r} is not a candidate index (0–{len(candidates) - 1})")
            blank_at = (len(left), len(left) + len(marker))  # where PET's masks go (heads.prompt)
            items.append(Item("", text, label=answer, id=item_id, extra={"choices": candidates, "blank": blank_at}))
    return items


def parse_entity_spans(row: dict, spec, ctx: RowContext) -> list[Item]:
    """CLUENER: label {type: {entity text: [[start, end], ...]}} (end inclusive) → a sorted
    tuple of (type, start, end) character spans; types are the task's label values."""
    text = field_text(row, spec.text_a, "")
    raw = row.get("label")
    if raw is None:
        return [Item(text)]
    if not isinstance(raw, dict):
        raise RowError("label", "expected {type: {entity: [[start, end], ...]}}")
    spans = set()
    for kind, entities in raw.items():
        if ctx.labels and kind not in ctx.labels:
            raise RowError(f"label.{kind}", f"unknown entity type (types: {', '.join(ctx.labels)})")
        for surface, positions in (entities or {}).items():
            for pos in positions or []:
                where = f"label.{kind}.{surface}"
                if not (isinstance(pos, list) and len(pos) == 2 and all(isinstance(x, int) for x in pos)):
                    raise RowError(where, f"expected [start, end], got {pos!r}")
                start, end = pos
                if not 0 <= start <= end < len(text):
                    raise RowError(where, f"offsets {pos} outside the text (length {len(text)})")
                if text[start : end + 1] != surface:
                    raise RowError(where, f"text at {pos} is {text[start:end + 1]!r}, not the entity")
                spans.add((kind, start, end))
    return [Item(text, label=tuple(sorted(spans)))]
