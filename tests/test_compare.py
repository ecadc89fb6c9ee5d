"""Intervals, paired comparisons and the HTML report (report/stats.py, report/compare.py, report/html.py),
checked against scipy/statsmodels and brute force on hand-made runs; per-example predictions from real
(tiny) training; FewCLUE's heldout split."""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from clue_runner import report as rep
from clue_runner.cli import app
from clue_runner.errors import ClueRunError
from clue_runner.report import stats as st
from clue_runner.report.compare import compare

from conftest import complete_result

# (method, split, seed, accuracy): finetune vs fgm on 3 splits × 2 seeds; rdrop lacks split 2 seed 2.
SCORES = {
    "finetune": [0.50, 0.55, 0.61, 0.58, 0.52, 0.57],
    "finetune+fgm": [0.56, 0.54, 0.66, 0.63, 0.60, 0.61],
    "finetune+rdrop": [0.51, 0.57, 0.60, 0.59, 0.55],
}
KEYS = [(split, seed) for split in ("0", "1", "2") for seed in (1, 2)]


def write_run(root: Path, method: str, split: str, seed: int, accuracy: float, task="fewclue_eprstmt") -> Path:
    run_dir = root / task / "m" / f"{method}-{split}-{seed}"
    run_dir.mkdir(parents=True)
    history = [{"step": 5, "epoch": 1.0, "train_loss": 0.7, "metrics": {"accuracy": accuracy - 0.05}},
               {"step": 10, "epoch": 2.0, "train_loss": 0.6, "metrics": {"accuracy": accuracy}}]
    result = complete_result(task, "m", method, seed, history, best_step=10, run_id=run_dir.name,
                             config={"data": {"variant": split}})
    (run_dir / "run.json").write_text(json.dumps(result), encoding="utf-8")
    return run_dir


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "results"
    for method, scores in SCORES.items():
        for (split, seed), score in zip(KEYS, scores):
            write_run(root, method, split, seed, score)
    return root


def groups_of(root: Path, methods=("finetune", "finetune+fgm")):
    return rep.aggregate(rep.filter_runs(rep.load_runs([root]), methods=list(methods)))


def brute_force_sign_flip(diff: np.ndarray) -> float:
    """Two-sided p: the share of all 2^n sign patterns whose |mean| reaches the observed one."""
    observed = abs(diff.mean())
    flips = [abs((diff * np.array(signs)).mean()) for signs in itertools.product((1, -1), repeat=len(diff))]
    return float(np.mean([f >= observed - 1e-12 for f in flips]))


def test_interval_is_the_t_interval_of_the_mean():
    x = np.array([55.0, 57.5, 61.0, 58.0, 52.0])
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    assert st.t_interval(x) == pytest.approx((x.mean() - half, x.mean() + half))
    assert st.t_interval([50.0]) is None and st.t_interval([3.0, 3.0]) == (3.0, 3.0)


def test_report_cells_carry_the_interval(runs_dir):
    report = rep.build_report(groups_of(runs_dir))
    cell = {r.method: r for r in report.rows}["finetune"].cells["fewclue_eprstmt"]
    expected = st.t_interval([100 * s for s in SCORES["finetune"]])
    assert (cell.ci_low, cell.ci_high) == pytest.approx(expected)
    assert f"[{expected[0]:.2f}, {expected[1]:.2f}]" in rep.to_markdown(report)
    assert json.loads(rep.to_json(report))["rows"][0]["cells"]["fewclue_eprstmt"]["ci_low"] == pytest.approx(expected[0])
    assert "fewclue_eprstmt ci_low" in rep.to_csv(report).splitlines()[0]
    assert {(p["split"], p["seed"]) for p in cell.per_run} == set(KEYS)


def test_paired_comparison_matches_scipy_and_brute_force(runs_dir):
    [c] = compare(groups_of(runs_dir), "finetune")
    a, b = 100 * np.array(SCORES["finetune+fgm"]), 100 * np.array(SCORES["finetune"])
    diff = a - b
    assert c.system.endswith("finetune+fgm") and c.result.n == 6
    assert c.result.mean == pytest.approx(diff.mean())
    assert c.result.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert c.result.perm_p == pytest.approx(brute_force_sign_flip(diff))
    assert c.result.exact and c.result.holm_p == pytest.approx(c.result.perm_p)  # one comparison: Holm changes nothing
    half = stats.t.ppf(0.975, 5) * diff.std(ddof=1) / np.sqrt(6)
    assert c.result.interval == pytest.approx((diff.mean() - half, diff.mean() + half))


def test_all_tasks_row_pools_the_pairs_of_every_task(runs_dir):
    """A system compared on two tasks gets an "all tasks (2)" row over all 12 pairs (task, split, seed): the
    same statistics as scipy and brute force on the concatenated pairs, in Holm's family of three."""
    bustm = {"finetune": [0.60, 0.52, 0.58, 0.49, 0.55, 0.61], "finetune+fgm": [0.61, 0.55, 0.57, 0.56, 0.57, 0.60]}
    for method, scores in bustm.items():
        for (split, seed), score in zip(KEYS, scores):
            write_run(runs_dir, method, split, seed, score, task="fewclue_bustm")
    comparisons = compare(groups_of(runs_dir), "finetune")
    assert sorted(c.task for c in comparisons[:2]) == ["fewclue_bustm", "fewclue_eprstmt"]
    assert comparisons[-1].task == "all tasks (2)"
    pooled = comparisons[-1]
    a = 100 * np.array(SCORES["finetune+fgm"] + bustm["finetune+fgm"])
    b = 100 * np.array(SCORES["finetune"] + bustm["finetune"])
    assert pooled.result.n == 12 and pooled.result.mean == pytest.approx((a - b).mean())
    assert pooled.result.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert pooled.result.perm_p == pytest.approx(brute_force_sign_flip(a - b))
    assert ("fewclue_bustm", "2", 1) in pooled.keys and pooled.bootstrap is None
    from statsmodels.stats.multitest import multipletests

    expected = multipletests([c.result.perm_p for c in comparisons], method="holm")[1]
    assert [c.result.holm_p for c in comparisons] == pytest.approx(list(expected))
    res = CliRunner().invoke(app, ["report", str(runs_dir), "--compare", "finetune", "--format", "json",
                                   "--method", "finetune,finetune+fgm"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["comparisons"]
    assert rows[-1]["task"] == "all tasks (2)" and {"task": "fewclue_bustm", "split": "0", "seed": 1} in rows[-1]["pairs"]


def test_all_tasks_row_averages_pairs_that_share_a_run_into_one_unit():
    """A multi-task run scores all its tasks: its pairs are one unit (n counts units, not task pairs)."""
    from clue_runner.report.compare import Comparison, independent_units, pooled

    assert sorted(map(sorted, independent_units([("m1", "a"), ("m1", "b"), ("m2", "c"), ("x", "c"), ("y", "z")]))) == [
        [0, 1], [2, 3], [4]]
    # two tasks, seeds 1-3: the multi-task system's run per seed scores both tasks
    scores = {"t1": [(60.0, 50.0), (70.0, 52.0), (55.0, 58.0)], "t2": [(40.0, 41.0), (45.0, 30.0), (52.0, 50.0)]}
    made = [Comparison(task, "accuracy", "mt", "ft", [("-", s) for s in (1, 2, 3)], st.paired(*zip(*pairs)), pairs,
                       [(f"mt-seed{s}", f"ft-{task}-seed{s}") for s in (1, 2, 3)]) for task, pairs in scores.items()]
    [row] = pooled(made)
    units = [(np.mean([scores[t][i][0] for t in scores]), np.mean([scores[t][i][1] for t in scores])) for i in range(3)]
    assert row.result.n == 3 and row.result.mean == pytest.approx(np.mean([x - y for x, y in units]))
    assert row.result.perm_p == pytest.approx(brute_force_sign_flip(np.array([x - y for x, y in units])))


def test_holm_on_a_known_case():
    comparisons = [st.Paired(5, 0, None, None, p, True) for p in (0.01, 0.04, 0.03)]
    st.holm(comparisons)
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert [c.holm_p for c in comparisons] == pytest.approx([0.03, 0.06, 0.06])
    assert [c.significant for c in comparisons] == [True, False, False]


def test_mismatched_pairs_are_refused_in_one_line(runs_dir):
    with pytest.raises(ClueRunError) as err:
        compare(groups_of(runs_dir, ("finetune", "finetune+rdrop")), "finetune")
    message = str(err.value)
    assert "\n" not in message and "finetune+rdrop has" in message and "split 2 seed 2" in message
    code = CliRunner().invoke(app, ["report", str(runs_dir), "--compare", "finetune"])
    assert code.exit_code != 0 and "pairs need the same split × seed sets" in code.output
    with pytest.raises(ClueRunError, match="names no system"):
        compare(groups_of(runs_dir), "finetun")
    write_run(runs_dir, "finetune", "0", 1, 0.7, task="fewclue_bustm")  # the reference alone has a second task
    with pytest.raises(ClueRunError, match="pairs need the same tasks"):
        compare(groups_of(runs_dir), "finetune")


def test_a_newcomer_compares_the_shipped_runs_in_html(tmp_path):
    shipped = Path(__file__).resolve().parents[1] / "results" / "examples" / "cpu-methods"
    page = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--compare", "finetune", "--format", "html", "-o", str(page), str(shipped)])
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "finetune+lora" in text and "cannot be done" in text  # old runs: no example-level test, said plainly


def test_paired_bootstrap_matches_scipy_with_a_fixed_seed():
    rng = np.random.default_rng(3)
    gold = rng.integers(0, 2, 60)
    a = np.where(rng.random(60) < 0.8, gold, 1 - gold)
    b = np.where(rng.random(60) < 0.6, gold, 1 - gold)
    boot = st.paired_bootstrap([(gold, a, b)], lambda g, p: float(np.mean(g == p)))
    diff = 100 * ((a == gold).astype(float) - (b == gold))
    ref = stats.bootstrap((diff,), np.mean, n_resamples=st.BOOTSTRAP_RESAMPLES, vectorized=False, method="percentile",
                          rng=np.random.default_rng(st.SEED)).confidence_interval
    assert boot.mean == pytest.approx(diff.mean())
    assert boot.interval == pytest.approx((ref.low, ref.high))
    assert boot.significant == (not ref.low <= 0 <= ref.high)


def test_html_page_is_self_contained(runs_dir):
    from clue_runner.report.html import to_html

    groups = groups_of(runs_dir)
    report = rep.build_report(groups, None, rep.load_baselines(["fewclue"]))
    assert any(r.published for r in report.rows)
    page = to_html(report, [r for g in groups for r in g.runs], compare(groups, "finetune"))
    assert 'class="published"' in page and "Published baselines" in page
    assert "<svg" in page and 'id="scores"' in page and 'id="comparisons"' in page
    for fetch in ('src="http', "src='http", 'href="http', "<link", "<script src", "@import", "url(http"):
        assert fetch not in page  # nothing is fetched: styles, script and figures are inline


# -- a real headless browser -------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium executable (apt-get install chromium); CI installs one in .ci/run")


def test_html_report_in_a_browser_sorts_without_console_errors(runs_dir, tmp_path):
    executable = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    page_path = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(runs_dir), "--method", "finetune,finetune+fgm",
                                      "--compare", "finetune", "--format", "html", "-o", str(page_path)])
    assert result.exit_code == 0, result.output
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            names = lambda: page.locator("#scores tbody.runs tr td:first-child").all_inner_texts()  # noqa: E731
            header = page.locator("#scores thead th").nth(1)
            header.click()  # ascending by the task's mean: finetune (56.17) before fgm (60.00)
            assert [n.split(" · ")[1] for n in names()] == ["finetune", "finetune+fgm"]
            header.click()
            assert [n.split(" · ")[1] for n in names()] == ["finetune+fgm", "finetune"]
            page.screenshot(path=str(tmp_path / "r.png"))
            assert errors == []
        finally:
            browser.close()
    assert (tmp_path / "r.png").stat().st_size > 10_000


# -- real (tiny) runs: per-example predictions, the FewCLUE protocol ----------------------------------------


def tiny_config(tiny_model, data_dir, out: Path, methods=(), seed=1, variant="0"):
    from clue_runner.config import build_config

    return build_config({
        "task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "variant": variant, "max_length": 32, "max_train_examples": 16,
                 "max_eval_examples": 24},
        "train": {"batch_size": 8, "max_steps": 2, "eval_every": 1, "seed": seed, "lr": 1e-3},
        "methods": list(methods), "output_dir": str(out)})


def test_predictions_are_saved_with_the_best_and_used(tiny_model, data_dir, tmp_path):
    from clue_runner import api
    from clue_runner.metrics import compute_metrics
    from clue_runner.runs.predictions import load_predictions

    out = tmp_path / "runs"
    for methods in ((), ({"name": "fgm"},)):
        for seed in (1, 2):
            run_dir = api.train(tiny_config(tiny_model, data_dir, out, methods, seed), log=lambda _: None)
            result, saved = api.read_run(run_dir), load_predictions(run_dir)
            assert saved.step == result.best.step and len(saved.gold) == 24
            # the saved predictions are the best checkpoint's: they give its run.json score
            assert compute_metrics(["accuracy"], saved.gold, saved.pred, 2)["accuracy"] == result.best.metrics["accuracy"]
    groups = rep.aggregate(rep.load_runs([out]))
    [c] = compare(groups, "finetune")
    assert c.bootstrap is not None and c.bootstrap.pairs == 2 and c.bootstrap.examples == 48
    # without the file of one run, the comparison says the example-level test cannot be done
    next(out.rglob("predictions.npz")).unlink()
    [c] = compare(rep.aggregate(rep.load_runs([out])), "finetune")
    assert c.bootstrap is None and "cannot be done" in c.bootstrap_note


def test_heldout_is_dev_few_all_minus_the_split(data_dir):
    from clue_runner.data.splits import load_split
    from clue_runner.tasks import get_task

    task = get_task("fewclue_bustm")
    everything = load_split(task, "dev", variant="few_all").examples
    for variant in ("0", "3"):
        dev = {(e.text_a, e.text_b, e.label) for e in load_split(task, "dev", variant=variant).examples}
        held = load_split(task, "heldout", variant=variant).examples
        assert not dev & {(e.text_a, e.text_b, e.label) for e in held}
        assert len(held) == sum((e.text_a, e.text_b, e.label) not in dev for e in everything)


def test_fewclue_protocol_writes_five_runs_and_one_row(tiny_model, data_dir, tmp_path):
    import yaml

    from clue_runner import api
    from clue_runner.runs.sweep import load_sweep

    sweep = {"name": "protocol",
             "base": {"task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
                      "data": {"dir": str(data_dir), "max_length": 32, "max_train_examples": 16, "max_eval_examples": 16},
                      "train": {"batch_size": 8, "max_steps": 2, "eval_every": 2}},
             "grid": {"data.variant": ["0", "1", "2", "3", "4"]}, "seeds": [1], "evaluate": ["heldout"],
             "output_dir": str(tmp_path / "sweep"), "workers": 2}
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    # The cells train in this process (a sweep's worker processes would each load torch: minutes on a busy
    # CPU); the sweep command then finds them finished, scores each on heldout and reports.
    for cell in load_sweep(path).cells:
        api.train(cell.cfg, run_dir=cell.run_dir, log=lambda _: None)
    ran = CliRunner().invoke(app, ["sweep", "--config", str(path)])
    assert "5 already done" in ran.output
    assert ran.exit_code == 0, ran.output
    run_dirs = sorted(p.parent for p in (tmp_path / "sweep").rglob("run.json"))
    assert len(run_dirs) == 5 and all((d / "scores.json").is_file() for d in run_dirs)
    assert "Scored on heldout" in ran.stdout
    report = CliRunner().invoke(app, ["report", str(tmp_path / "sweep"), "--scored-on", "heldout", "--format", "json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.stdout)
    [row] = data["rows"]
    cell = row["cells"]["fewclue_eprstmt"]
    assert cell["n"] == 5 and sorted(p["split"] for p in cell["per_run"]) == ["0", "1", "2", "3", "4"]
    heldout = [json.loads((d / "scores.json").read_text())["heldout"] for d in run_dirs]
    assert cell["mean"] == pytest.approx(100 * np.mean([h["metrics"]["accuracy"] for h in heldout]), abs=1e-4)
    assert {h["examples"] for h in heldout} <= {117, 118, 119}  # 160 minus each dev_i's rows and their duplicates
    assert data["eval_splits"] == ["heldout"]


def test_aso_column_comes_from_deepsig(runs_dir):
    deepsig = pytest.importorskip("deepsig", reason="deepsig is not installed (pip install 'clue-run[stats]')")
    [c] = compare(groups_of(runs_dir), "finetune", with_aso=True)
    a, b = [100 * s for s in SCORES["finetune+fgm"]], [100 * s for s in SCORES["finetune"]]
    assert c.result.aso == pytest.approx(deepsig.aso(a, b, num_bootstrap_iterations=200, seed=0, show_progress=False))


def test_a_sweep_scores_each_run_as_it_finishes(tiny_model, data_dir, tmp_path, monkeypatch):
    """`evaluate:` splits are scored as each cell finishes, so a sweep killed after its first run has that run's
    heldout score (it was only written after the last cell before)."""
    import yaml

    from clue_runner import api
    from clue_runner.runs import launchers
    from clue_runner.runs import sweep as sweeps

    sweep = {"name": "killed",
             "base": {"task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
                      "data": {"dir": str(data_dir), "max_length": 32, "max_train_examples": 16, "max_eval_examples": 16},
                      "train": {"batch_size": 8, "max_steps": 2, "eval_every": 2}},
             "grid": {"data.variant": ["0", "1"]}, "seeds": [1], "evaluate": ["heldout"],
             "output_dir": str(tmp_path / "sweep")}
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")

    def first_then_killed(sw, cells):  # the first cell trains (in this process), then the sweep is killed
        api.train(cells[0].cfg, run_dir=cells[0].run_dir, log=lambda _: None)
        yield {"run_id": cells[0].run_id, "state": "done", "dir": str(cells[0].run_dir), "seconds": 1.0}
        raise KeyboardInterrupt

    monkeypatch.setattr(launchers, "launch", first_then_killed)
    ran = CliRunner().invoke(app, ["sweep", "--config", str(path)])
    assert ran.exit_code == 130, ran.output  # killed (Ctrl-C)
    first, second = sweeps.load_sweep(path).cells
    scores = json.loads((first.run_dir / "scores.json").read_text())
    assert scores["heldout"]["metrics"]["accuracy"] == pytest.approx(api.evaluate(first.run_dir, "heldout")["metrics"]["accuracy"])
    assert not (second.run_dir / "run.json").exists()
