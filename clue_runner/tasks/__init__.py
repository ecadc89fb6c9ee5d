"""Task registry: one YAML file per dataset in this folder (shipped as package data).

`get_task` also accepts a path to a user's own task YAML.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..registry import did_you_mean
from .spec import TaskSpec

__all__ = ["TaskSpec", "builtin_task_names", "get_task"]


def _builtin_dir():
    return resources.files(__name__)


def builtin_task_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml"))


def _parse(text: str, source: str) -> TaskSpec:
    try:
        raw = yaml.safe_load(text)
        return TaskSpec.model_validate(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: invalid task: {problems}") from None


@functools.lru_cache(maxsize=None)
def get_task(name: str) -> TaskSpec:
    """A built-in task by name, or a task YAML by path."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"task file not found: {path}")
        return _parse(path.read_text(encoding="utf-8"), str(path))
    names = builtin_task_names()
    if name not in names:
        raise ConfigError(f"unknown task {name!r}{did_you_mean(name, names)} (see `clue-run tasks list`)")
    resource = _builtin_dir() / f"{name}.yaml"
    return _parse(resource.read_text(encoding="utf-8"), f"task {name}")
