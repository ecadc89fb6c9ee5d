"""Leaderboard submissions: the validator refuses each known way a CLUE submission scores 0; `submit` packs a zip."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clue_runner import api
from clue_runner.cli import app
from clue_runner.config import build_config
from clue_runner.data.readers import find_file, read_json_lines
from clue_runner.data.splits import load_split
from clue_runner.errors import ClueRunError
from clue_runner.submit import pack_submission, submission_name, validate_prediction_file
from clue_runner.tasks import get_task

from conftest import write_jsonl

AFQMC, TNEWS, FEW_TNEWS = get_task("afqmc"), get_task("tnews"), get_task("fewclue_tnews")


@pytest.fixture(scope="module")
def data_root(data_dir, tmp_path_factory) -> Path:
    """The shared data plus clue/tnews_public, whose test file is absent there: FewCLUE's has the same format."""
    root = tmp_path_factory.mktemp("data")
    for sub in ("clue", "fewclue"):
        (root / sub).mkdir()
        for folder in (data_dir / sub).iterdir():
            (root / sub / folder.name).symlink_to(folder)
    (root / "clue" / "tnews_public").mkdir()
    shutil.copy(data_dir / "fewclue" / "tnews" / "test.json.gz", root / "clue" / "tnews_public" / "test.json.gz")
    return root


def read_test_rows(task, data_root) -> list[dict]:
    path = find_file(data_root / task.data.dir, task.split_file("test", None))
    return [row for _, row in read_json_lines(path)]


def predictions(task, data_root, label_of=lambda i: None) -> list[dict]:
    """A valid prediction per test row, in test order (label: label_of(i) or the i-th label, cycling)."""
    values = task.label.values
    return [{"id": row["id"], "label": label_of(i) or values[i % len(values)]}
            for i, row in enumerate(read_test_rows(task, data_root))]


def check(task, path, data_root, version="1.1", split=None):
    return validate_prediction_file(task, path, data_root, submission_name(task, version, split))


# -- the validator ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", [AFQMC, TNEWS, FEW_TNEWS], ids=lambda t: t.name)
def test_valid_file_passes(task, data_root, tmp_path):
    path = write_jsonl(tmp_path / submission_name(task), predictions(task, data_root))
    assert check(task, path, data_root) == []


@pytest.mark.parametrize("name, version, says", [
    ("tnews_predict.json", "1.1", "expects tnews11_predict.json"),
    ("tnews10_predict.json", "1.1", "is the CLUE 1.0 name"),
    ("tnews11_predict.json", "1.0", "is the CLUE 1.1 name"),
])
def test_wrong_file_name_or_version_suffix(name, version, says, data_root, tmp_path):
    path = write_jsonl(tmp_path / name, predictions(TNEWS, data_root))
    (problem,) = check(TNEWS, path, data_root, version)
    assert "wrong file name" in problem and says in problem


def test_fewclue_names():
    assert submission_name(FEW_TNEWS) == "tnewsf_predict.json"
    assert submission_name(FEW_TNEWS, fewclue_split="0") == "tnewsf_predict_0.json"
    assert submission_name(get_task("fewclue_eprstmt"), fewclue_split="all") == "eprstmt_predict_all.json"
    assert submission_name(TNEWS, "1.0") == "tnews10_predict.json"
    assert submission_name(AFQMC, "1.0") == submission_name(AFQMC, "1.1") == "afqmc_predict.json"


def test_label_index_instead_of_tnews_label_code(data_root, tmp_path):
    rows = predictions(TNEWS, data_root, label_of=lambda i: "3")  # index 3 is the code "103"
    problems = check(TNEWS, write_jsonl(tmp_path / "tnews11_predict.json", rows), data_root)
    assert "unknown label '3' (looks like a label index: index 3 is '103')" in problems[0]
    assert problems[-1].endswith(f"and {len(rows) - 5} more lines with unknown labels")  # summarised, not 1500 lines
    assert len(problems) == 6


@pytest.mark.parametrize("change", ["drop_last", "extra_line"])
def test_wrong_line_count(change, data_root, tmp_path):
    rows = predictions(AFQMC, data_root)
    rows = rows[:-1] if change == "drop_last" else rows + [{"id": len(rows), "label": "0"}]
    problems = check(AFQMC, write_jsonl(tmp_path / "afqmc_predict.json", rows), data_root)
    assert any(f"{len(rows)} lines, but the test file" in p and f"has {len(rows) + (1 if change == 'drop_last' else -1)} rows" in p
               for p in problems)


def test_reordered_ids(data_root, tmp_path):
    rows = predictions(AFQMC, data_root)
    rows[1], rows[2] = rows[2], rows[1]
    problems = check(AFQMC, write_jsonl(tmp_path / "afqmc_predict.json", rows), data_root)
    assert problems == [
        "afqmc_predict.json: line 2: id 2 where the test file has 1 (ids must follow the test file order)",
        "afqmc_predict.json: line 3: id 1 where the test file has 2 (ids must follow the test file order)",
    ]


def test_unknown_label(data_root, tmp_path):
    rows = predictions(AFQMC, data_root)
    rows[4]["label"] = "entailment"
    (problem,) = check(AFQMC, write_jsonl(tmp_path / "afqmc_predict.json", rows), data_root)
    assert problem.startswith("afqmc_predict.json: line 5: unknown label 'entailment'")


def test_label_must_be_a_string(data_root, tmp_path):
    rows = predictions(AFQMC, data_root)
    rows[0]["label"] = 1
    (problem,) = check(AFQMC, write_jsonl(tmp_path / "afqmc_predict.json", rows), data_root)
    assert "label 1 is not a string; write \"1\"" in problem


def test_malformed_lines(data_root, tmp_path):
    lines = [json.dumps(r) for r in predictions(AFQMC, data_root)]
    lines[0] = lines[0][:-1]  # cut the closing brace
    lines[1] = json.dumps({"id": 1, "label": "0", "score": 0.9})
    lines[2] = json.dumps({"id": 2, "lable": "0"})
    lines[3] = "[3, \"0\"]"
    lines[4] = ""
    path = tmp_path / "afqmc_predict.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = check(AFQMC, path, data_root)
    assert problems[0].startswith("afqmc_predict.json: line 1: not valid JSON (")
    assert [p.split(": ", 2)[1:] for p in problems[1:]] == [
        ["line 2", "needs exactly the keys id and label (got: id, label, score)"],
        ["line 3", "needs exactly the keys id and label (got: id, lable)"],
        ["line 4", "needs exactly the keys id and label (got: list)"],
        ["line 5", "empty line"],
    ]


def test_missing_test_file_is_a_problem_not_a_pass(data_root, tmp_path):
    path = write_jsonl(tmp_path / "iflytek_predict.json", [{"id": 0, "label": "0"}])
    (problem,) = check(get_task("iflytek"), path, data_root)
    assert "cannot check" in problem and "data file not found" in problem


# -- submit end to end -----------------------------------------------------------------------


def train_and_predict(task, tiny_model, data_dir, out, variant=None) -> Path:
    cfg = build_config({
        "task": task, "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "variant": variant, "train_split": "dev", "max_train_examples": 8,
                 "max_eval_examples": 8, "max_length": 32},
        "train": {"batch_size": 8, "max_steps": 1},
        "output_dir": str(out),
    })
    run_dir = api.train(cfg, log=lambda _: None)
    api.predict(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tiny_model, data_dir, tmp_path_factory):
    """One-step afqmc and FewCLUE eprstmt (split 0) runs with test predictions."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:  # the autouse cache fixture is per test; keep ours private too
        mp.setenv("CLUE_RUN_CACHE", str(root / "cache"))
        mp.setenv("CLUE_RUN_NO_PROGRESS", "1")
        return {"afqmc": train_and_predict("afqmc", tiny_model, data_dir, root / "results"),
                "eprstmt": train_and_predict("fewclue_eprstmt", tiny_model, data_dir, root / "results", variant="0")}


def submit(*args):
    result = CliRunner().invoke(app, ["submit", *map(str, args)])
    return result.exit_code, result.output


def test_submit_writes_a_validated_zip(runs, tmp_path):
    out = tmp_path / "sub" / "clue.zip"
    code, output = submit("--run", runs["afqmc"], "-o", out)
    assert code == 0, output
    assert "all checks passed" in output and "afqmc_predict.json" in output
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["afqmc_predict.json"]
        assert zf.read("afqmc_predict.json") == (runs["afqmc"] / "predictions" / "afqmc_predict.json").read_bytes()


def test_submit_fewclue_multi_split_names(runs, tmp_path):
    out = tmp_path / "few.zip"
    code, output = submit("--run", runs["eprstmt"], "--fewclue-split", "0", "--partial", "-o", out)
    assert code == 0, output
    assert zipfile.ZipFile(out).namelist() == ["eprstmt_predict_0.json"]
    with pytest.raises(ClueRunError, match="trained on FewCLUE split '0', not on split 'all'"):
        pack_submission([runs["eprstmt"]], tmp_path / "all.zip", fewclue_split="all")
    assert not (tmp_path / "all.zip").exists()


def test_submit_refuses_with_every_problem_and_writes_nothing(runs, tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(runs["afqmc"], run)
    pred = run / "predictions" / "afqmc_predict.json"
    lines = pred.read_text(encoding="utf-8").splitlines()
    pred.write_text("\n".join([lines[1], lines[0], *lines[2:-1], "{oops"]) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "clue.zip"
    code, output = submit("--run", run, "--run", runs["eprstmt"], "-o", out)
    assert code == 2
    for says in ("submission not written", "ids must follow the test file order", "not valid JSON",
                 "the runs mix benchmarks"):
        assert says in output
    assert not out.exists() and not any(out.parent.glob("*"))  # not even a temporary file


def test_submit_without_predictions_says_what_to_run(runs, tmp_path):
    run = tmp_path / "nopred"
    shutil.copytree(runs["afqmc"], run, ignore=shutil.ignore_patterns("predictions", "best"))
    with pytest.raises(ClueRunError, match=r"no test predictions afqmc_predict.json; run `clue-run predict --run .*nopred` first"):
        pack_submission([run], tmp_path / "x.zip")
    with pytest.raises(ClueRunError, match="--clue-version '2.0'"):
        pack_submission([runs["afqmc"]], tmp_path / "x.zip", clue_version="2.0")


# -- reading comprehension, cloze and NER layouts --------------------------------------------


def test_chid_object_needs_every_blank_and_candidate_indices(data_root, tmp_path):
    task = get_task("fewclue_chid")
    rows = read_test_rows(task, data_root)
    good = [{"id": r["id"], "answer": 0} for r in rows]  # the official key (FewCLUE chidf_predict.json)
    assert check(task, write_jsonl(tmp_path / "chidf_predict.json", good), data_root) == []
    good[3]["answer"] = 7  # 7 candidates: indices 0–6
    good[4]["answer"] = "0"
    problems = check(task, write_jsonl(tmp_path / "chidf_predict.json", good), data_root)
    assert [p.split(": ", 2)[1] for p in problems] == ["line 4", "line 5"]
    assert all("is not a choice index (0–6)" in p for p in problems)


def test_cmrc_object_keys_must_be_the_test_question_ids(tmp_path):
    task = get_task("cmrc2018")
    doc = {"data": [{"title": "t", "paragraphs": [{"id": "P", "context": "北京是首都。", "qas": [
        {"id": "Q0", "question": "首都？"}, {"id": "Q1", "question": "是什么？"}]}]}]}
    folder = tmp_path / "data" / "clue" / "cmrc2018_public"
    folder.mkdir(parents=True)
    (folder / "cmrc2018_test.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    path = tmp_path / "cmrc2018_predict.json"
    path.write_text(json.dumps({"Q0": "北京", "Q1": "首都"}, ensure_ascii=False), encoding="utf-8")
    assert check(task, path, tmp_path / "data") == []
    path.write_text(json.dumps({"Q0": 3, "Q9": "x"}), encoding="utf-8")
    problems = check(task, path, tmp_path / "data")
    assert any("1 test ids" in p and "'Q1'" in p for p in problems)
    assert any("1 ids are not in the test file (first: 'Q9')" in p for p in problems)
    assert any("Q0: answer 3 is not text" in p for p in problems)


def test_cluener_entities_must_match_the_test_text(data_root, tmp_path):
    task = get_task("cluener")
    rows = read_test_rows(task, data_root)
    lines = [{"id": r["id"], "text": r["text"], "label": {}} for r in rows]
    lines[0]["label"] = {"address": {rows[0]["text"][0:2]: [[0, 1]]}}
    assert check(task, write_jsonl(tmp_path / "cluener_predict.json", lines), data_root) == []
    lines[1]["label"] = {"address": {"不在这里": [[0, 3]]}}
    lines[2]["label"] = {"person": {rows[2]["text"][0:2]: [[0, 1]]}}
    problems = check(task, write_jsonl(tmp_path / "cluener_predict.json", lines), data_root)
    assert "line 2: address: '不在这里' at [0, 3] does not match the test text" in problems[0]
    assert "line 3: unknown entity type 'person'" in problems[1]


# -- the official FewCLUE example lines ------------------------------------------------------

OFFICIAL = json.loads((Path(__file__).with_name("fixtures") / "fewclue_submit_examples.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(OFFICIAL["lines"]))
def test_written_lines_have_the_official_shape(name, data_root):
    """Key names and value types of what `predict` writes = the official example files' (ids as the test file has them)."""
    from clue_runner.leaderboard import submission_format
    from clue_runner.submit import format_predictions

    task = get_task(name)
    official = [json.loads(line) for line in OFFICIAL["lines"][name]]
    for line in OFFICIAL["lines"][name]:
        assert submission_format(task).line_problem(task, line, None) is None, line  # the validator accepts the official lines
    examples = load_split(task, "test", data_dir=str(data_root)).examples[:2]
    written = [json.loads(x) for x in format_predictions(task, examples, [0, 1]).splitlines()]
    for ours, theirs, ex in zip(written, official, examples):
        assert set(ours) == set(theirs)
        value_key = task.submission.key
        assert type(ours[value_key]) is type(theirs[value_key])  # label string / choice index
        assert ours["id"] == ex.id  # the test file's id, unchanged (int in most, as the examples)


def test_submit_output_that_is_a_directory_is_one_line(runs, tmp_path):
    code, output = submit("--run", runs["eprstmt"], "--partial", "-o", tmp_path)
    assert code == 2 and output.count("\n") <= 1
    assert "is a directory; give the zip's file name" in output


def test_fewclue_zip_with_one_task_needs_partial(runs, tmp_path):
    out = tmp_path / "few.zip"
    code, output = submit("--run", runs["eprstmt"], "-o", out)
    assert code == 2 and not out.exists()
    assert "lacks 8 (fewclue_bustm, fewclue_chid" in output and "--partial" in output
    code, _ = submit("--run", runs["eprstmt"], "--partial", "-o", out)
    assert code == 0 and out.exists()
