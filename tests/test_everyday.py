"""The everyday path of a new user: offline hub ids, paths, unsupported architectures, CLI output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clue_runner import hub
from clue_runner.errors import ModelError
from clue_runner.models import resolve_model

REPO = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=None, timeout=120):
    full = {**os.environ, "PYTHONPATH": str(REPO), "CLUE_RUN_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "clue_runner", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """A hub endpoint that refuses connections and an empty hub cache."""
    for name in hub.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub._probe.cache_clear()
    yield
    hub._probe.cache_clear()


def test_offline_env_is_honoured_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_probe", lambda *a: pytest.fail("probed the network although offline was asked for"))
    assert hub.hub_unavailable() == "HF_HUB_OFFLINE is set"


def test_unreachable_hub_is_detected_fast(no_network):
    start = time.perf_counter()
    why = hub.hub_unavailable()
    assert why is not None and "127.0.0.1:9" in why
    assert time.perf_counter() - start < 5


def test_hub_id_without_network_fails_in_one_line(no_network):
    start = time.perf_counter()
    with pytest.raises(ModelError, match="'someone/bert-tiny-zh'.*cannot be reached.*no cached copy"):
        resolve_model("someone/bert-tiny-zh")
    assert time.perf_counter() - start < 10


def test_existing_relative_path_is_local_and_missing_path_is_not_found(tiny_model, tmp_path, monkeypatch, no_network):
    (tmp_path / "models").mkdir()
    os.symlink(tiny_model, tmp_path / "models" / "bert-tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("models/bert-tiny") == "models/bert-tiny"  # no `./` needed
    start = time.perf_counter()
    for missing in ("models/bert-tiny/nope", "./bert-tiny", "other/"):
        with pytest.raises(ModelError, match="not found"):
            resolve_model(missing)
    assert time.perf_counter() - start < 1  # no network probe for a path


def test_cli_hub_id_offline_fails_in_seconds(tmp_path, data_dir):
    config = tmp_path / "exp.yaml"
    config.write_text("task: afqmc\nmodel: {name: bert-base-chinese}\ndata: {max_train_examples: 4, max_eval_examples: 4}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "CLUE_DATA_DIR": str(data_dir)}
    start = time.perf_counter()
    proc = cli("train", "-c", str(config), env=env)
    # The whole process (imports, reading the data) on a shared machine; transformers' retries alone took ~55 s.
    # The hub check itself is timed in test_hub_id_without_network_fails_in_one_line.
    assert time.perf_counter() - start < 45
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "bert-base-chinese" in lines[0] and "cannot be reached" in lines[0]
    assert not (tmp_path / "out").exists()


def test_hub_dataset_offline_is_one_data_error(no_network):
    from clue_runner.data.splits import load_split
    from clue_runner.errors import DataError
    from clue_runner.tasks import get_task

    start = time.perf_counter()
    with pytest.raises(DataError, match="data.source hub: cannot load clue/afqmc.*cannot be reached"):
        load_split(get_task("afqmc"), "dev", source="hub")
    assert time.perf_counter() - start < 10


def test_unsupported_architecture_is_named_in_one_line(tmp_path):
    from clue_runner.models import load_tokenizer
    from clue_runner.models.backbone import load_backbone

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nezha", "hidden_size": 32, "vocab_size": 100}))
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(ModelError, match="architecture 'nezha' is not supported by transformers"):
            load(str(tmp_path))


# -- narrow terminals and pipes ------------------------------------------------------------------


def _terminal(width):
    from rich.console import Console

    return Console(force_terminal=True, no_color=True, width=width, record=True)


def test_tasks_list_piped_is_plain_text_with_every_name_whole():
    from clue_runner.tasks import builtin_task_names

    proc = cli("tasks", "list", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    first_words = {line.split()[0] for line in proc.stdout.splitlines()[3:] if line.strip()}
    assert first_words == set(builtin_task_names())
    assert "│" not in proc.stdout and "\x1b[" not in proc.stdout  # no box drawing, no colour codes
    assert len(proc.stdout.splitlines()) == len(builtin_task_names()) + 3  # one line per task


@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_tasks_list_formats(fmt):
    from clue_runner.tasks import builtin_task_names

    proc = cli("tasks", "list", "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    if fmt == "json":
        assert [r["task"] for r in json.loads(proc.stdout)] == builtin_task_names()
    else:
        assert all(name in proc.stdout for name in builtin_task_names())


def test_tasks_list_on_an_80_column_terminal_cuts_no_task_name():
    from clue_runner.cli.tables import Grid
    from clue_runner.cli.tables import print_grid
    from clue_runner.tasks import builtin_task_names

    console = _terminal(80)
    names = builtin_task_names()
    grid = Grid(["task", "benchmark", "head", "labels", "main metric", "description"], free_text_last=True)
    for n in names:
        grid.add_row(n, "clue", "multiple_choice", "structured", "accuracy", "a long description " * 8)
    print_grid(grid, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = {word for line in text.splitlines() for word in line.split()}
    assert set(names) <= cells and "multiple_choice" in cells and "structured" in cells


def test_report_on_a_narrow_terminal_cuts_no_header_or_number():
    from clue_runner import report as rep
    from clue_runner.cli.report import score_grid
    from clue_runner.cli.tables import print_grid

    runs = rep.load_runs([REPO / "results" / "examples"])
    result = rep.build_report(rep.aggregate(runs), [], [])
    grid = score_grid(result)
    for width in (80, 100):
        console = _terminal(width)
        print_grid(grid, console)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        for task in result.tasks:
            assert f" {task} " in f" {text} ".replace("\n", " ")
        numbers = {c for row in grid.rows for c in row[1:] if c}
        assert all(number in text for number in numbers)


def _checkout_copy(root: Path) -> Path:
    """The package, configs and shipped example runs in a scratch checkout: what a fresh clone holds."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("clue_runner", "configs", "results/examples"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    return root


def _report(checkout: Path, *args):
    return cli("report", *args, env={"PYTHONPATH": str(checkout)}, cwd=checkout)


def test_report_defaults_to_the_users_results_not_the_shipped_examples(tmp_path):
    import shutil

    checkout = _checkout_copy(tmp_path / "clone")
    proc = _report(checkout)  # a fresh clone's results/ holds only the shipped examples
    assert proc.returncode == 2 and "no run results" in proc.stderr
    # what `make demo` leaves behind: one run of its own under results/
    example = next((checkout / "results" / "examples").rglob("run.json")).parent
    shutil.copytree(example, checkout / "results" / "fewclue_eprstmt" / "demo-model" / "run1")
    proc = _report(checkout, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["rows"]) == 1  # the user's run, not the examples beside it
    shutil.copytree(example, tmp_path / "mine" / "run1")
    config = tmp_path / "exp.yaml"
    config.write_text(f"task: afqmc\noutput_dir: {tmp_path / 'mine'}\n")
    proc = _report(checkout, "--config", str(config), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["rows"]) == 1
    proc = _report(checkout, "results/examples", "--format", "json")  # pointed at: reported
    assert len(json.loads(proc.stdout)["rows"]) > 1


@pytest.mark.slow
def test_make_demo_then_the_report_test_in_one_checkout(tmp_path, tiny_model, data_dir):
    """`make demo && make test` on a fresh clone: the demo's config trains (on the tiny model, a few
    steps) into the checkout's results/, and the report test above still passes there."""
    checkout = _checkout_copy(tmp_path / "clone")
    proc = cli("train", "--config", "configs/demo.yaml", "--set", f"model.name={tiny_model}",
               "--set", "train.max_steps=2", "--set", "data.max_eval_examples=16",
               env={"PYTHONPATH": str(checkout), "CLUE_DATA_DIR": str(data_dir)}, cwd=checkout, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((checkout / "results" / "fewclue_eprstmt").rglob("run.json"))) == 1
    proc = _report(checkout, "--format", "json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["rows"]) == 1, proc.stderr
    report_test = (f"{REPO / 'tests' / 'test_everyday.py'}::"
                   "test_report_defaults_to_the_users_results_not_the_shipped_examples")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", report_test],
                          capture_output=True, text=True, cwd=checkout, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_encode_keeps_blank_lines_so_row_i_is_line_i(tiny_model, tmp_path):
    import numpy as np
    from typer.testing import CliRunner

    from clue_runner import api
    from clue_runner.cli import app

    (tmp_path / "in.txt").write_text("今天天气很好\n\n我们去公园\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["encode", "--model", str(tiny_model), "-i", str(tmp_path / "in.txt"),
                                   "-o", str(tmp_path / "v.npy"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape[0] == 3
    alone = api.encode_texts(["我们去公园"], model_name=str(tiny_model), device="cpu")
    np.testing.assert_allclose(vectors[2], alone[0], atol=1e-5)


# -- everyday features ---------------------------------------------------------------------------


def _train_cfg(tiny_model, data_dir, out, **train):
    from clue_runner.config import build_config

    return build_config({
        "task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 48, "max_train_examples": 48, "max_eval_examples": 32},
        "train": {"batch_size": 16, "epochs": 2, "lr": 5e-4, "seed": 3, **train}, "output_dir": str(out)})


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("clue-run ")


def test_dry_run_writes_nothing_and_predicts_the_steps(tiny_model, data_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from clue_runner import api
    from clue_runner.cli import app

    cfg = _train_cfg(tiny_model, data_dir, tmp_path / "out", grad_accum=2)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cache = Path(os.environ["CLUE_RUN_CACHE"])
    before = sorted(cache.rglob("*")) if cache.exists() else []
    res = CliRunner().invoke(app, ["train", "-c", str(tmp_path / "exp.yaml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "out").exists()
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before  # not even the token cache
    assert "splits: train 48, dev 32" in res.stdout and "steps: 4" in res.stdout  # ceil(3 batches / 2) × 2 epochs
    assert "parameters:" in res.stdout and "task: fewclue_eprstmt" in res.stdout
    result = api.read_run(api.train(cfg, log=lambda _: None))
    assert result.steps == 4


DRY_RUN_SETUPS = {  # name: (model, config changes)
    "cls": ("bert", {}),
    "lora": ("bert", {"methods": [{"name": "lora", "r": 4}]}),
    "pet": ("bert-mlm", {"head": {"name": "pet"}}),
    "icl on a decoder": ("gpt2", {"head": {"name": "icl", "k": 1}, "train": {"max_steps": 0}}),
    "cls on a decoder": ("gpt2", {}),
}


@pytest.mark.parametrize("setup", list(DRY_RUN_SETUPS))
def test_dry_run_counts_the_parameters_of_the_real_build_without_a_tokenizer(setup, tiny_model, tiny_decoder, data_dir,
                                                                             tmp_path, monkeypatch):
    """`parameter_plan` (what --dry-run prints) equals the built model's counts (LoRA's trainable share, PET's
    MLM head, a decoder's) and never loads the tokenizer (most of a dry run's time on a 250k-piece vocabulary)."""
    from clue_runner.config import build_config
    from clue_runner.engine import build as build_mod
    from clue_runner.engine import source as source_mod

    arch, changes = DRY_RUN_SETUPS[setup]
    model = tiny_model if arch == "bert" else tiny_decoder(arch) if arch == "gpt2" else tmp_path / "mlm"
    if arch == "bert-mlm":  # PET needs a pretrained MLM head
        import shutil

        from transformers import BertConfig, BertForPreTraining

        shutil.copytree(tiny_model, model)
        BertForPreTraining(BertConfig.from_pretrained(tiny_model)).save_pretrained(model)
    raw = _train_cfg(model, data_dir, tmp_path).model_dump(mode="json")
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    cfg = build_config(raw)
    expected = build_mod.build(cfg, device="cpu").parameter_counts()
    if setup == "lora":
        assert expected["trainable"] < expected["total"]

    def no_tokenizer(*_):
        raise AssertionError("a dry run loaded the tokenizer")

    monkeypatch.setattr(source_mod, "load_tokenizer", no_tokenizer)
    assert build_mod.parameter_plan(cfg) == expected


def test_fused_adamw_on_cpu(tiny_model, data_dir, tmp_path):
    import torch

    from clue_runner.engine.build import build
    from clue_runner.engine.trainer import Trainer

    cfg = _train_cfg(tiny_model, data_dir, tmp_path)
    built = build(cfg, device="cpu")
    trainer = Trainer(built.head, built.head.loss, [], None, scorer({}), cfg.train, 0, torch.device("cpu"))
    assert trainer.optimizer.defaults["fused"] is True


def test_fp16_gradient_scaler_scales_unscales_and_skips_overflow(tiny_model, data_dir, tmp_path, monkeypatch):
    """fp16 runs on CUDA; the scaler logic is the same on CPU (torch.amp.GradScaler('cpu'))."""
    import torch

    from clue_runner.engine import trainer as trainer_mod
    from clue_runner.engine.build import build

    cfg = _train_cfg(tiny_model, data_dir, tmp_path, precision="fp16", max_grad_norm=1.0)
    assert trainer_mod.autocast_dtype("fp16", torch.device("cpu")) is None  # fp32 on CPU
    assert trainer_mod.autocast_dtype("fp16", torch.device("cuda")) is torch.float16
    monkeypatch.setattr(trainer_mod, "autocast_dtype", lambda precision, device: torch.float16)
    built = build(cfg, device="cpu")
    train_enc = built.featurize_split(built_split(built, cfg, "train"))
    t = trainer_mod.Trainer(built.head, built.head.loss, [], train_enc, scorer({"accuracy": 0.0}),
                            cfg.train, built.tokenizer.pad_token_id, torch.device("cpu"))
    assert t.scaler.is_enabled() and not t.fast_path
    t._loss_sum = torch.zeros(())  # set by run()
    scale = t.scaler.get_scale()
    param = next(p for p in built.head.parameters() if p.requires_grad)
    t._train_on(np.arange(8), boundary=False, scale=1.0)
    scaled_grad = param.grad.clone()
    assert torch.isfinite(scaled_grad).all() and scaled_grad.abs().max() > 0
    before = param.detach().clone()
    t._optimizer_step()  # unscaled, clipped, stepped
    assert not torch.equal(before, param.detach()) and t.scaler.get_scale() == scale
    t._train_on(np.arange(8), boundary=False, scale=1.0)
    param.grad[0].fill_(float("inf"))  # an fp16 overflow
    before = param.detach().clone()
    t._optimizer_step()
    assert torch.equal(before, param.detach())  # the step was skipped
    assert t.scaler.get_scale() == scale / 2  # and the scale backed off


def scorer(metrics: dict):
    """An evaluator (engine.trainer.Evaluator) that always gives `metrics`."""
    from types import SimpleNamespace

    return SimpleNamespace(main_metric="accuracy", evaluate=lambda: dict(metrics))


def built_split(built, cfg, split):
    from clue_runner.engine.build import load_task_split

    return load_task_split(cfg, built.task, split, cfg.data.max_train_examples)


def test_tensorboard_event_files_are_written_and_readable(tiny_model, data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clue_runner import api

    cfg = _train_cfg(tiny_model, data_dir, tmp_path, report_to=["tensorboard"], eval_every=2)
    run_dir = api.train(cfg, log=lambda _: None)
    result = api.read_run(run_dir)
    events = EventAccumulator(str(run_dir / "logs" / "tensorboard"))
    events.Reload()
    accuracy = events.Scalars("eval/accuracy")
    assert [e.step for e in accuracy] == [h.step for h in result.history]
    assert [e.value for e in accuracy] == pytest.approx([h.metrics["accuracy"] for h in result.history])
    assert "train/loss" in events.Tags()["scalars"]


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    from clue_runner.engine.loggers import open_loggers
    from clue_runner.errors import ConfigError

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match="pip install wandb"):
        open_loggers(["wandb"], tmp_path, "run", {})


def test_eval_on_a_checkpoint_fine_tuned_elsewhere(tiny_model, data_dir, tmp_path):
    """A saved BertForSequenceClassification scores as transformers itself scores it."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from clue_runner import api
    from clue_runner.data.splits import load_split
    from clue_runner.errors import ClueRunError
    from clue_runner.tasks import get_task

    task = get_task("fewclue_eprstmt")
    torch.manual_seed(5)
    model = BertForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, id2label=dict(enumerate(task.label.values)))
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)  # "fine-tuned": a decisive, non-trivial classifier
    model.save_pretrained(tmp_path / "ckpt")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "ckpt")

    examples = load_split(task, "dev", data_dir=data_dir).examples
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(**tok([e.text_a for e in examples[i:i + 32]], padding=True, truncation=True,
                                          max_length=512, return_tensors="pt")).logits for i in range(0, len(examples), 32)])
    expected = float((logits.argmax(-1).numpy() == np.array([e.label for e in examples])).mean())

    result = api.evaluate(tmp_path / "ckpt", "dev", str(data_dir), "cpu", task="fewclue_eprstmt")
    assert result["examples"] == len(examples)
    assert result["metrics"]["accuracy"] == pytest.approx(expected)

    swapped = BertForSequenceClassification.from_pretrained(tmp_path / "ckpt", id2label={0: task.label.values[1], 1: task.label.values[0]})
    swapped.save_pretrained(tmp_path / "swapped")
    tok.save_pretrained(tmp_path / "swapped")
    with pytest.raises(ClueRunError, match="same order"):
        api.evaluate(tmp_path / "swapped", "dev", str(data_dir), "cpu", task="fewclue_eprstmt")
