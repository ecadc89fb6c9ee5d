"""Training methods (`plugins.METHODS`): registered classes with optional hooks.

The build (`engine.build`) and the trainer call every method at each hook; a method overrides
only what it needs. Build time, in this order:

- `backbone_kind`: the kind of backbone to load ("base": the bare encoder, "mlm", "pretraining");
  None = whatever the head prefers. Heads read hidden states of any kind (the cls head then uses
  its own linear layer instead of the architecture's classification head).
- `wrap_model(backbone, ctx)`: model surgery before the head is built (LoRA injects adapters,
  side networks wrap the backbone). Re-applied when a run is reloaded, before its weights load.
- `wrap_featurizer(featurize, ctx)` / `wrap_predictor(predict, ctx)`: rewrite examples before
  tokenization and outputs before decoding (prompts).
- `param_groups(model)`: parameters with their own learning rate.
- `conflict(others)`: refuse, at config load, a combination with the other methods (one line).
- `check(head_cls, task, head_params)`: refuse a head it cannot work with (one line, at config load);
  `accepts` lists the head outputs it works on (R-Drop: class logits only), None = any.

Training time (the trainer's hooks, in the order it calls them):

- `prepare(model, batches, compute)`: once, before the optimizer is built, with the training data.
- `loss(model, batch, compute)`: only for `owns_loss` methods; `compute(batch)` runs the default
  forward + loss and returns (loss, outputs).
- `after_backward(model, batch, compute, scale)`: e.g. extra adversarial passes.
- `before_step(model)`: after gradient accumulation, before clipping and the optimizer step.

Saving: `export(model)` gives the transformers model written to `best/` (LoRA: merged weights);
`save_extra(model, directory)` writes what else the method keeps (LoRA: the adapter).
`graphable` says the method has no per-step Python hook, so the CUDA-graph step still applies.
At most one method may own the loss (two would silently replace each other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..plugins import METHODS
from ..registry import validate_options


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/NaN would train "successfully" to NaN


@dataclass
class BuildContext:
    """What build-time hooks may read."""

    task: Any
    tokenizer: Any
    config: Any  # the ExperimentConfig
    log: Callable[[str], None]
    training: bool = True


class Method:
    Params = Params
    name = "method"
    owns_loss = False
    graphable = False  # True: no per-step hook, so the CUDA-graph fast path still applies
    changes_export = False  # True: export() differs from the trained module (the exact state is saved too)
    accepts: Optional[set[str]] = None  # head outputs it works on (Head.output_kind); None = any
    backbone_kind: Optional[str] = None  # a pretrained head the backbone must have
    no_embedding_grad: Optional[str] = None  # why no gradient reaches the word embeddings (FGM refuses then)

    def __init__(self, params: Params):
        self.params = params

    # -- build time
    def check(self, head_cls, task, head_params) -> Optional[str]:
        """Why this method cannot work with that head (None when it can)."""
        kind = head_cls.output_kind(task, head_params)
        if self.accepts is not None and kind not in self.accepts:
            return (f"{self.name} works on {' or '.join(sorted(self.accepts))} outputs; "
                    f"head {head_cls.__name__} gives {kind}")
        return None

    def wrap_model(self, backbone, ctx: BuildContext):
        return backbone

    def wrap_featurizer(self, featurize: Callable, ctx: BuildContext) -> Callable:
        return featurize

    def wrap_predictor(self, predict: Callable, ctx: BuildContext) -> Callable:
        return predict

    def param_groups(self, model) -> list[dict]:
        return []

    def max_positions(self) -> Optional[int]:
        """Input length the method makes the model hold (long_positions); None = unchanged."""
        return None

    def conflict(self, others: list["Method"]) -> Optional[str]:
        """Why this method cannot run beside the others in one config (None when it can)."""
        return None

    # -- training time
    def prepare(self, model, batches, compute: Callable) -> None:
        pass

    def loss(self, model, batch, compute: Callable) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self, model, batch, compute: Callable, scale: float) -> None:
        pass

    def before_step(self, model) -> None:
        pass

    # -- saving
    def export(self, model):
        """The transformers model to write to `best/` (default: the trained one)."""
        return model

    def save_extra(self, model, directory) -> None:
        pass

    def summary(self) -> dict:
        """Facts for the run JSON (e.g. the time of an extra pass)."""
        return {}

    def label(self) -> str:
        """The method with its non-default parameters, e.g. `lora(r=16)`: two settings, two report rows."""
        defaults = type(self.params)()
        changed = {k: v for k, v in self.params.model_dump().items() if getattr(defaults, k) != v}
        return self.name + (f"({','.join(f'{k}={_short(v)}' for k, v in changed.items())})" if changed else "")


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_method(index: int, cfg) -> Method:
    cls = METHODS.get(cfg.name)
    raw = {k: v for k, v in cfg.model_dump().items() if k != "name"}
    method = cls(validate_options(cls.Params, raw, f"methods.{index}", f"method {cfg.name!r}"))
    method.name = cfg.name
    return method


def build_methods(configs) -> list[Method]:
    methods = [parse_method(i, cfg) for i, cfg in enumerate(configs)]
    owners = [m.name for m in methods if m.owns_loss]
    if len(owners) > 1:
        raise ConfigError(f"methods: {' and '.join(owners)} both replace the loss; use one")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods: {names} lists a method twice")
    for i, m in enumerate(methods):
        problem = m.conflict([o for o in methods if o is not m])
        if problem:
            raise ConfigError(f"methods.{i}: {problem}")
    kinds = {m.backbone_kind for m in methods if m.backbone_kind}
    if len(kinds) > 1:
        raise ConfigError(f"methods: they need different pretrained heads ({', '.join(sorted(kinds))}); use one")
    return methods


def check_methods(methods: list[Method], head_cls, task, head_params) -> None:
    """Refuse, at config load, a method that cannot work with the head."""
    for i, m in enumerate(methods):
        problem = m.check(head_cls, task, head_params)
        if problem:
            raise ConfigError(f"methods.{i}: {problem}")
        if m.backbone_kind and head_cls.requires_kind not in (None, m.backbone_kind):
            raise ConfigError(f"methods.{i}: {m.name} needs a {m.backbone_kind} backbone; "
                              f"head {head_cls.__name__} needs a {head_cls.requires_kind} one")
