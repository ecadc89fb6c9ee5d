"""Parameter- and training-efficient methods on the tiny model: ChildTuning-F/D, Ladder Side-Tuning,
their combinations with FGM / R-Drop, and exact reloads (LoRA, LST, ChildTuning)."""

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import HeadConfig, build_config
from clue_runner.data.splits import load_split
from clue_runner.engine.build import model_for
from clue_runner.errors import ConfigError
from clue_runner.features import collate
from clue_runner.methods import build_methods
from clue_runner.methods.child_tuning import encoder_layer_parameters
from clue_runner.models import load_tokenizer
from clue_runner.tasks import get_task


def quiet(_):
    pass


def methods(*specs):
    return build_methods(build_config({"task": "fewclue_eprstmt", "methods": list(specs)}).methods)


def batches_of(task_name, model_dir, data_dir, n=32, size=8, head=None):
    task = get_task(task_name)
    tok = load_tokenizer(str(model_dir))
    model = model_for(task, str(model_dir), head, dropout=0.0, seed=0)
    enc = model.featurize(load_split(task, "dev", str(data_dir), limit=n).examples, tok, 64)
    batches = [collate(enc, np.arange(i, min(i + size, len(enc))), tok.pad_token_id) for i in range(0, len(enc), size)]
    return task, tok, batches


def no_dropout(model):
    """Deterministic forwards in training mode too (model_for's dropout is the classifier's only)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def compute_for(model):
    def compute(batch):
        logits = model(**batch)
        return model.loss(logits, batch), logits
    return compute


def test_child_tuning_f_drops_about_one_minus_reserve_and_rescales_the_rest(tiny_model, data_dir):
    task, _, batches = batches_of("fewclue_eprstmt", tiny_model, data_dir)
    model = model_for(task, str(tiny_model), dropout=0.0, seed=0)
    (ct,) = methods({"name": "child_tuning", "mode": "F", "reserve": 0.3})
    ct.prepare(model, batches, compute_for(model))
    compute_for(model)(batches[0])[0].backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(1)
    ct.before_step(model)
    kept = total = 0
    for name, p in model.named_parameters():
        if name not in before:
            continue
        g0, g1 = before[name], p.grad
        live = g0 != 0
        survived = g1 != 0
        assert torch.equal(survived, survived & live)
        assert torch.allclose(g1[survived], g0[survived] / 0.3)  # kept entries scaled by 1/reserve
        kept += int(survived.sum())
        total += int(live.sum())
    assert total > 20_000  # embeddings and head included, not only the layers
    assert kept / total == pytest.approx(0.3, abs=0.01)


def test_child_tuning_d_mask_is_the_global_top_reserve_of_clipped_squared_gradients(tiny_model, data_dir):
    task, _, batches = batches_of("fewclue_eprstmt", tiny_model, data_dir)
    model = no_dropout(model_for(task, str(tiny_model), dropout=0.0, seed=0)).train()
    compute = compute_for(model)
    # Brute force: per batch, each layer parameter's gradient clipped to norm 1, squared, averaged; numpy percentile.
    named = encoder_layer_parameters(model)
    scores = {n: np.zeros(tuple(p.shape)) for n, p in named}
    for batch in batches:
        model.zero_grad()
        compute(batch)[0].backward()
        for n, p in named:
            g = p.grad.double().numpy()
            g = g * min(1.0, 1.0 / (np.linalg.norm(g) + 1e-6))
            scores[n] += g ** 2 / len(batches)
    model.zero_grad(set_to_none=True)
    threshold = np.percentile(np.concatenate([s.ravel() for s in scores.values()]), 70)

    (ct,) = methods({"name": "child_tuning", "mode": "D"})
    ct.prepare(model, batches, compute)
    masks = {id(p): m for p, m in ct.masks}
    layer_names = {n for n, _ in named}
    assert layer_names and all(".layer." in f".{n}" for n in layer_names)
    assert len(masks) == len(named)
    disagree = sum(int((masks[id(p)].bool().numpy() != (scores[n] >= threshold)).sum()) for n, p in named)
    assert disagree <= 2  # float32 vs float64 scores at the threshold
    summary = ct.summary()
    assert summary["kept_share"] == pytest.approx(0.3, abs=0.005) and summary["fisher_batches"] == len(batches)
    assert summary["fisher_pass_seconds"] > 0

    compute(batches[0])[0].backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ct.before_step(model)
    unmasked = 0
    for name, p in model.named_parameters():
        if name not in before:
            continue
        if id(p) in masks:  # masked, never rescaled
            assert torch.equal(p.grad, before[name] * masks[id(p)])
        else:  # embeddings, pooler, head: always fully updated
            assert torch.equal(p.grad, before[name]), name
            unmasked += 1
    assert unmasked >= 4  # word/position embeddings, their LayerNorm, the classifier


def _lst_model(task_name, tiny_model, head=None, **options):
    (lst,) = methods({"name": "lst", "hidden": 16, "heads": 2, "ffn": 32, **options})
    return model_for(get_task(task_name), str(tiny_model), head, dropout=0.0, methods=[lst], seed=0)


def test_lst_trains_only_side_ladders_and_head_backbone_bit_identical(tiny_model, data_dir):
    _, _, batches = batches_of("fewclue_eprstmt", tiny_model, data_dir)
    model = _lst_model("fewclue_eprstmt", tiny_model, gate=True)
    backbone = {n: p.detach().clone() for n, p in model.backbone.model.named_parameters()}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trained and not any(n.startswith("backbone.model.") for n in trained)
    assert any("ladders" in n for n in trained) and any("side_layers" in n for n in trained)
    assert "backbone.gate_alpha" in trained and any(n.startswith("classifier") for n in trained)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for batch in batches:
        loss = model.loss(model(**batch), batch)
        loss.backward()
        assert all(p.grad is None for p in model.backbone.model.parameters())
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.backbone.model.named_parameters():
        assert torch.equal(p, backbone[n]) and p.grad is None, n
    changed = {n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])}
    assert changed == set(trained)


@pytest.mark.parametrize("task_name,head", [
    ("fewclue_eprstmt", None),
    ("afqmc", {"name": "embedding", "pooling": "first_last_avg"}),
    ("cmrc2018", {"name": "span", "stride": 16}),
    ("c3", None),
    ("cluener", None),
])
def test_lst_works_with_every_head_reading_hidden_states(tiny_model, data_dir, task_name, head):
    head_cfg = HeadConfig(**head) if head else None
    task, _, batches = batches_of(task_name, tiny_model, data_dir, n=8, head=head_cfg)
    model = _lst_model(task_name, tiny_model, head_cfg)
    loss = model.loss(model(**batches[0]), batches[0])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.backbone.model.parameters())
    assert model.backbone.side_in.weight.grad.abs().sum() > 0  # the head's loss reaches the side network


def test_lst_rejects_bad_feed_layers(tiny_model):
    with pytest.raises(ConfigError, match="feed_layers"):
        _lst_model("fewclue_eprstmt", tiny_model, feed_layers=[0, 1, 2, 5])


def run_cfg(tiny_model, data_dir, out, method_list, max_steps=3, eval_limit=64):
    return build_config({
        "task": "fewclue_eprstmt",
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 64, "max_train_examples": 64, "max_eval_examples": eval_limit},
        "train": {"batch_size": 16, "lr": 5e-4, "max_steps": max_steps, "seed": 3},
        "methods": method_list,
        "output_dir": str(out),
    })


COMBOS = [
    ({"name": "lora"}, "fgm", "lora freezes the word embeddings"),
    ({"name": "lora"}, "rdrop", None),
    ({"name": "child_tuning", "mode": "F"}, "fgm", None),
    ({"name": "child_tuning", "mode": "F"}, "rdrop", None),
    ({"name": "child_tuning", "mode": "D"}, "fgm", None),
    ({"name": "child_tuning", "mode": "D"}, "rdrop", None),
    ({"name": "lst", "hidden": 16, "heads": 2, "ffn": 32}, "fgm", "lst runs the frozen backbone without autograd"),
    ({"name": "lst", "hidden": 16, "heads": 2, "ffn": 32}, "rdrop", None),
]


@pytest.mark.parametrize("method,other,refusal", COMBOS, ids=[f"{m['name']}{m.get('mode', '')}+{o}" for m, o, _ in COMBOS])
def test_each_efficient_method_with_fgm_and_rdrop_trains_or_is_refused_at_load(tiny_model, data_dir, tmp_path,
                                                                               method, other, refusal):
    if refusal:
        with pytest.raises(ConfigError, match=f"fgm perturbs the word embeddings.*{refusal}"):
            run_cfg(tiny_model, data_dir, tmp_path, [method, {"name": other}])
        return
    result = api.read_run(api.train(run_cfg(tiny_model, data_dir, tmp_path, [method, {"name": other}], max_steps=2),
                                    log=quiet))
    assert result.steps == 2 and result.method.endswith(f"+{other}")
    assert np.isfinite(result.final.train_loss)


def test_fgm_refuses_frozen_embeddings_at_run_time_too(tiny_model):
    (fgm,) = methods({"name": "fgm"})
    model = _lst_model("fewclue_eprstmt", tiny_model)
    with pytest.raises(ConfigError, match="frozen"):
        fgm.prepare(model, [], None)


@pytest.mark.parametrize("method", [
    {"name": "lst", "hidden": 16, "heads": 2, "ffn": 32, "gate": True},
    {"name": "child_tuning", "mode": "D"},
    {"name": "child_tuning", "mode": "F"},
    {"name": "lora", "r": 4},
], ids=["lst", "child_tuning_D", "child_tuning_F", "lora"])
def test_runs_reload_with_exactly_their_score(tiny_model, data_dir, tmp_path, method):
    run_dir = api.train(run_cfg(tiny_model, data_dir, tmp_path, [method], max_steps=4, eval_limit=None), log=quiet)
    result = api.read_run(run_dir)
    again = api.evaluate(run_dir, split=result.task.eval_split)
    assert again["metrics"] == result.best.metrics
    trainable = result.model.trainable_parameters
    if method["name"] in ("lst", "lora"):
        assert trainable < 0.5 * result.model.parameters
    if method["name"] == "child_tuning" and method["mode"] == "D":
        assert result.methods["child_tuning"]["fisher_batches"] == 4  # 64 examples / 16
    if method["name"] == "lst":  # best/ keeps the backbone unchanged, as a plain transformers checkpoint
        from transformers import AutoModel

        saved = AutoModel.from_pretrained(run_dir / "best")
        original = AutoModel.from_pretrained(tiny_model)
        assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), original.state_dict().values()))
