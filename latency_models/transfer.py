"""Learned and few-shot latency predictors: a linear model on one-hot architecture features, fitted
from a handful of end-to-end measurements, optionally transferred from reference devices (HELP's
idea: a device is known by its latencies on reference architectures).

Both kinds save as plain JSON (coefficients as lists) and price any architecture of the space,
measured or not, with one gather-and-sum per feature block.

This module fits them (``fit_learned``, ``fit_transfer``); the features are in ``arch_encoding``,
the physics prior in ``physics_prior``, the saved model and the predictor kinds in ``arch_model``
(registered on import), the shared ridge machinery in ``ridge``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from search_spaces import InputError, SearchSpace

from .arch_encoding import ArchEncoder, _arch_keys
from .arch_model import (
    TARGETS,
    FewShotPredictor,
    FitReport,
    LearnedPredictor,
    LinearArchModel,
    _ArchModelPredictor,
)
from .measurements import Measurements, Reference
from .physics_prior import PHYSICS_WIDTH_MULT, physics_basis
from .ridge import (
    _bagged_choice,
    _bootstrap_shares,
    _Design,
    _designs,
    _provenance,
    _rel_rmse,
    _ridge_path,
    _to_target,
    one_blas_thread,
)

__all__ = [
    "ArchEncoder",
    "FewShotPredictor",
    "FitReport",
    "LearnedPredictor",
    "LinearArchModel",
    "fit_learned",
    "fit_transfer",
    "one_blas_thread",
    "PHYSICS_WIDTH_MULT",
    "physics_basis",
]

P = TypeVar("P", bound=_ArchModelPredictor)

# Ridge penalties tried by leave-one-out (features are 0/1, the target log-ms or relative ms).
_LAMBDAS = tuple(10.0**e for e in np.arange(-4.0, 4.01, 0.5))
# Weight of the per-feature correction next to the reference devices (0 = references only).
_ALPHAS = (0.0, 0.1, 0.3, 1.0, 3.0)
_SMOOTH_LAMBDA = 1.0
# Sources blending each reference device's smoothed model with its raw measurements:
# smooth + share * (raw - smooth); 1.0 is the raw values themselves.
_RAW_SHARES = (0.5, 1.0)
_RAW_SHARE_MIN_K = 30
# Also offer a non-negative mix of the reference devices (see ``_nonneg_mix``) from this many points
# (with fewer, the extra candidates only add selection noise: nb201 K=10 lost 0.002 within 10%).
_NONNEG_MIN_K = 30
# Candidates whose leave-one-out error is within this factor of the best are averaged.
_ENSEMBLE_TOL = 0.03
# From this many points, candidates are instead weighted by how often they win bootstrap resamples.
_BAG_MIN_K = 30
# Kernel ridge on the reference devices' deviations from their smoothed models (see
# ``_kernel_correction``): bandwidths as multiples of the median squared distance, penalties, and
# the winsorising of the residuals it fits (multiples of their robust standard deviation).
_KERNEL_BANDWIDTHS = (0.5, 1.0)
_KERNEL_LAMBDAS = (0.3, 1.0, 3.0)
_KERNEL_WINSOR = 3.0


def fit_learned(
    space: SearchSpace,
    measurements: Measurements,
    device: str = "target",
    space_options: Mapping[str, Any] | None = None,
    physics_width_mult: float | None = PHYSICS_WIDTH_MULT,
) -> LearnedPredictor:
    """Ridge on architecture features (for fbnet with a physics prior: per-layer MACs, activations,
    parameters, roofline terms of nets at ``physics_width_mult``, None = the space's own width);
    feature design, target (log or ms) and penalty by leave-one-out. From ``_BAG_MIN_K`` points the
    candidates of the better target are weighted by their bootstrap wins, as in ``fit_transfer``."""
    k = len(measurements)
    if k < 2:
        raise InputError(
            f"{measurements.path}: expected at least 2 measurements to learn from without a reference, got {k}."
        )
    encoder = ArchEncoder.for_space(space, space_options)
    codes = encoder.codes(measurements.archs, space)
    x = encoder.features(codes)
    y_ms = measurements.latency_ms
    lams = _LAMBDAS if k >= 5 else (10.0,)  # too few points for leave-one-out to choose
    designs = _designs(encoder, physics=k >= 5, physics_width_mult=physics_width_mult)
    matrices = [design.matrix(x) for design in designs]
    best: dict[str, Any] | None = None
    for target in TARGETS:
        y, w = _to_target(y_ms, target)
        cands: list[dict[str, Any]] = []
        for design, xd in zip(designs, matrices, strict=True):
            for lam, loo, b0, sub_coef in _ridge_path(xd, y, w, lams):
                rel = loo if target == "log" else loo / y_ms
                cands.append(
                    {
                        "err": _rel_rmse(loo, y_ms, target),
                        "rel": rel,
                        "lambda": lam,
                        "b0": b0,
                        "sub_coef": sub_coef,
                        "design": design,
                    }
                )
        win = min(cands, key=lambda c: c["err"])
        if best is None or win["err"] < best["err"]:
            near, share = _bagged_choice(cands) if k >= _BAG_MIN_K else ([win], np.ones(1))
            best = {**win, "target": target, "near": near, "share": share}
    assert best is not None
    intercept, coef = 0.0, np.zeros(encoder.n_features)
    for c, a in zip(best["near"], best["share"], strict=True):
        intercept += a * float(c["b0"])
        coef += a * c["design"].collapse(c["sub_coef"], encoder.n_features)
    model = LinearArchModel(encoder, best["target"], intercept, coef, floor_ms=float(y_ms.min()) * 0.1)
    design = best["design"]
    params: dict[str, Any] = {
        "lambda": best["lambda"],
        "k": k,
        "features": design.name,
        "n_ensemble": len(best["near"]),
    }
    if design.basis is not None:
        params["physics_weight"] = design.weight
        params["physics_width_mult"] = physics_width_mult
    fit = FitReport("ridge", best["target"], best["err"], params)
    return _fitted(LearnedPredictor, space, device, measurements, None, model, fit)


def _smooth(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ridge fits of ``y`` (archs x devices) on features: (intercepts, coefs F x D)."""
    xm = x.mean(axis=0)
    ym = y.mean(axis=0)
    xc = x - xm
    gram = xc.T @ xc
    gram[np.diag_indices_from(gram)] += lam
    coef = np.linalg.solve(gram, xc.T @ (y - ym))
    return ym - xm @ coef, coef


def _nonneg_mix(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least squares of ``y`` on ``z`` with non-negative weights and a free intercept.

    A target device is slower where its references are slower: the sign constraint is a prior
    that a ridge mix of many correlated devices lacks. Returns (intercept, weights, leave-one-out
    residuals), the latter by refitting without each point.
    """
    from scipy.optimize import nnls

    k = len(y)
    sw = np.sqrt(w)
    a = np.hstack([z, np.ones((k, 1)), -np.ones((k, 1))]) * sw[:, None]
    yw = y * sw
    coef, _ = nnls(a, yw)
    loo = np.empty(k)
    keep = np.ones(k, dtype=bool)
    for i in range(k):
        keep[i] = False
        c, _ = nnls(a[keep], yw[keep])
        keep[i] = True
        loo[i] = y[i] - (z[i] @ c[:-2] + c[-2] - c[-1])
    return float(coef[-2] - coef[-1]), coef[:-2], loo


def _candidates(
    z: np.ndarray,
    x_k: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    y_ms: np.ndarray,
    target: str,
    devices: Sequence[str],
    designs: Sequence[_Design],
    source: str,
) -> list[dict[str, Any]]:
    """Combinations of the (standardised) reference columns ``z``, scored by leave-one-out."""
    k, n_dev = z.shape
    zeros = np.zeros(x_k.shape[1])
    cands: list[dict[str, Any]] = []
    for d in range(n_dev):
        ((_, loo, b0, coef),) = _ridge_path(z[:, [d]], y, w, (1e-9,))
        wz = np.zeros(n_dev)
        wz[d] = coef[0]
        cands.append(
            {
                "err": _rel_rmse(loo, y_ms, target),
                "rel": loo if target == "log" else loo / y_ms,
                "method": f"single-{source}",
                "device": devices[d],
                "b0": b0,
                "wz": wz,
                "alpha": 0.0,
                "delta": zeros,
                "source": source,
            }
        )
    if k >= _NONNEG_MIN_K:
        b0, wz, loo = _nonneg_mix(z, y, w)
        cands.append(
            {
                "err": _rel_rmse(loo, y_ms, target),
                "rel": loo if target == "log" else loo / y_ms,
                "method": f"nonneg-{source}",
                "b0": b0,
                "wz": wz,
                "alpha": 0.0,
                "delta": zeros,
                "source": source,
            }
        )
    # The per-feature correction: shared costs only (a strong prior) or every feature; the
    # latter with a floor on the penalty, as leave-one-out over hundreds of columns flatters.
    # (The physics terms are no correction here: with more columns than points, a lucky
    # leave-one-out error chose fbnet corrections that ranked unseen archs at 0.74.)
    grid: list[tuple[float, _Design | None, tuple[float, ...]]] = [(0.0, None, _LAMBDAS)]
    if k >= 30:
        for d in designs:
            if d.name == "shared":
                grid += [(a, d, _LAMBDAS) for a in _ALPHAS if a > 0]
            elif d.name == "all":
                grid += [(a, d, tuple(v for v in _LAMBDAS if v >= 1e-2)) for a in _ALPHAS if 0 < a <= 1.0]
    for alpha, design, lams in grid:
        feats = np.hstack([z, alpha * design.matrix(x_k)]) if design is not None else z
        for lam, loo, b0, coef in _ridge_path(feats, y, w, lams):
            delta = zeros
            if design is not None:
                delta = alpha * design.collapse(coef[n_dev:], x_k.shape[1])
            cands.append(
                {
                    "err": _rel_rmse(loo, y_ms, target),
                    "rel": loo if target == "log" else loo / y_ms,
                    "method": f"mix-{source}" if design is None else f"mix-{source}+{design.name}-features",
                    "b0": b0,
                    "wz": coef[:n_dev],
                    "alpha": alpha,
                    "lambda": lam,
                    "delta": delta,
                    "source": source,
                }
            )
    return cands


def _reference_free_candidates(
    x_k: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    y_ms: np.ndarray,
    target: str,
    designs: Sequence[_Design],
    n_dev: int,
) -> list[dict[str, Any]]:
    """The learned fit's physics designs as candidates with zero reference weights (scored by the
    same leave-one-out, so they win only where the references do not help)."""
    cands: list[dict[str, Any]] = []
    for design in designs:
        for lam, loo, b0, coef in _ridge_path(design.matrix(x_k), y, w, _LAMBDAS):
            cands.append(
                {
                    "err": _rel_rmse(loo, y_ms, target),
                    "rel": loo if target == "log" else loo / y_ms,
                    "method": f"learned-{design.name}",
                    "b0": b0,
                    "wz": np.zeros(n_dev),
                    "alpha": 1.0,
                    "lambda": lam,
                    "delta": design.collapse(coef, x_k.shape[1]),
                    "source": "smooth",
                }
            )
    return cands


def _kernel_correction(dev: np.ndarray, rows: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, float]:
    """A relative correction for every reference arch from what its raw reference latencies say
    beyond the devices' smoothed models.

    ``dev`` (reference archs x devices) are the deviations of the log reference latencies from the
    devices' own feature models, ``rows`` the reference rows of the measured archs and ``rel`` the
    chosen model's leave-one-out relative residuals there. Kernel ridge (an RBF kernel on the
    standardised deviation vectors) maps the former to the latter -- deviations that an additive
    model cannot describe but the references share with the target. In the HELP data these are
    slow drift along the order every device measured the archs in (essential_ph_1's residuals are
    57% drift): with each device's drift removed from the data, the correction adds nothing (fbnet
    K=100 0.9701 -> 0.9699), so its gain there describes the measurement sessions, not the archs,
    and needs references measured in the same order as the target. Bandwidth and penalty compete
    with "no correction" by leave-one-out over bootstrap resamples of the points, as the
    candidates do; the residuals are winsorised first, so a few outlying measurements cannot buy a
    correction. Returns (correction per reference arch, share of resamples that preferred a
    kernel fit).
    """
    k = len(rows)
    sd = dev.std(axis=0)
    z = (dev - dev.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
    zk = z[rows]
    sq_k = (zk**2).sum(axis=1)

    def sqdist(a: np.ndarray, sq_a: np.ndarray) -> np.ndarray:  # squared distances to the K points
        return np.maximum(sq_a[:, None] + sq_k[None, :] - 2.0 * a @ zk.T, 0.0)

    d2 = sqdist(zk, sq_k)
    med = float(np.median(d2[np.triu_indices(k, 1)]))
    spread = 1.4826 * float(np.median(np.abs(rel - np.median(rel))))
    if not (med > 0 and spread > 0):
        return np.zeros(len(dev)), 0.0
    rel = np.clip(rel, -_KERNEL_WINSOR * spread, _KERNEL_WINSOR * spread)
    fits: list[tuple[float, np.ndarray]] = []  # (bandwidth, dual coefficients)
    sq = [rel**2]
    for h in _KERNEL_BANDWIDTHS:
        s, u = np.linalg.eigh(np.exp(-d2 / (h * med)))
        s = np.clip(s, 0.0, None)
        ur = u.T @ rel
        for lam in _KERNEL_LAMBDAS:
            shrink = s / (s + lam)
            lev = np.einsum("ij,j,ij->i", u, shrink, u)
            loo = (rel - u @ (shrink * ur)) / np.clip(1.0 - lev, 1e-6, None)
            sq.append(loo**2)
            fits.append((h, u @ (ur / (s + lam))))
    picks = _bootstrap_shares(np.stack(sq))
    out = np.zeros(len(dev))
    if picks[0] >= 1.0:
        return out, 0.0
    d2_all = sqdist(z, (z**2).sum(axis=1))
    for (h, alpha), share in zip(fits, picks[1:], strict=True):
        if share > 0:
            out += share * (np.exp(-d2_all / (h * med)) @ alpha)
    return out, float(1.0 - picks[0])


def _raw_share(source: str) -> float:
    """How much of the raw reference values a candidate's source carries (see ``_RAW_SHARES``)."""
    if source == "smooth":
        return 0.0
    return 1.0 if source == "raw" else float(source[3:])


def fit_transfer(
    space: SearchSpace,
    measurements: Measurements,
    reference: Reference,
    device: str = "target",
    space_options: Mapping[str, Any] | None = None,
) -> FewShotPredictor:
    """Few-shot transfer from reference devices.

    Every reference device gets its own feature model (fitted on all its reference archs, which
    also smooths its measurement noise). The target is a combination of the reference devices --
    their smoothed models or their raw measurements -- chosen by leave-one-out on the K
    measurements: the single best device, a ridge mix of all, or (given enough points) a mix plus a
    per-feature correction. It collapses into one linear feature model plus, when raw reference
    values help, a per-arch offset for the reference archs: the file prices any architecture.
    """
    k = len(measurements)
    if k < 1:
        raise InputError(f"{measurements.path}: expected at least 1 measurement, got none.")
    encoder = ArchEncoder.for_space(space, space_options)
    codes_ref = encoder.codes(reference.archs, space)
    x_ref = encoder.features(codes_ref)
    x_k = encoder.features(encoder.codes(measurements.archs, space))
    y_ms = measurements.latency_ms
    n_dev = len(reference.devices)
    index = {a: i for i, a in enumerate(reference.archs)}
    rows_k = np.array([index.get(a, -1) for a in measurements.archs])
    in_ref = rows_k >= 0
    designs = _designs(encoder, physics=False)
    # From enough points the reference-free physics models compete too (a device the references
    # describe less well than physics does, such as an accelerator, keeps its physics fit).
    free = [d for d in _designs(encoder, physics=k >= _BAG_MIN_K) if d.basis is not None]
    best: dict[str, Any] | None = None
    dev_log: np.ndarray | None = None  # log reference latencies minus the devices' smoothed models
    for target in TARGETS:
        r = np.log(reference.matrix) if target == "log" else reference.matrix
        b_dev, c_dev = _smooth(x_ref, r, _SMOOTH_LAMBDA)  # device d: b_dev[d] + x @ c_dev[:, d]
        if target == "log":
            dev_log = r - (b_dev + x_ref @ c_dev)
        s_k = b_dev + x_k @ c_dev  # K x D smoothed reference latencies at the measured archs
        raw_k = np.where(in_ref[:, None], r[np.maximum(rows_k, 0)], s_k)
        y, w = _to_target(y_ms, target)
        sources = {"smooth": s_k}
        if in_ref.sum() >= 3:
            # Intermediate shares only with enough points: at K=10 more candidates mean more noise.
            for g in _RAW_SHARES if k >= _RAW_SHARE_MIN_K else (1.0,):
                sources["raw" if g == 1.0 else f"raw{g:g}"] = s_k + g * (raw_k - s_k)
        stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        cands: list[dict[str, Any]] = []
        for source, vals in sources.items():
            mu = vals.mean(axis=0)
            sd = vals.std(axis=0)
            sd = np.where(sd > 1e-12, sd, 1.0)
            stats[source] = (mu, sd)
            z = (vals - mu) / sd
            if k < 3:
                # Too few points to choose anything: the mean reference device, shifted to the data.
                wz = np.full(n_dev, 1.0 / n_dev) * sd
                cands.append(
                    {
                        "err": float("inf"),
                        "method": "mean-device",
                        "b0": float(np.mean(y - z @ wz)),
                        "wz": wz,
                        "alpha": 0.0,
                        "delta": np.zeros(x_k.shape[1]),
                        "source": source,
                    }
                )
                break
            cands += _candidates(z, x_k, y, w, y_ms, target, reference.devices, designs, source)
        cands += _reference_free_candidates(x_k, y, w, y_ms, target, free, n_dev)
        win = min(cands, key=lambda c: c["err"])
        # Leave-one-out on K noisy points cannot tell near-ties apart: average them, or with enough
        # points weight them by their bootstrap wins (every part of the collapsed model is linear
        # in the candidate's weights, so averaging is exact).
        if not math.isfinite(win["err"]):
            near, share = [win], np.ones(1)
        elif k >= _BAG_MIN_K:
            near, share = _bagged_choice(cands)
        else:
            near = [c for c in cands if c["err"] <= win["err"] * (1 + _ENSEMBLE_TOL)]
            share = np.full(len(near), 1.0 / len(near))
        intercept, coef, oscale = 0.0, np.zeros(x_k.shape[1]), np.zeros(n_dev)
        for c, a in zip(near, share, strict=True):
            mu, sd = stats[c["source"]]
            scale = c["wz"] / sd
            intercept += a * float(c["b0"] + scale @ (b_dev - mu))
            coef += a * (c_dev @ scale + c["delta"])
            oscale += a * _raw_share(c["source"]) * scale
        if best is None or win["err"] < best["err"] or (math.isinf(best["err"]) and target == "log"):
            offsets = None
            if np.any(oscale != 0):
                # Reference archs keep what their raw values say beyond the smoothed models.
                offsets = (r - (b_dev + x_ref @ c_dev)) @ oscale
            # The ensemble's leave-one-out relative residuals (for the kernel correction below).
            loo_rel = sum(a * c["rel"] for c, a in zip(near, share, strict=True)) if "rel" in win else None
            best = {
                **win,
                "target": target,
                "intercept": intercept,
                "coef": coef,
                "offsets": offsets,
                "n_ensemble": len(near),
                "n_raw": sum(_raw_share(c["source"]) > 0 for c in near),
                "loo_rel": loo_rel,
            }
            if math.isinf(win["err"]):
                break  # the fallback: log target only
    assert best is not None
    keys = _arch_keys(codes_ref)
    kernel_share = 0.0
    if (
        k >= _BAG_MIN_K
        and in_ref.sum() >= _BAG_MIN_K
        and keys is not None
        and best["loo_rel"] is not None
        and dev_log is not None
    ):
        # What the references' raw values say beyond every linear combination of them.
        g, kernel_share = _kernel_correction(dev_log, rows_k[in_ref], best["loo_rel"][in_ref])
        if kernel_share > 0:
            offsets = best["offsets"] if best["offsets"] is not None else np.zeros(len(g))
            if best["target"] == "log":
                offsets = offsets + g
            else:  # a relative correction of the linear prediction
                offsets = offsets + (best["intercept"] + x_ref @ best["coef"] + offsets) * g
            best["offsets"] = offsets
    known: dict[str, float] = {}
    if best["offsets"] is not None and keys is not None:
        known = {key: float(o) for key, o in zip(keys, best["offsets"], strict=True)}
    model = LinearArchModel(
        encoder, best["target"], best["intercept"], best["coef"], float(y_ms.min()) * 0.1, known
    )
    params: dict[str, Any] = {
        "k": k,
        "alpha": best["alpha"],
        "n_ensemble": int(best["n_ensemble"]),
        "n_raw": int(best["n_raw"]),
        "kernel_share": kernel_share,
    }
    if "lambda" in best:
        params["lambda"] = best["lambda"]
    if "device" in best:
        params["device"] = best["device"]
    top = np.argsort(-np.abs(best["wz"]))[: min(5, n_dev)]
    params["top_reference_weights"] = {reference.devices[i]: float(best["wz"][i]) for i in top}
    err = best["err"] if math.isfinite(best["err"]) else -1.0
    fit = FitReport(best["method"], best["target"], err, params)
    return _fitted(FewShotPredictor, space, device, measurements, reference, model, fit)


def _fitted(
    kind: type[P],
    space: SearchSpace,
    device: str,
    measurements: Measurements,
    reference: Reference | None,
    model: LinearArchModel,
    fit: FitReport,
) -> P:
    """A fitted predictor of ``kind`` whose provenance names the files it was fitted on."""
    return kind(
        space=space.name,
        device=device,
        provenance=_provenance(measurements, reference, {}),
        model=model,
        fit=fit,
    )
