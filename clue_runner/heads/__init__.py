"""Heads by name (`plugins.HEADS`): the module on top of the backbone, its featurization, loss and
how outputs become predictions.

A head is built from the backbone, the task and its own parameters (`head:` in the experiment
config, validated by the head's `Params`). It calls the backbone (`models.backbone.Backbone`),
never the transformers model directly. Every loss takes the whole batch: the fast path pads
batches with filler rows (`row_valid` False, labels -100 or NaN) that a loss must not count.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict
from torch import nn

from ..data.limits import TextLimits
from ..errors import ConfigError
from ..features import Encoded, tokenize_examples
from ..plugins import HEADS
from ..registry import validate_options

MASKED = -1e4  # a choice or position that cannot win (finite: fp32 softmax stays NaN-free)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/NaN would train "successfully" to NaN


class Head(nn.Module):
    Params = Params
    backbone_kind = "base"  # the backbone kind this head prefers (models.backbone.KINDS)
    requires_kind: Optional[str] = None  # a kind it cannot work without (PET: mlm); None = any kind's hidden states do
    output = "hidden"  # what forward returns, for methods that only work on some outputs (R-Drop: class_logits)
    separate_pairs = False  # bi-encoders tokenize the two texts of a pair on their own
    needs_labels = True  # False for self-supervised objectives (SimCSE)
    unlabeled_split: Optional[str] = None  # semi-supervised heads (PET): an unlabelled split trained beside the labelled one
    unlabeled_examples: Optional[int] = None  # at most this many of its rows (None: all)
    graphable = True  # batches fit the CUDA-graph fast path's static shapes (one sequence per item)
    label_kinds = ("categorical", "score")  # task label kinds (tasks.spec.LabelSpec.kind) the head can learn

    @classmethod
    def learns_from_labels(cls, params) -> bool:
        """Whether training needs a label on every row (known from the config, before any data is read)."""
        return cls.needs_labels

    @classmethod
    def misfit(cls, task, params) -> Optional[str]:
        """Why this head cannot work on `task` (None when it can): checked when the config loads."""
        if task.label.kind not in cls.label_kinds:
            return (f"{task.name} has {task.label.kind} labels; this head handles {' or '.join(cls.label_kinds)} "
                    f"labels (the task's own head is {task.head!r})")
        return None

    def __init__(self, backbone: nn.Module, task, params: Params, dropout: float):
        super().__init__()
        self.backbone, self.task, self.params = backbone, task, params
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def text_limits(cls, params, max_length: int) -> TextLimits:
        """How many characters of each text this head reads: texts are cut to it before tokenizing
        (data.limits). Most heads keep at most `max_length` tokens of a text."""
        return TextLimits.within(max_length)

    @classmethod
    def output_kind(cls, task, params) -> str:
        return cls.output

    @classmethod
    def kind_for(cls, task, params, model_config) -> str:
        """The backbone kind to load for this task and architecture."""
        return cls.backbone_kind

    def backbone_outputs(self, batch: dict, prefix: str = "", hidden_states: bool = False):
        """The backbone run on one batch segment (`prefix`: "" or "b_"), before the head's own layers."""
        return self.backbone(batch, prefix, hidden_states)

    def use_template(self, template: str) -> None:
        """Render inputs with a method's prompt template (`Method.prompt_template`); only prompt heads can."""
        raise ConfigError(f"head {type(self).__name__} renders no prompt template; use the pet head")

    def new_parameters(self) -> list:
        """Parameters that start untrained or sit outside the encoder (they get `train.head_lr`)."""
        own = [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
        return own + self.backbone.head_parameters()

    def featurize(self, examples, tokenizer, max_length: int, use_cache: bool = True) -> Encoded:
        """Examples → tokenized items (one per example here; windows or choices in other heads)."""
        return tokenize_examples(examples, tokenizer, max_length, self.separate_pairs, use_cache)

    @classmethod
    def label(cls, task, params) -> Optional[str]:
        """How reports name a setting of this head, where the default (training kind and head
        options) would not say it well; None: the default."""
        return None

    def bind_data(self, data_options) -> None:
        """The run's `data:` options, for a head that reads a split of its own (in-context
        demonstrations come from the train split); most heads need nothing."""

    def describe(self) -> dict:
        """What run.json records about the head beyond its options (an LM template's text and hash)."""
        return {}

    def predict(self, outputs, enc: Optional[Encoded] = None):
        raise NotImplementedError


def head_name(task, head_cfg=None) -> str:
    return (head_cfg.name if head_cfg is not None and head_cfg.name else None) or task.head


def head_options(task, head_cfg=None) -> dict:
    """The config's head options over the task's defaults for its own head."""
    name = head_name(task, head_cfg)
    options = dict(task.head_options) if name == task.head else {}
    options.update({k: v for k, v in (head_cfg.model_dump() if head_cfg is not None else {}).items() if k != "name"})
    return options


def head_params(name: str, options: dict, where: str = "head") -> Params:
    return validate_options(HEADS.get(name).Params, options, where, f"head {name!r}")


def resolve_head(task, head_cfg=None) -> tuple[type[Head], Params]:
    """The head class named in the config (else the task's), with its options validated."""
    name = head_name(task, head_cfg)
    return HEADS.get(name), head_params(name, head_options(task, head_cfg))
