"""The one table of built-in names: every head, method, metric, row parser, data format and
submission format clue-run ships,
as "module:object" entries that the registries import on first use.

Adding a built-in = one line here. A task YAML or a config can name anything listed (or added
by another package through an entry point) without importing it.
"""

from __future__ import annotations

from .registry import Registry

HEADS: Registry = Registry("head", {
    "cls": "clue_runner.heads.classification:ClsHead",
    "embedding": "clue_runner.heads.embedding:EmbeddingHead",
    "multiple_choice": "clue_runner.heads.choice:MultipleChoiceHead",
    "span": "clue_runner.heads.span:SpanHead",
    "global_pointer": "clue_runner.heads.entity:GlobalPointerHead",
    "pet": "clue_runner.heads.prompt:PetHead",
    "nsp": "clue_runner.heads.prompt:NspHead",
    "ptuning_gpt": "clue_runner.heads.causal_prompt:PtuningGptHead",
    "icl": "clue_runner.heads.incontext:IclHead",
}, "clue_run.heads")

METHODS: Registry = Registry("method", {
    "fgm": "clue_runner.methods.adversarial:FGM",
    "gradient_penalty": "clue_runner.methods.adversarial:GradientPenalty",
    "rdrop": "clue_runner.methods.regularization:RDrop",
    "lora": "clue_runner.methods.lora:LoRA",
    "long_positions": "clue_runner.methods.long_positions:LongPositions",
    "child_tuning": "clue_runner.methods.child_tuning:ChildTuning",
    "lst": "clue_runner.methods.side_tuning:LST",
    "ptuning": "clue_runner.methods.ptuning:PTuning",
}, "clue_run.methods")

METRICS: Registry = Registry("metric", {
    "accuracy": "clue_runner.metrics.classification:accuracy",
    "macro_f1": "clue_runner.metrics.classification:macro_f1",
    "binary_f1": "clue_runner.metrics.classification:binary_f1",
    "spearman": "clue_runner.metrics.similarity:spearman",
    "pearson": "clue_runner.metrics.similarity:pearson",
    "threshold_accuracy": "clue_runner.metrics.similarity:threshold_accuracy",
    "threshold_f1": "clue_runner.metrics.similarity:threshold_f1",
    "cmrc_em": "clue_runner.metrics.cmrc:cmrc_em",
    "cmrc_f1": "clue_runner.metrics.cmrc:cmrc_f1",
    "entity_precision": "clue_runner.metrics.entity:entity_precision",
    "entity_recall": "clue_runner.metrics.entity:entity_recall",
    "entity_f1": "clue_runner.metrics.entity:entity_f1",
    "cluener_macro_f1": "clue_runner.metrics.entity:surface_macro_f1",
}, "clue_run.metrics")

# Row parsers turn one data row into the item(s) a head tokenizes (`inputs.parser` in a task YAML).
PARSERS: Registry = Registry("row parser", {
    "text": "clue_runner.data.parsers:parse_text",
    "wsc_spans": "clue_runner.data.parsers:parse_wsc_spans",
    "mrc_span": "clue_runner.data.parsers:parse_mrc_span",
    "multiple_choice": "clue_runner.data.parsers:parse_multiple_choice",
    "idiom_cloze": "clue_runner.data.parsers:parse_idiom_cloze",
    "entity_spans": "clue_runner.data.parsers:parse_entity_spans",
}, "clue_run.parsers")

# Data file formats (`data.format` in a task YAML): a DataFormat reads a file into rows.
DATA_FORMATS: Registry = Registry("data format", {
    "jsonl": "clue_runner.data.readers:JSONL",
    "tsv": "clue_runner.data.readers:TSV",
    "csv": "clue_runner.data.readers:CSV",
    "lines": "clue_runner.data.readers:LINES",
    "squad": "clue_runner.data.readers:SQUAD",
    "c3": "clue_runner.data.readers:C3",
}, "clue_run.data_formats")

# Leaderboard file layouts (`submission.format` in a task YAML): writing and checking prediction files.
SUBMISSION_FORMATS: Registry = Registry("submission format", {
    "jsonl_label": "clue_runner.leaderboard:JSONL_LABEL",
    "jsonl_index": "clue_runner.leaderboard:JSONL_INDEX",
    "json_object": "clue_runner.leaderboard:JSON_OBJECT",
    "jsonl_entities": "clue_runner.leaderboard:JSONL_ENTITIES",
}, "clue_run.submission_formats")

# Multi-task loss weightings (`multitask.weighting` in a config): per-task losses → the loss to backpropagate.
WEIGHTINGS: Registry = Registry("loss weighting", {
    "fixed": "clue_runner.multitask.weighting:FixedWeights",
    "initial_loss": "clue_runner.multitask.weighting:InitialLoss",
    "realtime": "clue_runner.multitask.weighting:RealTime",
    "grad_norm": "clue_runner.multitask.weighting:GradNorm",
    "mgda": "clue_runner.multitask.weighting:Mgda",
    "primary_auxiliary": "clue_runner.multitask.weighting:PrimaryAuxiliary",
}, "clue_run.weightings")
