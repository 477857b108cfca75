"""The physics prior of the learned and few-shot latency models: per-layer compute and memory
terms (roofline-style) that a device's latency is a weighted sum of, as a basis over the encoder's
features."""

from __future__ import annotations

from typing import Any

import numpy as np

from search_spaces import get_space

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
# FBNet's own ImageNet resolution: exact halvings down to 7x7, so per-layer ratios are not distorted
# by rounding; the fitted weights absorb the overall scale.
_PHYSICS_TASK = ((224, 224, 3), 1000)
# Channel width the physics terms describe by default: FBNet's full-width nets, the ones HELP's
# FBNet latencies were measured on (the space's own default, 0.25, rounds small channel counts
# up to multiples of 8 and distorts the ratios between layers). ``None`` = the space's own width.
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
    """Map from the encoder's features to physical cost features, or None for spaces without one.

    Returns B (n_features x n_terms) with ``features(codes) @ B`` = per arch, the sum over its
    layers of each layer's physical terms (globally, then per stage), computed from the space's
    own blocks at ``width_mult`` (None: the encoder's space options unchanged). Only the
    per-position one-hot block is non-zero, so a model fitted on these terms collapses back into
    per-position costs: the saved file and its pricing do not change.
    """
    if encoder.space != "fbnet":
        return None
    from search_spaces import TaskShape

    options = dict(encoder.space_options)
    if width_mult is not None:
        options["width_mult"] = width_mult
    space = get_space(encoder.space, options)
    task = TaskShape(*_PHYSICS_TASK)
    n = len(encoder.values)
    # (position, value) -> terms; a layer is block 1 + position when every layer is a block.
    terms: dict[tuple[int, int], dict[str, float]] = {}
    for v, value in enumerate(encoder.values[0]):
        if value != "skip":
            blocks = space.blocks(space.from_params(dict.fromkeys(encoder.names, value)), task)
            for p in range(n):
                terms[p, v] = _block_terms(blocks[1 + p])
            continue
        # A skip is free unless it changes shape: then the space prices a projection block.
        filler = next(x for x in encoder.values[0] if x != "skip")
        for p in range(n):
            params = dict.fromkeys(encoder.names, filler)
            params[encoder.names[p]] = value
            proj = [b for b in space.blocks(space.from_params(params), task) if b.kind == "skip_proj"]
            terms[p, v] = _block_terms(proj[0]) if proj else {}
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
