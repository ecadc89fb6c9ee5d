"""How long the CLI takes to answer: `--help`, `tasks list`, a config error, a model error and
`train --dry-run` on the demo config, each a fresh process (`python -m clue_runner`), wall time and
CPU time (user + system: what the process itself spent, less sensitive to other load).

    python bench/startup.py --before /path/to/older/checkout --repeat 3

`--before` times another checkout's code (its directory goes first on PYTHONPATH) beside this one's.
Prints a table and writes it to bench/results/startup-YYYYMMDD-HHMM.md. Not a test: the numbers
depend on the machine; say which when you quote them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

BAD_KEY = "task: fewclue_tnews\ntrain: {learning_rate: 1e-5}\n"
BAD_MODEL = "task: fewclue_tnews\nmodel: {name: someone/no-such-model}\n"


def cases(work: Path) -> dict[str, list[str]]:
    (work / "bad-key.yaml").write_text(BAD_KEY)
    (work / "bad-model.yaml").write_text(BAD_MODEL)
    return {
        "clue-run --help": ["--help"],
        "clue-run tasks list": ["tasks", "list"],
        "config error (unknown key)": ["train", "--config", str(work / "bad-key.yaml")],
        "model error (offline hub id)": ["train", "--config", str(work / "bad-model.yaml")],
        "train --dry-run (configs/demo.yaml)": ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--dry-run"],
    }


def timed(code_root: Path, args: list[str], work: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and exit status of one fresh CLI process."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "HF_HUB_OFFLINE": "1", "CLUE_RUN_NO_PROGRESS": "1",
           "HF_HUB_CACHE": str(work / "hub")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clue_runner", *args], cwd=work, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode


def measure(code_root: Path, repeat: int) -> dict[str, tuple[float, float, int]]:
    """Median wall and CPU seconds per case (after one untimed warm-up of the file cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timed(code_root, ["--help"], work)
        rows = {}
        for name, args in cases(work).items():
            runs = [timed(code_root, args, work) for _ in range(repeat)]
            rows[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2])
        return rows


def table(columns: dict[str, dict]) -> str:
    names = list(next(iter(columns.values())))
    header = "| command | " + " | ".join(f"{label} wall s | {label} CPU s" for label in columns) + " | exit |"
    lines = [header, "|" + "---|" * (2 * len(columns) + 2)]
    for name in names:
        cells = [f"{col[name][0]:.2f} | {col[name][1]:.2f}" for col in columns.values()]
        exits = "/".join(str(col[name][2]) for col in columns.values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {exits} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="Another checkout to time beside this one (e.g. main's).")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("CLUE_DATA_DIR"):
        sys.exit("set CLUE_DATA_DIR: the dry run reads the demo's data")
    columns = {}
    if args.before:
        columns["before"] = measure(args.before.resolve(), args.repeat)
    columns["after" if args.before else "now"] = measure(REPO, args.repeat)
    load = os.getloadavg()[0]
    note = (f"Median of {args.repeat} fresh processes, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores "
            f"({platform.processor() or platform.machine()}), load average {load:.1f} at the end, Python "
            f"{platform.python_version()}. CPU s = user + system time of the process; wall s includes waiting "
            f"for the cores (other processes). HF_HUB_OFFLINE=1; exit codes before/after.")
    if args.before:
        note += f" before: {args.before.resolve()}; after: {REPO}."
    text = f"# CLI start-up\n\n{note}\n\n{table(columns)}\n"
    print(text)
    out = HERE / "results" / f"startup-{datetime.now():%Y%m%d-%H%M}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
