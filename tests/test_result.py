"""run.json through its typed model: every shipped result loads, a version-1 file migrates, a result
round-trips (write → read → equal), and a malformed file is refused in one line naming it."""

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from clue_runner.errors import ClueRunError
from clue_runner.runs.result import RESULT_FILE, SCHEMA_VERSION, RunResult, read_result, write_result

EXAMPLES = Path(__file__).resolve().parent.parent / "results" / "examples"


def example_files(version: int, multitask: bool = False) -> list[Path]:
    found = []
    for path in sorted(EXAMPLES.rglob(RESULT_FILE)):
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw["schema_version"] == version and bool(raw.get("tasks")) == multitask:
            found.append(path)
    return found


def test_every_shipped_result_loads():
    paths = sorted(EXAMPLES.rglob(RESULT_FILE))
    assert len(paths) >= 100  # both versions, single- and multi-task, CPU and GPU runs
    for path in paths:
        result = read_result(path)
        assert result.schema_version == SCHEMA_VERSION
        assert result.main_score == result.best.metrics[result.task.main_metric]


def test_a_version_1_file_loads_migrated(tmp_path):
    v1 = example_files(1)[0]  # a real file written by clue-run at schema version 1
    run_dir = tmp_path / "run"
    shutil.copytree(v1.parent, run_dir, ignore=shutil.ignore_patterns("best", "resume", "logs"))
    raw = json.loads(v1.read_text(encoding="utf-8"))
    result = read_result(run_dir)
    assert result.migrated_from == 1 and result.schema_version == SCHEMA_VERSION
    assert result.best.metrics == raw["best"]["metrics"] and result.task.name == raw["task"]["name"]
    assert [h.step for h in result.history] == [h["step"] for h in raw["history"]]
    assert not result.is_multitask


@pytest.mark.parametrize("multitask", [False, True])
def test_a_result_round_trips_through_the_model(tmp_path, multitask):
    result = read_result(example_files(2, multitask)[0])
    assert result.migrated_from is None and result.is_multitask == multitask
    write_result(tmp_path, result)
    again = read_result(tmp_path)
    assert again == result
    # the dict a training run builds is validated into the same model and written the same way
    as_dict = json.loads((tmp_path / RESULT_FILE).read_text(encoding="utf-8"))
    assert "tasks" in as_dict if multitask else "tasks" not in as_dict
    assert "migrated_from" not in as_dict
    other = tmp_path / "from-dict"
    other.mkdir()
    write_result(other, as_dict)
    assert (other / RESULT_FILE).read_text(encoding="utf-8") == (tmp_path / RESULT_FILE).read_text(encoding="utf-8")
    assert read_result(other) == result


def test_a_wrong_result_is_not_written(tmp_path):
    raw = read_result(example_files(2)[0]).model_dump(mode="json")
    with pytest.raises(ValidationError, match="best_step"):
        write_result(tmp_path, {**raw, "best_step": 3})  # a misspelt key is refused, not written
    assert not (tmp_path / RESULT_FILE).exists()


def _write(run_dir: Path, text: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).write_text(text, encoding="utf-8")
    return run_dir


def _one_line_error(run_dir: Path) -> str:
    with pytest.raises(ClueRunError) as err:
        read_result(run_dir)
    message = str(err.value)
    assert "\n" not in message and str(run_dir / RESULT_FILE) in message
    return message


def test_a_malformed_result_is_one_line_naming_the_file_and_key(tmp_path):
    raw = json.loads(example_files(2)[0].read_text(encoding="utf-8"))
    assert "not valid JSON" in _one_line_error(_write(tmp_path / "a", '{"schema_version": 2,'))
    del raw["best"]["step"]
    assert "best.step: Field required" in _one_line_error(_write(tmp_path / "b", json.dumps(raw)))
    raw["best"]["step"] = 3
    raw["throughput"]["train_samples_per_sec"] = 1.0
    assert "throughput.train_samples_per_sec: Extra inputs are not permitted" in _one_line_error(
        _write(tmp_path / "c", json.dumps(raw)))
    assert "schema version 3" in _one_line_error(_write(tmp_path / "d", json.dumps({**raw, "schema_version": 3})))
    assert "schema version None" in _one_line_error(_write(tmp_path / "e", "[1, 2]"))
    with pytest.raises(ClueRunError, match="no run result"):
        read_result(tmp_path / "missing")


def test_the_model_names_every_key_a_run_writes():
    # the keys of a result written today, in the order of the file (a new key needs a field)
    fields = list(RunResult.model_fields)
    raw = json.loads(example_files(2, multitask=True)[0].read_text(encoding="utf-8"))
    assert [k for k in fields if k in raw] == list(raw)


def test_texts_cut_before_tokenizing_are_recorded_only_when_some_were(tmp_path):
    raw = read_result(example_files(2)[0]).model_dump(mode="json")
    assert "cut" not in raw["data"]["eval"]  # none cut: absent, not null, as files have always been
    cut = {"cut": 2, "cut_first": ["dev.json:3: field 'sentence' cut from 600 to 512 characters"]}
    raw["data"]["eval"].update(cut)  # what data.splits.SplitData.summary adds when it cut some
    write_result(tmp_path, raw)
    again = json.loads((tmp_path / RESULT_FILE).read_text(encoding="utf-8"))["data"]["eval"]
    assert {k: again[k] for k in cut} == cut and read_result(tmp_path).data.eval.cut == 2
