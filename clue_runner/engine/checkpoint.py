"""`best/`: a transformers checkpoint users can take elsewhere, plus what clue-run needs to reload exactly.

- `config.json`, `model.safetensors`, tokenizer files: `AutoModel.from_pretrained(best)` gives the
  fine-tuned encoder; for the `cls` head `AutoModelForSequenceClassification` gives the same
  predictions (labels in `id2label`). LoRA runs: merged weights here, the adapter in `adapter/`.
- `head.safetensors`: weights of heads that live outside the transformers model (span, NER …).
- `clue_run_state.safetensors`: the whole trained module as clue-run holds it, only for methods
  whose export differs from it (LoRA unmerged), so a reload scores exactly as the run did.

- `clue_run_best.json`: the step, epoch and metrics this checkpoint is the best of (written last).

The directory is written beside and swapped in with renames (`storage.atomic_dir`). `BestCheckpoint` is
the trainer's checkpoint policy: best/ follows every evaluation that improved, and on resume a best/
left behind by a kill is written again (the one place that repairs it; see runs.rundir for the protocol).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import ClueRunError, RunError
from ..storage import atomic_dir, kill_point

HEAD_FILE = "head.safetensors"
STATE_FILE = "clue_run_state.safetensors"
BEST_MARKER = "clue_run_best.json"


def _head_state(model) -> dict:
    # a multi-task model holds the backbone once more under each head (heads.<task>.backbone.*): not head weights
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not k.startswith("backbone.") and ".backbone." not in k}


def save_best(directory: Path, model, tokenizer, methods, best: Optional[dict] = None) -> None:
    """Write the checkpoint beside `directory` and swap it in whole; `best` (step, epoch, metrics) names it."""
    with atomic_dir(directory) as tmp:
        export = model.backbone.model
        for m in methods:
            export = m.export(export)
        export.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        head = _head_state(model)
        if head:
            save_file(head, str(tmp / HEAD_FILE))
        if any(m.changes_export for m in methods):
            save_model(model, str(tmp / STATE_FILE))
        for m in methods:
            m.save_extra(model, tmp)
        if best is not None:
            (tmp / BEST_MARKER).write_text(json.dumps(best, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        kill_point("best-written")
    kill_point("best-saved")


def load_best(directory: Path, model) -> None:
    """Put the saved weights into a model built from the same config (methods already re-applied)."""
    directory = Path(directory)
    if (directory / STATE_FILE).is_file():
        load_model(model, str(directory / STATE_FILE))
        return
    expected = set(_head_state(model))
    if not expected:
        return  # everything is in the transformers checkpoint the backbone was loaded from
    if not (directory / HEAD_FILE).is_file():
        raise ClueRunError(f"{directory}: no {HEAD_FILE} (the head's weights); was the run written by this clue-run?")
    saved = load_file(str(directory / HEAD_FILE))
    if set(saved) != expected:
        raise ClueRunError(f"{directory / HEAD_FILE}: head weights do not match the run's head "
                           f"(missing {sorted(expected - set(saved))[:3]}, unexpected {sorted(set(saved) - expected)[:3]})")
    model.load_state_dict(saved, strict=False)


def best_step(directory: Path) -> Optional[int]:
    """The step a best/ directory holds (None: no marker, e.g. nothing saved yet)."""
    try:
        return json.loads((Path(directory) / BEST_MARKER).read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError):
        return None


class BestCheckpoint:
    """The trainer's checkpoint policy: `save_best` after an evaluation that improved (after the resume
    state that names it is committed), `resumed` once the committed state is loaded. `writes` False
    (a data-parallel rank > 0): it writes nothing."""

    def __init__(self, directory: Path, model, tokenizer, methods, writes: bool = True):
        self.directory, self.model, self.tokenizer, self.methods = Path(directory), model, tokenizer, methods
        self.writes = writes

    def save_best(self, best: dict) -> None:
        if self.writes:
            save_best(self.directory, self.model, self.tokenizer, self.methods, best)

    def resumed(self, best: Optional[dict], step: int) -> None:
        """Repair a stale best/: killed after the commit that made `best` the best step, before best/ was
        swapped in, the committed weights ARE that step's (it is the last commit), so best/ is written from them."""
        if not self.writes or best is None or best_step(self.directory) == best["step"]:
            return
        if best["step"] != step:
            raise RunError(f"{self.directory}: holds step {best_step(self.directory)}, the run's best is step "
                           f"{best['step']} and its weights are no longer saved; start the run again")
        self.save_best(best)
