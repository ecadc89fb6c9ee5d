"""The Typer app, the consoles and the one place known errors become one line (exit status 2)."""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ClueRunError, disk_error_line, is_disk_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fine-tune and score Chinese encoders on CLUE-style tasks.")
tasks_app = typer.Typer(no_args_is_help=True, help="List and inspect the task registry.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare models (packaged model conversion, vocabulary trimming).")
app.add_typer(tasks_app, name="tasks")
app.add_typer(model_app, name="model")

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("clue-run")
        except PackageNotFoundError:  # run from a source tree that was never installed
            shown = "unknown (not installed)"
        typer.echo(f"clue-run {shown}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Fine-tune and score Chinese encoders on CLUE-style tasks."""


out = Console()
err = Console(stderr=True)
DEBUG_ENV = "CLUE_RUN_DEBUG"


def friendly_errors(fn):
    """Known errors become one clear line and exit code 2; CLUE_RUN_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ClueRunError, OSError) as e:
            if os.environ.get(DEBUG_ENV) or (isinstance(e, OSError) and not is_disk_error(e)):
                raise
            message = str(e) if isinstance(e, ClueRunError) else disk_error_line(e, option=_path_option(fn, kwargs, e))
            # ONE line (the README's promise): a multi-line message is joined; escaped, as paths,
            # labels and WSC markers contain square brackets that rich would eat.
            one_line = "; ".join(re.sub(r"^\s*-\s+", "", part) for part in message.splitlines() if part.strip())
            err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _path_option(command, kwargs: dict, err: OSError) -> Optional[str]:
    """The command's destination option (its `output` parameter: `--output/-o`) when a failed write
    went there, so the advice names what the user gave (not output_dir or CLUE_RUN_CACHE)."""
    value = kwargs.get("output")
    decls = getattr(inspect.signature(command).parameters.get("output"), "default", None)
    decls = getattr(decls, "param_decls", None)
    if not err.filename or not isinstance(value, Path) or not decls:
        return None
    failed, given = Path(err.filename).absolute(), value.absolute()
    return "/".join(decls) if failed == given or given in failed.parents else None
