import gzip
import json

import pytest

from clue_runner.data.readers import resolve_data_dir
from clue_runner.data.splits import load_split
from clue_runner.errors import DataError
from clue_runner.tasks import get_task

from conftest import write_jsonl

AFQMC = get_task("afqmc")


def afqmc_dir(tmp_path, rows, name="dev.json"):
    write_jsonl(tmp_path / "clue" / "afqmc_public" / name, rows)
    return str(tmp_path)


def test_plain_and_gz_files_read_the_same(tmp_path):
    rows = [{"sentence1": "花呗", "sentence2": "借呗", "label": "1"}, {"sentence1": "a", "sentence2": "b", "label": "0"}]
    plain = load_split(AFQMC, "dev", afqmc_dir(tmp_path / "p", rows))
    gz_path = tmp_path / "g" / "clue" / "afqmc_public" / "dev.json.gz"
    gz_path.parent.mkdir(parents=True)
    with gzip.open(gz_path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    packed = load_split(AFQMC, "dev", str(tmp_path / "g"))
    assert [(e.text_a, e.text_b, e.label) for e in plain.examples] == [(e.text_a, e.text_b, e.label) for e in packed.examples]
    assert plain.examples[0].label == 1


def test_unknown_label_names_file_line_and_field(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": "0"}, {"sentence1": "a", "sentence2": "b", "label": "2"}]
    with pytest.raises(DataError) as err:
        load_split(AFQMC, "dev", afqmc_dir(tmp_path, rows))
    assert "dev.json:2: field 'label': unknown label '2'" in str(err.value)


def test_missing_field_and_bad_json(tmp_path):
    with pytest.raises(DataError, match=r"dev.json:1: field 'sentence2': missing"):
        load_split(AFQMC, "dev", afqmc_dir(tmp_path / "a", [{"sentence1": "a", "label": "0"}]))
    path = tmp_path / "b" / "clue" / "afqmc_public" / "dev.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"sentence1": "a", "sentence2": "b", "label": "0"}\n{"sentence1": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.json:2: not valid JSON"):
        load_split(AFQMC, "dev", str(tmp_path / "b"))


def test_skip_option_counts_bad_rows(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": "0"}, {"sentence1": "a", "label": "1"},
            {"sentence1": "a", "sentence2": "b", "label": "x"}, {"sentence1": "c", "sentence2": "d", "label": "1"}]
    data = load_split(AFQMC, "dev", afqmc_dir(tmp_path, rows), on_bad_row="skip")
    assert len(data.examples) == 2 and len(data.skipped) == 2
    assert data.summary()["skipped"] == 2 and ":2: field 'sentence2'" in data.summary()["skipped_first"][0]


def test_missing_data_dir_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("CLUE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data directory not found; looked in: .*nowhere"):
        resolve_data_dir(str(tmp_path / "nowhere"))
    monkeypatch.setenv("CLUE_DATA_DIR", str(tmp_path / "env-dir"))
    with pytest.raises(DataError, match=r"env-dir \(\$CLUE_DATA_DIR\)"):
        resolve_data_dir(None)


def test_ocnli_dash_rows_dropped_and_counted(data_dir):
    data = load_split(get_task("ocnli"), "dev", str(data_dir))
    assert data.dropped == {"-": 50}
    assert len(data.examples) == 3000 - 50  # the file holds 3,000 rows


def test_int_label_codes_and_csl_keywords(data_dir):
    tnews = load_split(get_task("fewclue_tnews"), "dev", str(data_dir), variant="0")
    assert get_task("fewclue_tnews").label.values[tnews.examples[0].label] == "110"  # written as int 110 in the file
    csl = load_split(get_task("fewclue_csl"), "dev", str(data_dir), variant="0", limit=1).examples[0]
    assert csl.text_a == "归责原则；拟制型污染；环境侵权；无过错责任"
    assert csl.text_b.startswith("归责原则是环境侵权制度")


def test_wsc_markers(tmp_path):
    task = get_task("cluewsc2020")
    row = {"text": "小明说他饿了", "target": {"span1_index": 0, "span1_text": "小明", "span2_index": 3, "span2_text": "他"},
           "label": "true"}
    write_jsonl(tmp_path / "clue" / "cluewsc2020_public" / "dev.json", [row])
    assert load_split(task, "dev", str(tmp_path)).examples[0].text_a == "_小明_说[他]饿了"
    row["target"]["span2_index"] = 4
    write_jsonl(tmp_path / "clue" / "cluewsc2020_public" / "dev.json", [row])
    with pytest.raises(DataError, match=r"dev.json:1: field 'target.span2_text': '他' is not at index 4"):
        load_split(task, "dev", str(tmp_path))


def test_a_task_yaml_naming_its_row_parser_encoder_still_loads(tmp_path):
    """`inputs.encoder` was the row parser's old key: an old task YAML keeps loading, as `inputs.parser`."""
    import yaml

    spec = get_task("cluener").model_dump()
    assert spec["inputs"]["parser"] == "entity_spans"
    spec["inputs"]["encoder"] = spec["inputs"].pop("parser")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    assert get_task(str(tmp_path / "old.yaml")) == get_task("cluener")
