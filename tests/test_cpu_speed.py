"""CPU speed: fused AdamW, evaluation batches capped by tokens, and checkpoints written only when needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config


def make_cfg(tiny_model, data_dir, out, data=None, **train):
    return build_config({
        "task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 48, "max_train_examples": 96, "max_eval_examples": 32,
                 **(data or {})},
        "train": {"batch_size": 16, "epochs": 1, "lr": 5e-4, "eval_every": 1, "seed": 3, **train},
        "output_dir": str(out)})


def test_a_cpu_training_run_steps_a_fused_adamw(tiny_model, data_dir, tmp_path, monkeypatch):
    from clue_runner.engine import trainer as trainer_mod

    seen = []
    original = trainer_mod.Trainer._optimizer_step

    def step(self):
        seen.append((self.optimizer.defaults["fused"], self.optimizer.defaults["capturable"]))
        original(self)

    monkeypatch.setattr(trainer_mod.Trainer, "_optimizer_step", step)
    api.train(make_cfg(tiny_model, data_dir, tmp_path, max_steps=2), log=lambda _: None)
    assert seen == [(True, False), (True, False)]  # capturable only for the CUDA-graph fast path


SCRIPTED = [0.5, 0.6, 0.6, 0.4, 0.7, 0.7]  # accuracy at steps 1-6: improves at steps 1, 2 and 5


@pytest.fixture
def counted_writes(monkeypatch):
    """Scripted scores; the steps at which best/ and the resume state were written."""
    from clue_runner.engine import checkpoint as checkpoint_mod, evaluate as evaluate_mod, trainer as trainer_mod

    scores = iter(SCRIPTED)
    monkeypatch.setattr(evaluate_mod, "score_predictions", lambda *args, **kwargs: {"accuracy": next(scores)})
    writes = {"best": [], "resume": []}
    save_best, save_resume = checkpoint_mod.save_best, trainer_mod.Trainer._save

    def counted_best(directory, model, tokenizer, methods, best):
        writes["best"].append(best["step"])
        save_best(directory, model, tokenizer, methods, best)

    def counted_resume(self, directory):
        writes["resume"].append(self.state.step)
        save_resume(self, directory)

    monkeypatch.setattr(checkpoint_mod, "save_best", counted_best)
    monkeypatch.setattr(trainer_mod.Trainer, "_save", counted_resume)
    return writes, monkeypatch


@pytest.mark.parametrize("train,resume_steps", [
    ({}, [1, 2, 5]),  # only evaluations that improved: the commit best/ follows
    ({"checkpoint_every": 3}, [1, 2, 3, 5, 6]),  # and every 3 steps
])
def test_an_evaluation_that_did_not_improve_writes_nothing(tiny_model, data_dir, tmp_path, counted_writes, train,
                                                         resume_steps):
    writes, monkeypatch = counted_writes
    run_dir = api.train(make_cfg(tiny_model, data_dir, tmp_path, **train), log=lambda _: None)
    result = api.read_run(run_dir)
    assert [h.metrics["accuracy"] for h in result.history] == SCRIPTED
    assert writes["best"] == [1, 2, 5]
    assert writes["resume"] == resume_steps
    assert result.best.step == 5
    assert json.loads((run_dir / "best" / "clue_run_best.json").read_text())["step"] == 5


def test_resume_state_is_written_after_long_training_without_a_commit(tiny_model, data_dir, tmp_path, counted_writes):
    from clue_runner.engine import trainer as trainer_mod

    writes, monkeypatch = counted_writes
    monkeypatch.setattr(trainer_mod, "RESUME_AFTER_SECONDS", 0.0)  # any training since the last commit is "long"
    api.train(make_cfg(tiny_model, data_dir, tmp_path), log=lambda _: None)
    assert writes["resume"] == [1, 2, 3, 4, 5, 6]
    assert writes["best"] == [1, 2, 5]


def test_killed_after_an_uncommitted_evaluation_resumes_identical(tiny_model, data_dir, tmp_path):
    """A kill at step 4 (real scores: steps without improvement commit nothing) redoes training from
    the last commit and ends exactly as an uninterrupted run."""
    full = api.read_run(api.train(make_cfg(tiny_model, data_dir, tmp_path / "full"), log=lambda _: None))

    class Killed(Exception):
        pass

    def kill_at_step_4(event):
        if event.state.step == 4:
            raise Killed

    with pytest.raises(Killed):
        api.train(make_cfg(tiny_model, data_dir, tmp_path / "cut"), on_event=kill_at_step_4, log=lambda _: None)
    (run_dir,) = list((tmp_path / "cut").glob("*/*/*"))
    resumed = api.read_run(api.train(None, resume=run_dir, log=lambda _: None))
    assert [h.metrics for h in resumed.history] == [h.metrics for h in full.history]
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in full.history])
    assert resumed.best == full.best


def test_cpu_evaluation_pads_less_and_predicts_as_one_example_at_a_time(tiny_model, data_dir, tmp_path):
    """All 160 dev examples at max length 128 in batches of 128: capped by tokens, the padding share
    drops, and every output equals the model run on that example alone (input order kept)."""
    from clue_runner.engine.build import build, load_task_split
    from clue_runner.engine.evaluate import eval_plan, predict_logits, score
    from clue_runner.features import collate, eval_batches
    from clue_runner.features.batching import padding_share

    cfg = make_cfg(tiny_model, data_dir, tmp_path, data={"max_length": 128, "max_eval_examples": None})
    built = build(cfg, device="cpu")
    built.head.eval()
    enc = built.featurize_split(load_task_split(cfg, built.task, "dev"))
    assert len(enc) == 160 and enc.lengths.max() > 2 * np.median(enc.lengths)  # lengths vary: padding matters
    cpu = torch.device("cpu")

    uncapped = padding_share(enc, eval_batches(enc.lengths, 128))
    capped = padding_share(enc, eval_plan(enc, 128, cpu))
    assert capped < 0.5 * uncapped
    assert api.read_run(api.train(make_cfg(tiny_model, data_dir, tmp_path / "run", max_steps=1, data={
        "max_length": 128, "max_eval_examples": None}), log=lambda _: None)).throughput.eval_padding_share == \
        pytest.approx(capped, abs=1e-4)

    with torch.no_grad():
        alone = np.concatenate([built.head(**collate(enc, [i], built.tokenizer.pad_token_id, targets=False)).numpy()
                                for i in range(len(enc))])
    batched, _ = predict_logits(built.head, enc, 128, built.tokenizer.pad_token_id, cpu, None)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert (batched.argmax(-1) == alone.argmax(-1)).all()
    assert score(built.task, built.predict, batched, enc) == score(built.task, built.predict, alone, enc)
