"""One build for training and loading: LoRA reloads exactly, best/ loads into plain transformers,
honest loading refuses random encoders, methods are checked against heads, models keep distinct names."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clue_runner import api
from clue_runner.config import build_config
from clue_runner.errors import ConfigError, ModelError

PACKAGE = Path(__file__).resolve().parents[1] / "clue_runner"


def quiet(_):
    pass


def make_cfg(model, data_dir, out, task="fewclue_eprstmt", methods=(), head=None, **train):
    raw = {
        "task": task,
        "model": {"name": str(model)},
        "data": {"dir": str(data_dir), "max_length": 64, "max_train_examples": 64},
        "train": {"batch_size": 16, "max_steps": 6, "lr": 5e-4, "eval_every": 3, "seed": 3, **train},
        "methods": list(methods),
        "output_dir": str(out),
    }
    if head:
        raw["head"] = head
    return build_config(raw)


# -- the fixture feeds real text -------------------------------------------------------------


def test_fixture_tokenizer_knows_the_task_text(tiny_model, data_dir):
    from clue_runner.data.splits import load_split
    from clue_runner.models import load_tokenizer
    from clue_runner.tasks import get_task

    tok = load_tokenizer(str(tiny_model))
    assert len(tok) > 1000  # a character vocabulary, not the 5 specials
    ids = []
    for task in ("fewclue_eprstmt", "fewclue_tnews", "afqmc", "cluener"):
        for ex in load_split(get_task(task), "dev", str(data_dir), limit=50).examples:
            ids += tok(ex.text_a, ex.text_b, add_special_tokens=False)["input_ids"]
    unk = sum(i == tok.unk_token_id for i in ids) / len(ids)
    assert len(ids) > 2000 and unk < 0.01, f"[UNK] share {unk:.3%}"


# -- LoRA: trains the adapters only, reloads exactly, exports merged --------------------------


def test_lora_run_reloads_with_its_exact_score_and_exports_merged(tiny_model, data_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = make_cfg(tiny_model, data_dir, tmp_path, methods=[{"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}],
                   lr=5e-3)
    run_dir = api.train(cfg, log=quiet)
    result = api.read_run(run_dir)
    assert result.method == "finetune+lora(r=4,alpha=8,dropout=0)"
    params = result.model
    assert 0 < params.trainable_parameters < 0.2 * params.parameters
    evaluated = api.evaluate(run_dir, "dev", str(data_dir))
    assert evaluated["examples"] == 160
    assert evaluated["metrics"] == result.best.metrics

    best = run_dir / "best"
    assert (best / "adapter" / "adapter_config.json").is_file()
    saved = load_file(str(best / "model.safetensors"))
    assert not any("lora" in k for k in saved)  # the export is plain transformers weights
    # The merged export predicts what the unmerged model predicts.
    run = api.load_run(run_dir)
    enc = run.featurize_split(api.load_task_split(run.cfg, run.task, "dev", data_dir=str(data_dir)))
    ours = run.logits(enc)[0]
    merged = AutoModelForSequenceClassification.from_pretrained(best).eval()
    theirs = _hf_logits(merged, enc, run.tokenizer.pad_token_id)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_lora_changes_only_adapters_and_head(tiny_model, data_dir, tmp_path):
    from clue_runner.engine.build import build

    cfg = make_cfg(tiny_model, data_dir, tmp_path, methods=[{"name": "lora"}])
    built = build(cfg)
    trainable = {n for n, p in built.head.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("backbone.model.classifier.") for n in trainable), trainable
    assert any("lora_A" in n for n in trainable) and "backbone.model.classifier.weight" in trainable


def test_lora_without_a_peft_default_needs_target_modules(tmp_path, data_dir):
    from transformers import RoFormerConfig, RoFormerModel

    from clue_runner.engine.build import build

    d = tmp_path / "roformer"
    RoFormerModel(RoFormerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, embedding_size=32)).save_pretrained(d)
    _copy_tokenizer(d)
    with pytest.raises(ConfigError, match="peft has no default for model type 'roformer'"):
        build(make_cfg(d, data_dir, tmp_path, methods=[{"name": "lora"}]))
    built = build(make_cfg(d, data_dir, tmp_path, methods=[{"name": "lora", "target_modules": ["query", "value"]}]))
    assert any("lora_A" in n for n, _ in built.head.named_parameters())


def _copy_tokenizer(directory: Path) -> None:
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"好差很不"])}
                      ).save_pretrained(directory)


def _hf_logits(model, enc, pad_id) -> np.ndarray:
    from clue_runner.features import collate

    batch = collate(enc, np.arange(len(enc)), pad_id, targets=False)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch.get("token_type_ids")).logits.numpy()


# -- best/ is a plain transformers checkpoint -------------------------------------------------


def test_best_loads_into_automodel_and_sequence_classification(tiny_model, data_dir, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    run_dir = api.train(make_cfg(tiny_model, data_dir, tmp_path), log=quiet)
    best = run_dir / "best"
    run = api.load_run(run_dir)
    enc = run.featurize_split(api.load_task_split(run.cfg, run.task, "dev", data_dir=str(data_dir)))
    ours = run.logits(enc)[0]

    classifier, info = AutoModelForSequenceClassification.from_pretrained(best, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert classifier.config.id2label == {0: "Negative", 1: "Positive"}
    np.testing.assert_allclose(_hf_logits(classifier.eval(), enc, run.tokenizer.pad_token_id), ours, atol=1e-5)

    encoder, info = AutoModel.from_pretrained(best, output_loading_info=True)
    assert not info["missing_keys"]
    trained = load_file(str(best / "model.safetensors"))
    assert torch.equal(encoder.embeddings.word_embeddings.weight, trained["bert.embeddings.word_embeddings.weight"])
    original = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert not torch.equal(encoder.embeddings.word_embeddings.weight, original["embeddings.word_embeddings.weight"])
    assert (best / "tokenizer.json").is_file() or (best / "vocab.txt").is_file()


def test_heads_outside_transformers_keep_their_weights_beside(tiny_model, data_dir, tmp_path):
    from transformers import AutoModel

    cfg = make_cfg(tiny_model, data_dir, tmp_path, task="stsb", head={"name": "embedding", "loss": "cosent"},
                   max_steps=3)
    run_dir = api.train(cfg, log=quiet)
    encoder, info = AutoModel.from_pretrained(run_dir / "best", output_loading_info=True)
    assert not info["missing_keys"]
    assert api.evaluate(run_dir, "dev", str(data_dir))["metrics"] == api.read_run(run_dir).best.metrics


# -- honest loading ---------------------------------------------------------------------------


def _renamed_checkpoint(tiny_model: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(tiny_model, out)
    tensors = load_file(str(out / "model.safetensors"))
    save_file({f"encoder_v2.{k}": v for k, v in tensors.items()}, str(out / "model.safetensors"))
    return out


def test_checkpoint_with_renamed_encoder_keys_is_refused(tiny_model, data_dir, tmp_path):
    renamed = _renamed_checkpoint(Path(tiny_model), tmp_path / "renamed")
    with pytest.raises(ModelError, match=r"encoder weights are not in the checkpoint .* model.allow_random_init: true"):
        api.train(make_cfg(renamed, data_dir, tmp_path / "out"), log=quiet)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    cfg = make_cfg(renamed, data_dir, tmp_path / "out", max_steps=1)
    cfg.model.allow_random_init = True
    lines = []
    api.train(cfg, log=lines.append)
    assert any("encoder weights missing from the checkpoint (random)" in line for line in lines)


def test_cli_refusal_is_one_line(tiny_model, data_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from clue_runner.cli import app

    renamed = _renamed_checkpoint(Path(tiny_model), tmp_path / "renamed")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(make_cfg(renamed, data_dir, tmp_path / "out").model_dump(mode="json")))
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]  # log lines (e.g. notes on the model) may come first
    assert last.startswith("error: ") and "allow_random_init" in last
    assert sum(line.startswith("error") for line in result.output.splitlines()) == 1


def test_unused_classifier_of_a_classification_checkpoint_is_reported(tiny_model, tmp_path, data_dir):
    from transformers import BertForSequenceClassification

    from clue_runner.models.backbone import load_backbone

    d = tmp_path / "seqcls"
    BertForSequenceClassification.from_pretrained(tiny_model, num_labels=3).save_pretrained(d)
    backbone = load_backbone(str(d), "base")
    assert {"classifier.weight", "classifier.bias"} <= set(backbone.load_report.unexpected)
    assert any("not used by this head: classifier (2)" in line for line in backbone.load_report.lines())
    # The same checkpoint as a classifier with the task's 2 labels: re-initialised, and said so.
    backbone = load_backbone(str(d), "sequence_classification", num_labels=2, id2label={0: "a", 1: "b"})
    assert set(backbone.load_report.mismatched) == {"classifier.weight", "classifier.bias"}


def test_kinds_that_need_a_pretrained_head_refuse_plain_encoders(tiny_model, tmp_path):
    from transformers import BertConfig, BertForPreTraining

    from clue_runner.models.backbone import load_backbone

    with pytest.raises(ModelError, match="has no pretrained masked-LM head"):
        load_backbone(str(tiny_model), "mlm")
    with pytest.raises(ModelError, match="next-sentence heads"):
        load_backbone(str(tiny_model), "pretraining")
    d = tmp_path / "pretrained"
    BertForPreTraining(BertConfig.from_pretrained(tiny_model)).save_pretrained(d)
    backbone = load_backbone(str(d), "pretraining")
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    assert backbone.nsp_logits(batch).shape == (1, 2)
    assert backbone.mlm_logits(batch).shape[:2] == (1, 4)


def test_unsupported_architecture_is_one_line(tmp_path):
    from clue_runner.models.backbone import load_backbone

    d = tmp_path / "nezha"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "nezha", "hidden_size": 32}))
    with pytest.raises(ModelError, match="architecture 'nezha' is not supported") as err:
        load_backbone(str(d), "base")
    assert "\n" not in str(err.value)


# -- methods checked against heads at config load --------------------------------------------


def test_rdrop_on_an_embedding_head_is_refused_at_config_load():
    with pytest.raises(ConfigError, match="methods.0: rdrop works on class_logits outputs; head EmbeddingHead gives embeddings"):
        build_config({"task": "stsb", "head": {"name": "embedding"}, "methods": [{"name": "rdrop"}]})
    with pytest.raises(ConfigError, match="gives regression"):
        build_config({"task": "stsb", "head": {"name": "cls"}, "methods": [{"name": "rdrop"}]})
    build_config({"task": "c3", "methods": [{"name": "rdrop"}]})  # choice logits are a class distribution


def test_fgm_perturbs_the_second_segment_of_a_bi_encoder(tiny_model, data_dir):
    from clue_runner.data.splits import load_split
    from clue_runner.engine.build import model_for
    from clue_runner.features import collate, tokenize_examples
    from clue_runner.methods import StepContext, build_methods
    from clue_runner.models import load_tokenizer
    from clue_runner.tasks import get_task

    task = get_task("stsb")
    tok = load_tokenizer(str(tiny_model))
    examples = load_split(task, "train", str(data_dir), limit=8).examples
    enc = tokenize_examples(examples, tok, 32, separate_pairs=True)
    batch = collate(enc, list(range(8)), tok.pad_token_id)
    only_b = set(batch["b_input_ids"].unique().tolist()) - set(batch["input_ids"].unique().tolist())
    assert only_b, "the fixture needs tokens that occur only in the second sentences"
    cfg = build_config({"task": "stsb", "head": {"name": "embedding"}, "methods": [{"name": "fgm"}]})
    model = model_for(task, str(tiny_model), cfg.head, dropout=0.0)
    (fgm,) = build_methods(cfg.methods)
    fgm.prepare(model, [], None)
    seen = []
    emb = model.backbone.input_embeddings().weight

    def compute(b):
        seen.append(emb.detach().clone())
        out = model(**b)
        return model.loss(out, b), out

    before = emb.detach().clone()
    compute(batch)[0].backward()
    fgm.after_backward(model, batch, StepContext(compute))
    moved = (seen[-1] != before).any(-1)
    assert moved[sorted(only_b)].all()  # rows only the second segment uses were perturbed too
    assert torch.equal(emb, before)  # and restored exactly


# -- names that do not collide ----------------------------------------------------------------


def test_same_named_model_folders_are_two_report_rows(tiny_model, data_dir, tmp_path):
    import shutil

    from clue_runner import report as rep

    for parent in ("a", "b"):
        shutil.copytree(tiny_model, tmp_path / parent / "model")
        api.train(make_cfg(tmp_path / parent / "model", data_dir, tmp_path / "results", max_steps=1), log=quiet)
    runs = rep.load_runs([tmp_path / "results"])
    assert len({r.model for r in runs}) == 2
    report = rep.build_report(rep.aggregate(runs))
    assert len(report.rows) == 2 and all(len(row.cells) == 1 for row in report.rows)


def test_method_label_keeps_non_default_parameters():
    def label(methods):
        return build_config({"task": "afqmc", "methods": methods}).method_label()

    assert label([{"name": "lora"}]) == "finetune+lora"
    assert label([{"name": "lora", "r": 16}]) == "finetune+lora(r=16)"
    assert label([{"name": "lora", "r": 8}, {"name": "rdrop", "alpha": 1.0}]) == "finetune+lora+rdrop(alpha=1)"


# -- layout: no import cycles -----------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Package modules `module` imports anywhere in its file (top level and inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import x`: x may be a module
    return {m for m in found if m in modules and m != module}


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, m, set(files)) for m, p in files.items()}


def _cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycles():
    graph = _import_graph()
    assert "clue_runner.engine.build" in graph and "clue_runner.config" in graph["clue_runner.engine.build"]
    cycle = _cycle(graph)
    assert cycle is None, " → ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_builtin_name_resolves():
    from clue_runner.plugins import HEADS, METHODS, METRICS, PARSERS

    for registry in (HEADS, METHODS, METRICS, PARSERS):
        for name in registry:
            assert registry.get(name) is not None


def test_the_trainer_names_no_task_and_no_method():
    from clue_runner.plugins import HEADS, METHODS
    from clue_runner.tasks import builtin_task_names

    text = (PACKAGE / "engine" / "trainer.py").read_text(encoding="utf-8")
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    for name in [*METHODS, *builtin_task_names(), *(h for h in HEADS if len(h) > 4)]:
        assert f'"{name}"' not in code and f"'{name}'" not in code, name
