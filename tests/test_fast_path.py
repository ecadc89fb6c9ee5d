"""The CUDA-graph fast path's static shapes give the same losses and predictions as dynamic padding.

The graphs themselves need a GPU (bench/ measures them); what they replay is exactly the
computation on these static batches, which is checked here on the CPU.
"""

import numpy as np
import pytest
import torch

from clue_runner.engine.evaluate import predict_logits
from clue_runner.engine.cuda_graphs import IGNORE, WIDTH_STEP, StaticBatcher
from clue_runner.data.splits import load_split
from clue_runner.features import collate, eval_batches, tokenize_examples
from clue_runner.engine.build import model_for
from clue_runner.models import load_tokenizer
from clue_runner.tasks import get_task
from clue_runner.engine.trainer import fast_path_blocker


@pytest.fixture(scope="module")
def setup(tiny_model, data_dir):
    tok = load_tokenizer(str(tiny_model))
    data = load_split(get_task("fewclue_bustm"), "dev", str(data_dir), limit=45)
    enc = tokenize_examples(data.examples, tok, 64)
    torch.manual_seed(0)
    model = model_for(get_task("fewclue_bustm"), str(tiny_model), dropout=0.0).eval()
    return tok, enc, model


def test_static_batches_keep_every_example_whole_and_in_order(setup):
    tok, enc, _ = setup
    batcher = StaticBatcher(enc, tok.pad_token_id, rows=16)
    for idx in eval_batches(enc.lengths, 16):
        static, real = batcher(idx)
        dynamic = collate(enc, idx, tok.pad_token_id)
        width = dynamic["input_ids"].shape[1]
        assert static["row_valid"][:real].all() and not static["row_valid"][real:].any()
        assert static["input_ids"].shape == (16, -(-width // WIDTH_STEP) * WIDTH_STEP)
        assert real == len(idx)
        assert torch.equal(static["input_ids"][:real, :width], dynamic["input_ids"])
        assert torch.equal(static["labels"][:real], dynamic["labels"])
        assert (static["labels"][real:] == IGNORE).all()
        assert (static["attention_mask"][real:, 0] == 1).all()


def test_static_and_dynamic_losses_agree(setup):
    tok, enc, model = setup
    batcher = StaticBatcher(enc, tok.pad_token_id, rows=16)
    with torch.no_grad():
        for idx in eval_batches(enc.lengths, 16):
            static, real = batcher(idx)
            dynamic = collate(enc, idx, tok.pad_token_id)
            loss_static = model.loss(model(**static), static)
            loss_dynamic = model.loss(model(**dynamic), dynamic)
            assert torch.isfinite(loss_static)
            assert loss_static.item() == pytest.approx(loss_dynamic.item(), abs=1e-5)


def test_static_prediction_path_matches(setup):
    tok, enc, model = setup
    eager, _ = predict_logits(model, enc, 16, tok.pad_token_id, torch.device("cpu"), None)
    # Stand-in for the captured graph: same call, same static batches.
    static, _ = predict_logits(model, enc, 16, tok.pad_token_id, torch.device("cpu"), None,
                               graphed=lambda batch: model(**batch).float())
    np.testing.assert_allclose(static, eager, atol=1e-5)
    assert (static.argmax(-1) == eager.argmax(-1)).all()


def test_fast_path_falls_back_when_it_must():
    from clue_runner.config import build_config
    from clue_runner.methods import build_methods

    cfg = build_config({"task": "afqmc"})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fast_path_blocker(cfg.train, [], cuda) is None
    assert fast_path_blocker(cfg.train, [], cpu) == "no CUDA device"
    fgm = build_methods(build_config({"task": "afqmc", "methods": [{"name": "fgm"}]}).methods)
    assert fast_path_blocker(cfg.train, fgm, cuda) == "fgm hooks into the step"
    # LoRA only changes the model: a LoRA run keeps the CUDA-graph step, LoRA + R-Drop does not.
    lora = build_methods(build_config({"task": "afqmc", "methods": [{"name": "lora"}]}).methods)
    assert fast_path_blocker(cfg.train, lora, cuda) is None
    both = build_methods(build_config({"task": "afqmc", "methods": [{"name": "lora"}, {"name": "rdrop"}]}).methods)
    assert fast_path_blocker(cfg.train, both, cuda) == "rdrop hooks into the step"
    assert fast_path_blocker(build_config({"task": "afqmc"}, ["train.grad_accum=2"]).train, [], cuda) == "gradient accumulation"
    assert fast_path_blocker(build_config({"task": "afqmc"}, ["train.cuda_graphs=false"]).train, [], cuda) == "train.cuda_graphs is off"
