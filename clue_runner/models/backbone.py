"""The backbone: the transformers model under a head, loaded as the kind the head and methods need.

Heads call a `Backbone` (hidden states, class logits, MLM or NSP logits), never the transformers
model's keyword arguments. Kinds:

- `base`: `AutoModel` (the bare encoder; a pooler only where the checkpoint has trained one);
- `sequence_classification`: `AutoModelForSequenceClassification`, the architecture's own
  classification head, so a saved run loads into that class elsewhere with the same predictions;
- `mlm`: `AutoModelForMaskedLM` (a pretrained masked-LM head is required);
- `pretraining`: `AutoModelForPreTraining` (pretrained masked-LM and next-sentence heads);
- `causal_lm`: `AutoModelForCausalLM` (a decoder with its pretrained LM head: GPT-2, Qwen2, Llama,
  Mistral-style checkpoints). Decoder tokenizers usually have no pad token: `decoder_tokenizer` uses
  EOS as the pad token and sets the padding side the calling code asks for (never a default).

Loading is honest: weights the checkpoint lacks or does not use are reported, and a checkpoint
whose encoder weights would be randomly initialised is refused unless explicitly allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from ..errors import ModelError, first_line
from . import load_model_config, quiet_transformers

KINDS = ("base", "sequence_classification", "mlm", "pretraining", "causal_lm")
_AUTO = {
    "base": "AutoModel",
    "sequence_classification": "AutoModelForSequenceClassification",
    "mlm": "AutoModelForMaskedLM",
    "pretraining": "AutoModelForPreTraining",
    "causal_lm": "AutoModelForCausalLM",
}
# What a user must bring for a kind whose head the checkpoint has to have pretrained.
_NEEDS = {"mlm": "a pretrained masked-LM head", "pretraining": "pretrained masked-LM and next-sentence heads",
          "causal_lm": "a pretrained language-model head"}
PADDING_SIDES = ("left", "right")


@dataclass
class LoadReport:
    """What `from_pretrained` did with the checkpoint's tensors."""

    kind: str
    new_head: list[str] = field(default_factory=list)  # head tensors initialised fresh (expected)
    missing_encoder: list[str] = field(default_factory=list)  # encoder tensors the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors nothing reads
    mismatched: list[str] = field(default_factory=list)  # shape differs (re-initialised)
    dropped_pooler: bool = False  # the checkpoint has no trained pooler, so none is used

    def lines(self) -> list[str]:
        out = []
        if self.new_head:
            out.append(f"new head weights (trained from scratch): {_grouped(self.new_head)}")
        if self.dropped_pooler:
            out.append("the checkpoint has no trained pooler: none is used")
        if self.unexpected:
            out.append(f"checkpoint weights not used by this head: {_grouped(self.unexpected)}")
        if self.mismatched:
            out.append(f"re-initialised (shape differs from the checkpoint): {_grouped(self.mismatched)}")
        if self.missing_encoder:
            out.append(f"encoder weights missing from the checkpoint (random): {_grouped(self.missing_encoder)}")
        return out

    def as_dict(self) -> dict:
        return {"kind": self.kind, "new_head": sorted(self.new_head), "missing_encoder": sorted(self.missing_encoder),
                "unexpected": sorted(self.unexpected), "mismatched": sorted(self.mismatched),
                "dropped_pooler": self.dropped_pooler}


def _grouped(keys: list[str], shown: int = 4) -> str:
    """`classifier.weight, classifier.bias, …` as `classifier (2), …`: module paths with counts."""
    groups: dict[str, int] = {}
    for key in sorted(keys):
        module = key.rsplit(".", 1)[0]
        groups[module] = groups.get(module, 0) + 1
    items = [f"{m} ({n})" if n > 1 else m for m, n in groups.items()]
    return ", ".join(items[:shown]) + (f", … ({len(items) - shown} more modules)" if len(items) > shown else "")


def has_class(config, kind: str) -> bool:
    """Whether transformers has the `kind` class for this architecture."""
    import transformers

    auto = getattr(transformers, _AUTO[kind])
    return type(config) in auto._model_mapping


def is_decoder(config) -> bool:
    """A decoder-only LM (GPT-2, Qwen2, Llama …): transformers has a causal-LM class for it and no
    masked-LM one (BERT-style encoders have both)."""
    return has_class(config, "causal_lm") and not has_class(config, "mlm")


class Backbone(nn.Module):
    """A transformers model of one kind, and the calls heads make on it."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown backbone kind {kind!r}")
        self.model, self.kind = model, kind
        self.decoder = is_decoder(model.config)
        self.load_report: Optional[LoadReport] = None

    @property
    def config(self):
        return self.model.config

    @property
    def encoder(self) -> nn.Module:
        """The bare encoder (the `AutoModel` part), whatever the kind."""
        return self.model if self.kind == "base" else self.model.base_model

    @property
    def encoder_prefix(self) -> str:
        """The state-dict prefix of the encoder inside `model` ("" or e.g. "bert.")."""
        return "" if self.kind == "base" else f"{self.model.base_model_prefix}."

    def input_embeddings(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the kind's own head (classifier, MLM/NSP heads) and of freshly initialised
        modules (a pooler the checkpoint lacked): what starts untrained or sits outside the encoder."""
        fresh = {k for k in (self.load_report.new_head if self.load_report else [])}
        prefix = self.encoder_prefix
        return [p for name, p in self.model.named_parameters()
                if (prefix and not name.startswith(prefix)) or name in fresh]

    @staticmethod
    def _inputs(batch: dict, prefix: str = "") -> dict:
        kwargs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"]}
        if f"{prefix}token_type_ids" in batch:
            kwargs["token_type_ids"] = batch[f"{prefix}token_type_ids"]
        if f"{prefix}inputs_embeds" in batch:  # a method placed its own vectors (prompt tuning)
            kwargs["inputs_embeds"] = batch[f"{prefix}inputs_embeds"]
            del kwargs["input_ids"]
        return kwargs

    def forward(self, batch: dict, prefix: str = "", hidden_states: bool = False):
        """The encoder's outputs (`last_hidden_state`, and `hidden_states` when asked) for one segment
        of a batch (`prefix` "" or "b_" for a bi-encoder's second sentence)."""
        return self.encoder(**self._inputs(batch, prefix), output_hidden_states=hidden_states)

    def summary(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The one hidden state [B, H] a head reads for a whole sequence: an encoder's first token
        ([CLS]); a decoder's last real token, the only one that has attended to all of the text (as
        transformers' decoder *ForSequenceClassification reads it), wherever the padding sits."""
        if not self.decoder:
            return hidden[:, 0]
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def classify(self, batch: dict) -> torch.Tensor:
        """Logits of the architecture's own sequence-classification head."""
        if self.kind != "sequence_classification":
            raise RuntimeError(f"a {self.kind} backbone has no classification head")
        return self.model(**self._inputs(batch)).logits

    def mlm_logits(self, batch: dict) -> torch.Tensor:
        if self.kind not in ("mlm", "pretraining"):
            raise RuntimeError(f"a {self.kind} backbone has no masked-LM head")
        out = self.model(**self._inputs(batch))
        return out.logits if self.kind == "mlm" else out.prediction_logits

    def nsp_logits(self, batch: dict) -> torch.Tensor:
        """[B, 2] next-sentence logits; index 0 = "is next"."""
        if self.kind != "pretraining":
            raise RuntimeError(f"a {self.kind} backbone has no next-sentence head")
        return self.model(**self._inputs(batch)).seq_relationship_logits

    def causal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache=None,
               position_ids: Optional[torch.Tensor] = None, use_cache: bool = False, logits_to_keep: int = 0):
        """One causal-LM forward: `logits` [B, T, V] and, with `use_cache`, the `cache` (keys and
        values of every token so far) to continue from; `logits_to_keep` 1: the last position's logits
        only. Positions follow the attention mask (pads take no position), so left and right padding
        give the same logits for the same tokens."""
        if self.kind != "causal_lm":
            raise RuntimeError(f"a {self.kind} backbone has no language-model head")
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if cache is not None:  # the mask covers the cached prefix too: keep only the new part
                position_ids = position_ids[:, -input_ids.shape[1]:]
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)

    def lm_hidden(self, attention_mask: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
                  inputs_embeds: Optional[torch.Tensor] = None, cache=None, position_ids: Optional[torch.Tensor] = None,
                  use_cache: bool = False):
        """A causal LM's final hidden states (`last_hidden_state`, and with `use_cache` the `cache`
        to continue from), without the LM head: callers apply `lm_head` only where they read a token."""
        if self.kind != "causal_lm":
            raise RuntimeError(f"a {self.kind} backbone has no language-model head")
        return self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            cache=cache, position_ids=position_ids, use_cache=use_cache)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits of final hidden states."""
        return self.model.get_output_embeddings()(hidden)

    def save_pretrained(self, directory, model: Optional[nn.Module] = None) -> None:
        (model or self.model).save_pretrained(directory)


def decoder_tokenizer(tokenizer, padding_side: str):
    """`tokenizer` made ready to pad a decoder's batches: without a pad token it pads with EOS
    (the usual GPT-2/Llama/Qwen case; pads are masked, so the id never reaches a score), and its
    padding side is the one the caller needs (`left` to generate or continue from the last token,
    `right` to read a token by position). A tokenizer with neither pad nor EOS is refused."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding side must be one of {PADDING_SIDES}, not {padding_side!r}")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token to pad with; "
                             "add a pad token to the tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _classify(report: LoadReport, info: dict, model: nn.Module, kind: str) -> None:
    prefix = "" if kind == "base" else f"{model.base_model_prefix}."
    for key in info.get("missing_keys", ()):
        inside = key.startswith(prefix) if prefix else True
        rest = key[len(prefix):] if inside else key
        if inside and not rest.startswith("pooler."):
            report.missing_encoder.append(key)
        else:
            report.new_head.append(key)
    report.unexpected = sorted(info.get("unexpected_keys", ()))
    report.mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))


def load_backbone(path: str, kind: str = "base", allow_random_init: bool = False, dropout: Optional[float] = None,
                  num_labels: Optional[int] = None, id2label: Optional[dict] = None,
                  regression: bool = False, name: Optional[str] = None,
                  pad_token_id: Optional[int] = None) -> Backbone:
    """`path` loaded as `kind`, in fp32 (mixed precision comes from autocast), with a load report.

    `pad_token_id`: the id batches are padded with. A decoder's classification head reads the last
    token that is not this id, so its config must name the tokenizer's pad (often EOS) exactly.

    Refused with one line: an architecture transformers cannot load, a kind the architecture has no
    class for, a checkpoint without the pretrained head the kind needs, encoder weights that would
    be random (unless `allow_random_init`).
    """
    import transformers

    quiet_transformers()
    shown = name or path
    config = load_model_config(path, shown)
    if not has_class(config, kind):
        raise ModelError(f"model {shown!r} ({config.model_type}): transformers has no {_AUTO[kind]} class for it")
    kwargs: dict = {"output_loading_info": True}
    if kind == "sequence_classification":
        kwargs.update(num_labels=1 if regression else num_labels, ignore_mismatched_sizes=True)
        if regression:
            kwargs["problem_type"] = "regression"
        elif id2label is not None:
            kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()},
                          problem_type="single_label_classification")
        if pad_token_id is not None and is_decoder(config):
            kwargs["pad_token_id"] = pad_token_id
        if dropout is not None and hasattr(config, "classifier_dropout"):
            kwargs["classifier_dropout"] = dropout
    try:
        model, info = getattr(transformers, _AUTO[kind]).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load model {shown!r}: {first_line(err)}") from None
    report = LoadReport(kind)
    _classify(report, info, model, kind)
    if kind in _NEEDS:
        head_missing = [k for k in report.new_head]
        if head_missing:
            raise ModelError(f"model {shown!r} has no {_NEEDS[kind][2:]} (missing {_grouped(head_missing)}); "
                             f"this head or method needs {_NEEDS[kind]}, e.g. bert-base-chinese or a local BertForPreTraining checkpoint")
    if report.missing_encoder and not allow_random_init:
        raise ModelError(f"model {shown!r}: {len(report.missing_encoder)} encoder weights are not in the checkpoint "
                         f"({_grouped(report.missing_encoder, 3)}) and would be random; check the checkpoint "
                         "(renamed keys?) or set model.allow_random_init: true")
    if kind == "base":
        # A pooler the checkpoint lacks would be random: drop it (heads pool the hidden states themselves).
        pooler_new = [k for k in report.new_head if k.startswith("pooler.")]
        if pooler_new and getattr(model, "pooler", None) is not None:
            model.pooler = None
            report.new_head = [k for k in report.new_head if k not in pooler_new]
            report.dropped_pooler = True
    backbone = Backbone(model.float(), kind)
    backbone.load_report = report
    return backbone

