"""Delimited-text readers: the real sentence-matching files, quoting, BOMs, bad rows, gzip."""

from __future__ import annotations

import gzip
import re

import pytest

from clue_runner.errors import ConfigError, DataError
from clue_runner.data.readers import BadRow, read_delimited, read_lines, read_rows

PAIR = ["s1", "s2", "label"]

# (file under the data dir, format, columns, header, rows, keys, label field or None)
REAL_FILES = [
    ("sts/stsb/sts-b-train.txt.gz", "tsv", PAIR, False, 5231, PAIR, "label"),
    ("sts/stsb/sts-b-dev.txt.gz", "tsv", PAIR, False, 1458, PAIR, "label"),
    ("sts/lcqmc/dev.txt.gz", "tsv", PAIR, False, 8802, PAIR, "label"),
    ("sts/pawsx/dev_2k.tsv.gz", "tsv", None, True, 2000, ["id", "sentence1", "sentence2", "label"], "label"),
    ("sts/bq/dev.csv.gz", "csv", None, True, 10000, ["sentence1", "sentence2", "label"], "label"),
    ("sts/atec/dev.csv.gz", "tsv", None, True, 10000, ["text_1", "text_2", "label"], "label"),
    ("sts/atec/atec_nlp_sim_train.csv.gz", "tsv", ["idx", *PAIR], False, 39346, ["idx", *PAIR], "label"),
    ("unsup/ocnli_sup_train_data.csv.gz", "csv", None, True, 7784, ["anchor", "entailment", "contradiction"], None),
    ("unsup/ocnli_unsup_train_data.txt.gz", "lines", None, False, 20000, ["text"], None),
    ("unsup/stsb_unsup_train_data.txt.gz", "lines", None, False, 6067, ["text"], None),
]


@pytest.mark.parametrize("name, fmt, columns, header, count, keys, label", REAL_FILES, ids=[f[0] for f in REAL_FILES])
def test_real_files_read_completely(data_dir, name, fmt, columns, header, count, keys, label):
    rows = list(read_rows(data_dir / name, fmt, columns, header))
    assert len(rows) == count
    assert all(list(row) == keys for _, row in rows)
    assert all(value.strip() for _, row in rows for value in row.values())
    if label:
        expected = {str(i) for i in range(6)} if "stsb" in name else {"0", "1"}
        assert {row[label] for _, row in rows} == expected
    first_line = 2 if header else 1
    assert [n for n, _ in rows[:2]] == [first_line, first_line + 1]


def test_atec_train_bom_is_stripped(data_dir):
    _, first = next(read_rows(data_dir / "sts/atec/atec_nlp_sim_train.csv.gz", "tsv", ["idx", *PAIR], False))
    assert first["idx"] == "1"
    assert first["s1"].startswith("怎么更改花呗")


def test_real_bq_quoted_comma(data_dir):
    rows = dict(read_rows(data_dir / "sts/bq/dev.csv.gz", "csv", header=True))
    assert rows[380] == {"sentence1": "20期提前还利息怎么算", "sentence2": "3,我想提前还贷", "label": "0"}


def test_csv_quoting_and_file_bom(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('\ufeffsentence1,sentence2,label\n"你好,世界","多行\n文本",1\n"他说""好""",b,0\n', encoding="utf-8")
    rows = list(read_delimited(path, ",", None, header=True))
    assert rows == [
        (2, {"sentence1": "你好,世界", "sentence2": "多行\n文本", "label": "1"}),
        (4, {"sentence1": '他说"好"', "sentence2": "b", "label": "0"}),  # line number where the row starts
    ]


def test_tsv_keeps_quotes_literally(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text('"Ras" 前进到卡萨\t他说“好"\t1\n', encoding="utf-8")
    assert list(read_delimited(path, "\t", PAIR, header=False)) == [
        (1, {"s1": '"Ras" 前进到卡萨', "s2": "他说“好\"", "label": "1"})
    ]


@pytest.mark.parametrize("delimiter", ["\t", ","])
def test_wrong_field_count_names_path_and_line(tmp_path, delimiter):
    path = tmp_path / "bad.txt"
    path.write_text(delimiter.join("abc") + "\n\n" + delimiter.join("ab") + "\n", encoding="utf-8")
    rows = read_delimited(path, delimiter, PAIR, header=False)
    assert next(rows) == (1, {"s1": "a", "s2": "b", "label": "c"})
    assert next(rows) == (3, BadRow("expected 3 fields (s1, s2, label), found 2"))  # skippable: on_bad_row decides


def test_gz_and_plain_give_the_same_rows(tmp_path):
    text = "id\tsentence1\tsentence2\tlabel\n1\t一\t二\t0\n\n2\t三\t四\t1\n"
    plain = tmp_path / "dev.tsv"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "dev.tsv.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    rows = list(read_rows(plain, "tsv", ["ignored"], header=True))  # the header wins over columns
    assert [n for n, _ in rows] == [2, 4]
    assert list(read_rows(packed, "tsv", header=True)) == rows


def test_read_lines_skips_blank_lines(tmp_path):
    path = tmp_path / "sents.txt.gz"
    path.write_bytes(gzip.compress("\ufeff第一句\r\n\n  \n第二句\n".encode("utf-8")))
    assert list(read_lines(path)) == [(1, {"text": "第一句"}), (4, {"text": "第二句"})]


def test_read_rows_dispatch(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    assert list(read_rows(path, "jsonl")) == [(1, {"a": 1})]
    with pytest.raises(ConfigError, match="did you mean 'tsv'"):
        read_rows(path, "tvs")
    with pytest.raises(ConfigError, match="needs column names"):
        next(read_rows(path, "tsv"))
