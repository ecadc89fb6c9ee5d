"""In-context scoring on a decoder (`icl`): zero- and k-shot, no training (`train.max_steps: 0`).

For each example the context is k demonstrations and the query rendered from the task's `lm:`
template; every label's continuation is scored by its log-likelihood under the causal LM, the
best-scoring label wins. The context runs ONCE per example: its keys and values (the KV cache) are
repeated for the labels and all continuations run together from them, batched across examples.
lm-evaluation-harness and OpenCompass run one full sequence per label instead (15 for TNEWS).

Options (`head:` in the config, all recorded in run.json's config):
- `template` (a name of the task's lm.templates) or `prompt` + `answer` (your own);
- `k` demonstrations from `demo_split`, drawn per example from (`seed`, example index), never the
  query itself, `balanced` over labels optionally; too long: whole demonstrations drop from the left;
- `normalize`: `sum` (total log-likelihood), `mean` (per token) or `char` (per character);
- `calibrate`: contextual calibration, the label's score under the content-free query "N/A" (after
  the same demonstrations) is subtracted (class labels only: choices differ per example);
- `padding_side`: how contexts are padded (left by default; right gives the same scores).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..features import Encoded
from ..features.incontext import Renderer, pack_requests, template_hash
from ..models.backbone import decoder_tokenizer
from ..tasks.spec import CHOICE_PARSERS, LmTemplate, check_lm_template
from . import MASKED, Head


class IclParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: Optional[str] = Field(None, description="a template name of the task's lm: block (null: its default)")
    prompt: Optional[str] = Field(None, description="your own query template instead ({text_a}, {text_b})")
    answer: str = Field("{label}", description="the continuation scored after `prompt` ({label})")
    k: int = Field(0, ge=0, description="demonstrations per query (0: zero-shot)")
    seed: int = Field(0, description="seed of the demonstrations drawn per query")
    balanced: bool = Field(False, description="demonstrations take the labels in turn")
    demo_split: str = Field("train", description="the split demonstrations are drawn from (never the query itself)")
    normalize: Literal["sum", "mean", "char"] = Field(
        "sum", description="a label's log-likelihood: total, per token (mean) or per character (char)")
    calibrate: bool = Field(False, description="subtract each label's score after a content-free 'N/A' query (class labels)")
    padding_side: Literal["left", "right"] = Field("left", description="how contexts are padded (right gives the same scores)")


class IclHead(Head):
    Params = IclParams
    backbone_kind = requires_kind = "causal_lm"
    output = "class_logits"
    graphable = False
    label_kinds = ("categorical", "structured")

    @classmethod
    def misfit(cls, task, params) -> Optional[str]:
        if task.lm is None and params.prompt is None:
            return f"{task.name} has no lm: templates for in-context scoring; give head.prompt or add an lm: block"
        if task.label.kind == "structured" and task.inputs.parser not in CHOICE_PARSERS:
            return f"{task.name}: in-context scoring handles class labels and choices, not {task.inputs.parser} targets"
        if params.calibrate and task.label.kind != "categorical":
            return f"{task.name}: calibrate needs a fixed label set (its choices differ per example)"
        return super().misfit(task, params)

    @classmethod
    def label(cls, task, params) -> str:
        """How reports name the setting, e.g. `icl(k=4, calibrated, tpl 491d2c7e)` (the template's hash)."""
        parts = [f"k={params.k}"] + (["balanced"] if params.balanced else []) + (
            [params.normalize] if params.normalize != "sum" else []) + (["calibrated"] if params.calibrate else [])
        template, separator = cls.template_for(task, params)
        return f"icl({', '.join(parts)}, tpl {template_hash(template, separator)})"

    @staticmethod
    def template_for(task, params) -> tuple[LmTemplate, str]:
        """The template scored (the config's own, else the task's named one) and the demonstration separator."""
        separator = task.lm.separator if task.lm is not None else "\n"
        if params.prompt is not None:
            return LmTemplate(prompt=params.prompt, answer=params.answer), separator
        return task.lm.template(params.template), separator

    def __init__(self, backbone, task, params: IclParams, dropout=0.1):
        super().__init__(backbone, task, params, dropout)
        self.template, self.separator = self.template_for(task, params)
        if params.prompt is not None:
            try:
                check_lm_template(self.template, "head", cloze=task.inputs.parser == "idiom_cloze")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        self.words = list(task.lm_words().values()) if task.label.kind == "categorical" else None
        self.pool = None
        self.data_options = None
        self.shown: dict = {}  # example id -> demonstration ids, of the split featurized last (the scored one)

    def describe(self) -> dict:
        """The template as scored and, with k > 0, each scored example's demonstrations, for run.json."""
        out = {"prompt": self.template.prompt, "answer": self.template.answer, "separator": self.separator,
               "hash": template_hash(self.template, self.separator), "label_words": self.words}
        if self.params.k:
            out["demonstrations"] = {str(i): ids for i, ids in self.shown.items()}
        return out

    def bind_data(self, data_options) -> None:
        self.data_options = data_options

    def demonstrations_pool(self) -> list:
        if self.params.k == 0:
            return []
        if self.pool is None:
            from ..data.splits import load_split

            opts = self.data_options
            if opts is None:
                raise ConfigError("head icl: k > 0 needs the run's data options (demonstrations come from its train split)")
            self.pool = load_split(self.task, self.params.demo_split, data_dir=opts.dir, variant=opts.variant,
                                   on_bad_row=opts.on_bad_row, source=opts.source).examples
        return self.pool

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        decoder_tokenizer(tokenizer, self.params.padding_side)
        p = self.params
        renderer = Renderer(self.template, self.words, self.separator, p.k, p.seed, p.balanced, p.calibrate)
        pool = self.demonstrations_pool()
        requests = [renderer.request(tokenizer, ex, i, pool, max_length) for i, ex in enumerate(examples)]
        self.shown = {ex.id: r.demonstrations for ex, r in zip(examples, requests)}
        labels = np.array([-100 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
        return pack_requests(requests, labels)

    def forward(self, input_ids, attention_mask, continuation_ids, continuation_chars, cf_input_ids=None,
                cf_attention_mask=None, **_) -> torch.Tensor:
        """[B, C] label scores: normalised log-likelihoods (minus the content-free ones when calibrating)."""
        scores = self.normalized(input_ids, attention_mask, continuation_ids, continuation_chars)
        if cf_input_ids is not None:
            scores = scores - self.normalized(cf_input_ids, cf_attention_mask, continuation_ids, continuation_chars)
        return scores.masked_fill(continuation_ids[:, :, 0] < 0, MASKED)

    def normalized(self, ids, mask, conts, chars) -> torch.Tensor:
        total, tokens = self.loglikelihoods(ids, mask, conts)
        if self.params.normalize == "mean":
            return total / tokens.clamp(min=1)
        if self.params.normalize == "char":
            return total / chars.clamp(min=1)
        return total

    def loglikelihoods(self, ids: torch.Tensor, mask: torch.Tensor, conts: torch.Tensor):
        """Σ log p(continuation | context) [B, C] and its token counts, from one context pass per row.

        `ids`/`mask` [B, T] are padded on the right (collate's layout) and re-padded to the
        configured side; `conts` [B, C, L] holds -1 past each continuation's end."""
        if self.params.padding_side == "left":
            ids, mask = to_left(ids, mask)
        out = self.backbone.causal(ids, mask, use_cache=True, logits_to_keep=1 if self.params.padding_side == "left" else 0)
        last = out.logits[:, -1] if self.params.padding_side == "left" else out.logits[
            torch.arange(len(ids)), mask.sum(1) - 1]
        b, c, width = conts.shape
        valid = conts >= 0
        flat = conts.clamp(min=0).reshape(b * c, width)
        cache = out.cache
        cache.batch_repeat_interleave(c)
        full_mask = torch.cat([mask.repeat_interleave(c, 0), valid.reshape(b * c, width).long()], 1)
        positions = mask.sum(1).repeat_interleave(c)[:, None] + torch.arange(width, device=ids.device)
        cont_logits = self.backbone.causal(flat, full_mask, cache=cache, position_ids=positions).logits
        # token j of a continuation is predicted at position j-1 (token 0 by the context's last position)
        logits = torch.cat([last.repeat_interleave(c, 0)[:, None], cont_logits[:, :-1]], 1).float()
        picked = logits.gather(2, flat[:, :, None]).squeeze(2) - logits.logsumexp(-1)
        picked = picked.reshape(b, c, width).masked_fill(~valid, 0.0)
        return picked.sum(-1), valid.sum(-1)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        raise ConfigError("head icl scores a model in context and does not train it: set train.max_steps: 0")

    def predict(self, scores: torch.Tensor, enc: Optional[Encoded] = None) -> np.ndarray:
        return scores.argmax(-1).numpy()


def to_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows moved to the right end (left padding): a stable sort puts pads first."""
    order = torch.sort(mask, dim=1, stable=True).indices
    return ids.gather(1, order), mask.gather(1, order)
