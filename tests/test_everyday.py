"""The everyday path of a new user: offline hub ids, paths, unsupported architectures, CLI output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clue_runner import hub
from clue_runner.errors import ModelError
from clue_runner.models import resolve_model

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None, timeout=120):
    full = {**os.environ, "PYTHONPATH": str(REPO), "CLUE_RUN_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "clue_runner", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """A hub endpoint that refuses connections and an empty hub cache."""
    for name in hub.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub._probe.cache_clear()
    yield
    hub._probe.cache_clear()


def test_offline_env_is_honoured_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed the network although offline was asked for"))
    assert hub.hub_unavailable() == "HF_HUB_OFFLINE is set"


def test_unreachable_hub_is_detected_fast(no_network):
    start = time.perf_counter()
    why = hub.hub_unavailable()
    assert why is not None and "127.0.0.1:9" in why
    assert time.perf_counter() - start < 5


def test_hub_id_without_network_fails_in_one_line(no_network):
    with pytest.raises(ModelError, match="'someone/bert-tiny-zh'.*cannot be reached.*no cached copy"):
        resolve_model("someone/bert-tiny-zh")


def test_existing_relative_path_is_local_and_missing_path_is_not_found(tiny_model, tmp_path, monkeypatch, no_network):
    (tmp_path / "models").mkdir()
    os.symlink(tiny_model, tmp_path / "models" / "bert-tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("models/bert-tiny") == "models/bert-tiny"  # no `./` needed
    start = time.perf_counter()
    for missing in ("models/bert-tiny/nope", "./bert-tiny", "other/"):
        with pytest.raises(ModelError, match="not found"):
            resolve_model(missing)
    assert time.perf_counter() - start < 1  # no network probe for a path


def test_cli_hub_id_offline_fails_in_seconds(tmp_path, data_dir):
    config = tmp_path / "exp.yaml"
    config.write_text("task: afqmc\nmodel: {name: bert-base-chinese}\ndata: {max_train_examples: 4, max_eval_examples: 4}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "CLUE_DATA_DIR": str(data_dir)}
    start = time.perf_counter()
    proc = cli("train", "-c", str(config), env=env)
    assert time.perf_counter() - start < 10
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "bert-base-chinese" in lines[0] and "cannot be reached" in lines[0]
    assert not (tmp_path / "out").exists()


def test_hub_dataset_offline_is_one_data_error(no_network):
    from clue_runner.data.splits import load_split
    from clue_runner.errors import DataError
    from clue_runner.tasks import get_task

    start = time.perf_counter()
    with pytest.raises(DataError, match="data.source hub: cannot load clue/afqmc.*cannot be reached"):
        load_split(get_task("afqmc"), "dev", source="hub")
    assert time.perf_counter() - start < 10


def test_unsupported_architecture_is_named_in_one_line(tmp_path):
    from clue_runner.models import load_tokenizer
    from clue_runner.models.backbone import load_backbone

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nezha", "hidden_size": 32, "vocab_size": 100}))
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(ModelError, match="architecture 'nezha' is not supported by transformers"):
            load(str(tmp_path))
