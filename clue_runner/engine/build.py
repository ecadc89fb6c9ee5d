"""THE assembly, for train, eval, predict, encode and resume alike, so a model changed by a method
reloads exactly as it trained; one path for single- and multi-task configs.

    device    = device.pick_device(...)                        # the LOCAL_RANK GPU under a launcher, first
    source    = model_source(cfg, checkpoint)                   # engine.source: configured model (trimmed) or best/
    single    : backbone = load_backbone(path, kind)            # the kind the head and methods need
                backbone = m.wrap_model(backbone, ctx) …        # LoRA, side networks … (also on reload)
                head     = cfg.resolved.head_cls(backbone, …)   # head.use_template(m.prompt_template(task))
    multi     : assemble_multitask: one base backbone, one head per task (multitask.model)
    reload    : engine.checkpoint.load_best(best/, model)
    place     : model.to(device)

The config arrives resolved (`ExperimentConfig.resolved`: task, head class and options, methods);
nothing here resolves a name again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data.splits import SplitData, load_split
from ..features import Encoded
from ..heads import Head, resolve_head
from ..methods import BuildContext, Method
from ..models import load_model_config, resolve_model
from ..models.backbone import load_backbone
from ..multitask.model import MultiTaskModel
from ..multitask.weighting import weighting_class
from ..tasks import TaskSpec
from .checkpoint import load_best
from .cuda_graphs import GraphedForward
from .device import autocast_dtype, pick_device, seed_everything
from .evaluate import predict_logits
from .source import ModelSource, check_positions, example_texts, model_source, print_warning, silent


@dataclass
class Built:
    """A model ready to train or score: task, tokenizer, head module (holding the backbone), methods."""

    multitask: ClassVar[bool] = False  # MultiBuilt: several of these views over one model

    cfg: ExperimentConfig
    task: TaskSpec
    tokenizer: object
    head: Head  # holds the backbone
    methods: list[Method]
    model_path: str  # what the backbone was loaded from (the trimmed copy, or a run's best/)
    featurize: Callable
    predict: Callable
    device: Optional[torch.device] = None  # set by `place`
    amp: Optional[torch.dtype] = None
    graphed: Optional[GraphedForward] = None
    load_report: dict = field(default_factory=dict)

    full_tokenizer: object = None  # the untrimmed tokenizer, when the model's vocabulary was trimmed
    warn: Callable[[str], None] = field(default=None, repr=False)
    vocabulary_mismatches: int = 0  # texts counted by check_vocabulary

    def featurize_split(self, data: SplitData) -> Encoded:
        """A split's examples as model inputs, through the head's `featurize`."""
        if self.full_tokenizer is not None:
            self.check_vocabulary(example_texts(data.examples), data.source)
        return self.featurize(data.examples, self.tokenizer, self.cfg.data.max_length)

    def check_vocabulary(self, texts: list[str], source: str) -> int:
        """Texts the trimmed vocabulary tokenizes otherwise than the full model would: counted and warned about."""
        from ..models.trim import tokenization_mismatches

        if self.full_tokenizer is None or not texts:
            return 0
        differ = tokenization_mismatches(self.tokenizer, self.full_tokenizer, texts)
        self.vocabulary_mismatches += differ
        if differ:
            (self.warn or print_warning)(
                f"warning: {differ:,} of {len(texts):,} texts of {source} tokenize differently with the trimmed "
                f"vocabulary than with the full {self.cfg.model.name} (pieces trimming removed); scores on them may "
                "differ from the untrimmed model's. Train with model.trim_vocab: false (or trim on these texts too) "
                "for exact agreement")
        return differ

    @property
    def module(self) -> Head:
        """What trains, saves and reloads: here the head (MultiBuilt: the multi-task model)."""
        return self.head

    def views(self) -> dict[str, "Built"]:
        """Task (as the config names it) -> its single-task view: here the model itself."""
        return {self.cfg.task: self}

    def place(self, device: torch.device, amp: Optional[torch.dtype]) -> None:
        self.head.to(device)
        self.device, self.amp = device, amp

    def parameter_counts(self) -> dict:
        return parameter_counts(self.head)

    def calibration(self, enc: Optional[Encoded]):
        """(gold, predictions) of the threshold split, for metrics that fit a threshold there."""
        if enc is None:
            return None
        return enc.targets, self.predict(torch.from_numpy(self.logits(enc)[0]), enc)

    def threshold_split(self, scored_split: str, data_dir: Optional[str] = None) -> Optional[Encoded]:
        data = threshold_split_data(self.cfg, self.task, scored_split, data_dir)
        return self.featurize_split(data) if data is not None else None

    def logits(self, enc: Encoded) -> tuple[np.ndarray, float]:
        if (self.graphed is None and self.device.type == "cuda" and self.cfg.train.cuda_graphs
                and self.head.graphable and not any(m.has_step_hooks for m in self.methods)):
            self.graphed = GraphedForward(self.head, self.amp)  # kept: graphs read the weights in place
        return predict_logits(self.head, enc, self.cfg.train.eval_batch_size, self.tokenizer.pad_token_id,
                              self.device, self.amp, self.graphed)


def load_task_split(cfg: ExperimentConfig, task: TaskSpec, split: str, limit=None, on_bad_row=None, data_dir=None,
                    training: bool = False, unlabelled: bool = False) -> SplitData:
    """`training`: also every row must carry its label, unless the head learns without labels (SimCSE)
    or the split is an `unlabelled` pool (semi-supervised PET)."""
    resolved = cfg.resolved
    head_cls, params = resolved.head_cls, resolved.head_params
    require_labels = training and not unlabelled and head_cls.learns_from_labels(params)
    data = load_split(task, split, data_dir=data_dir or cfg.data.dir, variant=cfg.data.variant,
                      on_bad_row=on_bad_row or cfg.data.on_bad_row, source=cfg.data.source, limit=limit,
                      training=training, require_labels=require_labels,
                      limits=head_cls.text_limits(params, cfg.data.max_length))  # cut before any tokenizer
    if data.cut:
        print_warning(data.cut_warning())
    return data


def threshold_split_data(cfg: ExperimentConfig, task: TaskSpec, scored_split: str,
                         data_dir: Optional[str] = None) -> Optional[SplitData]:
    """The split threshold metrics fit their threshold on (None: the scored split itself)."""
    split = cfg.data.threshold_split
    if split in (None, scored_split):
        return None
    return load_task_split(cfg, task, split, data_dir=data_dir)


def parameter_counts(model) -> dict:
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def model_for(task: TaskSpec, model_path: str, head_cfg=None, dropout: float = 0.1, methods: list[Method] = (),
              ctx: Optional[BuildContext] = None, allow_random_init: bool = False, seed: Optional[int] = None,
              name: Optional[str] = None, log: Callable[[str], None] = silent,
              max_length: Optional[int] = None, head: Optional[tuple] = None,
              pad_token_id: Optional[int] = None) -> Head:
    """The head module on a backbone loaded from `model_path` as the kind the head and methods need,
    with the methods' model surgery applied. `head`: the (class, params) a config resolved, else from
    `head_cfg`. `pad_token_id`: the id batches are padded with."""
    from ..models.positions import extend_positions, is_rotary

    head_cls, head_params = head or resolve_head(task, head_cfg)
    model_config = load_model_config(model_path, name)
    kind = next((m.requires_kind for m in methods if m.requires_kind), None) or head_cls.kind_for(task, head_params, model_config)
    if seed is not None:
        seed_everything(seed)  # new head weights depend on the seed only
    categorical = task.label.kind == "categorical"
    backbone = load_backbone(
        model_path, kind, allow_random_init=allow_random_init, dropout=dropout,
        num_labels=len(task.label.values) if categorical else None, regression=task.label.kind == "score",
        id2label=dict(enumerate(task.label.values)) if categorical else None, name=name,
        pad_token_id=pad_token_id)
    for line in backbone.load_report.lines():
        log(f"{name or model_path}: {line}")
    for m in methods:
        backbone = m.wrap_model(backbone, ctx)
    if max_length is not None and is_rotary(backbone.config):
        extend_positions(backbone.encoder, max_length)  # sinusoidal, not learned: recomputed exactly
    model = head_cls(backbone, task, head_params, dropout)
    for m in methods:
        template = m.prompt_template(task)
        if template is not None:
            model.use_template(template)
    for p in model.new_parameters():
        p.requires_grad_(True)  # a method may have frozen the backbone; the head always trains
    return model


def build(cfg: ExperimentConfig, checkpoint: Optional[Path] = None, device: str = "auto",
          log: Callable[[str], None] = silent):
    """Assemble the model of `cfg`: from its configured model to train, or from a run's `best/`
    (`checkpoint`) to score, re-applying the same methods before the saved weights load. A multi-task
    config gives a `MultiBuilt` (`.multitask` True), else a `Built`."""
    dev = pick_device(cfg.train.device if device == "auto" else device)  # before any model exists
    source = model_source(cfg, checkpoint, log)
    built = (assemble_multitask if cfg.is_multitask else assemble)(cfg, source, log)
    if checkpoint is not None:
        load_best(checkpoint, built.module)
    built.place(dev, autocast_dtype(cfg.train.precision, dev))
    return built


def parameter_plan(cfg: ExperimentConfig) -> dict:
    """`train --dry-run`'s parameter counts: the model `cfg` would train, on its configured (untrimmed)
    vocabulary, built on the CPU without loading the tokenizer (its 1-2 s is most of a dry run)."""
    model_path = resolve_model(cfg.model.name)
    for tc in cfg.task_configs().values():
        check_positions(tc, model_path, tc.resolved.method_prototypes, silent)
    source = ModelSource(model_path, None, cfg.model.name)
    return (assemble_multitask if cfg.is_multitask else assemble)(cfg, source, silent).parameter_counts()


def assemble(cfg: ExperimentConfig, source: ModelSource, log: Callable[[str], None]) -> Built:
    """One task's head on its backbone, the methods applied (on the CPU; `build` places it)."""
    resolved = cfg.resolved
    task, methods = resolved.task, resolved.methods()
    ctx = BuildContext(task=task, config=cfg, log=log)
    model = model_for(task, source.path, dropout=cfg.model.dropout, methods=methods, ctx=ctx,
                      allow_random_init=cfg.model.allow_random_init, seed=cfg.train.seed, name=source.name,
                      log=log if source.training else silent, max_length=cfg.data.max_length,
                      head=(resolved.head_cls, resolved.head_params), pad_token_id=source.pad_token_id)
    model.bind_data(cfg.data)
    featurize, predict = model.featurize, model.predict
    report = model.backbone.load_report
    return Built(cfg, task, source.tokenizer, model, methods, source.path, featurize, predict,
                 load_report=report.as_dict() if report else {}, full_tokenizer=source.full_tokenizer)


@dataclass
class MultiBuilt:
    """A multi-task model (one shared backbone, a head per task) and every task's single-task view of it:
    data loading, featurizing, scoring and predictions run on a view exactly as in a single-task run."""

    multitask: ClassVar[bool] = True

    cfg: ExperimentConfig
    tasks: dict[str, Built]  # task name -> its single-task view (its head on the shared backbone)
    model: MultiTaskModel  # the whole model: the shared backbone and every head
    tokenizer: object
    model_path: str
    load_report: dict = field(default_factory=dict)
    methods: list = field(default_factory=list)
    device: Optional[torch.device] = None  # set by `place`

    @property
    def module(self) -> MultiTaskModel:
        return self.model

    def views(self) -> dict[str, Built]:
        return self.tasks

    def place(self, device: torch.device, amp: Optional[torch.dtype]) -> None:
        self.model.to(device)
        self.device = device
        for view in self.tasks.values():
            view.device, view.amp = device, amp

    def parameter_counts(self) -> dict:
        return parameter_counts(self.model)


def assemble_multitask(cfg: ExperimentConfig, source: ModelSource, log: Callable[[str], None]) -> MultiBuilt:
    """Every task's head (as its config resolved it) on one `base` backbone, with the loss weighting
    (a `sequence_classification` backbone would carry one task's label count)."""
    configs = cfg.task_configs()
    seed_everything(cfg.train.seed)  # new head weights depend on the seed only
    backbone = load_backbone(source.path, "base", allow_random_init=cfg.model.allow_random_init,
                             dropout=cfg.model.dropout, name=source.name)
    if source.training:
        for line in backbone.load_report.lines():
            log(f"{source.name}: {line}")
    heads = {name: tc.resolved.head_cls(backbone, tc.resolved.task, tc.resolved.head_params, cfg.model.dropout)
             for name, tc in configs.items()}
    primary = next((e.name for e in cfg.tasks if e.role == "primary"), None)
    weighting = weighting_class(cfg.multitask.weighting)(list(configs), {e.name: e.weight for e in cfg.tasks}, primary)
    model = MultiTaskModel(backbone, heads, weighting)
    for p in model.new_parameters():
        p.requires_grad_(True)
    report = backbone.load_report.as_dict() if backbone.load_report else {}
    views = {name: Built(tc, tc.resolved.task, source.tokenizer, heads[name], [], source.path, heads[name].featurize,
                         heads[name].predict, load_report=report, full_tokenizer=source.full_tokenizer)
             for name, tc in configs.items()}
    return MultiBuilt(cfg, views, model, source.tokenizer, source.path, report)


