"""Training methods (`plugins.METHODS`): registered classes that override a few hooks.

Every hook is listed here, once, by phase; each is used by at least one built-in method.

Build (config load and `engine.build`, also when a run is reloaded):
- `requires_kind`: the backbone kind the method cannot work without ("base", "mlm"; as
  `Head.requires_kind`): P-tuning (mlm), LST (base). None = the head's choice.
- `check(head_cls, task, head_params)` / `accepts`: refuse a head (R-Drop: class logits only; P-tuning: pet).
- `conflict(others)` / `no_embedding_grad`: refuse a combination (FGM and the gradient penalty
  beside LoRA or LST, which declare why no gradient reaches the word embeddings).
- `max_positions()`: the input length the method makes the model hold (long_positions).
- `wrap_model(backbone, ctx)`: model surgery before the head is built (LoRA, LST, P-tuning,
  long_positions; the gradient penalty picks attention with a second derivative).
- `prompt_template(task)`: the template the head renders inputs with instead of its own (P-tuning's
  `[P]` placeholders); the build hands it to the head's `use_template`.
- `param_groups(model)`: parameters with their own learning rate (LoRA, LST, P-tuning).

Step (the trainer, in this order; a method that overrides `loss_term`, `after_backward` or
`before_step` has step hooks, so the CUDA-graph step does not apply: `has_step_hooks`):
- `prepare(model, batches, compute)`: once, before the optimizer is built (FGM, gradient penalty, ChildTuning-D).
- `loss_term(model, batch, outputs, loss, step)`: a term added to the default loss; the step's loss
  is the default loss plus every method's term (R-Drop, gradient penalty). A term that needs a
  gradient takes it itself with `torch.autograd.grad(loss * step.loss_scale, ..., create_graph=True)`
  and divides by `step.loss_scale`, so its own gradient flows through it (double backward).
- `after_backward(model, batch, step)`: extra passes after the backward (FGM), backpropagated with `step.backward`.
- `before_step(model)`: after accumulation, before clipping and the optimizer step (ChildTuning).

Save: `export(model)` gives the transformers model written to `best/` (LoRA: merged weights);
`changes_export` keeps the exact trained state beside it (LoRA, LST, P-tuning); `save_extra(model,
directory)` writes what else the method keeps (LoRA: the adapter); `summary()` gives facts for
run.json (ChildTuning).

Add a method: a `Method` subclass (its `Params`, the hooks it needs) in a module here, and one line
in `clue_runner/plugins.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..plugins import METHODS
from ..registry import validate_options

STEP_HOOKS = ("loss_term", "after_backward", "before_step")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/NaN would train "successfully" to NaN


@dataclass
class BuildContext:
    """What build hooks may read."""

    task: Any
    config: Any  # the ExperimentConfig
    log: Callable[[str], None]


@dataclass
class StepContext:
    """What step hooks get besides the model and the batch."""

    compute: Callable  # batch → (loss, outputs): the default forward (under autocast) and loss
    loss_weight: float = 1.0  # the micro-batch's loss is multiplied by this before backward (accumulation, shard)
    batch_share: float = 1.0  # the micro-batch's share of the optimizer step's mean loss (all processes together)
    loss_scale: float = 1.0  # the fp16 GradScaler's scale (1 without): gradients are taken of loss × loss_scale

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate an extra loss weighted and scaled as the step's own loss is."""
        (loss * (self.loss_weight * self.loss_scale)).backward()


class Method:
    Params = Params
    name = "method"
    # -- build
    requires_kind: Optional[str] = None  # a backbone kind it cannot work without
    accepts: Optional[set[str]] = None  # head outputs it works on (Head.output_kind); None = any
    no_embedding_grad: Optional[str] = None  # why no gradient reaches the word embeddings (FGM refuses then)
    # -- save
    changes_export = False  # True: export() differs from the trained module (the exact state is saved too)

    def __init__(self, params: Params):
        self.params = params

    # -- build
    def check(self, head_cls, task, head_params) -> Optional[str]:
        """Why this method cannot work with that head (None when it can)."""
        kind = head_cls.output_kind(task, head_params)
        if self.accepts is not None and kind not in self.accepts:
            return (f"{self.name} works on {' or '.join(sorted(self.accepts))} outputs; "
                    f"head {head_cls.__name__} gives {kind}")
        return None

    def conflict(self, others: list["Method"]) -> Optional[str]:
        """Why this method cannot run beside the others in one config (None when it can)."""
        return None

    def max_positions(self) -> Optional[int]:
        """Input length the method makes the model hold; None = unchanged."""
        return None

    def wrap_model(self, backbone, ctx: Optional[BuildContext]):
        """The backbone after the method's surgery (ctx is None when a test builds a bare model)."""
        return backbone

    def prompt_template(self, task) -> Optional[str]:
        """The template the head renders inputs with instead of its own; None = the head's."""
        return None

    def param_groups(self, model) -> list[dict]:
        return []

    # -- step
    @property
    def has_step_hooks(self) -> bool:
        """Whether the method overrides a per-step hook (the CUDA-graph step cannot call one)."""
        return any(getattr(type(self), hook) is not getattr(Method, hook) for hook in STEP_HOOKS)

    def prepare(self, model, batches, compute: Callable) -> None:
        pass

    def loss_term(self, model, batch: dict, outputs, loss: torch.Tensor, step: StepContext) -> Optional[torch.Tensor]:
        """A term added to the step's loss; `loss` and `outputs` are the default forward's."""
        return None

    def after_backward(self, model, batch: dict, step: StepContext) -> None:
        pass

    def before_step(self, model) -> None:
        pass

    # -- save
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
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods: {names} lists a method twice")
    for i, m in enumerate(methods):
        problem = m.conflict([o for o in methods if o is not m])
        if problem:
            raise ConfigError(f"methods.{i}: {problem}")
    kinds = {m.requires_kind for m in methods if m.requires_kind}
    if len(kinds) > 1:
        raise ConfigError(f"methods: they need different pretrained heads ({', '.join(sorted(kinds))}); use one")
    return methods


def check_methods(methods: list[Method], head_cls, task, head_params) -> None:
    """Refuse, at config load, a method that cannot work with the head."""
    for i, m in enumerate(methods):
        problem = m.check(head_cls, task, head_params)
        if problem:
            raise ConfigError(f"methods.{i}: {problem}")
        if m.requires_kind and head_cls.requires_kind not in (None, m.requires_kind):
            raise ConfigError(f"methods.{i}: {m.name} needs a {m.requires_kind} backbone; "
                              f"head {head_cls.__name__} needs a {head_cls.requires_kind} one")
