"""Every task YAML: real dev rows → tiny model forward/backward → label names → a full, ordered submission."""

import json
import shutil

import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data import find_file, load_split, read_json_lines
from clue_runner.features import collate, encode_examples
from clue_runner.heads import build_head
from clue_runner.models import load_encoder, load_tokenizer
from clue_runner.tasks import builtin_task_names, get_task

# Official layouts whose full splits are not in the shared data: the FewCLUE copies have the same row format.
SUBSTITUTES = {
    "clue/tnews_public": "fewclue/tnews",
    "clue/iflytek_public": "fewclue/iflytek",
    "clue/csl_public": "fewclue/csl",
}


@pytest.fixture(scope="module")
def contract_data(data_dir, tmp_path_factory):
    """The shared data, plus official-layout folders built from FewCLUE files where the official split is absent."""
    root = tmp_path_factory.mktemp("data")
    for sub in ("clue", "fewclue", "sts"):
        (root / sub).mkdir()
        for folder in (data_dir / sub).iterdir():
            (root / sub / folder.name).symlink_to(folder)
    (root / "unsup").symlink_to(data_dir / "unsup")
    for official, few in SUBSTITUTES.items():
        target = root / official
        target.mkdir()
        shutil.copy(data_dir / few / "dev_few_all.json.gz", target / "dev.json.gz")
        shutil.copy(data_dir / few / "test.json.gz", target / "test.json.gz")
    return root


@pytest.mark.parametrize("name", builtin_task_names())
def test_task_forward_backward_and_submission(name, contract_data, tiny_model, tmp_path):
    task = get_task(name)
    dev = load_split(task, "dev", data_dir=str(contract_data), limit=8)
    assert all(ex.label is not None for ex in dev.examples)

    tokenizer = load_tokenizer(str(tiny_model))
    head = build_head(task, load_encoder(str(tiny_model)))
    enc = encode_examples(dev.examples, tokenizer, 64, head.separate_pairs)
    batch = collate(enc, list(range(len(enc))), tokenizer.pad_token_id)
    outputs = head(**batch)
    head.loss(outputs, batch).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    head.eval()
    preds = head.predict(head(**batch).detach())
    assert len(preds) == len(dev.examples)
    if task.prediction == "class":
        assert {task.label.values[i] for i in preds.tolist()} <= set(task.label.values)
    if task.submission is None:
        return  # similarity sets have no leaderboard file

    # One optimizer step through the real API, then the leaderboard file for the whole test split.
    cfg = build_config({
        "task": name, "model": {"name": str(tiny_model)},
        "data": {"dir": str(contract_data), "train_split": "dev", "max_train_examples": 8, "max_eval_examples": 8,
                 "max_length": 64},
        "train": {"batch_size": 8, "max_steps": 1},
        "output_dir": str(tmp_path / "results"),
    })
    run_dir = api.train(cfg, log=lambda _: None)
    path = api.predict(run_dir)
    assert path.name == task.submission.file
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    test_file = find_file(contract_data / task.data.dir, task.split_file("test", None))
    test_rows = [row for _, row in read_json_lines(test_file)]
    assert len(lines) == len(test_rows)
    assert [line["id"] for line in lines] == [row["id"] for row in test_rows]
    assert {line["label"] for line in lines} <= set(task.label.values)
