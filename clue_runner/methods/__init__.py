"""Training methods: registered classes that plug into the trainer's hook points.

The trainer calls every method at each hook; a method overrides only the hooks it needs.
At most one method may own the loss (two would silently replace each other).

Hooks (in the order the trainer calls them):
- `setup(model)`: once, before the optimizer is built.
- `loss(model, batch, compute)`: only for `owns_loss` methods; `compute(batch)` runs the
  default forward + loss and returns (loss, logits).
- `after_backward(model, batch, compute, scale)`: after the loss's backward, e.g. extra
  adversarial passes whose gradients add to the step.
- `before_step(model)`: after gradient accumulation, before clipping and the optimizer step.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError
from ..registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    Params = Params
    owns_loss = False

    def __init__(self, params: Params):
        self.params = params

    def setup(self, model: torch.nn.Module) -> None:
        pass

    def loss(self, model, batch, compute: Callable) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self, model, batch, compute: Callable, scale: float) -> None:
        pass

    def before_step(self, model) -> None:
        pass


def _parse(index: int, cfg) -> Method:
    cls = METHODS.get(cfg.name)
    raw = {k: v for k, v in cfg.model_dump().items() if k != "name"}
    try:
        return cls(cls.Params.model_validate(raw))
    except ValidationError as err:
        problems = "; ".join(
            f"methods.{index}.{'.'.join(map(str, e['loc']))}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in err.errors()
        )
        raise ConfigError(f"{problems} (method {cfg.name!r} takes: {', '.join(cls.Params.model_fields) or 'no parameters'})") from None


def build_methods(configs) -> list[Method]:
    methods = [_parse(i, cfg) for i, cfg in enumerate(configs)]
    owners = [type(m).__name__ for m in methods if m.owns_loss]
    if len(owners) > 1:
        raise ConfigError(f"methods: {' and '.join(c.name for c, m in zip(configs, methods) if m.owns_loss)} both replace the loss; use one")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods: {names} lists a method twice")
    return methods


# Registered by explicit import (no filesystem scan).
from . import adversarial, regularization  # noqa: E402,F401
