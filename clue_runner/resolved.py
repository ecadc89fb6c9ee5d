"""What a single-task config names, resolved once when it loads (`ExperimentConfig.resolved`): the task,
the head class with its validated options, the methods with theirs. The build, data loading and the
reports read this object instead of resolving the names again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resolved:
    task: Any  # tasks.TaskSpec
    head_cls: type  # heads.Head subclass
    head_params: Any  # its validated Params
    method_prototypes: tuple  # validated methods.Method objects; never trained themselves (see `methods`)

    def methods(self) -> list:
        """Method objects of their own for one build: a method holds per-model state (masks, adapters)."""
        fresh = []
        for proto in self.method_prototypes:
            method = type(proto)(proto.params)
            method.name = proto.name
            fresh.append(method)
        return fresh

    def method_label(self) -> str:
        return "+".join(m.label() for m in self.method_prototypes)
