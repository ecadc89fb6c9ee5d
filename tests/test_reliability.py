"""Failure classes of issue 17, one test per case: bad configs, bad data files, full and read-only
disks, two processes on one run. Each ends in ONE line `error: …` (exit 2) naming the file, line or
key, before a run directory or cache file exists, and leaves nothing half-written behind."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clue_runner import api, storage
from clue_runner.cli import app
from clue_runner.config import build_config, load_config
from clue_runner.data.splits import load_split
from clue_runner.errors import ConfigError, DataError, RunError
from clue_runner.tasks import get_task

from conftest import write_jsonl

EPRSTMT = get_task("fewclue_eprstmt")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # Each test its own token cache, so "no cache file written" is about this test alone.
    monkeypatch.setenv("CLUE_RUN_CACHE", str(tmp_path / "cache"))


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(map(str, args)))
    return result.exit_code, result.output


def one_error_line(code: int, output: str) -> str:
    """The run's own log lines may come first; the error is ONE line, and the last."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert errors == [len(lines) - 1], output
    return lines[-1]


def raw_config(tiny_model, data_dir, out, **train) -> dict:
    return {
        "task": "fewclue_eprstmt",
        "model": {"name": str(tiny_model)},
        "data": {"dir": str(data_dir), "max_length": 32, "max_train_examples": 32, "max_eval_examples": 16},
        "train": {"batch_size": 8, "max_steps": 4, "eval_every": 2, "seed": 3, **train},
        "output_dir": str(out),
    }


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def leftovers(*dirs: Path) -> list[str]:
    return [str(p) for d in dirs if d.exists() for p in d.rglob("*") if storage._TMP.match(p.name)]


def cache_dir() -> Path:
    return Path(os.environ["CLUE_RUN_CACHE"])


# -- config ----------------------------------------------------------------------------------


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"task: afqmc\ntrain:\n  lr: 3e-5 # \xff\xfe\n")
    line = one_error_line(*cli("train", "--config", path))
    assert f"{path}:3: not UTF-8" in line


def test_set_past_the_end_of_a_list():
    with pytest.raises(ConfigError, match=r"--set methods.3.name: methods.3: the list has 1 entries \(indices 0-0\)"):
        build_config({"task": "afqmc", "methods": [{"name": "fgm"}]}, ["methods.3.name=fgm"])
    with pytest.raises(ConfigError, match="methods has no entries"):
        build_config({"task": "afqmc"}, ["methods.0.name=fgm"])


def test_set_value_that_is_not_yaml(tmp_path):
    path = write_config(tmp_path / "exp.yaml", {"task": "afqmc"})
    line = one_error_line(*cli("train", "--config", path, "--set", "train.lr=[3e-5"))
    assert "--set train.lr=[3e-5: the value is not valid YAML" in line


@pytest.mark.parametrize("key", ["weight_decay", "lr", "max_grad_norm", "warmup", "head_lr"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "nan", "inf"])
def test_inf_and_nan_refused_for_floats(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}: Input should be a finite number"):
        build_config({"task": "afqmc"}, [f"train.{key}={value}"])


def test_inf_refused_in_method_and_head_options():
    with pytest.raises(ConfigError, match="methods.0.epsilon"):
        build_config({"task": "afqmc", "methods": [{"name": "fgm", "epsilon": float("inf")}]})
    with pytest.raises(ConfigError, match="scale"):
        build_config({"task": "stsb", "head": {"name": "embedding", "scale": float("nan")}})


def test_duplicate_yaml_key_names_key_and_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: afqmc\ndata:\n  max_length: 128\n  max_length: 256\n", encoding="utf-8")
    line = one_error_line(*cli("train", "--config", path))
    assert f"{path}: line 4: key 'max_length' appears twice (first on line 3)" in line


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: afqmc\ntrain: {lr: 3e-5\n", encoding="utf-8")
    line = one_error_line(*cli("train", "--config", path))
    assert f"{path}: not valid YAML: line" in line


def test_validation_errors_are_one_line(tmp_path):
    path = write_config(tmp_path / "exp.yaml", {"task": "afqmc", "train": {"lr": -1, "batch_sise": 8}})
    line = one_error_line(*cli("train", "--config", path))
    assert "train.lr:" in line and "train.batch_sise: unknown key; did you mean train.batch_size?" in line


def test_config_with_resume_is_refused(tmp_path):
    path = write_config(tmp_path / "exp.yaml", {"task": "afqmc"})
    line = one_error_line(*cli("train", "--resume", tmp_path, "--config", path, "--set", "train.lr=1e-4"))
    assert "drop --config, --set" in line and "saved config" in line


# -- validated before a run directory or cache file exists --------------------------------------


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), list(out.rglob("*"))
    tokens = cache_dir() / "tokens"
    assert not tokens.exists() or not any(tokens.iterdir())


def test_cuda_without_cuda(tiny_model, data_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, tmp_path / "out", device="cuda"))
    line = one_error_line(*cli("train", "--config", path))
    assert "device cuda was asked for, but no CUDA device is available" in line
    assert_nothing_written(tmp_path / "out")


def test_head_that_does_not_fit_the_task_labels():
    with pytest.raises(ConfigError, match="tnews scores single texts; the embedding head scores sentence pairs"):
        build_config({"task": "tnews", "head": {"name": "embedding"}})
    with pytest.raises(ConfigError, match="c3 has structured labels"):
        build_config({"task": "c3", "head": {"name": "cls"}})


def test_missing_threshold_split(tiny_model, data_dir, tmp_path):
    raw = raw_config(tiny_model, data_dir, tmp_path / "out")
    raw["data"]["threshold_split"] = "validation"
    with pytest.raises(ConfigError, match="no split 'validation'"):
        api.train(build_config(raw), log=lambda _: None)
    assert_nothing_written(tmp_path / "out")


def test_max_length_beyond_position_embeddings(tiny_model, data_dir, tmp_path):
    raw = raw_config(tiny_model, data_dir, tmp_path / "out")
    raw["data"]["max_length"] = 1024  # the tiny BERT has 512 positions
    with pytest.raises(ConfigError, match="data.max_length 1024 exceeds the 512 positions"):
        api.train(build_config(raw), log=lambda _: None)
    assert_nothing_written(tmp_path / "out")


# -- data ------------------------------------------------------------------------------------


def eprstmt_dir(tmp_path: Path, text: bytes, name: str = "dev_0.json") -> Path:
    folder = tmp_path / "data" / "fewclue" / "eprstmt"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text)
    return tmp_path / "data"


GOOD = json.dumps({"id": 1, "sentence": "很好用", "label": "Positive"}, ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize("bad,problem", [
    (b"{not json}\n", "not valid JSON"),
    (b"[1, 2]\n", "expected a JSON object, got list"),
    (b"null\n", "expected a JSON object, got null"),
    (b'{"id": 2, "sentence": "\xe5\xa5\xbd\xff", "label": "Positive"}\n', "not UTF-8 text (byte 0xff"),
])
def test_bad_lines_named_or_skipped(tmp_path, bad, problem):
    root = eprstmt_dir(tmp_path, GOOD + bad + GOOD)
    path = root / "fewclue" / "eprstmt" / "dev_0.json"
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {problem}")):
        load_split(EPRSTMT, "dev", data_dir=str(root), variant="0")
    data = load_split(EPRSTMT, "dev", data_dir=str(root), variant="0", on_bad_row="skip")
    assert len(data.examples) == 2 and len(data.skipped) == 1 and f"{path}:2: {problem}" in data.skipped[0]


@pytest.mark.parametrize("text,problem", [("", "the text is empty"), ("  \t ", "the text is empty"),
                                          ("好\x00用", "the text holds a NUL character")])
def test_empty_blank_and_nul_texts(tmp_path, text, problem):
    bad = json.dumps({"id": 2, "sentence": text, "label": "Positive"}).encode() + b"\n"
    root = eprstmt_dir(tmp_path, GOOD + bad)
    with pytest.raises(DataError, match=f"dev_0.json:2: field 'sentence': {problem}"):
        load_split(EPRSTMT, "dev", data_dir=str(root), variant="0")
    assert len(load_split(EPRSTMT, "dev", data_dir=str(root), variant="0", on_bad_row="skip").examples) == 1


def gz_cases(tmp_path: Path) -> dict:
    payload = gzip.compress(GOOD * 2000)
    corrupt = bytearray(payload)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 40] = b"\x00" * 40
    return {"truncated": (payload[: len(payload) // 2], "is truncated"),
            "corrupt": (bytes(corrupt), "corrupt"),
            "plain": (GOOD * 3, "is not a gzip file")}


@pytest.mark.parametrize("case", ["truncated", "corrupt", "plain"])
def test_damaged_gzip_is_one_line_naming_the_file(tiny_model, tmp_path, case):
    data, problem = gz_cases(tmp_path)[case]
    root = eprstmt_dir(tmp_path, data, "train_0.json.gz")
    eprstmt_dir(tmp_path, GOOD * 3, "dev_0.json")
    raw = raw_config(tiny_model, root, tmp_path / "out")
    raw["data"]["variant"] = "0"
    raw["data"].pop("max_train_examples")
    line = one_error_line(*cli("train", "--config", write_config(tmp_path / "exp.yaml", raw)))
    assert "train_0.json.gz:" in line and problem in line  # not "Aborted." (EOFError), not zlib.error
    assert_nothing_written(tmp_path / "out")


def test_label_missing_on_every_row(tiny_model, tmp_path):
    unlabelled = b"".join(json.dumps({"id": i, "sentence": "很好用"}).encode() + b"\n" for i in range(5))
    root = eprstmt_dir(tmp_path, unlabelled, "train_0.json")
    eprstmt_dir(tmp_path, GOOD * 3, "dev_0.json")
    raw = raw_config(tiny_model, root, tmp_path / "out")
    raw["data"]["variant"] = "0"
    line = one_error_line(*cli("train", "--config", write_config(tmp_path / "exp.yaml", raw)))
    assert "train_0.json:1: field 'label': the label is missing" in line
    raw["data"]["on_bad_row"] = "skip"
    line = one_error_line(*cli("train", "--config", write_config(tmp_path / "exp.yaml", raw)))
    assert "no usable examples" in line
    assert_nothing_written(tmp_path / "out")


# -- disk ------------------------------------------------------------------------------------


def inject_enospc(monkeypatch, path_part: str) -> None:
    """Writes to files whose temporary name contains `path_part` fail as on a full disk."""
    real_open = open

    class Full:
        def __init__(self, fh):
            self._fh, self.written = fh, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 64:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Full(fh) if path_part in str(file) and "w" in mode else fh

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*/*/*") if not p.name.startswith("."))


def test_full_disk_at_checkpoint_is_one_line_and_resumes(tiny_model, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, out))
    reference = api.read_run(api.train(build_config(raw_config(tiny_model, data_dir, tmp_path / "ref")), log=lambda _: None))
    inject_enospc(monkeypatch, "trainer.pt")  # torch.save hides the OSError in a RuntimeError: recovered
    line = one_error_line(*cli("train", "--config", path))
    assert "trainer.pt: No space left on device" in line and "--resume" in line
    (run_dir,) = run_dirs(out)
    assert not leftovers(out) and not (run_dir / "run.json").exists()
    monkeypatch.undo()
    code, output = cli("train", "--resume", run_dir)
    assert code == 0, output
    assert api.read_run(run_dir).best == reference.best


def test_full_token_cache_is_one_line(tiny_model, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, out, seed=11))
    monkeypatch.setenv("CLUE_RUN_CACHE", str(tmp_path / "cache"))
    inject_enospc(monkeypatch, ".npz.")
    line = one_error_line(*cli("train", "--config", path))
    assert "cannot write" in line and ".npz: No space left on device" in line and "CLUE_RUN_CACHE" in line
    assert not out.exists() and not leftovers(tmp_path / "cache")


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path("/tmp") / f"clue-run-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


@pytest.fixture
def tmpfs(tmp_path):
    if not can_mount():
        pytest.skip("needs root and tmpfs mounts (the injected-ENOSPC tests cover the rest)")
    mounted = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_real_full_file_system_then_resume(tiny_model, data_dir, tmp_path, tmpfs):
    out = tmpfs(tmp_path / "small", "size=300k")  # the config fits, a checkpoint (~0.5 MB) does not
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, out))
    line = one_error_line(*cli("train", "--config", path))
    assert "No space left on device" in line and "--resume" in line
    (run_dir,) = run_dirs(out)
    assert not leftovers(out)
    subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)  # space freed
    code, output = cli("train", "--resume", run_dir)
    assert code == 0, output
    assert (run_dir / "run.json").is_file() and not leftovers(out)


def test_read_only_output_directory(tiny_model, data_dir, tmp_path, tmpfs):
    out = tmpfs(tmp_path / "ro", "ro,size=64k")
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, out))
    line = one_error_line(*cli("train", "--config", path))
    assert "Read-only file system" in line and str(out) in line


def test_read_only_cache_directory(tiny_model, data_dir, tmp_path, tmpfs, monkeypatch):
    cache = tmpfs(tmp_path / "rocache", "ro,size=64k")
    monkeypatch.setenv("CLUE_RUN_CACHE", str(cache))
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, tmp_path / "out", seed=12))
    line = one_error_line(*cli("train", "--config", path))
    assert "Read-only file system" in line and str(cache) in line
    assert not (tmp_path / "out").exists()


def test_other_os_errors_are_not_disguised():
    from clue_runner.errors import is_disk_error

    assert not is_disk_error(OSError(errno.ENOENT, "No such file"))
    assert is_disk_error(OSError(errno.EROFS, "Read-only file system"))


def test_atomic_save_recovers_the_os_error_torch_hides(tmp_path, monkeypatch):
    import torch

    inject_enospc(monkeypatch, "state.pt")
    with pytest.raises(OSError) as caught:
        storage.atomic_save(tmp_path / "state.pt", lambda fh: torch.save({"w": torch.zeros(1000)}, fh))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []


# -- one process per run ---------------------------------------------------------------------


def test_second_resume_of_one_run_gets_one_line(tiny_model, data_dir, tmp_path):
    out = tmp_path / "out"
    path = write_config(tmp_path / "exp.yaml", raw_config(tiny_model, data_dir, out))

    class Stop(Exception):
        pass

    def stop(event):
        raise Stop

    with pytest.raises(Stop):
        api.train(load_config(path), on_event=stop, log=lambda _: None)
    (run_dir,) = run_dirs(out)
    holder = storage.DirLock(run_dir)  # another process working on the run
    try:
        line = one_error_line(*cli("train", "--resume", run_dir))
        assert "another clue-run process is working on this run" in line
        with pytest.raises(RunError):
            api.train(None, resume=run_dir)
    finally:
        holder.release()
    code, output = cli("train", "--resume", run_dir)
    assert code == 0, output
    code, output = cli("train", "--resume", run_dir)  # idempotent: a finished run has nothing left to do
    assert code == 0 and "already finished" in output


def test_eval_refuses_a_best_dir_that_is_not_the_results_best(tiny_model, data_dir, tmp_path):
    run_dir = api.train(build_config(raw_config(tiny_model, data_dir, tmp_path / "out")), log=lambda _: None)
    best = json.loads((run_dir / "best" / "clue_run_best.json").read_text(encoding="utf-8"))
    assert best["step"] == api.read_run(run_dir).best.step
    api.load_run(run_dir)  # consistent: loads
    (run_dir / "best" / "clue_run_best.json").write_text(json.dumps({**best, "step": 99}), encoding="utf-8")
    with pytest.raises(RunError, match="holds step 99, but run.json names step"):
        api.load_run(run_dir)
