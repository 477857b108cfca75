"""Exported-file size model: bytes are linear in weights, per-channel values and tensors.

``bytes = weights * bytes_per_weight + per_channel * channels + per_tensor * tensors + base``;
``bytes_per_weight`` is fixed by the dtype (1 for int8) and the rest is fitted on a few real
conversions, so the search can screen size budgets without converting anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces import InputError, SizeTerms

__all__ = ["BYTES_PER_WEIGHT", "SizeModel"]

BYTES_PER_WEIGHT = {"int8": 1.0, "fp16": 2.0, "fp32": 4.0}


@dataclass(frozen=True)
class SizeModel:
    dtype: str = "int8"
    per_channel: float = 28.0
    per_tensor: float = 120.0
    base: float = 3000.0
    n_measurements: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in BYTES_PER_WEIGHT:
            raise InputError(
                f"size model dtype: expected one of {sorted(BYTES_PER_WEIGHT)}, got {self.dtype!r}."
            )

    def predict(self, terms: SizeTerms) -> float:
        return (
            terms.weights * BYTES_PER_WEIGHT[self.dtype]
            + self.per_channel * terms.channels
            + self.per_tensor * terms.tensors
            + self.base
        )

    @classmethod
    def fit(cls, terms: Sequence[SizeTerms], measured_bytes: Sequence[int], dtype: str = "int8") -> SizeModel:
        """Non-negative least squares on the residual after the weights' own bytes."""
        from scipy.optimize import nnls

        if len(terms) < 3:
            return cls(dtype=dtype)
        a = np.array([[t.channels, t.tensors, 1.0] for t in terms], dtype=float)
        y = np.array(
            [m - t.weights * BYTES_PER_WEIGHT[dtype] for t, m in zip(terms, measured_bytes, strict=True)]
        )
        coef, _ = nnls(a, y)
        return cls(dtype, float(coef[0]), float(coef[1]), float(coef[2]), len(terms))

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "dtype": self.dtype,
            "per_channel": self.per_channel,
            "per_tensor": self.per_tensor,
            "base": self.base,
            "n_measurements": self.n_measurements,
        }
