"""The physics prior of the learned and few-shot latency models: per-layer compute and memory
terms (roofline-style) that a device's latency is a weighted sum of, as a basis over the encoder's
features."""

from __future__ import annotations

from typing import Any

import numpy as np

from search_spaces import space_class

from .arch_encoding import ArchEncoder

__all__ = ["PHYSICS_TERMS", "PHYSICS_WIDTH_MULT", "physics_basis"]


# -- physics prior ------------------------------------------------------------------------------
# Global per-layer terms, summed over the layers of an arch; the per-stage terms (one set per
# group of positions) let a device's efficiency differ between feature-map sizes.
# Roofline terms: per kernel max(MACs, ratio * memory traffic), summed, for a range of compute-to-
# bandwidth ratios; a device near one ratio is bound by compute in some layers and memory in others.
_ROOFLINE_RATIOS = (0.25, 1.0, 4.0, 16.0, 64.0)
PHYSICS_TERMS = (
    "mac_pw",
    "mac_dw3",
    "mac_dw5",
    "mac_dw7",
    "act_io",
    "act_mid",
    "params",
    "ops",
    "grouped",
    "add",
    "kernels",
    *(f"roofline{r:g}" for r in _ROOFLINE_RATIOS),
)
_STAGE_TERMS = ("mac_pw", "mac_dw3", "mac_dw5", "mac_dw7", "act_mid", "ops", "grouped")
# Channel width the physics terms describe by default: full-width nets (for FBNet, the ones HELP's
# FBNet latencies were measured on; the space's own default, 0.25, rounds small channel counts
# up to multiples of 8 and distorts the ratios between layers). ``None`` = the space's own width.
# The layers are priced on the task the space defines them for (``layer_blocks``); the fitted
# weights absorb the overall scale.
PHYSICS_WIDTH_MULT = 1.0
_GLOBAL_WEIGHT = 3.0


def _block_kernels(block: Any) -> list[tuple[float, float]]:
    """(MACs, values read and written incl. weights) of each convolution of one priced block."""
    h_in, w_in, c_in, c_out = block.in_h, block.in_w, block.in_c, block.out_c
    a_in, a_out = h_in * w_in, -(-h_in // block.stride) * -(-w_in // block.stride)
    if block.kind == "skip_proj":
        return [(a_out * c_in * c_out, a_in * c_in + a_out * c_out + c_in * c_out)]
    groups = 2 if block.extra == "g2" else 1
    mid, k = c_in * int(block.expand), block.kernel
    return [
        (a_in * c_in * mid / groups, a_in * (c_in + mid) + c_in * mid / groups),
        (a_out * mid * k * k, (a_in + a_out) * mid + mid * k * k),
        (a_out * mid * c_out / groups, a_out * (mid + c_out) + mid * c_out / groups),
    ]


def _block_terms(block: Any) -> dict[str, float]:
    """Physical cost terms of one priced block (multiply-accumulates, activations, parameters,
    kernel count and roofline terms)."""
    h_in, w_in, c_in, c_out = block.in_h, block.in_w, block.in_c, block.out_c
    h_out, w_out = -(-h_in // block.stride), -(-w_in // block.stride)
    a_in, a_out = h_in * w_in, h_out * w_out
    kernels = _block_kernels(block)
    out = {"act_io": float(a_in * c_in + a_out * c_out), "ops": 1.0, "kernels": float(len(kernels))}
    for r in _ROOFLINE_RATIOS:
        out[f"roofline{r:g}"] = float(sum(max(macs, r * traffic) for macs, traffic in kernels))
    if block.kind == "skip_proj":
        out["mac_pw"] = float(a_out * c_in * c_out)
        out["params"] = float(c_in * c_out)
        return out
    groups = 2 if block.extra == "g2" else 1
    mid = c_in * int(block.expand)
    out["mac_pw"] = float(a_in * c_in * mid + a_out * mid * c_out) / groups
    out[f"mac_dw{block.kernel}"] = float(a_out * mid * block.kernel**2)
    out["act_mid"] = float((a_in + a_out) * mid)
    out["params"] = float(c_in * mid / groups + mid * block.kernel**2 + mid * c_out / groups)
    out["grouped"] = float(groups > 1)
    if block.stride == 1 and c_in == c_out:
        out["add"] = float(a_out * c_out)
    return out


def physics_basis(encoder: ArchEncoder, width_mult: float | None = PHYSICS_WIDTH_MULT) -> np.ndarray | None:
    """Map from the encoder's features to physical cost features, or None for a space whose
    decisions are not layers of their own (``SearchSpace.layer_blocks``).

    Returns B (n_features x n_terms) with ``features(codes) @ B`` = per arch, the sum over its
    layers of each layer's physical terms (globally, then per stage), computed from the space's
    own blocks at ``width_mult`` (None: the encoder's space options unchanged). Only the
    per-position one-hot block is non-zero, so a model fitted on these terms collapses back into
    per-position costs: the saved file and its pricing do not change.
    """
    layers = space_class(encoder.space).layer_blocks(encoder.space_options, width_mult)
    if layers is None:
        return None
    n = len(encoder.values)
    # (position, value) -> terms of the block the value prices there (none: nothing computed)
    terms: dict[tuple[int, int], dict[str, float]] = {}
    for v, value in enumerate(encoder.values[0]):
        for p in range(n):
            block = layers[p, value]
            terms[p, v] = _block_terms(block) if block is not None else {}
    stages = encoder.groups or (tuple(range(n)),)
    n_global = len(PHYSICS_TERMS)
    basis = np.zeros((encoder.n_features, n_global + len(stages) * len(_STAGE_TERMS)))
    offset = 0
    for kind, pos, width in encoder._blocks():
        if kind == "one":
            (p,) = pos
            stage = next(s for s, g in enumerate(stages) if p in g)
            for v in range(width):
                t = terms[p, v]
                basis[offset + v, :n_global] = [t.get(name, 0.0) for name in PHYSICS_TERMS]
                col = n_global + stage * len(_STAGE_TERMS)
                basis[offset + v, col : col + len(_STAGE_TERMS)] = [t.get(name, 0.0) for name in _STAGE_TERMS]
        offset += width
    # Unit standard deviation per term over uniformly random archs, so one penalty suits them all.
    rows = basis[encoder.columns_of(("one",))].reshape(n, -1, basis.shape[1])
    sd = np.sqrt(rows.var(axis=1).sum(axis=0))
    # The few global terms are the stronger prior: a lighter penalty than the per-stage ones.
    sd[:n_global] /= _GLOBAL_WEIGHT
    return basis[:, sd > 0] / sd[sd > 0]
