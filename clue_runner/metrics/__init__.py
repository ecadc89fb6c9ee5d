"""Metrics by name (`plugins.METRICS`). Each takes gold labels and predictions (class ids, or
similarity scores for ranking metrics) and returns a float: in [0, 1], or [-1, 1] for correlations.
Metrics with `calibrated = True` also take a validation split's (gold, predictions) to fit on
(a decision threshold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..plugins import METRICS


def compute_metrics(names: Sequence[str], gold, pred, num_labels: int, calibration=None) -> dict[str, float]:
    """Metrics by name. `calibration` = (gold, pred) of a validation split for metrics that fit
    something first (a decision threshold); without it they fit on the scored split itself."""
    if not isinstance(gold, list):  # lists hold structured gold (answer texts, entity sets) as they are
        gold, pred = np.asarray(gold), np.asarray(pred)
    calibration = calibration or (gold, pred)
    out = {}
    for name in names:
        fn = METRICS.get(name)
        out[name] = fn(gold, pred, num_labels, calibration) if getattr(fn, "calibrated", False) else fn(gold, pred, num_labels)
    return out
