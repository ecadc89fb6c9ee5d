"""House rules that a reader relies on, checked over the package's source (ast, no imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clue_runner"

# Private names still imported across modules while another change moves them (file, name). Each entry
# is a debt: remove it when its import goes; an entry that no longer matches fails the test.
PENDING_PRIVATE_IMPORTS: set = set()  # none left; keep it so


def private_imports(source: str, package: str = "clue_runner") -> list[tuple[int, str]]:
    """(line, name) of every `_name` imported from another module of the package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == package):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == package
                      and any(p.startswith("_") and not p.startswith("__") for p in a.name.split("."))]
    return found


def test_no_module_imports_another_modules_private_names():
    seen = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name in private_imports(path.read_text(encoding="utf-8")):
            if (rel, name) in PENDING_PRIVATE_IMPORTS:
                seen.add((rel, name))
                continue
            raise AssertionError(f"clue_runner/{rel}:{line} imports the private name {name}; make it public "
                                 "under a good name or move it")
    assert seen == PENDING_PRIVATE_IMPORTS, f"no longer imported, drop from the list: {PENDING_PRIVATE_IMPORTS - seen}"


def test_the_private_import_finder_finds_them():
    source = ("from .report import _grid, table\nfrom clue_runner.config import _set\nimport clue_runner._x\n"
              "from os import _exit\nfrom . import __version__\n")
    assert private_imports(source) == [(1, "_grid"), (2, "_set"), (3, "clue_runner._x")]
