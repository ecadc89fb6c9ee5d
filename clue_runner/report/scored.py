"""Reports on a split scored after training (`clue-run report --scored-on heldout`): each run's best
checkpoint (still chosen on its eval split) scored on another split, read from the run's scores.json."""

from __future__ import annotations

import dataclasses

from ..errors import ClueRunError
from ..runs.scores import SCORES_FILE, read_scores
from . import Run


def scored_on(runs: list[Run], split: str) -> tuple[list[Run], list[str]]:
    """The runs with their `split` scores in place of their best eval-split scores, and the files scored."""
    out, sources = [], []
    for run in runs:
        scores = read_scores(run.path.parent).get(split)
        if scores is None:
            raise ClueRunError(f"{run.path.parent}: no {split!r} score in {SCORES_FILE} (a sweep scores it with "
                               f"`evaluate: [{split}]`)")
        out.append(dataclasses.replace(run, best=scores["metrics"], eval_split=split))
        sources.append(scores.get("source", "?"))
    return out, sorted(set(sources))


def describe(split: str, sources: list[str]) -> str:
    shown = "; ".join(sources[:5]) + (f"; … ({len(sources)} in all)" if len(sources) > 5 else "")
    return (f"Scored on {split}: each run's checkpoint chosen on its eval split, then scored on {shown}"
            + (" (FewCLUE's test files carry no labels: these are the dev examples a split's run did not select on)."
               if split == "heldout" else "."))
