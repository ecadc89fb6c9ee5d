"""LoRA (Hu et al. 2021) through peft: low-rank adapters on the encoder's target modules, the encoder
frozen; the head trains in full. `best/` holds the merged weights (a plain transformers checkpoint)
and `best/adapter/` the adapter alone (peft format)."""

from __future__ import annotations

import copy
from typing import Literal, Optional, Union

from pydantic import Field

from ..errors import ConfigError
from . import Method, Params


class LoRAParams(Params):
    r: int = Field(8, ge=1, description="rank of the adapters")
    alpha: float = Field(16, gt=0, allow_inf_nan=False, description="scaling: an adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    # auto: peft's defaults for the architecture (BERT/RoBERTa: query, value); else module names
    target_modules: Union[Literal["auto"], list[str]] = Field(
        "auto", description="modules adapted: auto (peft's defaults for the model) or a list of names")
    lr: Optional[float] = Field(None, gt=0, le=1, allow_inf_nan=False, description="the adapters' learning rate (null: train.lr)")


def default_targets(model_type: str) -> Optional[list[str]]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(targets) if targets else None


class LoRA(Method):
    Params = LoRAParams
    changes_export = True
    no_embedding_grad = "lora freezes the word embeddings (peft trains only the adapters), so no gradient reaches them"

    def wrap_model(self, backbone, ctx):
        from peft import LoraConfig, get_peft_model

        model_type = backbone.config.model_type
        targets = self.params.target_modules
        if targets == "auto":
            targets = default_targets(model_type)
            if targets is None:
                raise ConfigError(f"methods: lora target_modules auto: peft has no default for model type {model_type!r}; "
                                  "list the modules, e.g. target_modules: [query, value]")
        config = LoraConfig(r=self.params.r, lora_alpha=self.params.alpha, lora_dropout=self.params.dropout,
                            target_modules=targets)
        try:
            # Wraps the encoder in place (the PeftModel object is kept here, not as a submodule).
            self.peft_model = get_peft_model(backbone.encoder, config)
        except ValueError as err:
            raise ConfigError(f"methods: lora target_modules {targets}: {str(err).splitlines()[0]}") from None
        return backbone

    def adapter_parameters(self, model) -> list:
        return [p for name, p in model.named_parameters() if "lora_" in name]

    def param_groups(self, model) -> list[dict]:
        return [{"params": self.adapter_parameters(model), "lr": self.params.lr}] if self.params.lr else []

    def export(self, model):
        """A copy with every adapter merged into its base layer: plain transformers modules again."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        merged = copy.deepcopy(model)
        for name, module in list(merged.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
        return merged

    def save_extra(self, model, directory) -> None:
        self.peft_model.save_pretrained(str(directory / "adapter"))
