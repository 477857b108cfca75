"""How wrong a latency predictor is: shares within 5% and 10%, MAPE, RMSE and rank correlations,
computed the same way everywhere (CLI, benchmarks, tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from search_spaces import InputError

__all__ = ["LatencyMetrics", "latency_metrics"]


@dataclass(frozen=True)
class LatencyMetrics:
    """Errors of predictions against measurements (relative errors are |pred - true| / true)."""

    n: int
    within5: float
    within10: float
    mape: float
    rmse_ms: float
    spearman: float
    kendall: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [
            f"archs        {self.n}",
            f"within 5%    {self.within5:.3f}",
            f"within 10%   {self.within10:.3f}",
            f"MAPE         {self.mape:.4f}",
            f"RMSE (ms)    {self.rmse_ms:.4g}",
            f"Spearman     {self.spearman:.4f}",
            f"Kendall      {self.kendall:.4f}",
        ]


def latency_metrics(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> LatencyMetrics:
    """All metrics at once; constant predictions rank nothing, so their correlations are 0."""
    from scipy.stats import kendalltau, spearmanr

    pred = np.asarray(predicted_ms, dtype=float)
    true = np.asarray(measured_ms, dtype=float)
    if pred.shape != true.shape or pred.ndim != 1:
        raise InputError(f"predictions: expected one per measurement, got {pred.shape} and {true.shape}.")
    if len(true) == 0:
        raise InputError("measurements: expected at least one, got none.")
    if not (np.all(np.isfinite(true)) and np.all(true > 0)):
        raise InputError("measurements: expected finite latencies > 0 ms.")
    if not np.all(np.isfinite(pred)):
        raise InputError("predictions: expected finite numbers, got NaN or infinity.")
    rel = np.abs(pred - true) / true
    if len(true) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        rho = tau = 0.0
    else:
        rho = float(spearmanr(pred, true).statistic)
        tau = float(kendalltau(pred, true).statistic)
    return LatencyMetrics(
        n=len(true),
        within5=float(np.mean(rel <= 0.05)),
        within10=float(np.mean(rel <= 0.10)),
        mape=float(np.mean(rel)),
        rmse_ms=float(math.sqrt(np.mean((pred - true) ** 2))),
        spearman=rho,
        kendall=tau,
    )
