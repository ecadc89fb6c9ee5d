"""Data and submission formats are registries: a new data format registered from outside the package
works end to end (task YAML → rows → one training step → scores), and a task YAML that names an
unknown format is refused in one line naming the file, the key and the closest known name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data.readers import DataFormat, read_rows
from clue_runner.data.splits import load_split
from clue_runner.errors import ConfigError
from clue_runner.plugins import DATA_FORMATS, SUBMISSION_FORMATS
from clue_runner.tasks import get_task

FORMAT = "pipe_test"  # `label|text` per line: a layout no built-in reads
TEXTS = ["这个东西很好", "质量不错", "非常满意", "很差的体验", "不好用", "太差了"]


def read_pipe(path: Path, columns, header):
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        label, _, text = line.partition("|")
        yield line_no, {"label": label, "sentence": text}


@pytest.fixture(scope="module")
def pipe_format():
    if FORMAT not in DATA_FORMATS:  # registered once per test process, as a plugin package would be
        DATA_FORMATS.register(FORMAT)(DataFormat(read_pipe))
    return FORMAT


def write_task(tmp_path: Path, fmt: str) -> Path:
    data = tmp_path / "data" / "pipe"
    data.mkdir(parents=True, exist_ok=True)
    lines = [f"{'pos' if i < 3 else 'neg'}|{t}" for i, t in enumerate(TEXTS)]
    for split in ("train", "dev"):
        (data / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = {"name": "pipe_sentiment", "version": 1, "data": {"dir": "pipe", "format": fmt,
                                                             "splits": {"train": "train.txt", "dev": "dev.txt"}},
            "inputs": {"text_a": "sentence"}, "label": {"values": ["neg", "pos"]}, "head": "cls",
            "metrics": ["accuracy"], "main_metric": "accuracy"}
    path = tmp_path / f"pipe_{fmt}.yaml"
    path.write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    return path


def test_a_registered_data_format_trains_and_scores(pipe_format, tiny_model, tmp_path):
    task_file = write_task(tmp_path, pipe_format)
    task = get_task(str(task_file))
    split = load_split(task, "train", data_dir=str(tmp_path / "data"))
    assert [ex.text_a for ex in split.examples] == TEXTS
    assert [task.label.values[ex.label] for ex in split.examples] == ["pos"] * 3 + ["neg"] * 3
    cfg = build_config({"task": str(task_file), "model": {"name": str(tiny_model)},
                        "data": {"dir": str(tmp_path / "data"), "max_length": 32},
                        "train": {"batch_size": 6, "max_steps": 1, "lr": 1e-3, "seed": 1},
                        "output_dir": str(tmp_path / "runs")})
    result = api.read_run(api.train(cfg, log=lambda _: None))
    assert result.steps == 1 and result.data.train.examples == len(TEXTS)
    assert result.best.metrics["accuracy"] in {k / len(TEXTS) for k in range(len(TEXTS) + 1)}


def test_an_unknown_data_format_is_refused_naming_file_and_key(tmp_path):
    task_file = write_task(tmp_path, "jsnol")
    with pytest.raises(ConfigError) as err:
        get_task(str(task_file))
    message = str(err.value)
    assert str(task_file) in message and "data.format" in message and "did you mean 'jsonl'" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="unknown data format 'jsnol'; did you mean 'jsonl'"):
        list(read_rows(tmp_path / "data" / "pipe" / "dev.txt", "jsnol"))


def test_every_builtin_format_resolves():
    for registry, kind in ((DATA_FORMATS, DataFormat), (SUBMISSION_FORMATS, object)):
        for name in registry:
            assert isinstance(registry.get(name), kind), name
