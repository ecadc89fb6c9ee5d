"""A newcomer's first hour: `clue-run init` writes a complete config, and the CLI answers a bad
config or model before torch, transformers or peft are imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from clue_runner.cli import app
from clue_runner.config import ExperimentConfig, MultitaskConfig, TaskEntry, load_config

REPO = Path(__file__).resolve().parents[1]


def _schema_keys(model_cls: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of a config model, recursing into nested models with defaults."""
    keys = set()
    for name, field in model_cls.model_fields.items():
        keys.add(prefix + name)
        default = field.get_default(call_default_factory=True) if not field.is_required() else None
        if isinstance(default, BaseModel):
            keys |= _schema_keys(type(default), f"{prefix}{name}.")
    return keys


def _written_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in tree.items():
        keys.add(prefix + name)
        if isinstance(value, dict) and name not in ("data",) or isinstance(value, dict) and prefix == "":
            keys |= _written_keys(value, f"{prefix}{name}.")
    return keys


def _init(*args) -> str:
    res = CliRunner().invoke(app, ["init", *args])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_init_writes_every_key_of_the_schema_with_a_meaning():
    text = _init("--task", "fewclue_tnews", "--method", "fgm")
    written = yaml.safe_load(text)
    single = _schema_keys(ExperimentConfig) - {"tasks", "multitask"}
    assert single <= _written_keys(written), single - _written_keys(written)
    # the multi-task keys are there too, as a commented example (tasks: replaces task:)
    example = text.split("\n# Several tasks", 1)[1].split("\n", 1)[1]
    commented = yaml.safe_load("\n".join(line[2:] for line in example.splitlines()))
    assert set(commented["tasks"][0]) == set(TaskEntry.model_fields)
    assert set(commented["multitask"]) == set(MultitaskConfig.model_fields)
    # every key line says what it means; every default is the schema's
    for line in text.splitlines():
        if re.match(r"^(#\s+)?\s*(- )?[a-z_]+:", line) and not line.startswith("#   clue-run"):
            assert "  # " in line, f"no meaning: {line!r}"
    assert written["train"] == ExperimentConfig.model_fields["train"].default.model_dump(mode="json")
    assert written["methods"] == [{"name": "fgm", "epsilon": 1.0}]


def test_init_config_is_the_default_config_and_dry_runs(tiny_model, data_dir, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(_init("--task", "fewclue_tnews", "--model", str(tiny_model)), encoding="utf-8")
    loaded = load_config(config)
    default = ExperimentConfig.model_validate({"task": "fewclue_tnews", "model": {"name": str(tiny_model)}})
    assert loaded.model_dump() == default.model_dump()  # same run id, same report label as the minimal config
    res = CliRunner().invoke(app, ["train", "--config", str(config), "--dry-run", "--set", f"data.dir={data_dir}",
                                   "--set", f"output_dir={tmp_path / 'out'}"])
    assert res.exit_code == 0, res.output
    assert "task: fewclue_tnews" in res.stdout and "steps:" in res.stdout
    assert not (tmp_path / "out").exists()


def test_init_refuses_an_unknown_task_or_method_in_one_line():
    for args, word in ((["--task", "fewclue_tnew"], "fewclue_tnews"), (["--task", "afqmc", "--method", "fgn"], "fgm")):
        res = CliRunner().invoke(app, ["init", *args])
        assert res.exit_code == 2 and word in res.output, res.output



def _registered_params():
    """(kind, name, Params) of every head and method the registries know, entry points included."""
    from clue_runner.plugins import HEADS, METHODS

    return [(reg.kind, name, reg.get(name).Params) for reg in (HEADS, METHODS) for name in reg.names()]


def test_every_head_and_method_parameter_says_what_it_means():
    undescribed = [f"{kind} {name}: {key}" for kind, name, params in _registered_params()
                   for key, field in params.model_fields.items() if not (field.description or "").strip()]
    assert not undescribed, undescribed
    # printed as one YAML comment each by `clue-run init`
    long = [f"{name}.{key}" for _, name, params in _registered_params() for key, field in params.model_fields.items()
            if "\n" in field.description or len(field.description) > 90]
    assert not long, long


def _undescribed(section: list[str], params: type[BaseModel]) -> list[str]:
    """The parameters of `params` with no `key: value  # description` line in `section`."""
    keyed = {m.group(1): line for line in section if (m := re.match(r"^\s*(?:#\s+)?([a-z_]+):", line))}
    return [key for key, field in params.model_fields.items()
            if not keyed.get(key, "").endswith(f"  # {field.description}")]


def _method_section(text: str, name: str) -> list[str]:
    lines = text.split("\n# Several tasks", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^  - name: {name}\s", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  - ")), len(lines))
    return lines[start + 1 : end]


def test_init_prints_each_method_parameter_with_its_meaning():
    from clue_runner.plugins import METHODS

    text = _init("--task", "fewclue_tnews", "--method", "rdrop", "--method", "lora")
    for name in ("rdrop", "lora"):
        assert not _undescribed(_method_section(text, name), METHODS.get(name).Params), name
    for name in METHODS.names():  # every method init accepts on a cls task (ptuning needs the pet head)
        res = CliRunner().invoke(app, ["init", "--task", "fewclue_tnews", "--method", name])
        if res.exit_code == 2 and METHODS.get(name).requires_kind is not None:
            continue
        assert res.exit_code == 0, res.output
        assert not _undescribed(_method_section(res.stdout, name), METHODS.get(name).Params), name


def test_init_prints_each_head_option_with_its_meaning():
    from clue_runner.heads import head_name
    from clue_runner.plugins import HEADS
    from clue_runner.tasks import builtin_task_names, get_task

    one_task_per_head = {head_name(get_task(t), None): t for t in reversed(builtin_task_names())}
    assert {"span", "global_pointer", "multiple_choice", "embedding"} <= set(one_task_per_head)
    for head, task in one_task_per_head.items():
        lines = _init("--task", task).split("\nmethods:", 1)[0].splitlines()
        options = lines[next((i for i, line in enumerate(lines) if line.startswith(f"  # {head} options")), len(lines)):]
        assert not _undescribed(options, HEADS.get(head).Params), (task, head)


# A bad config or model is answered before the heavy libraries load: run in a fresh interpreter.
PROBE = """
import sys
from typer.testing import CliRunner
from clue_runner.cli import app
res = CliRunner().invoke(app, ["train", "--config", sys.argv[1]])
print(res.exit_code)
print(" ".join(m for m in ("torch", "transformers", "peft") if m in sys.modules))
print(res.output)
"""


def _probe(config: Path, **env) -> tuple[int, set[str], str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "CLUE_RUN_NO_PROGRESS": "1", **env}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True, text=True, env=full,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    code, loaded, output = proc.stdout.split("\n", 2)
    return int(code), set(loaded.split()), output


def test_a_config_error_is_answered_without_torch_or_transformers(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("task: fewclue_tnews\ntrain: {learning_rate: 1e-5}\n")
    code, loaded, output = _probe(config)
    assert code == 2 and "train.learning_rate: unknown key; did you mean train.lr?" in output
    assert not loaded & {"torch", "transformers", "peft"}, loaded


@pytest.mark.slow
def test_a_missing_model_or_data_file_is_answered_before_transformers(tmp_path, data_dir):
    config = tmp_path / "exp.yaml"
    config.write_text(f"task: fewclue_tnews\nmodel: {{name: someone/no-such-model}}\noutput_dir: {tmp_path / 'out'}\n")
    code, loaded, output = _probe(config, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
                                  CLUE_DATA_DIR=str(data_dir))
    assert code == 2 and "'someone/no-such-model'" in output and "cannot be reached" in output
    assert not loaded & {"transformers", "peft"}, loaded
    config.write_text(f"task: fewclue_tnews\ndata: {{dir: {tmp_path}}}\n")
    code, loaded, output = _probe(config)
    assert code == 2 and "data file not found" in output
    assert not loaded & {"transformers", "peft"}, loaded
    assert not (tmp_path / "out").exists()


def test_seed_everything_seeds_as_transformers_set_seed():
    import random

    import numpy as np
    import torch
    from transformers import set_seed

    from clue_runner.engine.device import seed_everything

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_seed(2024)
    expected = draws()
    seed_everything(2024)
    assert draws() == expected
    seed_everything(2024 + 2**32)  # taken modulo 2**32, as before
    assert draws() == expected
