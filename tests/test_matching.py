"""Sentence matching: bi-encoder losses, whitening at evaluation, no-training runs, SimCSE, on real STS data."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clue_runner import api
from clue_runner.cli import app
from clue_runner.config import build_config
from clue_runner.engine.cuda_graphs import StaticBatcher
from clue_runner.data.splits import load_split
from clue_runner.features import collate, eval_batches, tokenize_examples
from clue_runner.engine.build import model_for
from clue_runner.metrics import compute_metrics
from clue_runner.models import load_tokenizer
from clue_runner.heads.layers.whitening import apply_whitening, cosine_scores, fit_whitening
from clue_runner.tasks import get_task


def quiet(_):
    pass


def sts_cfg(tiny_model, data_dir, out, head, **train):
    return build_config({
        "task": "stsb", "model": {"name": str(tiny_model), "dropout": 0.0},
        "data": {"dir": str(data_dir), "max_length": 48, "max_train_examples": 64, "max_eval_examples": 96},
        "head": head, "train": {"batch_size": 16, "lr": 5e-4, **train}, "output_dir": str(out),
    })


@pytest.mark.parametrize("loss", ["cosent", "sbert", "contrastive", "simcse"])
def test_filler_rows_do_not_change_any_embedding_loss(loss, tiny_model, data_dir):
    task = get_task("stsb")
    tok = load_tokenizer(str(tiny_model))
    split = "unsup" if loss == "simcse" else "dev"
    data = load_split(task, split, str(data_dir), limit=37)
    torch.manual_seed(0)
    cfg = build_config({"task": "stsb", "head": {"name": "embedding", "loss": loss}})
    head = model_for(task, str(tiny_model), cfg.head, dropout=0.0).train()
    for module in head.modules():  # training mode (SimCSE's second view) but deterministic
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    enc = tokenize_examples(data.examples, tok, 48, head.separate_pairs)
    batcher = StaticBatcher(enc, tok.pad_token_id, rows=16)
    for idx in eval_batches(enc.lengths, 16):
        static, _ = batcher(idx)
        dynamic = collate(enc, idx, tok.pad_token_id)
        with torch.no_grad():
            a = head.loss(head(**static), static)
            b = head.loss(head(**dynamic), dynamic)
        assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-4, abs=1e-5)


def test_whitening_is_applied_at_prediction(tiny_model):
    task = get_task("stsb")
    cfg = build_config({"task": "stsb", "head": {"name": "embedding", "whitening": True, "whitening_dim": 8}})
    head = model_for(task, str(tiny_model), cfg.head)
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(50, 32)).astype(np.float32), rng.normal(size=(50, 32)).astype(np.float32)
    kernel, bias = fit_whitening(np.concatenate([u, v]), 8)
    want = cosine_scores(apply_whitening(u, kernel, bias), apply_whitening(v, kernel, bias))
    got = head.predict(torch.from_numpy(np.concatenate([u, v], axis=1)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_threshold_metrics_search_the_best_cut():
    gold = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    m = compute_metrics(["threshold_accuracy", "threshold_f1", "spearman"], gold, scores, 2)
    assert m["threshold_accuracy"] == pytest.approx(5 / 6)  # cut between 0.35 and 0.8 (or 0.2/0.3)
    assert -1 <= m["spearman"] <= 1


def test_no_training_run_scores_the_pretrained_vectors(tiny_model, data_dir, tmp_path):
    cfg = sts_cfg(tiny_model, data_dir, tmp_path, {"name": "embedding", "pooling": "first_last_avg"}, max_steps=0)
    cfg = build_config({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "max_eval_examples": None}})
    run_dir = api.train(cfg, log=quiet)  # the whole dev split, as `clue-run eval` scores it
    result = api.read_run(run_dir)
    assert result.steps == 0 and result.method == "no-training+embedding/pooling=first_last_avg"
    assert result.history[0].train_loss is None and result.data.train is None
    assert set(result.best.metrics) == {"spearman", "pearson"}
    res = CliRunner().invoke(app, ["eval", "--run", str(run_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["metrics"] == pytest.approx(result.best.metrics, abs=1e-6)


@pytest.mark.parametrize("head, split", [({"name": "embedding", "loss": "cosent"}, "train"),
                                         ({"name": "embedding", "loss": "simcse", "pooling": "cls"}, "unsup"),
                                         ({"name": "cls"}, "train")])
def test_training_moves_the_correlation(head, split, tiny_model, data_dir, tmp_path):
    cfg = sts_cfg(tiny_model, data_dir, tmp_path, head, max_steps=8, eval_every=4)
    cfg = build_config({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "train_split": split}})
    result = api.read_run(api.train(cfg, log=quiet))
    history = result.history
    assert [h.step for h in history] == [4, 8]
    assert all(np.isfinite(h.train_loss) for h in history)
    assert all(-1 <= h.metrics["spearman"] <= 1 for h in history)
    # Identical inputs (a tokenizer that maps every character to [UNK]) would leave it undefined (0.0).
    assert all(h.metrics["spearman"] != 0.0 for h in history)


def test_labelled_split_required_unless_self_supervised(tiny_model, data_dir, tmp_path):
    cfg = sts_cfg(tiny_model, data_dir, tmp_path, {"name": "embedding", "loss": "cosent"}, max_steps=2)
    cfg = build_config({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "train_split": "unsup"}})
    # named at its first line, before anything is tokenized or a run directory exists
    with pytest.raises(Exception, match=r"stsb_unsup_train_data.txt.gz:1: field 'label': the label is missing"):
        api.train(cfg, log=quiet)


def test_encode_writes_vectors_in_input_order(tiny_model, data_dir, tmp_path):
    cfg = sts_cfg(tiny_model, data_dir, tmp_path / "runs", {"name": "embedding"}, max_steps=0)
    run_dir = api.train(cfg, log=quiet)
    texts = ["一个女人在弹吉他。", "一个男人在吹长笛，旁边有一只狗在叫。", "孩子在骑马。", "一个女人在弹吉他。"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["encode", "--run", str(run_dir), "-i", str(tmp_path / "in.txt"),
                                   "-o", str(tmp_path / "v.npy")])
    assert res.exit_code == 0, res.output
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)  # same text, same vector, wherever it stands
    assert not np.allclose(vectors[0], vectors[1])
    bad = CliRunner().invoke(app, ["encode", "-i", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.npy")])
    assert bad.exit_code == 2 and "input file not found" in bad.output


def test_threshold_is_searched_on_the_threshold_split_and_applied_unchanged(tiny_model, data_dir, tmp_path):
    from clue_runner.metrics.similarity import best_threshold, threshold_scores

    rows = [json.loads(line) for line in
            __import__("gzip").open(data_dir / "clue/afqmc_public/dev.json.gz", "rt", encoding="utf-8").readlines()[:120]]
    folder = tmp_path / "data" / "pairs"
    folder.mkdir(parents=True)
    (folder / "val.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:60]), encoding="utf-8")
    (folder / "dev.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[60:]), encoding="utf-8")
    task_file = tmp_path / "pairs.yaml"
    task_file.write_text(
        "name: pairs\nversion: 1\ndata: {dir: pairs, splits: {val: val.json, dev: dev.json}}\n"
        "inputs: {text_a: sentence1, text_b: sentence2}\nlabel: {values: ['0', '1']}\nhead: embedding\n"
        "prediction: score\nmetrics: [spearman, threshold_accuracy, threshold_f1]\nmain_metric: spearman\n")
    cfg = build_config({"task": str(task_file), "model": {"name": str(tiny_model)},
                        "data": {"dir": str(tmp_path / "data"), "threshold_split": "val"},
                        "train": {"max_steps": 0}, "output_dir": str(tmp_path / "out")})
    result = api.read_run(api.train(cfg, log=quiet))
    run = api.load_run(sorted((tmp_path / "out").glob("*/*/*"))[0])

    def scores(split):
        enc = run.featurize_split(load_split(run.task, split, str(tmp_path / "data")))
        return enc.labels, run.head.predict(torch.from_numpy(run.logits(enc)[0]))

    (val_gold, val_scores), (dev_gold, dev_scores) = scores("val"), scores("dev")
    want = threshold_scores(dev_scores, dev_gold, best_threshold(val_scores, val_gold))
    assert result.best.metrics["threshold_accuracy"] == pytest.approx(want["accuracy"])
    assert result.best.metrics["threshold_f1"] == pytest.approx(want["f1"])
    oracle = threshold_scores(dev_scores, dev_gold, best_threshold(dev_scores, dev_gold))["accuracy"]
    assert oracle >= want["accuracy"]  # the dev split's own best threshold can only do better on dev
