"""Sweeps end to end with the tiny model: a 2×2 grid through the local pool and through a local Ray instance,
re-runs that skip finished cells, an interrupted cell resumed, dry runs that write nothing, selection on dev."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clue_runner import api
from clue_runner.cli import app
from clue_runner.errors import ConfigError
from clue_runner.runs.lock import RunLock, RunLocked
from clue_runner.runs.sweep import LOG_FILE, load_sweep, run_id_of, write_manifest

LRS = [1e-3, 3e-3]


@pytest.fixture(autouse=True)
def _wide_tables():
    from clue_runner.cli.app import out

    before, out.width = out.width, 200  # report rows are checked by text: no wrapping
    yield
    out.width = before


def write_sweep(tmp_path: Path, tiny_model, data_dir, **extra) -> Path:
    sweep = {
        "name": "grid",
        "base": {"task": "fewclue_eprstmt", "model": {"name": str(tiny_model)},
                 "data": {"dir": str(data_dir), "max_length": 32, "max_train_examples": 16, "max_eval_examples": 16},
                 "train": {"batch_size": 8, "max_steps": 2, "eval_every": 1}},
        "grid": {"tasks": ["fewclue_eprstmt", "fewclue_bustm"], "lr": LRS},
        "seeds": [5],
        "output_dir": str(tmp_path / "sweep"),
        "workers": 2,
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    return path


def run_jsons(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "sweep").glob("*/*/*/run.json"))


def commands_run(tmp_path: Path) -> int:
    """Training processes started so far (each attempt appends its command line to the cell's log)."""
    return sum(p.read_text().count("\n$ ") for p in (tmp_path / "sweep").glob(f"*/*/*/{LOG_FILE}"))


def invoke(*args):
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


def test_cells_have_deterministic_ids_and_dirs(tiny_model, data_dir, tmp_path):
    path = write_sweep(tmp_path, tiny_model, data_dir)
    a, b = load_sweep(path), load_sweep(path)
    assert len(a.cells) == 4
    assert [c.run_dir for c in a.cells] == [c.run_dir for c in b.cells]
    assert len({c.run_id for c in a.cells}) == 4
    assert {(c.task, c.cfg.train.lr, c.seed) for c in a.cells} == {(t, lr, 5) for t in ("fewclue_eprstmt", "fewclue_bustm")
                                                                   for lr in LRS}
    cell = a.cells[0]
    assert cell.run_dir == tmp_path / "sweep" / cell.task / cell.run_dir.parent.name / run_id_of(cell.cfg)
    # Only the config decides the id: a different results directory, same ids; a different lr, another id.
    moved = load_sweep(write_sweep(tmp_path, tiny_model, data_dir, output_dir=str(tmp_path / "elsewhere")))
    assert [c.run_id for c in moved.cells] == [c.run_id for c in a.cells]
    other = load_sweep(path, ["train.warmup=0.2"])
    assert not {c.run_id for c in other.cells} & {c.run_id for c in a.cells}


def test_bad_grid_value_names_the_cell(tiny_model, data_dir, tmp_path):
    path = write_sweep(tmp_path, tiny_model, data_dir, grid={"lr": [1e-3, -1]})
    with pytest.raises(ConfigError, match=r"cell 1: train.lr=-1"):
        load_sweep(path)


def test_dry_run_lists_cells_and_writes_nothing(tiny_model, data_dir, tmp_path):
    path = write_sweep(tmp_path, tiny_model, data_dir)
    res = invoke("--config", path, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "4 new" in res.stdout and res.stdout.count("fewclue_") >= 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def test_local_grid_resumes_a_killed_run_then_skips_everything(tiny_model, data_dir, tmp_path):
    path = write_sweep(tmp_path, tiny_model, data_dir, set=["train.checkpoint_every=1"])
    sweep = load_sweep(path)
    killed = sweep.cells[0]

    class Killed(Exception):
        pass

    def kill_after_first_step(event):
        if event.state.step == 1:
            raise Killed

    # The cell's training dies after its first checkpoint, as a killed worker would leave it.
    with pytest.raises(Killed):
        api.train(killed.cfg, run_dir=killed.run_dir, on_event=kill_after_first_step, log=lambda _: None)
    assert (killed.run_dir / "resume" / "trainer.pt").is_file() and not (killed.run_dir / "run.json").exists()

    res = invoke("--config", path)
    assert res.exit_code == 0, res.output
    assert len(run_jsons(tmp_path)) == 4
    assert "1 to resume" in res.output
    assert "--resume" in (killed.run_dir / LOG_FILE).read_text()
    # The resumed run matches the same config trained without interruption.
    reference = api.read_run(api.train(killed.cfg, run_dir=tmp_path / "reference", log=lambda _: None))
    resumed = api.read_run(killed.run_dir)
    assert [h.metrics for h in resumed.history] == [h.metrics for h in reference.history]
    assert resumed.run_id == killed.run_id and resumed.steps == 2
    # The report has one row per learning rate and both tasks as columns.
    assert "fewclue_eprstmt" in res.stdout and "fewclue_bustm" in res.stdout
    assert "lr=0.001" in res.stdout and "lr=0.003" in res.stdout
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["cells"][0]["hparams"] == {"train.lr": LRS[0]}

    started, stamps = commands_run(tmp_path), [p.stat().st_mtime_ns for p in run_jsons(tmp_path)]
    again = invoke("--config", path)
    assert again.exit_code == 0, again.output
    assert "4 already done" in again.output
    assert commands_run(tmp_path) == started  # nothing trained again
    assert [p.stat().st_mtime_ns for p in run_jsons(tmp_path)] == stamps

    # Selection: per task the learning rate with the better dev score, and test predictions from those runs only.
    chosen = invoke("--config", path, "--select")
    assert chosen.exit_code == 0, chosen.output
    for task in ("fewclue_eprstmt", "fewclue_bustm"):
        scores = {r["config"]["train"]["lr"]: r["best"]["metrics"]["accuracy"]
                  for r in map(lambda p: json.loads(p.read_text()), run_jsons(tmp_path)) if r["task"]["name"] == task}
        best_lr = max(scores, key=lambda lr: (scores[lr], -LRS.index(lr)))  # ties: the first setting, as max() keeps
        row = next(line for line in chosen.stdout.splitlines() if task in line and "lr=" in line)
        assert f"lr={best_lr:g}" in row
    assert chosen.stdout.count("predictions: ") == 2


def test_failed_runs_are_retried_and_reported(tiny_model, data_dir, tmp_path):
    # A data directory without the task's files fails inside the run process, after the sweep has validated the config.
    path = write_sweep(tmp_path, tiny_model, data_dir, grid={"lr": [1e-3]}, retries=1,
                       set=[f"data.dir={tmp_path / 'no-data'}"])
    (tmp_path / "no-data").mkdir()
    res = invoke("--config", path)
    assert res.exit_code == 1
    assert "1 failed" in res.output and commands_run(tmp_path) == 2  # the first attempt and one retry
    (cell,) = load_sweep(path).cells
    assert cell.state() == "failed"


def test_a_locked_run_is_left_to_its_holder(tiny_model, data_dir, tmp_path):
    path = write_sweep(tmp_path, tiny_model, data_dir, grid={"lr": [1e-3]})
    sweep = load_sweep(path)
    write_manifest(sweep)
    (cell,) = sweep.cells
    with RunLock(cell.run_dir):
        with pytest.raises(RunLocked):
            RunLock(cell.run_dir).__enter__()
        res = invoke("--config", path)
    assert res.exit_code == 1 and "in use by another process" in res.output
    assert commands_run(tmp_path) == 0


def test_ray_grid_on_a_local_instance(tiny_model, data_dir, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = write_sweep(tmp_path, tiny_model, data_dir, launcher="ray")
        res = invoke("--config", path)
        assert res.exit_code == 0, res.output
        assert len(run_jsons(tmp_path)) == 4
        assert "lr=0.001" in res.stdout and "fewclue_bustm" in res.stdout
        started = commands_run(tmp_path)
        assert started == 4
        again = invoke("--config", path)
        assert again.exit_code == 0 and commands_run(tmp_path) == started
    finally:
        ray.shutdown()


def test_slurm_launcher_through_submitit_local_executor(tiny_model, data_dir, tmp_path):
    pytest.importorskip("submitit")
    path = write_sweep(tmp_path, tiny_model, data_dir, launcher="slurm", grid={"lr": LRS}, workers=2,
                       slurm={"cluster": "local", "timeout_min": 10})
    res = invoke("--config", path)
    assert res.exit_code == 0, res.output
    assert len(run_jsons(tmp_path)) == 2 and commands_run(tmp_path) == 2
    assert any((tmp_path / "sweep" / ".submitit").iterdir())


def test_shipped_sweeps_expand():
    shipped = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml"))
    sizes = {p.stem: len(load_sweep(p).cells) for p in shipped}  # every cell's config validated
    assert sizes == {"fewclue": 9 * 3 * 2, "fewclue_cpu": 3 * 3 * 2,
                     "fewclue_protocol": 9 * 5, "fewclue_methods": 4 * 5 * 7}  # tasks × splits (× methods)
    methods = load_sweep(shipped[[p.stem for p in shipped].index("fewclue_methods")])
    assert {(c.task, c.cfg.data.variant) for c in methods.cells} == {
        (t, str(v)) for t in ("fewclue_eprstmt", "fewclue_bustm", "fewclue_ocnli", "fewclue_csl") for v in range(5)}
    assert {c.cfg.method_label() for c in methods.cells} == {
        "finetune", "finetune+fgm", "finetune+gradient_penalty", "finetune+rdrop", "finetune+lora(lr=0.0005)", "finetune+child_tuning",
        "finetune+lst(lr=0.002)"}
    assert all(c.cfg.train.max_steps is None and not c.hparams for c in methods.cells)  # full budget; splits pair
