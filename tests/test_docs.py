"""Every shell block fenced as ```bash runnable in the README and docs/guide/ is run, so each command
shown works as written (docs/guide/README.md: the conventions). One page per test; its blocks run in
order in one bash (-euo pipefail) in an empty directory, with `clue-run` a wrapper around this
checkout's CLI that gives `init` the tiny test model and caps `train` at 2 steps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs" / "guide").glob("*.md"))]
FENCE = re.compile(r"^```bash runnable\s*$")
TRAINS = re.compile(r"clue-run (train|predict|submit)\b")  # pages that build a model: slow

WRAPPER = """import os, sys
args = sys.argv[1:]
if args[:1] == ["init"] and "--model" not in args:
    args += ["--model", os.environ["CLUE_RUN_DOCS_MODEL"]]
if args[:1] == ["train"] and "--resume" not in args:
    args += ["--set", "train.max_steps=2", "--set", "data.max_eval_examples=32"]
sys.argv = ["clue-run", *args]
from clue_runner.cli import main
main()
"""


def runnable_script(page: Path) -> tuple[str, list[int]]:
    """The page's runnable blocks as one script, and the page line of each script line."""
    lines, origin, inside = [], [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if inside and line.startswith("```"):
            inside = False
        elif inside:
            lines.append(line)
            origin.append(number)
        elif FENCE.match(line):
            inside = True
    return "\n".join(lines) + "\n", origin


def _pages():
    for page in PAGES:
        script, _ = runnable_script(page)
        if script.strip():
            marks = [pytest.mark.slow] if TRAINS.search(script) else []
            yield pytest.param(page, id=str(page.relative_to(REPO)), marks=marks)


def run_page(page: Path, workdir: Path, tiny_model: Path, data_dir: Path) -> subprocess.CompletedProcess:
    bin_dir = workdir / ".bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "clue-run"
    wrapper.write_text(f"#!{sys.executable}\n{WRAPPER}")
    wrapper.chmod(0o755)
    script, origin = runnable_script(page)
    trap = 'trap \'echo "DOCFAIL $LINENO: $BASH_COMMAND" >&2\' ERR\n'
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "CLUE_RUN_DOCS_MODEL": str(tiny_model), "CLUE_DATA_DIR": str(data_dir), "CLUE_RUN_NO_PROGRESS": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", trap + script], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=900)
    failed = re.search(r"DOCFAIL (\d+): (.*)", proc.stderr)
    if failed:  # the script's line 1 is the trap: name the page's own line
        line = origin[int(failed.group(1)) - 2]
        shown = page.relative_to(REPO) if page.is_relative_to(REPO) else page
        proc.stderr += f"\n{shown}:{line}: failed: {failed.group(2)}"
    return proc


@pytest.mark.parametrize("page", list(_pages()))
def test_runnable_doc_commands_work_as_written(page, tiny_model, data_dir, tmp_path):
    proc = run_page(page, tmp_path / "work", tiny_model, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_guide_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 120
    for page in (REPO / "docs" / "guide").glob("*.md"):
        if page.name != "README.md":
            assert f"docs/guide/{page.name}" in readme, page.name


def test_a_broken_documented_command_fails_naming_its_line(tmp_path, tiny_model, data_dir):
    page = tmp_path / "page.md"
    page.write_text("# a page\n\n```bash\nnot run\n```\n\n```bash runnable\nclue-run tasks list > /dev/null\n"
                    "clue-run tasks show fewclue_tnewz\necho never\n```\n", encoding="utf-8")
    assert runnable_script(page)[1] == [8, 9, 10]
    proc = run_page(page, tmp_path / "work", tiny_model, data_dir)
    assert proc.returncode != 0 and "never" not in proc.stdout
    assert "page.md:9: failed: clue-run tasks show fewclue_tnewz" in proc.stderr, proc.stderr
