"""R-Drop (Liang et al. 2021): two dropout passes, cross-entropy on both plus a symmetric KL between them."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from . import Method, Params


class RDropParams(Params):
    alpha: float = Field(4.0, ge=0, allow_inf_nan=False, description="weight of the symmetric KL between the two passes")


class RDrop(Method):
    Params = RDropParams
    accepts = {"class_logits"}  # the KL is between two class distributions

    def loss_term(self, model, batch, outputs, loss, step):
        """A second dropout pass: with the default loss, ½(loss₁ + loss₂) + α·KL."""
        loss2, logits2 = step.compute(batch)
        logp1 = F.log_softmax(outputs.float(), -1)
        logp2 = F.log_softmax(logits2.float(), -1)
        kl = 0.5 * (F.kl_div(logp1, logp2, log_target=True, reduction="batchmean")
                    + F.kl_div(logp2, logp1, log_target=True, reduction="batchmean"))
        return 0.5 * (loss2 - loss) + self.params.alpha * kl
