"""Price blocks a latency table does not hold: a per-kind cost model over the block's settings
(multiply-accumulates and memory traffic of its parts, with non-negative weights fitted on the
table's own entries), corrected by the measured-to-modelled ratio of the most similar entries.

The entries a table holds stay exact; only missing blocks are modelled (``BlockModel.price``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces import Block, InputError

from .table import Entry

__all__ = ["BlockModel", "block_features", "fit_block_model"]

# Feature names per kind family; what each costs is fitted, never assumed.
_MBCONV = ("const", "mac_expand", "mac_dw", "mac_project", "mac_se", "mem", "act_elems", "se_elems")
_CONV = ("const", "mac", "mem", "act_elems")
_OTHER = ("const", "mac", "mem")
# Nearest measured entries whose ratio corrects the cost model, and how settings are compared.
NEIGHBOURS = 2
_DISTANCE_FIELDS = ("in_h", "in_c", "out_c", "kernel", "expand")


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // max(1, stride) + 1


def block_features(block: Block) -> tuple[str, np.ndarray]:
    """The cost family of ``block`` and its features (counts in millions)."""
    h, w, c, o = block.in_h, block.in_w, block.in_c, block.out_c
    ho, wo = _out_size(h, block.stride), _out_size(w, block.stride)
    hswish = block.act in ("hswish", "swish", "gelu")
    if block.kind == "mbconv" or block.kind.endswith("mbconv"):
        mid = max(1, round(block.expand * c))
        expand = h * w * c * mid if mid != c or block.expand != 1 else 0
        dw = ho * wo * mid * block.kernel * block.kernel
        project = ho * wo * mid * o
        se_mid = max(1, mid // 4)
        mac_se = 2 * mid * se_mid if block.se else 0
        se_elems = ho * wo * mid if block.se else 0
        mem = h * w * c + (h * w * mid if expand else 0) + ho * wo * mid + ho * wo * o
        act = (h * w * mid + ho * wo * mid) if hswish else 0
        values = (1.0, expand, dw, project, mac_se, mem, act, se_elems)
        return "mbconv", np.array([v / 1e6 if i else v for i, v in enumerate(values)], dtype=float)
    if block.kind in ("conv", "dwconv", "sepconv"):
        mac = ho * wo * c * o * block.kernel * block.kernel
        if block.kind == "dwconv":
            mac = ho * wo * c * block.kernel * block.kernel
        mem = h * w * c + ho * wo * o
        act = ho * wo * o if hswish else 0
        return block.kind, np.array([1.0, mac / 1e6, mem / 1e6, act / 1e6])
    mac = h * w * c * o if block.kind in ("dense", "pool_dense") else 0
    mem = h * w * c + ho * wo * o
    return block.kind, np.array([1.0, mac / 1e6, mem / 1e6])


def _nnls(a: np.ndarray, b: np.ndarray, iters: int = 200) -> np.ndarray:
    """Non-negative least squares (Lawson-Hanson active set); small problems only."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iters):
        grad = a.T @ (b - a @ x)
        free = ~passive & (grad > 1e-12)
        if not free.any():
            break
        passive[int(np.argmax(np.where(free, grad, -np.inf)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = float(np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300)))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
            if not passive.any():
                break
    return x


def log_settings(block: Block) -> np.ndarray:
    return np.array([math.log(max(float(getattr(block, f)), 1e-9)) for f in _DISTANCE_FIELDS])


def group_of(block: Block) -> tuple[object, ...]:
    """Blocks whose ratio to the cost model may correct each other: same kind and structure."""
    return (block.kind, block.stride, block.se, block.act, block.extra)


@dataclass(frozen=True)
class BlockModel:
    """A per-kind cost model fitted on a table's entries: ``weights[family]`` over
    ``block_features``, plus the entries themselves for the neighbour correction."""

    weights: Mapping[str, tuple[float, ...]]
    entries: Mapping[Block, float]

    def modelled(self, block: Block) -> float | None:
        """The cost model alone (ms), or None when the table has no block of this family."""
        family, x = block_features(block)
        w = self.weights.get(family)
        if w is None:
            return None
        return float(np.dot(np.asarray(w), x))

    def price(self, block: Block) -> float | None:
        """A held entry as measured; otherwise the cost model scaled by the geometric mean of
        the measured/modelled ratios of the ``NEIGHBOURS`` most similar entries (same kind,
        stride, squeeze-excite, activation and qualifiers when any; else the same family)."""
        if block in self.entries:
            return self.entries[block]
        base = self.modelled(block)
        if base is None:
            return None
        family = block_features(block)[0]
        candidates = [b for b in self.entries if group_of(b) == group_of(block)] or [
            b for b in self.entries if block_features(b)[0] == family
        ]
        here = log_settings(block)
        ranked = sorted(candidates, key=lambda b: (float(np.abs(log_settings(b) - here).sum()), b.key))
        ratios = []
        for b in ranked[:NEIGHBOURS]:
            m = self.modelled(b)
            if m is not None and m > 0:
                ratios.append(math.log(self.entries[b] / m))
        scale = math.exp(float(np.mean(ratios))) if ratios else 1.0
        return max(base * scale, 1e-6)


def fit_block_model(entries: Mapping[Block, Entry] | Mapping[Block, float]) -> BlockModel:
    """Fit one cost model per block family on ``entries`` (in relative error, so a 0.1 ms
    block counts as much as a 5 ms one); ``InputError`` when there are no entries."""
    values = {b: float(e.mean_ms if isinstance(e, Entry) else e) for b, e in entries.items()}
    if not values:
        raise InputError("table: expected at least one entry to fit a block model on, got none.")
    by_family: dict[str, list[tuple[np.ndarray, float]]] = {}
    for block, y in values.items():
        family, x = block_features(block)
        by_family.setdefault(family, []).append((x, y))
    weights: dict[str, tuple[float, ...]] = {}
    for family, rows in by_family.items():
        x = np.stack([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        w = _nnls((x / scale) / y[:, None], np.ones(len(y))) / scale
        if not np.any(w > 0):  # a degenerate family: price by the mean ratio to a constant
            w = np.zeros(x.shape[1])
            w[0] = float(np.median(y))
        weights[family] = tuple(float(v) for v in w)
    return BlockModel(weights, values)


def merge_tables(tables: Iterable[Mapping[Block, Entry]]) -> dict[Block, float]:
    """Several tables' entries as one (a block in several: the median of its values)."""
    seen: dict[Block, list[float]] = {}
    for entries in tables:
        for b, e in entries.items():
            seen.setdefault(b, []).append(e.mean_ms)
    return {b: float(np.median(v)) for b, v in seen.items()}


def feature_names(family: str) -> Sequence[str]:
    return {"mbconv": _MBCONV, "conv": _CONV, "dwconv": _CONV, "sepconv": _CONV}.get(family, _OTHER)
