"""`clue-run report` over synthetic run.json files: grouping, statistics, filters, baselines, outputs, the plot."""

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clue_runner import report as rep
from clue_runner.cli import app
from clue_runner.errors import ClueRunError
from clue_runner.tasks import builtin_task_names

from conftest import complete_result

SNAPSHOT = Path(__file__).parent / "snapshots" / "report.md"
UPDATE_ENV = "CLUE_RUN_UPDATE_SNAPSHOTS"  # set to 1 to rewrite the snapshot from the current output

# (task, model slug, method, seed, best score, created_at): 2 tasks × 2 models; tinybert lacks tnews;
# bert-base afqmc seed 1 was run twice (the older run scored 0.60).
RUNS = [
    ("afqmc", "bert-base", "finetune", 1, 0.60, "2026-01-01T10:00:00+00:00"),
    ("afqmc", "bert-base", "finetune", 1, 0.70, "2026-01-02T10:00:00+00:00"),
    ("afqmc", "bert-base", "finetune", 2, 0.72, "2026-01-02T11:00:00+00:00"),
    ("afqmc", "bert-base", "finetune", 3, 0.735, "2026-01-02T12:00:00+00:00"),
    ("tnews", "bert-base", "finetune", 1, 0.55, "2026-01-03T10:00:00+00:00"),
    ("tnews", "bert-base", "finetune", 2, 0.56, "2026-01-03T11:00:00+00:00"),
    ("afqmc", "tinybert", "finetune+fgm", 1, 0.66, "2026-01-04T10:00:00+00:00"),
]
SECOND_METRIC = {"afqmc": "binary_f1", "tnews": "macro_f1"}


def write_run(root: Path, task, model, method, seed, score, created_at, schema_version=1) -> Path:
    run_id = f"{created_at[:10].replace('-', '')}-seed{seed}"
    metrics = {"accuracy": score, SECOND_METRIC[task]: score / 2}
    history = [{"step": step, "epoch": step / 20, "train_loss": 1.0 - step * frac / 40, "lr": 1e-5,
                "metrics": {k: v * frac for k, v in metrics.items()}, "train_seconds": step / 10}
               for step, frac in ((10, 0.8), (20, 0.95), (30, 1.0), (40, 0.97))]
    throughput = {"train_samples_per_s": 100.0 + seed, "train_tokens_per_s": 5000.0, "train_seconds": 4.0 * seed,
                  "train_cpu_seconds": 3.0 * seed, "padding_share": 0.1 * seed, "eval_samples_per_s": 400.0}
    result = complete_result(task, model, method, seed, history, best_step=30, schema_version=schema_version,
                             run_id=run_id, created_at=created_at, throughput=throughput)
    run_dir = root / task / model / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(result), encoding="utf-8")
    return run_dir


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "results"
    for spec in RUNS:
        write_run(root, *spec)
    (root / "afqmc" / "bert-base" / "interrupted").mkdir()  # no run.json: skipped
    return root


def cli(*args):
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    return result.exit_code, result.output


def build(results, *, latest=False, baselines=(), **filters):
    runs = rep.filter_runs(rep.load_runs([results]), **filters)
    runs = rep.latest_runs(runs) if latest else runs
    return rep.build_report(rep.aggregate(runs), filters.get("tasks"), rep.load_baselines(baselines))


def rows_by_label(report):
    return {row.label: row for row in report.rows}


def test_markdown_matches_snapshot(results):
    code, output = cli(results, "--latest", "--throughput", "--baselines", "bert4keras", "--format", "markdown")
    assert code == 0, output
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(output, encoding="utf-8")
    assert output == SNAPSHOT.read_text(encoding="utf-8"), f"report changed; rerun with {UPDATE_ENV}=1 and inspect the diff"


def test_mean_and_sample_std_match_numpy(results):
    rows = rows_by_label(build(results))
    for (task, label), expected in {
        ("afqmc", "bert-base · finetune"): [0.60, 0.70, 0.72, 0.735],
        ("tnews", "bert-base · finetune"): [0.55, 0.56],
        ("afqmc", "tinybert · finetune+fgm"): [0.66],
    }.items():
        cell = rows[label].cells[task]
        scores = np.array(expected) * 100
        assert cell.n == len(scores)
        assert cell.mean == pytest.approx(scores.mean())
        assert cell.std == (pytest.approx(scores.std(ddof=1)) if len(scores) > 1 else None)


def test_avg_only_for_rows_with_every_task(results):
    report = build(results, latest=True)
    rows = rows_by_label(report)
    bert = rows["bert-base · finetune"]
    assert bert.avg(report.tasks) == pytest.approx((bert.cells["afqmc"].mean + bert.cells["tnews"].mean) / 2)
    assert rows["tinybert · finetune+fgm"].avg(report.tasks) is None
    # One task shown: every row has it, and no avg column repeats it.
    only_afqmc = build(results, tasks=["afqmc"])
    assert not only_afqmc.has_avg and "avg" not in rep.to_markdown(only_afqmc).splitlines()[0]


def test_latest_keeps_the_newest_run_per_seed(results):
    cell = rows_by_label(build(results, latest=True))["bert-base · finetune"].cells["afqmc"]
    assert cell.n == 3
    assert sorted(cell.scores) == pytest.approx([70.0, 72.0, 73.5])  # the older seed-1 run (60.0) is gone


def test_unknown_schema_version_is_refused_naming_the_file(results):
    newer = write_run(results, "afqmc", "bert-base", "finetune", 9, 0.7, "2026-02-01T00:00:00+00:00", schema_version=3)
    with pytest.raises(ClueRunError, match="schema version 3"):
        rep.load_runs([results])
    code, output = cli(results)
    assert code == 2
    assert str(newer / "run.json") in output.replace("\n", "")


def test_missing_results_dir_and_empty_results(tmp_path):
    code, output = cli(tmp_path / "nowhere")
    assert code == 2 and "results directory not found" in output
    (tmp_path / "empty").mkdir()
    code, output = cli(tmp_path / "empty")
    assert code == 2 and "no run results" in output


def test_baselines_are_marked_and_never_mixed_in(results):
    plain = build(results, latest=True)
    with_baselines = build(results, latest=True, baselines=["clue-official", "bert4keras"])
    own = [r for r in with_baselines.rows if not r.published]
    assert [(r.label, r.cells, r.avg(plain.tasks)) for r in own] == \
           [(r.label, r.cells, r.avg(plain.tasks)) for r in plain.rows]
    published = [r for r in with_baselines.rows if r.published]
    assert published and with_baselines.rows[len(own):] == published  # published rows come last
    labels = [r.label for r in published]
    assert "BERT-base · finetune · published (test, clue-official)" in labels
    assert "BERT-base · finetune · published (dev, clue-official)" in labels
    assert all(c.n is None for r in published for c in r.cells.values())
    row = rows_by_label(with_baselines)["BERT-base · finetune · published (test, bert4keras)"]
    assert row.cells["afqmc"].mean == 73.37 and row.avg(with_baselines.tasks) == pytest.approx((73.37 + 56.29) / 2)
    markdown = rep.to_markdown(with_baselines)
    assert "https://github.com/CLUEbenchmark/CLUE" in markdown and "kexue.fm/archives/8739" in markdown


def test_baselines_alone_and_unknown_names(tmp_path, results):
    code, output = cli(tmp_path / "results", "--baselines", "fewclue", "--task", "fewclue_eprstmt,fewclue_tnews",
                       "--format", "json")
    assert code == 0, output
    data = json.loads(output)
    assert data["tasks"] == ["fewclue_eprstmt", "fewclue_tnews"] and all(r["published"] for r in data["rows"])
    assert data["sources"][0]["source"].startswith("https://github.com/CLUEbenchmark/FewCLUE")
    code, output = cli(results, "--baselines", "clue-oficial")
    assert code == 2 and "did you mean 'clue-official'" in output


def test_every_baseline_file_loads_with_our_task_names():
    not_yet = {"cmrc2018", "chid", "c3", "cluener", "atec", "bq", "lcqmc", "pawsx", "stsb", "fewclue_chid"}
    sources = rep.load_baselines(rep.baseline_names())
    assert {s.name for s in sources} == set(rep.baseline_names())
    for source in sources:
        assert source.source and source.rows
        for row in source.rows:
            assert set(row.scores) <= set(builtin_task_names()) | not_yet, (source.name, row)


def test_filters_take_repeats_and_comma_lists(results):
    code, output = cli(results, "--model", "tinybert,bert-base", "--method", "finetune", "--task", "tnews",
                       "--task", "afqmc", "--format", "csv")
    assert code == 0, output
    table = list(csv.DictReader(io.StringIO(output)))
    assert [r["system"] for r in table] == ["bert-base · finetune"]
    assert list(table[0])[5:8] == ["tnews mean", "tnews std", "tnews n"]  # --task sets the column order
    assert table[0]["afqmc n"] == "4" and float(table[0]["avg"]) == pytest.approx((68.875 + 55.5) / 2)
    code, output = cli(results, "--model", "tinybrt")
    assert code == 2 and "did you mean 'tinybert'" in output


def test_metric_option(results):
    runs = rep.filter_runs(rep.load_runs([results]), tasks=["tnews"])
    report = rep.build_report(rep.aggregate(runs, "macro_f1"), ["tnews"])
    assert report.rows[0].cells["tnews"].mean == pytest.approx(27.75)
    code, output = cli(results, "--metric", "macro_f1")  # afqmc runs have binary_f1 instead
    assert code == 2 and "no metric 'macro_f1'" in output


def test_table_format_prints_rich_tables(results):
    code, output = cli(results, "--throughput", "--baselines", "bert4keras")
    assert code == 0, output
    assert "CLUE report" in output and "Throughput" in output and "train CPU s" in output and "published" in output


def test_plot_png_has_the_expected_size(results, tmp_path):
    import matplotlib.image as mpimg

    png = tmp_path / "plots" / "report.png"
    code, output = cli(results, "--baselines", "clue-official", "--format", "csv", "--plot", png)
    assert code == 0, output
    image = mpimg.imread(png)
    assert image.shape[:2] == (500, 1200)
    assert image[..., :3].std() > 0.05  # something was drawn
