"""The method protocol: loss terms add up (R-Drop as before, the gradient penalty against a brute-force
double backward), every hook is used, and the names of the protocol mean one thing."""

import numpy as np
import pytest
import torch

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.data.splits import load_split
from clue_runner.engine.build import model_for
from clue_runner.errors import ConfigError
from clue_runner.features import collate
from clue_runner.methods import Method, StepContext, build_methods
from clue_runner.methods.adversarial import GradientPenalty
from clue_runner.methods.regularization import RDrop
from clue_runner.models import load_tokenizer
from clue_runner.plugins import METHODS
from clue_runner.tasks import get_task


def quiet(_):
    pass


def methods(*specs):
    return build_methods(build_config({"task": "fewclue_eprstmt", "methods": list(specs)}).methods)


def run_cfg(tiny_model, data_dir, out, method_list, eval_limit=64, **train):
    return build_config({
        "task": "fewclue_eprstmt",
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 64, "max_train_examples": 96, "max_eval_examples": eval_limit},
        "train": {"batch_size": 16, "epochs": 2, "lr": 5e-4, "seed": 7, **train},
        "methods": method_list,
        "output_dir": str(out),
    })


@pytest.fixture
def setup(tiny_model, data_dir):
    """A model with the gradient penalty's surgery and without dropout (forwards are deterministic), one batch of 8."""
    task = get_task("fewclue_eprstmt")
    tok = load_tokenizer(str(tiny_model))
    model = model_for(task, str(tiny_model), dropout=0.0, methods=methods({"name": "gradient_penalty"}), seed=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    enc = model.featurize(load_split(task, "dev", str(data_dir), limit=8).examples, tok, 64)
    return model, collate(enc, np.arange(8), tok.pad_token_id)


def compute_for(model):
    def compute(batch):
        logits = model(**batch)
        return model.loss(logits, batch), logits
    return compute


def step_loss(model, ms, batch, **step):
    """The trainer's loss: the default loss plus every method's term."""
    compute = compute_for(model)
    ctx = StepContext(compute, **step)
    loss, outputs = compute(batch)
    return loss + sum(m.loss_term(model, batch, outputs, loss, ctx) for m in ms)


def gradients(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- R-Drop as a loss term --------------------------------------------------------------------


def test_rdrop_term_gives_the_loss_rdrop_gave_when_it_owned_the_loss(tiny_model, data_dir):
    task = get_task("fewclue_eprstmt")
    tok = load_tokenizer(str(tiny_model))
    model = model_for(task, str(tiny_model), dropout=0.1, seed=0).train()
    enc = model.featurize(load_split(task, "dev", str(data_dir), limit=8).examples, tok, 64)
    batch = collate(enc, np.arange(8), tok.pad_token_id)
    (rdrop,) = methods({"name": "rdrop", "alpha": 2.0})
    compute = compute_for(model)
    torch.manual_seed(5)
    new = step_loss(model, [rdrop], batch)
    torch.manual_seed(5)  # the former R-Drop loss: ½(loss₁ + loss₂) + α·KL, the same two dropout passes
    (l1, z1), (l2, z2) = compute(batch), compute(batch)
    p1, p2 = z1.float().log_softmax(-1), z2.float().log_softmax(-1)
    kl = 0.5 * (torch.nn.functional.kl_div(p1, p2, log_target=True, reduction="batchmean")
                + torch.nn.functional.kl_div(p2, p1, log_target=True, reduction="batchmean"))
    old = 0.5 * (l1 + l2) + 2.0 * kl
    assert kl > 0  # dropout made the passes differ
    assert float(new) == pytest.approx(float(old), rel=1e-6, abs=1e-7)


def test_rdrop_alone_trains_to_the_losses_it_gave_before(tiny_model, data_dir, tmp_path):
    cfg = run_cfg(tiny_model, data_dir, tmp_path, [{"name": "rdrop", "alpha": 1.0}], max_steps=2, eval_every=1)
    result = api.read_run(api.train(cfg, log=quiet))
    # Logged by the loss-owning R-Drop (before loss terms), same config and seed, on the CPU.
    assert [h["train_loss"] for h in result["history"]] == pytest.approx([0.6925526857376099, 0.691959798336029],
                                                                         rel=1e-6)


# -- the gradient penalty ---------------------------------------------------------------------


def brute_force_penalty(model, batch, epsilon):
    """loss + ½ε·Σ‖∂L/∂e‖², e the looked-up word embeddings fed in explicitly, by double backward."""
    e = model.backbone.input_embeddings()(batch["input_ids"])
    logits = model(**{**batch, "inputs_embeds": e})
    loss = model.loss(logits, batch)
    (g,) = torch.autograd.grad(loss, e, create_graph=True)
    return loss + 0.5 * epsilon * g.pow(2).sum()


def test_gradient_penalty_loss_and_gradients_equal_a_brute_force_double_backward(setup):
    model, batch = setup
    expected = brute_force_penalty(model, batch, 0.7)
    expected.backward()
    want = gradients(model)
    model.zero_grad(set_to_none=True)
    (gp,) = methods({"name": "gradient_penalty", "epsilon": 0.7})
    gp.prepare(model, [], compute_for(model))
    gp.prepare(model, [], compute_for(model))  # prepared twice, hooked once
    got = step_loss(model, [gp], batch)
    got.backward()
    have = gradients(model)
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    assert float(got - model.loss(model(**batch), batch)) > 1e-6  # the penalty is not zero here
    assert want.keys() == have.keys()
    for name in want:
        torch.testing.assert_close(have[name], want[name], rtol=1e-6, atol=1e-6, msg=name)
    word = "backbone.model.bert.embeddings.word_embeddings.weight"
    assert word in have and have[word].abs().sum() > 0


def test_gradient_penalty_unscales_the_fp16_loss_scale(setup):
    model, batch = setup
    (gp,) = methods({"name": "gradient_penalty"})
    gp.prepare(model, [], compute_for(model))
    plain = step_loss(model, [gp], batch)
    scaled = step_loss(model, [gp], batch, loss_scale=65536.0)
    assert float(scaled) == pytest.approx(float(plain), rel=1e-6)


def test_gradient_penalty_of_two_half_batches_is_that_of_the_whole(setup):
    """With accumulation (or data parallel) each micro-batch's penalty is weighted by its share,
    so the step's gradient is that of the whole batch's penalised loss."""
    model, batch = setup
    (gp,) = methods({"name": "gradient_penalty"})
    gp.prepare(model, [], compute_for(model))
    step_loss(model, [gp], batch).backward()
    whole = gradients(model)
    model.zero_grad(set_to_none=True)
    for half in (slice(0, 4), slice(4, 8)):
        part = {k: v[half] for k, v in batch.items()}
        (0.5 * step_loss(model, [gp], part, loss_weight=0.5, batch_share=0.5)).backward()
    for name, g in gradients(model).items():
        torch.testing.assert_close(g, whole[name], rtol=1e-5, atol=1e-6, msg=name)


def test_rdrop_and_gradient_penalty_train_and_their_terms_add_up(tiny_model, data_dir, tmp_path, monkeypatch):
    parts = []

    def recording(cls):
        original = cls.loss_term

        def loss_term(self, model, batch, outputs, loss, step):
            term = original(self, model, batch, outputs, loss, step)
            parts.append((cls.__name__, float(loss), float(term)))
            return term
        monkeypatch.setattr(cls, "loss_term", loss_term)

    recording(RDrop)
    recording(GradientPenalty)
    cfg = run_cfg(tiny_model, data_dir, tmp_path, [{"name": "rdrop"}, {"name": "gradient_penalty"}],
                  max_steps=3, eval_every=1)
    result = api.read_run(api.train(cfg, log=quiet))
    assert result["steps"] == 3 and result["method"] == "finetune+rdrop+gradient_penalty"
    assert [name for name, _, _ in parts] == ["RDrop", "GradientPenalty"] * 3
    for step, record in enumerate(result["history"]):
        (_, loss, rdrop), (_, same_loss, penalty) = parts[2 * step:2 * step + 2]
        assert loss == same_loss and penalty > 0  # both terms are given the default loss
        assert record["train_loss"] == pytest.approx(loss + rdrop + penalty, rel=1e-6)


def test_fgm_and_gradient_penalty_train_together_and_reload_with_their_score(tiny_model, data_dir, tmp_path):
    cfg = run_cfg(tiny_model, data_dir, tmp_path, [{"name": "fgm"}, {"name": "gradient_penalty"}],
                  eval_limit=None, max_steps=2)
    run_dir = api.train(cfg, log=quiet)
    result = api.read_run(run_dir)
    assert result["steps"] == 2 and np.isfinite(result["final"]["train_loss"])
    # Reloading re-applies the penalty's attention choice: the score is the one training saw.
    assert api.evaluate(run_dir, split=result["task"]["eval_split"])["metrics"] == result["best"]["metrics"]


@pytest.mark.parametrize("other,why", [({"name": "lora"}, "lora freezes the word embeddings"),
                                       ({"name": "lst"}, "lst runs the frozen backbone without autograd")])
def test_gradient_penalty_refused_beside_methods_that_stop_the_embedding_gradient(other, why):
    for order in ([other, {"name": "gradient_penalty"}], [{"name": "gradient_penalty"}, other]):
        with pytest.raises(ConfigError, match=f"gradient_penalty penalises the gradient at the word embeddings, but {why}"):
            build_config({"task": "afqmc", "methods": order})
    build_config({"task": "afqmc", "methods": [{"name": "fgm"}, {"name": "gradient_penalty"}]})


def test_gradient_penalty_keeps_the_cuda_graph_step_off():
    from clue_runner.engine.trainer import fast_path_blocker

    cfg = build_config({"task": "afqmc"})
    gp = build_methods(build_config({"task": "afqmc", "methods": [{"name": "gradient_penalty"}]}).methods)
    assert fast_path_blocker(cfg.train, gp, torch.device("cuda")) == "gradient_penalty hooks into the step"


# -- the protocol itself ----------------------------------------------------------------------


HOOKS = ["check", "conflict", "max_positions", "wrap_model", "prompt_template", "param_groups",  # build
         "prepare", "loss_term", "after_backward", "before_step",  # step
         "export", "save_extra", "summary"]  # save
ATTRIBUTES = ["requires_kind", "accepts", "no_embedding_grad", "changes_export"]


def test_every_hook_is_used_by_a_builtin_method_and_listed_here():
    classes = [METHODS.get(name) for name in METHODS]
    public = {name for name in vars(Method) if not name.startswith("_")} - {"Params", "name", "label", "has_step_hooks"}
    assert public == set(HOOKS) | set(ATTRIBUTES)
    for hook in HOOKS + ATTRIBUTES:
        assert any(vars(cls).get(hook, getattr(Method, hook)) is not getattr(Method, hook) for cls in classes), hook


def test_step_hooks_are_known_from_the_overrides():
    steps = {name: METHODS.get(name)(METHODS.get(name).Params()).has_step_hooks for name in METHODS}
    assert steps == {"fgm": True, "gradient_penalty": True, "rdrop": True, "child_tuning": True,
                     "lora": False, "lst": False, "long_positions": False, "ptuning": False}


def test_only_a_prompt_head_takes_a_methods_template(setup):
    model, _ = setup
    with pytest.raises(ConfigError, match="renders no prompt template; use the pet head"):
        model.use_template("[P]{text_a}")
