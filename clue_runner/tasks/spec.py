"""What a task YAML says: where its files are, which fields are inputs, its label set, its head,
its metrics and main metric, and how its test predictions are named for the leaderboard.

Names (head, row parser, metrics, data and submission formats) are checked against the built-in table (`plugins`) without
importing their implementations.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError
from ..plugins import DATA_FORMATS, HEADS, METRICS, PARSERS, SUBMISSION_FORMATS
from ..registry import did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSource(_Strict):
    path: str  # `datasets` hub path, e.g. "clue"
    name: Optional[str] = None  # config name, e.g. "afqmc"
    splits: dict[str, str] = {}  # our split name -> hub split name (default: same)


def _registered(registry, name: Optional[str]) -> Optional[str]:
    """`name` if the registry knows it (checked by name: nothing is imported), else the registry's one line."""
    if name is not None and name not in registry:
        raise ValueError(registry.unknown(name))
    return name


class SplitFile(_Strict):
    """A split whose file differs in layout from the task's default (e.g. unlabelled SimCSE text)."""

    file: Union[str, list[str]]  # several files are read one after the other (C3's d + m parts)
    format: Optional[str] = None  # a data format (plugins.DATA_FORMATS); default: the task's
    columns: Optional[list[str]] = None  # for `lines`: the field name of the one text (default: inputs.text_a)
    header: Optional[bool] = None
    unpaired: bool = False  # rows hold only the first text (unlabelled SimCSE sentences of a pair task)
    answers: Optional[str] = None  # a separate answer file (official CHID: {blank id: candidate index})
    # rows also found in this file (compared without the id field) are left out: FewCLUE's `heldout` is
    # dev_few_all minus dev_{variant}, the dev examples a split's run did not select its checkpoint on
    exclude: Optional[str] = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value):
        return _registered(DATA_FORMATS, value)


class DataSpec(_Strict):
    dir: str  # relative to the data directory
    splits: dict[str, Union[str, list[str], SplitFile]]  # split -> file name(s) (may contain {variant}), relative to dir
    # a data format (plugins.DATA_FORMATS): JSON lines (CLUE), tab- or comma-separated text, one text per line …
    format: str = "jsonl"
    columns: Optional[list[str]] = None  # field names of delimited files without a header row
    header: bool = False  # delimited files: the first row names the fields
    variants: list[str] = []  # e.g. FewCLUE's 0..4, few_all
    default_variant: Optional[str] = None
    hub: Optional[HubSource] = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value):
        return _registered(DATA_FORMATS, value)


class InputSpec(_Strict):
    # a row parser (plugins.PARSERS); `encoder`, its old name, still loads
    parser: str = Field("text", validation_alias=AliasChoices("parser", "encoder"))
    text_a: str
    text_b: Optional[str] = None
    join: str = "；"  # list-valued fields (CSL keywords) are joined with this
    options: dict[str, Any] = {}  # parser-specific settings, e.g. span markers


class LabelSpec(_Strict):
    field: str = "label"
    # score: a number, e.g. STS-B similarity 0–5; structured: the row parser gives the gold
    # (the right choice's index, answer texts, entity spans)
    kind: Literal["categorical", "score", "structured"] = "categorical"
    values: list[str] = []  # categorical: label strings exactly as in the data and the submission; NER: entity types
    range: Optional[tuple[float, float]] = None  # score: allowed [low, high]
    names: dict[str, str] = {}  # optional human-readable names per value
    drop: list[str] = []  # rows with these labels are not examples (OCNLI "-"); counted

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "categorical" and not self.values:
            raise ValueError("label.values is required for categorical labels")
        if self.kind == "score" and self.range is None:
            raise ValueError("label.range is required for score labels")
        if len(set(self.values)) != len(self.values):
            raise ValueError("label.values has duplicates")
        return self


class SubmissionSpec(_Strict):
    file: str  # CLUE 1.1 / FewCLUE file name
    file_v10: Optional[str] = None  # CLUE 1.0 name where it differs
    # a leaderboard layout (plugins.SUBMISSION_FORMATS): jsonl_label: {"id", "label": label string} per line;
    # jsonl_index: label = the choice's index; json_object: one object {test id: answer text or candidate
    # index}; jsonl_entities: CLUENER lines
    format: str = "jsonl_label"
    key: str = "label"  # the prediction's key in jsonl lines (FewCLUE CHID: "answer", as its official examples)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value):
        return _registered(SUBMISSION_FORMATS, value)


MASK = "[MASK]"
SLOTS = ("{text_a}", "{text_b}")
BLANK_SLOTS = ("{before_blank}", "{after_blank}")  # a cloze passage's text either side of its blank
SEP = "[SEP]"
CANDIDATES = "candidates"  # prompt.label_words for label words given per example
CLOZE_PARSERS = ("idiom_cloze",)  # row parsers whose examples carry one blank and their candidates


class NspTemplate(_Strict):
    """One NSP-BERT label prompt: `pattern` with a `{label}` slot, filled with each label's word."""

    pattern: str
    words: dict[str, str] = {}  # label value -> word; default: the prompt's nsp words, else label names


class NspSpec(_Strict):
    """NSP-BERT zero-shot (sunyilgdx/NSP-BERT).

    `label_prompt` (single-sentence tasks): predicted label = argmax over labels of
    P(IsNext | prompt, text), the prompt the first segment when `prompt_first`.
    `pair` (sentence-pair tasks): P(IsNext | text_a, text_b) (`pair_first: text_b` swaps the
    order); the scored split is sorted by it and cut into equal buckets, lowest first as in
    `buckets` — transductive: it assumes balanced labels and depends on the whole scored set.
    """

    mode: Literal["label_prompt", "pair"] = "label_prompt"
    templates: dict[str, Union[str, NspTemplate]] = {}
    default: Optional[str] = None  # default template name (else the last one, the reference's PATTERN_INDEX -1)
    words: dict[str, str] = {}
    prompt_first: bool = True
    pair_first: Literal["text_a", "text_b"] = "text_a"
    buckets: list[str] = []  # pair mode: label values from lowest to highest P(IsNext)

    def template(self, name: Optional[str]) -> NspTemplate:
        if not self.templates:
            raise ConfigError("this task's NSP prompts have no label templates (pair mode)")
        name = name or self.default or list(self.templates)[-1]
        if name not in self.templates:
            raise ConfigError(f"no NSP template {name!r}{did_you_mean(name, self.templates)} "
                              f"(templates: {', '.join(self.templates)})")
        t = self.templates[name]
        return NspTemplate(pattern=t) if isinstance(t, str) else t


class PromptSpec(_Strict):
    """PET / P-tuning prompts (FewCLUE baselines): named templates and the label words.

    A template holds `{text_a}` (and `{text_b}`) slots and ONE `[MASK]`, which stands for the
    label word: it becomes k masks for k-character words (all words of a task have the same
    length). `[SEP]` in a template starts the second segment. Texts are cut to fit the
    maximum length; the template never is.

    Cloze tasks (CHID): `label_words: candidates` takes each example's own candidates (its input
    parser's choices) as its label words, all `word_length` characters long; the templates then
    have `{before_blank}[MASK]{after_blank}`, the passage's text either side of the blank, cut
    away from the blank so the blank's neighbourhood survives.
    """

    templates: dict[str, str] = Field(min_length=1)
    default: Optional[str] = None  # default: the first template
    label_words: Union[Literal["candidates"], dict[str, str]]  # label value -> word, or `candidates`
    word_length: Optional[int] = Field(None, ge=1)  # characters per word (= masks); required with candidates
    nsp: Optional[NspSpec] = None

    @model_validator(mode="after")
    def _consistent(self):
        for name, t in self.templates.items():
            check_template(t, f"prompt.templates.{name}", cloze=self.per_example)
        if self.per_example:
            if self.word_length is None:
                raise ValueError("prompt.word_length is required with label_words: candidates (the masks per word)")
            if self.nsp is not None:
                raise ValueError("prompt.nsp needs fixed label_words, not candidates")
        else:
            lengths = {len(w) for w in self.label_words.values()}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(f"prompt.label_words must all have the same (non-zero) length, got lengths {sorted(lengths)}")
            if len(set(self.label_words.values())) != len(self.label_words):
                raise ValueError("prompt.label_words has duplicate words")
            if self.word_length is not None and lengths != {self.word_length}:
                raise ValueError(f"prompt.word_length {self.word_length} differs from the label words' length {lengths.pop()}")
        if self.default is not None and self.default not in self.templates:
            raise ValueError(f"prompt.default {self.default!r} is not a template")
        return self

    @property
    def per_example(self) -> bool:
        """Label words are each example's candidates, not a fixed word per label."""
        return self.label_words == CANDIDATES

    def template(self, name: Optional[str]) -> str:
        name = name or self.default or next(iter(self.templates))
        if name not in self.templates:
            raise ConfigError(f"no prompt template {name!r}{did_you_mean(name, self.templates)} "
                              f"(templates: {', '.join(self.templates)})")
        return self.templates[name]


def check_template(template: str, where: str = "template", cloze: bool = False) -> None:
    """One [MASK]; slots only {text_a}/{text_b}, at least {text_a} — or, for a cloze task,
    exactly {before_blank}[MASK]{after_blank} in that order (literals may stand between)."""
    if template.count(MASK) != 1:
        raise ValueError(f"{where}: needs exactly one {MASK} (it stands for the whole label word), got {template.count(MASK)}")
    allowed = BLANK_SLOTS if cloze else SLOTS
    slots = re.findall(r"\{[^}]*\}", template)
    unknown = [s for s in slots if s not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown slot {unknown[0]} (slots: {', '.join(allowed)})")
    if not cloze:
        if "{text_a}" not in slots:
            raise ValueError(f"{where}: has no {{text_a}} slot")
        return
    before, after = BLANK_SLOTS
    if slots != [before, after] or not template.index(before) < template.index(MASK) < template.index(after):
        raise ValueError(f"{where}: a cloze template has {before}, then the {MASK}, then {after}, each once")


LM_SLOTS = ("{text_a}", "{text_b}")
LABEL_SLOT = "{label}"
CHOICE_PARSERS = ("multiple_choice", "idiom_cloze")  # label words are each example's choices


class LmTemplate(_Strict):
    """One in-context scoring template: the query's `prompt` (the context) and the `answer` that
    follows it for each label (the continuation scored), `{label}` standing for the label's word.
    A demonstration is its prompt followed by its gold answer. A cloze task's prompt ends at the
    blank (`{before_blank}`) and its answer is `{label}{after_blank}`: the candidate-filled passage."""

    prompt: str
    answer: str = LABEL_SLOT


class LmSpec(_Strict):
    """Decoder in-context scoring (the `icl` head): named templates, the label words (every label
    of the task, always: a subset would inflate the score) and the text between demonstrations."""

    templates: dict[str, Union[str, LmTemplate]] = Field(min_length=1)  # a string: the prompt, answer "{label}"
    default: Optional[str] = None  # default: the first template
    label_words: dict[str, str] = {}  # label value -> continuation word (default: label.names, else the value)
    separator: str = "\n"

    @model_validator(mode="after")
    def _consistent(self):
        for name in self.templates:
            check_lm_template(self.template(name), f"lm.templates.{name}")
        if self.default is not None and self.default not in self.templates:
            raise ValueError(f"lm.default {self.default!r} is not a template")
        return self

    def template(self, name: Optional[str] = None) -> LmTemplate:
        name = name or self.default or next(iter(self.templates))
        if name not in self.templates:
            raise ConfigError(f"no lm template {name!r}{did_you_mean(name, self.templates)} "
                              f"(templates: {', '.join(self.templates)})")
        t = self.templates[name]
        return LmTemplate(prompt=t) if isinstance(t, str) else t


def check_lm_template(template: LmTemplate, where: str = "lm template", cloze: Optional[bool] = None) -> None:
    """Prompt slots {text_a}/{text_b} (cloze: {before_blank}); the answer has {label} once and no
    leading space (a space before a Chinese label word is a token the model rarely saw there)."""
    allowed = {True: BLANK_SLOTS[:1], False: LM_SLOTS, None: (*LM_SLOTS, BLANK_SLOTS[0])}[cloze]
    for slot in re.findall(r"\{[^}]*\}", template.prompt):
        if slot not in allowed:
            raise ValueError(f"{where}.prompt: unknown slot {slot} (slots: {', '.join(allowed)})")
    if template.answer.count(LABEL_SLOT) != 1:
        raise ValueError(f"{where}.answer: needs {LABEL_SLOT} exactly once, got {template.answer!r}")
    if template.answer[:1].isspace():
        raise ValueError(f"{where}.answer: starts with a space ({template.answer!r}); put separators in the prompt")
    answer_slots = set(re.findall(r"\{[^}]*\}", template.answer)) - {LABEL_SLOT}
    if answer_slots - {BLANK_SLOTS[1]}:
        raise ValueError(f"{where}.answer: unknown slot {sorted(answer_slots)[0]} (slots: {LABEL_SLOT}, {BLANK_SLOTS[1]})")


class TaskSpec(_Strict):
    name: str
    version: int = Field(ge=1)
    description: str = ""
    benchmark: Literal["clue", "fewclue", "sts", "custom"] = "custom"
    data: DataSpec
    inputs: InputSpec
    label: LabelSpec
    id_field: str = "id"
    head: str = "cls"
    head_options: dict[str, Any] = {}  # defaults for the head's own options (a config's head: section wins)
    prediction: Literal["class", "score"] = "class"  # score: metrics rank a similarity score (STS)
    metrics: list[str] = Field(min_length=1)
    main_metric: str
    # The metric published (leaderboard) numbers of this task use, where it is not the main metric.
    published_metric: Optional[str] = None
    submission: Optional[SubmissionSpec] = None
    prompt: Optional[PromptSpec] = None  # PET / P-tuning / NSP-BERT prompts
    lm: Optional[LmSpec] = None  # decoder in-context scoring templates

    def lm_words(self) -> dict[str, str]:
        """Label value -> the continuation an LM scores for it: lm.label_words, else the label's name."""
        words = dict(self.lm.label_words) if self.lm is not None else {}
        return {v: words.get(v, self.label.names.get(v, v)) for v in self.label.values}

    @model_validator(mode="after")
    def _names_resolve(self):
        if self.prompt is not None and self.prompt.per_example:
            if self.label.kind != "structured" or self.inputs.parser not in CLOZE_PARSERS:
                raise ValueError(f"prompt.label_words: candidates needs a cloze row parser "
                                 f"({', '.join(CLOZE_PARSERS)}) and label.kind: structured")
        elif self.prompt is not None:
            missing = [v for v in self.label.values if v not in self.prompt.label_words]
            if missing or set(self.prompt.label_words) - set(self.label.values):
                raise ValueError(f"prompt.label_words must give a word for exactly the label values (missing {missing[:3]})")
        if self.lm is not None:
            self._check_lm()
        for registry, name in ((HEADS, self.head), (PARSERS, self.inputs.parser), *((METRICS, m) for m in self.metrics)):
            if name not in registry:
                registry.get(name)  # raises: unknown name, with did-you-mean
        if self.published_metric is not None and self.published_metric not in self.metrics:
            raise ValueError(f"published_metric {self.published_metric!r} is not one of metrics {self.metrics}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"main_metric {self.main_metric!r} is not one of metrics {self.metrics}")
        if self.data.variants and self.data.default_variant not in self.data.variants:
            raise ValueError("data.default_variant must be one of data.variants")
        return self

    def _check_lm(self) -> None:
        cloze = self.inputs.parser in CLOZE_PARSERS
        for name in self.lm.templates:
            check_lm_template(self.lm.template(name), f"lm.templates.{name}", cloze=cloze)
        unknown = set(self.lm.label_words) - set(self.label.values)
        if unknown:
            raise ValueError(f"lm.label_words: {sorted(unknown)[0]!r} is not a label value")
        if self.label.kind == "structured" and self.inputs.parser not in CHOICE_PARSERS:
            raise ValueError(f"lm: in-context scoring needs class labels or choices ({', '.join(CHOICE_PARSERS)}), "
                             f"not the {self.inputs.parser} parser")
        words = list(self.lm_words().values())
        if len(set(words)) != len(words):
            raise ValueError("lm.label_words: two labels have the same word")

    def resolve_variant(self, variant: Optional[str]) -> Optional[str]:
        if not self.data.variants:
            if variant is not None:
                raise ConfigError(f"task {self.name!r} has no split variants (got {variant!r})")
            return None
        variant = self.data.default_variant if variant is None else str(variant)
        if variant not in self.data.variants:
            raise ConfigError(
                f"task {self.name!r} has no variant {variant!r}{did_you_mean(variant, self.data.variants)}"
                f" (choices: {', '.join(self.data.variants)})"
            )
        return variant

    def split_file(self, split: str, variant: Optional[str]) -> str:
        return self.split_layout(split, variant).file

    def split_layout(self, split: str, variant: Optional[str]) -> SplitFile:
        """File name and layout of a split, with the task's defaults filled in."""
        if split not in self.data.splits:
            raise ConfigError(
                f"task {self.name!r} has no split {split!r}{did_you_mean(split, self.data.splits)}"
                f" (splits: {', '.join(self.data.splits)})"
            )
        entry = self.data.splits[split]
        entry = entry if isinstance(entry, SplitFile) else SplitFile(file=entry)
        return SplitFile(
            file=_with_variant(entry.file, self.resolve_variant(variant)),
            format=entry.format or self.data.format,
            columns=entry.columns if entry.columns is not None else self.data.columns,
            header=entry.header if entry.header is not None else self.data.header,
            unpaired=entry.unpaired,
            answers=entry.answers.format(variant=self.resolve_variant(variant)) if entry.answers else None,
            exclude=entry.exclude.format(variant=self.resolve_variant(variant)) if entry.exclude else None,
        )


def _with_variant(file, variant):
    return file.format(variant=variant) if isinstance(file, str) else [f.format(variant=variant) for f in file]
