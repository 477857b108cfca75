"""The learned and few-shot latency predictors as saved and deployed: a linear model on the
encoder's features (``LinearArchModel``), its fit report, and the two predictor kinds, registered
in ``PREDICTORS`` when this module is imported."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces import InputError, SearchSpace, get_space

from .arch_encoding import ArchEncoder, _arch_keys
from .predictor import PREDICTORS, LatencyPredictor

__all__ = ["FewShotPredictor", "FitReport", "LearnedPredictor", "LinearArchModel", "TARGETS"]

TARGETS = ("log", "linear")


# -- the deployable model -----------------------------------------------------------------------
@dataclass(frozen=True)
class LinearArchModel:
    """``latency = g(intercept + features(arch) . coef)`` with g = exp (log target) or identity."""

    encoder: ArchEncoder
    target: str
    intercept: float
    coef: np.ndarray
    floor_ms: float
    # Per-arch offsets (in the target's units) for archs seen in the reference, keyed by
    # ``_arch_keys``: what their raw reference latencies add to the feature model.
    known: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"target: expected one of {list(TARGETS)}, got {self.target!r}.")
        if self.coef.shape != (self.encoder.n_features,):
            raise InputError(
                f"coef: expected {self.encoder.n_features} coefficients for this encoder, got {self.coef.shape[0]}."
            )
        if not (np.all(np.isfinite(self.coef)) and math.isfinite(self.intercept)):
            raise InputError("coef: expected finite numbers, got NaN or infinity.")
        if not (math.isfinite(self.floor_ms) and self.floor_ms > 0):
            raise InputError(f"floor_ms: expected a number > 0, got {self.floor_ms!r}.")
        if not all(isinstance(v, float) and math.isfinite(v) for v in self.known.values()):
            raise InputError("known_archs.offsets: expected finite numbers, got NaN or infinity.")

    def predict_codes(self, codes: np.ndarray) -> np.ndarray:
        raw = self.intercept + self.encoder.dot(codes, self.coef)
        if self.known:
            keys = _arch_keys(codes)
            if keys is not None:
                get = self.known.get
                raw = raw + np.fromiter((get(key, 0.0) for key in keys), dtype=float, count=len(keys))
        out = np.exp(raw) if self.target == "log" else raw
        # A linear model can dip below zero far from its data; a latency cannot.
        return np.maximum(out, self.floor_ms)

    def to_json(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.to_json(),
            "target": self.target,
            "intercept": float(self.intercept),
            "coef": [float(c) for c in self.coef],
            "floor_ms": float(self.floor_ms),
            "known_archs": {"key": "one character chr(48 + code) per choice", "offsets": dict(self.known)},
        }

    @classmethod
    def from_json(cls, space: str, doc: Mapping[str, Any]) -> LinearArchModel:
        return cls(
            ArchEncoder.from_json(space, doc["encoder"]),
            str(doc["target"]),
            float(doc["intercept"]),
            np.asarray(doc["coef"], dtype=float),
            float(doc["floor_ms"]),
            {str(key): float(v) for key, v in doc.get("known_archs", {}).get("offsets", {}).items()},
        )


@dataclass(frozen=True)
class FitReport:
    """How the model was chosen: leave-one-out error on the K measurements and the winner."""

    method: str
    target: str
    loo_rel_rmse: float
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "loo_rel_rmse": float(self.loo_rel_rmse),
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class _ArchModelPredictor(LatencyPredictor):
    model: LinearArchModel | None = None
    fit: FitReport | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            raise InputError(f"{self.kind} predictor: expected a fitted model, got none.")
        if self.model.encoder.space != self.space:
            raise InputError(
                f"{self.kind} predictor: model is for space {self.model.encoder.space!r}, not {self.space!r}."
            )

    @property
    def space_options(self) -> dict[str, Any]:
        assert self.model is not None
        return dict(self.model.encoder.space_options)

    def _space(self) -> SearchSpace:
        return get_space(self.space, self.space_options)

    def predict(self, archs: Sequence[Hashable]) -> np.ndarray:
        assert self.model is not None
        return self.model.predict_codes(self.model.encoder.codes(archs, self._space()))

    def _payload(self) -> dict[str, Any]:
        assert self.model is not None
        out: dict[str, Any] = {"model": self.model.to_json()}
        if self.fit is not None:
            out["fit"] = self.fit.to_json()
        return out

    @classmethod
    def _from_payload(cls, doc: Mapping[str, Any], where: str) -> _ArchModelPredictor:
        try:
            space = str(doc["space"])
            fit = doc.get("fit")
            return cls(
                space=space,
                device=str(doc["device"]),
                provenance=dict(doc.get("provenance", {})),
                model=LinearArchModel.from_json(space, doc["model"]),
                fit=FitReport(
                    str(fit["method"]), str(fit["target"]), float(fit["loo_rel_rmse"]), dict(fit["params"])
                )
                if fit
                else None,
            )
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as e:
            raise InputError(
                f"{where}: malformed {cls.kind} predictor ({e.__class__.__name__}: {str(e)[:100]})."
            ) from None


@dataclass(frozen=True)
class LearnedPredictor(_ArchModelPredictor):
    """Ridge regression on architecture features, fitted on the device's own measurements only."""

    kind = "learned"


@dataclass(frozen=True)
class FewShotPredictor(_ArchModelPredictor):
    """Reference devices' latency models combined to match K measurements on the target device."""

    kind = "few-shot"


PREDICTORS["learned"] = LearnedPredictor
PREDICTORS["few-shot"] = FewShotPredictor
