"""Every task YAML: real dev rows → tiny model forward/backward → label names → a full, ordered submission."""

import gzip
import json
import shutil

import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data.readers import find_file, read_json_lines
from clue_runner.data.splits import load_split
from clue_runner.features import collate
from clue_runner.engine.build import model_for
from clue_runner.models import load_tokenizer
from clue_runner.submit import validate_prediction_file
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
    _official_chid(data_dir / "fewclue" / "chid", root / "clue" / "chid_public")
    _unlabelled_test(root / "clue", data_dir / "clue")
    return root


def _read_gz_lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _official_chid(few, target):
    """The official CHID layout from FewCLUE rows: two passages per line share their candidates
    (blanks tagged #idiomNNNNNN#); answers in a separate file keyed by tag."""
    target.mkdir()
    tag = iter(range(10**6))
    for split, source in (("train", "train_0"), ("dev", "dev_0"), ("test1.1", "test")):
        rows = _read_gz_lines(few / f"{source}.json.gz")[:40]
        lines, answers = [], {}
        for a, b in zip(rows[::2], rows[1::2]):
            candidates = a["candidates"] + [c for c in b["candidates"] if c not in a["candidates"]]
            content = []
            for row in (a, b):
                name = f"#idiom{next(tag):06d}#"
                content.append(row["content"].replace("#idiom#", name))
                if "answer" in row:
                    answers[name] = candidates.index(row["candidates"][row["answer"]])
            lines.append({"candidates": candidates, "content": content})
        (target / f"{split}.json").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
        if answers:
            (target / f"{split}_answer.json").write_text(json.dumps(answers), encoding="utf-8")


def _unlabelled_test(root, real):
    """Test files for C3 and CMRC2018 (not in the shared data): dev documents with ids, without answers."""
    for folder in ("c3_public", "cmrc2018_public"):
        (root / folder).unlink()
        (root / folder).mkdir()
        for f in (real / folder).iterdir():
            (root / folder / f.name).symlink_to(f)
    docs = json.loads(gzip.open(real / "c3_public" / "c3-m-dev.json.gz", "rt", encoding="utf-8").read())[:20]
    n = iter(range(10**6))
    test = [[d[0], [{"question": q["question"], "choice": q["choice"], "id": next(n)} for q in d[1]], d[2]] for d in docs]
    (root / "c3_public" / "test1.1.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
    squad = json.loads(gzip.open(real / "cmrc2018_public" / "cmrc2018_dev.json.gz", "rt", encoding="utf-8").read())
    squad["data"] = squad["data"][:10]
    for article in squad["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]
    (root / "cmrc2018_public" / "cmrc2018_test.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize("name", builtin_task_names())
def test_task_forward_backward_and_submission(name, contract_data, tiny_model, tmp_path):
    task = get_task(name)
    dev = load_split(task, "dev", data_dir=str(contract_data), limit=8)
    assert all(ex.label is not None for ex in dev.examples)

    tokenizer = load_tokenizer(str(tiny_model))
    head = model_for(task, str(tiny_model))
    length = 320 if task.head == "span" else 64  # windows of a long context overlap by 128 tokens
    enc = head.featurize(dev.examples, tokenizer, length)
    batch = collate(enc, list(range(len(enc))), tokenizer.pad_token_id)
    outputs = head(**batch)
    head.loss(outputs, batch).backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    head.eval()
    preds = head.predict(head(**batch).detach(), enc)
    assert len(preds) == len(dev.examples)
    if task.prediction == "class" and task.label.kind == "categorical":
        assert {task.label.values[i] for i in preds.tolist()} <= set(task.label.values)
    if task.submission is None:
        return  # similarity sets have no leaderboard file

    # One optimizer step through the real API, then the leaderboard file for the whole test split.
    cfg = build_config({
        "task": name, "model": {"name": str(tiny_model)},
        "data": {"dir": str(contract_data), "train_split": "dev", "max_train_examples": 8, "max_eval_examples": 8,
                 "max_length": length},
        "train": {"batch_size": 8, "max_steps": 1},
        "output_dir": str(tmp_path / "results"),
    })
    run_dir = api.train(cfg, log=lambda _: None)
    path = api.predict(run_dir)
    assert path.name == task.submission.file
    assert validate_prediction_file(task, path, contract_data, path.name) == []
    if task.submission.format != "jsonl_label":
        return
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    test_file = find_file(contract_data / task.data.dir, task.split_file("test", None))
    test_rows = [row for _, row in read_json_lines(test_file)]
    assert len(lines) == len(test_rows)
    assert [line["id"] for line in lines] == [row["id"] for row in test_rows]
    assert {line["label"] for line in lines} <= set(task.label.values)
