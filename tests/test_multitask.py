"""Multi-task runs: config validation, the batch schedule, every loss weighting's formula, and a
2-task tiny run end to end (train → resume → report → eval → predict → submit)."""

from __future__ import annotations

import itertools
import json
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clue_runner import api
from clue_runner.cli import app
from clue_runner.config import build_config
from clue_runner.errors import ConfigError
from clue_runner.features import train_batches
from clue_runner.multitask.schedule import MultiTaskSource, task_probabilities
from clue_runner.multitask.weighting import (FixedWeights, GradNorm, InitialLoss, Mgda, PrimaryAuxiliary, RealTime,
                                             auxiliary_weights, min_norm_weights)

TASKS = ["fewclue_tnews", "fewclue_csldcp"]


def multitask_raw(**multitask) -> dict:
    return {"tasks": [{"name": "fewclue_tnews"}, {"name": "fewclue_csldcp"}], "multitask": multitask}


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("change,message", [
    (lambda r: r["tasks"].append({"name": "fewclue_tnewz"}), r"tasks\.2 \(fewclue_tnewz\).*did you mean"),
    (lambda r: r["tasks"].append({"name": "fewclue_tnews"}), r"tasks\.2\.name: 'fewclue_tnews' is listed twice"),
    (lambda r: r.update(task="tnews"), "not both"),
    (lambda r: r["multitask"].update(weighting="mgdaa"), r"multitask\.weighting: unknown loss weighting .*did you mean 'mgda'"),
    (lambda r: r["multitask"].update(weighting="primary_auxiliary"), "exactly one task with role: primary .found 0"),
    (lambda r: (r["multitask"].update(weighting="primary_auxiliary"), [t.update(role="primary") for t in r["tasks"]]),
     "exactly one task with role: primary .found 2"),
    (lambda r: r["tasks"][0].update(role="primary"), r"tasks\.0\.role: only the primary_auxiliary weighting"),
    (lambda r: r["multitask"].update(schedule="fixed", frequencies={"fewclue_tnews": 1, "ocnli": 2}),
     r"multitask\.frequencies: 'ocnli' is not one of the tasks"),
    (lambda r: r["multitask"].update(schedule="fixed", frequencies={"fewclue_tnews": 1}), "missing fewclue_csldcp"),
    (lambda r: r["multitask"].update(frequencies={"fewclue_tnews": 1, "fewclue_csldcp": 1}), "only schedule fixed"),
    (lambda r: r["multitask"].update(weighting="mgda", per_step="scheduled"), "use per_step: all"),
    (lambda r: r["tasks"][1].update(data={"max_lenght": 64}), r"tasks\.1 \(fewclue_csldcp\): data\.max_lenght: unknown key"),
    (lambda r: r["tasks"][1].update(head={"name": "pet"}), r"tasks\.1\.head: head PetHead needs its own mlm backbone"),
    (lambda r: r.update(tasks=[{"name": "tnews"}]), "at least two tasks"),
    (lambda r: r.update(head={"name": "cls"}), r"head: with tasks:, give each task's head"),
])
def test_bad_multitask_configs_fail_at_load_with_one_line(change, message):
    raw = multitask_raw()
    change(raw)
    with pytest.raises(ConfigError, match=message) as err:
        build_config(raw)
    assert "\n" not in str(err.value)


def test_task_entries_override_the_top_level_data_block():
    cfg = build_config({**multitask_raw(), "data": {"max_length": 96, "variant": "few_all"},
                        "tasks": [{"name": "fewclue_tnews"}, {"name": "fewclue_csldcp", "data": {"max_length": 200},
                                                              "weight": 2}]})
    configs = cfg.task_configs()
    assert configs["fewclue_tnews"].data.max_length == 96 and configs["fewclue_csldcp"].data.max_length == 200
    assert configs["fewclue_csldcp"].data.variant == "few_all"
    assert cfg.multitask.per_step == "scheduled"  # fixed weighting: one scheduled task per micro-batch
    assert build_config({**multitask_raw(weighting="mgda")}).multitask.per_step == "all"
    assert cfg.method_label() == "multitask(fewclue_tnews+fewclue_csldcp, fixed, proportional w=1/2)"
    # the saved config loads back to the same config
    assert build_config(cfg.model_dump(mode="json")) == cfg


def test_single_task_config_dumps_as_before():
    dumped = build_config({"task": "tnews"}).model_dump(mode="json")
    assert list(dumped) == ["task", "model", "data", "train", "head", "methods", "output_dir"]
    with pytest.raises(ConfigError, match="task: required key is missing"):
        build_config({})
    with pytest.raises(ConfigError, match="multitask: applies to a tasks: list"):
        build_config({"task": "tnews", "multitask": {}})


# -- schedule ----------------------------------------------------------------------------------


def fake_data(sizes: dict[str, int]) -> dict:
    rng = np.random.default_rng(0)
    return {n: SimpleNamespace(lengths=rng.integers(5, 60, size=k)) for n, k in sizes.items()}


def flat(items) -> list[tuple]:
    return [tuple((n, tuple(idx.tolist())) for n, idx in item.items()) for item in items]


@pytest.mark.parametrize("probabilities", [{"a": 0.3, "b": 0.7}, None], ids=["scheduled", "all"])
def test_schedule_is_deterministic_and_resumes_exactly(probabilities):
    data = fake_data({"a": 37, "b": 90})
    source = MultiTaskSource(data, 8, seed=5, probabilities=probabilities)
    run = [flat(source.epoch(e)) for e in range(4)]
    # a resumed run builds a fresh source and asks for the epoch it stopped in
    restored = MultiTaskSource(data, 8, seed=5, probabilities=probabilities)
    assert flat(restored.epoch(2)) == run[2] and flat(restored.epoch(3)) == run[3]
    assert [flat(MultiTaskSource(data, 8, seed=5, probabilities=probabilities).epoch(e)) for e in range(4)] == run
    other = [flat(MultiTaskSource(data, 8, seed=6, probabilities=probabilities).epoch(e)) for e in range(4)]
    assert other != run
    # each task's batches come in its single-task order, epoch after epoch
    for name, n in (("a", 37), ("b", 90)):
        stream = [idx for epoch in run for item in epoch for task, idx in item if task == name]
        single = []
        for e in itertools.count():
            single += [tuple(b.tolist()) for b in train_batches(data[name].lengths, 8, 5, e)]
            if len(single) >= len(stream):
                break
        assert stream == single[:len(stream)]


def test_schedule_probabilities_follow_their_formulas():
    sizes = {"a": 100, "b": 400, "c": 900}
    assert task_probabilities("proportional", sizes) == pytest.approx({"a": 1 / 14, "b": 4 / 14, "c": 9 / 14})
    assert task_probabilities("temperature", sizes, temperature=2) == pytest.approx({"a": 10 / 60, "b": 20 / 60, "c": 30 / 60})
    assert task_probabilities("temperature", sizes, temperature=1) == pytest.approx(task_probabilities("proportional", sizes))
    assert task_probabilities("fixed", sizes, frequencies={"a": 60, "b": 2, "c": 5}) == pytest.approx(
        {"a": 60 / 67, "b": 2 / 67, "c": 5 / 67})


@pytest.mark.parametrize("schedule,options", [("proportional", {}), ("temperature", {"temperature": 3.0}),
                                              ("fixed", {"frequencies": {"a": 5, "b": 1, "c": 2}})])
def test_drawn_tasks_match_the_schedule_over_many_draws(schedule, options):
    sizes = {"a": 64, "b": 320, "c": 960}
    p = task_probabilities(schedule, sizes, **options)
    source = MultiTaskSource(fake_data(sizes), 16, seed=1, probabilities=p)
    draws = np.concatenate([source.draws(e) for e in range(300)])  # 300 epochs × 89 micro-batches
    counts = np.bincount(draws, minlength=3) / len(draws)
    expected = np.array([p[n] for n in source.names])
    assert np.abs(counts - expected).max() < 4 * np.sqrt(expected * (1 - expected) / len(draws)).max()
    items = source.epoch(3)
    assert [next(iter(item)) for item in items] == [source.names[t] for t in source.draws(3)]


# -- weightings --------------------------------------------------------------------------------


def test_primary_auxiliary_gamma_on_hand_computed_vectors():
    g0 = torch.tensor([1.0, 0.0])
    # ⟨g0, g1⟩ = -1, ‖g1‖² = 2: γ = 1/2, u = (0.5, 0.5) is orthogonal to g1
    assert auxiliary_weights(g0, torch.tensor([[-1.0, 1.0]])).tolist() == pytest.approx([0.5])
    assert auxiliary_weights(g0, torch.tensor([[1.0, 1.0]])).tolist() == [0.0]  # agreeing gradients: no correction
    # ⟨g0, g1⟩ = -6, ‖g1‖² = 9 + 16: γ = 6/25
    assert auxiliary_weights(torch.tensor([2.0, 0.0]), torch.tensor([[-3.0, 4.0]])).tolist() == pytest.approx([6 / 25])


@pytest.mark.parametrize("seed", range(4))
def test_several_auxiliary_tasks_match_nonnegative_least_squares(seed):
    from scipy.optimize import nnls

    rng = np.random.default_rng(seed)
    g0 = rng.normal(size=6)
    aux = rng.normal(size=(3, 6)) - 0.5 * g0  # lean against the primary task: some λ > 0
    lam = auxiliary_weights(torch.tensor(g0), torch.tensor(aux), steps=2000, tolerance=1e-12).numpy()
    reference, _ = nnls(aux.T, -g0)  # min ‖Aλ + g0‖, λ ≥ 0
    assert lam == pytest.approx(reference, abs=1e-5)
    grid = np.linspace(0, 3, 61)
    brute = min(np.sum((g0 + np.array(c) @ aux) ** 2) for c in itertools.product(grid, repeat=3))
    assert np.sum((g0 + lam @ aux) ** 2) <= brute + 1e-9


def simplex_grid(k: int, steps: int):
    for c in itertools.product(range(steps + 1), repeat=k - 1):
        if sum(c) <= steps:
            yield np.array([*c, steps - sum(c)]) / steps


@pytest.mark.parametrize("k,seed", [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
def test_frank_wolfe_min_norm_matches_brute_force(k, seed):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(k, 5)) + rng.normal(size=5)  # correlated, as tasks on one encoder are
    alpha = min_norm_weights(torch.tensor(grads), steps=5000, tolerance=1e-12).numpy()
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0)
    norm = np.sum((alpha @ grads) ** 2)
    brute = min(np.sum((a @ grads) ** 2) for a in simplex_grid(k, 400 if k == 2 else 200))
    assert brute - 1e-3 <= norm <= brute + 1e-6


def test_frank_wolfe_on_hand_computed_vectors():
    assert min_norm_weights(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist() == pytest.approx([0.5, 0.5])
    # g1 = (1, 0), g2 = (3, 1): min over the segment at α1 = ⟨g2, g2 − g1⟩/‖g2 − g1‖² = 7/5 → clipped to 1
    assert min_norm_weights(torch.tensor([[1.0, 0.0], [3.0, 1.0]])).tolist() == pytest.approx([1.0, 0.0])


def losses_of(x: torch.Tensor, y: torch.Tensor) -> dict:
    return {"a": x ** 2, "b": 3 * y}


def test_initial_loss_divides_by_the_first_loss_seen_and_keeps_it():
    weighting = InitialLoss(["a", "b"], {"a": 1.0, "b": 2.0})
    x, y = torch.tensor(2.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    total = weighting(losses_of(x, y), lambda: [])
    assert float(total.detach()) == pytest.approx(4 + 2 * 3)  # the logged value: Σ w_i L_i
    total.backward()
    assert float(x.grad) == pytest.approx(2 * 2 / 4) and float(y.grad) == pytest.approx(2 * 3 / 3)
    assert weighting.initial.tolist() == [4.0, 3.0]
    x2 = torch.tensor(3.0, requires_grad=True)  # a later step: L_a = 9, still divided by the first loss 4
    weighting({"a": x2 ** 2}, lambda: []).backward()
    assert float(x2.grad) == pytest.approx(2 * 3 / 4)
    restored = InitialLoss(["a", "b"], {"a": 1.0, "b": 2.0})
    restored.load_state_dict(weighting.state_dict())  # saved with the model: a resumed run keeps it
    assert restored.initial.tolist() == [4.0, 3.0]


def test_realtime_divides_each_loss_by_its_detached_value():
    x, y = torch.tensor(3.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    total = RealTime(["a", "b"], {"a": 1.0, "b": 1.0})(losses_of(x, y), lambda: [])
    assert float(total) == pytest.approx(9 + 6)
    total.backward()
    assert float(x.grad) == pytest.approx(2 * 3 / 9, rel=1e-6)  # ∇ log x² = 2/x
    assert float(y.grad) == pytest.approx(3 / 6, rel=1e-6)
    x, y = torch.tensor(3.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    FixedWeights(["a", "b"], {"a": 0.5, "b": 2.0})(losses_of(x, y), lambda: []).backward()
    assert (float(x.grad), float(y.grad)) == pytest.approx((0.5 * 6, 2.0 * 3))


def shared_problem():
    """Shared θ ∈ R², heads h_a, h_b: L_a = ⟨θ, g_a⟩ + h_a², L_b = ⟨θ, g_b⟩ + h_b² (∇θ L_i = g_i)."""
    theta = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    heads = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    g = torch.tensor([[3.0, 0.0], [-1.0, 2.0]])
    losses = {"a": theta @ g[0] + heads[0] ** 2, "b": theta @ g[1] + heads[1] ** 2}
    return theta, heads, g, losses


def test_gradient_norm_divides_by_each_shared_gradient_norm():
    theta, heads, g, losses = shared_problem()
    GradNorm(["a", "b"], {"a": 1.0, "b": 1.0})(losses, lambda: [theta]).backward()
    norms = g.norm(dim=1)
    assert theta.grad.tolist() == pytest.approx((g[0] / norms[0] + g[1] / norms[1]).tolist())
    assert heads.grad.tolist() == pytest.approx([2 * 1.0 / 3.0, 2 * 2.0 / 5 ** 0.5])


@pytest.mark.parametrize("weighting", ["mgda", "primary_auxiliary"])
def test_direction_weightings_steer_the_shared_gradient_only(weighting):
    theta, heads, g, losses = shared_problem()
    if weighting == "mgda":
        module = Mgda(["a", "b"], {"a": 1.0, "b": 1.0})
        # min over α of ‖α g_a + (1 − α) g_b‖²: α = ⟨g_b, g_b − g_a⟩ / ‖g_a − g_b‖² = 8/20
        expected = 8 / 20 * g[0] + 12 / 20 * g[1]
    else:
        module = PrimaryAuxiliary(["a", "b"], {"a": 1.0, "b": 1.0}, primary="a")
        expected = g[0] + 3 / 5 * g[1]  # γ = relu(−⟨g_a, g_b⟩)/‖g_b‖² = 3/5
    total = module(losses, lambda: [theta])
    assert float(total.detach()) == pytest.approx(float(sum(losses.values())))
    total.backward()
    assert theta.grad.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert heads.grad.tolist() == pytest.approx([2.0, 4.0])  # each head its own task's gradient


# -- a 2-task tiny run end to end --------------------------------------------------------------


def multitask_cfg(tiny_model, data_dir, out, weighting="realtime", eval_limit=None, **train) -> dict:
    return {
        "tasks": [{"name": "fewclue_tnews"}, {"name": "fewclue_csldcp", "weight": 2.0, "data": {"max_length": 48}}],
        "multitask": {"weighting": weighting},
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "variant": "few_all", "max_length": 32, "max_train_examples": 48,
                 "max_eval_examples": eval_limit},
        "train": {"batch_size": 8, "max_steps": 6, "eval_every": 2, "lr": 5e-3, "seed": 3, **train},
        "output_dir": str(out),
    }


def quiet(_):
    pass


def test_the_tiny_model_reads_the_tasks_text(tiny_model, data_dir):
    from transformers import AutoTokenizer

    from clue_runner.data.splits import load_split
    from clue_runner.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for name in TASKS:
        examples = load_split(get_task(name), "train", data_dir=data_dir, variant="few_all", limit=48).examples
        ids = [i for ex in examples for i in tokenizer(ex.text_a, add_special_tokens=False)["input_ids"][:48]]
        assert sum(i == tokenizer.unk_token_id for i in ids) / len(ids) < 0.02, name


@pytest.mark.parametrize("weighting", ["initial_loss", "mgda"])
def test_interrupted_multitask_run_resumes_identical(tiny_model, data_dir, tmp_path, weighting):
    from clue_runner.config import build_config as cfg_of

    full = api.read_run(api.train(cfg_of(multitask_cfg(tiny_model, data_dir, tmp_path / "full", weighting, 40,
                                                       checkpoint_every=1)), log=quiet))

    class Killed(Exception):
        pass

    def kill_at_step_3(event):
        if event.state.step == 3:
            raise Killed

    with pytest.raises(Killed):
        api.train(cfg_of(multitask_cfg(tiny_model, data_dir, tmp_path / "cut", weighting, 40, checkpoint_every=1)),
                  on_event=kill_at_step_3, log=quiet)
    (run_dir,) = list((tmp_path / "cut").glob("*/*/*"))
    resumed = api.read_run(api.train(None, resume=run_dir, log=quiet))
    assert [h.metrics for h in resumed.history] == [h.metrics for h in full.history]
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in full.history])
    assert resumed.tasks == full.tasks


def test_two_task_run_through_report_eval_predict_and_submit(tiny_model, data_dir, tmp_path):
    import yaml

    runner = CliRunner()
    config = tmp_path / "mt.yaml"
    config.write_text(yaml.safe_dump(multitask_cfg(tiny_model, data_dir, tmp_path / "runs")), encoding="utf-8")
    dry = runner.invoke(app, ["train", "--config", str(config), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "fewclue_csldcp train" in dry.output and "steps: 6" in dry.output
    assert not (tmp_path / "runs").exists()

    trained = runner.invoke(app, ["train", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    (run_dir,) = list((tmp_path / "runs").glob("*/*/*"))
    assert run_dir.parent.parent.name == "multitask-fewclue_tnews+fewclue_csldcp"
    result = api.read_run(run_dir)
    assert result.schema_version == 2 and set(result.tasks) == set(TASKS)
    best = result.best.metrics
    assert best["weighted_main"] == pytest.approx(
        (best["fewclue_tnews/accuracy"] + 2 * best["fewclue_csldcp/accuracy"]) / 3)
    assert result.tasks["fewclue_csldcp"].best["accuracy"] == best["fewclue_csldcp/accuracy"]
    assert result.data["fewclue_tnews"].train.examples == 48

    # the best checkpoint reloads with the scores the run recorded
    scored = api.evaluate(run_dir)
    assert scored["metrics"] == pytest.approx(best)

    # a single-task run beside it, and a version-1 copy of it: the report shows all three systems
    single = api.train(build_config({**{k: v for k, v in multitask_cfg(tiny_model, data_dir, tmp_path / "runs").items()
                                        if k not in ("tasks", "multitask")}, "task": "fewclue_tnews"}), log=quiet)
    old = tmp_path / "runs" / "old" / "run"
    old.mkdir(parents=True)
    v1 = {**api.read_run(single).model_dump(mode="json"), "schema_version": 1, "method": "finetune-v1"}
    (old / "run.json").write_text(json.dumps(v1), encoding="utf-8")
    report = runner.invoke(app, ["report", str(tmp_path / "runs"), "--format", "json"])
    assert report.exit_code == 0, report.output
    rows = {r["method"]: r["cells"] for r in json.loads(report.output)["rows"]}
    label = "multitask(fewclue_tnews+fewclue_csldcp, realtime, proportional w=1/2)"
    assert set(rows) == {label, "finetune", "finetune-v1"}
    assert set(rows[label]) == set(TASKS)
    assert rows[label]["fewclue_csldcp"]["scores"] == [pytest.approx(best["fewclue_csldcp/accuracy"] * 100)]
    assert rows["finetune-v1"] == rows["finetune"]

    predicted = runner.invoke(app, ["predict", "--run", str(run_dir)])
    assert predicted.exit_code == 0, predicted.output
    files = sorted(p.name for p in (run_dir / "predictions").iterdir())
    assert files == ["csldcp_predict.json", "tnewsf_predict.json"], files
    test_rows = {"tnewsf_predict.json": 1500, "csldcp_predict.json": 2999}
    assert {f: len((run_dir / "predictions" / f).read_text(encoding="utf-8").splitlines()) for f in files} == test_rows
    zip_path = tmp_path / "submission.zip"
    packed = runner.invoke(app, ["submit", "--run", str(run_dir), "-o", str(zip_path), "--partial"])
    assert packed.exit_code == 0, packed.output
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert sorted(names) == files
    shutil.rmtree(tmp_path / "runs")
