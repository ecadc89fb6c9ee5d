"""`clue-run init`: a complete, commented experiment config written from the config schema itself
(every key, its default and its `Field(description=...)`), so it can never list a key that does not
exist or miss one that does. The habit of spaCy's `init config`."""

from __future__ import annotations

import json
from typing import Optional

from pydantic import BaseModel

from .config import DEFAULT_MODEL, ExperimentConfig, HeadConfig, MethodConfig, MultitaskConfig, TaskEntry, build_config

def _value(value) -> str:
    """A default as a YAML flow scalar (JSON is valid YAML; strings stay unquoted where plain)."""
    if isinstance(value, float) and "e" in repr(value) and "." not in repr(value):
        return repr(value).replace("e", ".0e")  # PyYAML reads 2e-05 as a string, 2.0e-05 as a float
    if isinstance(value, str) and value and value.replace("/", "").replace("-", "").replace("_", "").replace(".", "").isalnum():
        return value
    return json.dumps(value, ensure_ascii=False)


WIDTH = 36  # the column where meanings start


def _line(indent: str, key: str, value, meaning: Optional[str]) -> str:
    text = f"{indent}{key}: {_value(value)}"
    return f"{text.ljust(WIDTH)}  # {meaning}" if meaning else text


def _block(indent: str, key: str, meaning: str) -> str:
    """A key whose value is the indented block below it."""
    return f"{f'{indent}{key}:'.ljust(WIDTH)}  # {meaning}"


def _fields(model_cls: type[BaseModel], indent: str, overrides: Optional[dict] = None, prefix: str = "") -> list[str]:
    lines = []
    for key, field in model_cls.model_fields.items():
        default = (overrides or {}).get(key, field.get_default(call_default_factory=True))
        if isinstance(default, BaseModel):
            lines.append(prefix + _block(indent, key, field.description))
            lines += _fields(type(default), indent + "  ", prefix=prefix)
        else:
            lines.append(prefix + _line(indent, key, default, field.description))
    return lines


def _options(params_cls: type[BaseModel], indent: str, values: Optional[dict] = None, prefix: str = "") -> list[str]:
    """A head's or method's own parameters with their defaults (or `values`) and meanings."""
    return [prefix + _line(indent, key, (values or {}).get(key, field.get_default(call_default_factory=True)),
                           field.description)
            for key, field in params_cls.model_fields.items() if not field.is_required()]


def starter_config(task: str, model: Optional[str] = None, methods: tuple[str, ...] = ()) -> str:
    """The commented YAML for `task` (and a model and methods); it validates and trains as written."""
    from .tasks import get_task

    spec = get_task(task)
    fields = ExperimentConfig.model_fields
    method_list = [{"name": m} for m in methods]
    build_config({"task": task, "model": {"name": model or DEFAULT_MODEL}, "methods": method_list},
                 source="clue-run init")  # a bad --task or --method fails here, not in the written file
    lines = [f"# clue-run experiment: {spec.name} — {spec.description}",
             "# Written by `clue-run init`: every key with its default and meaning. Check it with",
             "#   clue-run train --config THIS_FILE --dry-run",
             _line("", "task", spec.name if task == spec.name else task, fields["task"].description)]
    for key, field in fields.items():  # every other section, in the schema's order (new keys too)
        default = field.get_default(call_default_factory=True)
        if key in ("task", "tasks", "multitask", "head", "methods"):
            continue
        if isinstance(default, BaseModel):
            lines.append(_block("", key, field.description))
            lines += _fields(type(default), "  ", {"name": model} if key == "model" and model else {})
        else:
            lines.append(_line("", key, default, field.description))
    lines += _head_and_methods(spec, methods)
    return "\n".join(lines + _multitask_example()) + "\n"


def _head_and_methods(spec, methods: tuple[str, ...]) -> list[str]:
    from .heads import head_name, resolve_head
    from .plugins import METHODS

    fields = ExperimentConfig.model_fields
    head = head_name(spec, None)
    lines = [_block("", "head", fields["head"].description)]
    lines.append(_line("  ", "name", None, f"{HeadConfig.model_fields['name'].description}; the task's is {head}"))
    params = resolve_head(spec, None)[1]  # the head's defaults with the task's own settings over them
    options = _options(type(params), "", params.model_dump(), prefix="  # ")
    if options:
        lines += [f"  # {head} options (uncomment to change; the task's own settings apply otherwise):", *options]
    if methods:
        lines.append(_block("", "methods", fields["methods"].description))
    else:
        lines.append(_line("", "methods", [], fields["methods"].description))
    for name in methods:
        lines.append(_line("  - ", "name", name, MethodConfig.model_fields["name"].description))
        lines += _options(METHODS.get(name).Params, "    ")
    return lines


def _multitask_example() -> list[str]:
    """The multi-task keys, commented out: `tasks:` replaces `task:` (docs/guide/multitask.md)."""
    fields = ExperimentConfig.model_fields
    lines = ["", "# Several tasks on one encoder: replace task: with tasks: (and drop head: and methods:).",
             "# " + _block("", "tasks", fields["tasks"].description)]
    entry = TaskEntry.model_fields
    lines.append("# " + _line("  - ", "name", "fewclue_tnews", entry["name"].description))
    for key in ("head", "data", "weight", "role"):
        default = entry[key].get_default(call_default_factory=True)
        default = default.model_dump(exclude_none=True) if isinstance(default, BaseModel) else default
        lines.append("# " + _line("    ", key, default, entry[key].description))
    lines.append("# " + _block("", "multitask", fields["multitask"].description))
    lines += _fields(MultitaskConfig, "  ", prefix="# ")
    return lines
