"""The machinery both latency fits share (``fit_learned``, ``fit_transfer``): ridge paths with
leave-one-out errors, relative-error targets, the feature designs with the physics prior, the
bootstrap choice among near-equal candidates, and the fitted file's provenance."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arch_encoding import BASIC_KINDS, ArchEncoder
from .measurements import Measurements, Reference
from .physics_prior import PHYSICS_WIDTH_MULT, physics_basis

__all__ = ["one_blas_thread"]

_BAGS = 200


# -- fitting ------------------------------------------------------------------------------------
@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run small linear algebra on one BLAS thread: on a busy machine, threads only fight (8x slower)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _ridge_path(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, lams: Sequence[float]
) -> list[tuple[float, np.ndarray, float, np.ndarray]]:
    """Weighted ridge (intercept unpenalised) for every lambda from one eigendecomposition.

    Returns (lambda, leave-one-out residuals, intercept, coefficients) per lambda.
    """
    k = len(y)
    wsum = float(w.sum())
    xm = (w @ x) / wsum
    ym = float(w @ y) / wsum
    sw = np.sqrt(w)
    xw = (x - xm) * sw[:, None]
    yw = (y - ym) * sw
    lev0 = w / wsum  # the intercept's share of each point's leverage
    out = []
    if k <= x.shape[1]:
        s, u = np.linalg.eigh(xw @ xw.T)
        s = np.clip(s, 0.0, None)
        uy = u.T @ yw
        for lam in lams:
            shrink = s / (s + lam)
            fitted = u @ (shrink * uy)
            lev = np.einsum("ij,j,ij->i", u, shrink, u) + lev0
            loo = (yw - fitted) / np.clip(1.0 - lev, 1e-6, None) / sw
            coef = xw.T @ (u @ (uy / (s + lam)))
            out.append((lam, loo, ym - float(xm @ coef), coef))
    else:
        s, v = np.linalg.eigh(xw.T @ xw)
        s = np.clip(s, 0.0, None)
        xv = xw @ v
        vy = xv.T @ yw
        for lam in lams:
            inv = 1.0 / (s + lam)
            coef = v @ (inv * vy)
            fitted = xw @ coef
            lev = np.einsum("ij,j,ij->i", xv, inv, xv) + lev0
            loo = (yw - fitted) / np.clip(1.0 - lev, 1e-6, None) / sw
            out.append((lam, loo, ym - float(xm @ coef), coef))
    return out


def _to_target(y_ms: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Target values and weights so that squared error is relative error in both targets."""
    if target == "log":
        return np.log(y_ms), np.ones_like(y_ms)
    return y_ms.copy(), 1.0 / y_ms**2


def _rel_rmse(loo: np.ndarray, y_ms: np.ndarray, target: str) -> float:
    rel = loo if target == "log" else loo / y_ms
    return float(np.sqrt(np.mean(rel**2)))


def _provenance(
    measurements: Measurements, reference: Reference | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    from pathlib import Path

    from .measurements import file_digest

    out: dict[str, Any] = {
        "measurements": {
            "file": Path(measurements.path).name,
            "sha256": file_digest(measurements.path) if Path(measurements.path).is_file() else "",
            "n_archs": len(measurements),
        }
    }
    if reference is not None:
        out["reference"] = {
            "file": Path(reference.path).name,
            "sha256": file_digest(reference.path) if Path(reference.path).is_file() else "",
            "n_archs": len(reference),
            "devices": list(reference.devices),
        }
    out.update(extra)
    return out


@dataclass(frozen=True)
class _Design:
    """One parameterisation of the feature model: the feature columns ``cols`` and, weighted by
    ``weight`` (a lighter penalty when > 1), the physics terms ``x @ basis``. Every design collapses
    back into plain feature coefficients."""

    name: str
    cols: np.ndarray
    basis: np.ndarray | None = None
    weight: float = 1.0

    def matrix(self, x: np.ndarray) -> np.ndarray:
        parts = [x[:, self.cols]]
        if self.basis is not None:
            parts.insert(0, self.weight * (x @ self.basis))
        return np.hstack(parts)

    def collapse(self, coef: np.ndarray, n_features: int) -> np.ndarray:
        out = np.zeros(n_features)
        n_basis = 0
        if self.basis is not None:
            n_basis = self.basis.shape[1]
            out += self.basis @ (self.weight * coef[:n_basis])
        out[self.cols] += coef[n_basis:]
        return out


# Weights of the physics terms next to per-feature costs in the same ridge (1 = the same penalty).
_PHYSICS_WEIGHTS = (1.0, 3.0, 10.0)


def _designs(
    encoder: ArchEncoder, physics: bool, physics_width_mult: float | None = PHYSICS_WIDTH_MULT
) -> list[_Design]:
    """Feature subsets (shared costs, per position, all) and, for spaces with a physics basis,
    physics terms alone or as a lightly penalised prior under the shared or all features."""
    out = [
        _Design("shared", encoder.columns_of(BASIC_KINDS)),
        _Design("positions", encoder.columns_of((*BASIC_KINDS, "one", "live"))),
        _Design("all", np.arange(encoder.n_features)),
    ]
    basis = physics_basis(encoder, physics_width_mult) if physics else None
    if basis is not None:
        out.append(_Design("physics", np.arange(0), basis))
        for base in out[:3:2]:  # shared, all
            out += [_Design(f"physics+{base.name}", base.cols, basis, w) for w in _PHYSICS_WEIGHTS]
    return [d for d in out if len(d.cols) or d.basis is not None]


def _bootstrap_shares(sq: np.ndarray) -> np.ndarray:
    """Per row of ``sq`` (candidates x points: squared leave-one-out errors), the share of
    bootstrap resamples of the points in which that candidate has the least total error."""
    k = sq.shape[1]
    # How often each point is drawn in each resample (seeded: the same fit gives the same file).
    draws = np.random.default_rng(0).multinomial(k, np.full(k, 1.0 / k), size=_BAGS)
    return np.bincount(np.argmin(sq @ draws.T, axis=0), minlength=len(sq)) / _BAGS


def _bagged_choice(cands: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Candidates weighted by how often each has the least leave-one-out error over bootstrap
    resamples of the K points: a noisy choice among near-equals becomes an average of them."""
    shares = _bootstrap_shares(np.stack([c["rel"] ** 2 for c in cands]))
    chosen = np.flatnonzero(shares)
    return [cands[i] for i in chosen], shares[chosen]
