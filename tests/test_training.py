"""The trainer end to end on real data with the tiny model: determinism, resume, eval agreement, methods."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from clue_runner import api
from clue_runner.cli import app
from clue_runner.config import build_config
from clue_runner.errors import ConfigError


def make_cfg(tiny_model, data_dir, out, **train):
    return build_config({
        "task": "fewclue_eprstmt",
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 64, "max_train_examples": 96, "max_eval_examples": 64},
        "train": {"batch_size": 16, "epochs": 2, "lr": 5e-4, "eval_every": 3, "seed": 7, **train},
        "output_dir": str(out),
    })


def quiet(_):
    pass


def test_same_seed_same_scores(tiny_model, data_dir, tmp_path):
    a = api.read_run(api.train(make_cfg(tiny_model, data_dir, tmp_path / "a"), log=quiet))
    b = api.read_run(api.train(make_cfg(tiny_model, data_dir, tmp_path / "b"), log=quiet))
    assert [h.metrics for h in a.history] == [h.metrics for h in b.history]
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert len(a.history) == 4  # steps 3, 6, 9, 12 (2 epochs of 6 batches)


class Killed(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model, data_dir, tmp_path):
    cfg = make_cfg(tiny_model, data_dir, tmp_path / "full", checkpoint_every=2, grad_accum=2)
    full = api.read_run(api.train(cfg, log=quiet))

    def kill_at_step_4(event):  # step 4 of 6: mid-epoch, between evaluations
        if event.state.step == 4:
            raise Killed

    cfg = make_cfg(tiny_model, data_dir, tmp_path / "cut", checkpoint_every=2, grad_accum=2)
    with pytest.raises(Killed):
        api.train(cfg, on_event=kill_at_step_4, log=quiet)
    (run_dir,) = list((tmp_path / "cut").glob("*/*/*"))
    assert not (run_dir / "run.json").exists()  # no result until the run really finished
    resumed = api.read_run(api.train(None, resume=run_dir, log=quiet))
    assert [h.metrics for h in resumed.history] == [h.metrics for h in full.history]
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in full.history])
    assert resumed.best == full.best
    assert not (run_dir / "resume").exists()


def test_train_json_and_eval_agree_through_cli(tiny_model, data_dir, tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(
        f"task: fewclue_eprstmt\nmodel: {{name: {tiny_model}}}\n"
        f"data: {{dir: {data_dir}, max_length: 64, max_train_examples: 64}}\n"
        f"train: {{batch_size: 16, epochs: 1, lr: 5e-4}}\noutput_dir: {tmp_path / 'results'}\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(cfg_path), "--set", "train.seed=3"])
    assert res.exit_code == 0, res.output
    (run_dir,) = list((tmp_path / "results").glob("*/*/*"))
    result = api.read_run(run_dir)
    assert result.schema_version == 2 and result.seed == 3 and result.task.name == "fewclue_eprstmt"
    assert result.data.eval.examples == 160 and result.throughput.train_samples_per_s > 0
    assert 0 < result.throughput.train_cpu_seconds < 2 * os.cpu_count() * result.throughput.train_seconds
    assert set(result.environment.packages) >= {"torch", "transformers"}
    res = runner.invoke(app, ["eval", "--run", str(run_dir), "--split", "dev", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"] == pytest.approx(result.best.metrics)


def test_cli_bad_config_exits_nonzero_naming_the_key(tmp_path):
    cfg_path = tmp_path / "bad.yaml"
    cfg_path.write_text("task: afqmc\ntrain:\n  learning_rate: 3e-5\n")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg_path)])
    assert res.exit_code == 2
    assert "train.learning_rate: unknown key; did you mean train.lr?" in res.output
    assert not (tmp_path / "results").exists()


def test_bad_data_leaves_nothing_behind(tiny_model, tmp_path):
    bad = tmp_path / "data" / "fewclue" / "eprstmt"
    bad.mkdir(parents=True)
    (bad / "train_few_all.json").write_text('{"id": 1, "sentence": "好", "label": "Neutral"}\n', encoding="utf-8")
    (bad / "dev_few_all.json").write_text('{"id": 1, "sentence": "好", "label": "Positive"}\n', encoding="utf-8")
    cfg = make_cfg(tiny_model, tmp_path / "data", tmp_path / "out")
    with pytest.raises(Exception, match=r"train_few_all.json:1: field 'label': unknown label 'Neutral'"):
        api.train(cfg, log=quiet)
    assert not (tmp_path / "out").exists()


def test_fgm_restores_embeddings_exactly_and_changes_gradients(tiny_model, data_dir, tmp_path):
    from clue_runner.data.splits import load_split
    from clue_runner.features import collate, tokenize_examples
    from clue_runner.engine.build import model_for
    from clue_runner.methods import StepContext, build_methods
    from clue_runner.models import load_tokenizer
    from clue_runner.tasks import get_task

    task = get_task("fewclue_eprstmt")
    tok = load_tokenizer(str(tiny_model))
    enc = tokenize_examples(load_split(task, "dev", str(data_dir), limit=8).examples, tok, 64)
    batch = collate(enc, list(range(8)), tok.pad_token_id)
    torch.manual_seed(0)
    model = model_for(task, str(tiny_model), dropout=0.0)
    (fgm,) = build_methods(build_config({"task": "afqmc", "methods": [{"name": "fgm", "epsilon": 0.5}]}).methods)
    fgm.prepare(model, [], None)

    def compute(b):
        logits = model(**b)
        return model.loss(logits, b), logits

    before = model.backbone.input_embeddings().weight.detach().clone()
    compute(batch)[0].backward()
    plain_grad = model.backbone.model.classifier.weight.grad.clone()
    fgm.after_backward(model, batch, StepContext(compute))
    assert torch.equal(model.backbone.input_embeddings().weight, before)
    assert not torch.allclose(model.backbone.model.classifier.weight.grad, plain_grad)  # the adversarial loss's gradient was added


def test_rdrop_trains(tiny_model, data_dir, tmp_path):
    cfg = make_cfg(tiny_model, data_dir, tmp_path, max_steps=2)
    cfg = build_config({**cfg.model_dump(), "methods": [{"name": "rdrop", "alpha": 1.0}]})
    result = api.read_run(api.train(cfg, log=quiet))
    assert result.method == "finetune+rdrop(alpha=1)" and result.steps == 2


def test_a_run_resolves_its_methods_and_head_once(tiny_model, data_dir, tmp_path, monkeypatch):
    """The config resolves the names when it loads; data loading, the build and run.json reuse that."""
    from clue_runner import heads, methods
    from clue_runner.engine import build as build_mod

    raw = {**make_cfg(tiny_model, data_dir, tmp_path, max_steps=1).model_dump(), "methods": [{"name": "fgm"}]}
    calls = {"methods": 0, "head": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(methods, "build_methods", counted("methods", methods.build_methods))
    head = counted("head", heads.resolve_head)
    monkeypatch.setattr(heads, "resolve_head", head)
    monkeypatch.setattr(build_mod, "resolve_head", head)
    cfg = build_config(raw)
    assert calls == {"methods": 1, "head": 1}
    result = api.read_run(api.train(cfg, log=quiet))
    assert calls == {"methods": 1, "head": 1}
    assert result.method == "finetune+fgm"


def test_the_evaluator_keeps_the_predictions_it_scored(tiny_model, data_dir, tmp_path):
    """`last_predictions`: the decoded predictions of the last evaluation with their example ids."""
    from clue_runner.runs.prepare import prepare

    cfg = make_cfg(tiny_model, data_dir, tmp_path, max_steps=0)
    prepared = prepare(cfg, quiet)
    metrics = prepared.evaluator.evaluate()
    last = prepared.evaluator.last_predictions
    examples = prepared.eval_data.examples
    assert last.ids == [ex.id for ex in examples] and len(last.predictions) == len(examples)
    gold = [prepared.task.label.values[ex.label] for ex in examples]
    predicted = [prepared.task.label.values[int(p)] for p in last.predictions]
    assert metrics["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predicted, gold)) / len(gold))
