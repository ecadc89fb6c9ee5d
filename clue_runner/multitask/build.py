"""Assembly of a multi-task model from engine.build's pieces: the backbone loaded once, one head per task.

Each task also gets a single-task `Built` view (its own config from `ExperimentConfig.task_config`,
its head as the model, the shared tokenizer and device), so data loading, featurizing, scoring and
predictions run exactly as in a single-task run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import ExperimentConfig
from ..engine.build import Built, _silent, _trim_skip, _untrimmed_tokenizer, check_positions, task_texts, trimmed_for_texts
from ..engine.checkpoint import load_best
from ..engine.trainer import autocast_dtype, pick_device, seed_everything
from ..errors import ClueRunError
from ..heads import resolve_head
from ..models import load_tokenizer, resolve_model
from ..models.backbone import load_backbone
from ..tasks import get_task
from .model import MultiTaskModel
from .weighting import weighting_class


@dataclass
class MultiBuilt:
    cfg: ExperimentConfig
    tasks: dict[str, Built]  # task name -> its single-task view (model = its head on the shared backbone)
    model: MultiTaskModel
    tokenizer: object
    model_path: str
    device: torch.device
    load_report: dict = field(default_factory=dict)
    methods: list = field(default_factory=list)

    def parameter_counts(self) -> dict:
        params = list(self.model.parameters())
        return {"total": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad)}

    @property
    def weights(self) -> dict[str, float]:
        return {e.name: e.weight for e in self.cfg.tasks}


def build_multitask(cfg: ExperimentConfig, checkpoint: Optional[Path] = None, device: str = "auto",
                    log: Callable[[str], None] = _silent) -> MultiBuilt:
    requested = cfg.train.device if device == "auto" else device
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClueRunError("device cuda was asked for, but no CUDA device is available; use auto or cpu")
    configs = cfg.task_configs()
    specs = {name: get_task(name) for name in configs}
    if checkpoint is None:
        model_path = resolve_model(cfg.model.name)
        for tc in configs.values():
            check_positions(tc, model_path, [], log)
        if cfg.model.trim_vocab and not _trim_skip(cfg, model_path):
            texts = [t for name, tc in configs.items() for t in task_texts(specs[name], tc.data.dir)]
            model_path = trimmed_for_texts(model_path, texts, "+".join(configs), log)
    else:
        model_path = str(checkpoint)
    tokenizer = load_tokenizer(model_path)
    full_tokenizer = _untrimmed_tokenizer(cfg, tokenizer) if checkpoint is not None else None
    seed_everything(cfg.train.seed)  # new head weights depend on the seed only
    name = cfg.model.name if checkpoint is None else str(checkpoint)
    backbone = load_backbone(model_path, "base", allow_random_init=cfg.model.allow_random_init,
                             dropout=cfg.model.dropout, name=name)
    if checkpoint is None:
        for line in backbone.load_report.lines():
            log(f"{name}: {line}")
    heads = {}
    for task_name, tc in configs.items():
        head_cls, params = resolve_head(specs[task_name], tc.head)
        heads[task_name] = head_cls(backbone, specs[task_name], params, cfg.model.dropout)
    primary = next((e.name for e in cfg.tasks if e.role == "primary"), None)
    weighting = weighting_class(cfg.multitask.weighting)(list(configs), {e.name: e.weight for e in cfg.tasks}, primary)
    model = MultiTaskModel(backbone, heads, weighting)
    for p in model.new_parameters():
        p.requires_grad_(True)
    if checkpoint is not None:
        load_best(checkpoint, model)
    dev = pick_device(requested)
    model.to(dev)
    amp = autocast_dtype(cfg.train.precision, dev)
    report = backbone.load_report.as_dict() if backbone.load_report else {}
    views = {task_name: Built(tc, specs[task_name], tokenizer, heads[task_name], [], model_path,
                              heads[task_name].featurize, heads[task_name].predict, dev, amp, load_report=report,
                              full_tokenizer=full_tokenizer)
             for task_name, tc in configs.items()}
    return MultiBuilt(cfg, views, model, tokenizer, model_path, dev, report)
