"""Learned and few-shot latency predictors: a linear model on one-hot architecture features, fitted
from a handful of end-to-end measurements, optionally transferred from reference devices (HELP's
idea: a device is known by its latencies on reference architectures).

Both kinds save as plain JSON (coefficients as lists) and price any architecture of the space,
measured or not, with one gather-and-sum per feature block.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces import InputError, SearchSpace, get_space
from search_spaces.safeio import brief

from .measurements import Measurements, Reference
from .predictor import PREDICTORS, LatencyPredictor

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

TARGETS = ("log", "linear")
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
_BAGS = 200
# Kernel ridge on the reference devices' deviations from their smoothed models (see
# ``_kernel_correction``): bandwidths as multiples of the median squared distance, penalties, and
# the winsorising of the residuals it fits (multiples of their robust standard deviation).
_KERNEL_BANDWIDTHS = (0.5, 1.0)
_KERNEL_LAMBDAS = (0.3, 1.0, 3.0)
_KERNEL_WINSOR = 3.0
# At most this many positions get all pairwise interaction features (nb201: 6 edges).
_MAX_PAIR_POSITIONS = 8


# -- features -----------------------------------------------------------------------------------
def _nb201_live(codes: np.ndarray, values: Sequence[Sequence[Any]]) -> np.ndarray:
    """Edges that compute (input not constant zero, output reaches the cell output), vectorised.

    Mirrors ``search_spaces.nb201.live_edges``: some runtimes (TFLite) fold away dead branches.
    """
    from search_spaces.nb201 import EDGES

    n = len(codes)
    not_none = np.stack(
        [np.asarray([v != "none" for v in values[e]])[codes[:, e]] for e in range(len(EDGES))], axis=1
    )
    nonzero = np.zeros((n, 4), dtype=bool)
    nonzero[:, 0] = True
    for j in (1, 2, 3):
        for e, (dst, src) in enumerate(EDGES):
            if dst == j:
                nonzero[:, j] |= not_none[:, e] & nonzero[:, src]
    reaches = np.zeros((n, 4), dtype=bool)
    reaches[:, 3] = True
    for i in (2, 1, 0):
        for e, (dst, src) in enumerate(EDGES):
            if src == i:
                reaches[:, i] |= not_none[:, e] & reaches[:, dst]
    live = np.zeros((n, len(EDGES)), dtype=bool)
    for e, (dst, src) in enumerate(EDGES):
        live[:, e] = not_none[:, e] & nonzero[:, src] & reaches[:, dst] & nonzero[:, dst]
    return live


EXTRAS = {"nb201-live": "nb201"}
# Feature blocks: "count" (how often each value occurs anywhere: the same op costs the same
# everywhere), "group" (per group of positions, e.g. an fbnet stage), "one" (per position),
# "pair" (joint value of two positions); nb201-live adds "livecount", "live", "livepair", "dead".
# Ridge on all of them at once is a hierarchical prior: shared costs first, position-specific
# deviations only where the data ask for them.
BASIC_KINDS = ("count", "group", "livecount", "dead")


@dataclass(frozen=True)
class ArchEncoder:
    """Architecture -> category codes -> 0/1 and count features (see the feature blocks above).

    ``values`` are the choices of the space in order; ``pairs`` the positions whose joint value
    gets its own feature (all pairs for short cells, none for long chains such as fbnet);
    ``groups`` positions that share a shape (fbnet stages).
    """

    space: str
    space_options: Mapping[str, Any]
    names: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    pairs: tuple[tuple[int, int], ...]
    extras: tuple[str, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        for extra in self.extras:
            if extra not in EXTRAS:
                raise InputError(f"encoder extras: unknown extra {extra!r}; valid extras: {sorted(EXTRAS)}.")
            if EXTRAS[extra] != self.space:
                raise InputError(
                    f"encoder extras: {extra!r} needs space {EXTRAS[extra]!r}, got {self.space!r}."
                )
        n = len(self.values)
        for i, j in self.pairs:
            if not (0 <= i < j < n):
                raise InputError(f"encoder pairs: expected 0 <= i < j < {n}, got ({i}, {j}).")
        for g in self.groups:
            if not g or any(not 0 <= p < n for p in g) or len({self.values[p] for p in g}) != 1:
                raise InputError(
                    f"encoder groups: expected positions in [0, {n}) with the same values, got {list(g)}."
                )

    @classmethod
    def for_space(cls, space: SearchSpace, options: Mapping[str, Any] | None = None) -> ArchEncoder:
        choices = space.choices()
        n = len(choices)
        pairs = tuple((i, j) for i in range(n) for j in range(i + 1, n)) if n <= _MAX_PAIR_POSITIONS else ()
        extras = ("nb201-live",) if space.name == "nb201" else ()
        groups: tuple[tuple[int, ...], ...] = ()
        if space.name == "fbnet":
            from search_spaces.fbnet import LAYER_SCHEDULE

            bounds = np.cumsum([0] + [layers for _, layers, _ in LAYER_SCHEDULE])
            groups = tuple(tuple(range(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        return cls(
            space.name,
            dict(options or {}),
            tuple(c.name for c in choices),
            tuple(tuple(c.values) for c in choices),
            pairs,
            extras,
            groups,
        )

    @property
    def _shared_values(self) -> bool:
        return len(set(self.values)) == 1

    # blocks of the feature vector: (kind, positions, width)
    def _blocks(self) -> list[tuple[str, tuple[int, ...], int]]:
        sizes = [len(v) for v in self.values]
        n = len(sizes)
        out: list[tuple[str, tuple[int, ...], int]] = []
        if self._shared_values:
            out.append(("count", tuple(range(n)), sizes[0]))
        out += [("group", g, sizes[g[0]]) for g in self.groups]
        out += [("one", (p,), sizes[p]) for p in range(n)]
        out += [("pair", (i, j), sizes[i] * sizes[j]) for i, j in self.pairs]
        if "nb201-live" in self.extras:
            out.append(("livecount", tuple(range(n)), sizes[0]))
            out += [("live", (p,), sizes[p]) for p in range(n)]
            out += [("livepair", (i, j), sizes[i] * sizes[j]) for i, j in self.pairs]
            out.append(("dead", (), 1))
        return out

    @property
    def n_features(self) -> int:
        return sum(width for _, _, width in self._blocks())

    def columns_of(self, kinds: Sequence[str]) -> np.ndarray:
        """Indices of the features in blocks of the given kinds (to fit a smaller model)."""
        idx: list[int] = []
        offset = 0
        for kind, _, width in self._blocks():
            if kind in kinds:
                idx += range(offset, offset + width)
            offset += width
        return np.asarray(idx, dtype=np.int64)

    def codes(self, archs: Sequence[Hashable], space: SearchSpace) -> np.ndarray:
        """Category index of every choice, one row per architecture."""
        index = [{v: i for i, v in enumerate(vals)} for vals in self.values]
        out = np.empty((len(archs), len(self.names)), dtype=np.int16)
        for r, arch in enumerate(archs):
            params = space.to_params(arch)
            try:
                out[r] = [index[p][params[name]] for p, name in enumerate(self.names)]
            except KeyError as e:
                raise InputError(
                    f"arch {brief(str(arch))}: value {e.args[0]!r} is not one the predictor was fitted on "
                    f"(space {self.space} with options {dict(self.space_options)})."
                ) from None
        return out

    def _columns(self, codes: np.ndarray) -> list[list[np.ndarray]]:
        """Per feature block, the column (within the block) each row adds 1 to; -1 adds nothing."""
        live_codes = None
        dead = None
        if "nb201-live" in self.extras:
            live = _nb201_live(codes, self.values)
            none_idx = np.array([list(v).index("none") if "none" in v else 0 for v in self.values])
            live_codes = np.where(live, codes, none_idx[None, :]).astype(np.int64)
            dead = ~live.any(axis=1)
        c64 = codes.astype(np.int64)
        cols: list[list[np.ndarray]] = []
        for kind, pos, _ in self._blocks():
            if kind in ("count", "group", "one"):
                cols.append([c64[:, p] for p in pos])
            elif kind == "pair":
                i, j = pos
                cols.append([c64[:, i] * len(self.values[j]) + c64[:, j]])
            elif kind in ("livecount", "live"):
                assert live_codes is not None
                cols.append([live_codes[:, p] for p in pos])
            elif kind == "livepair":
                assert live_codes is not None
                i, j = pos
                cols.append([live_codes[:, i] * len(self.values[j]) + live_codes[:, j]])
            else:  # dead: the whole cell computes nothing
                assert dead is not None
                cols.append([np.where(dead, 0, -1)])
        return cols

    def features(self, codes: np.ndarray) -> np.ndarray:
        """Dense feature matrix (for fitting)."""
        x = np.zeros((len(codes), self.n_features), dtype=float)
        offset = 0
        rows = np.arange(len(codes))
        for (_, _, width), parts in zip(self._blocks(), self._columns(codes), strict=True):
            for col in parts:
                on = col >= 0
                # one column per row within a part, so plain fancy-index += never collides
                x[rows[on], offset + col[on]] += 1.0
            offset += width
        return x

    def dot(self, codes: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """``features(codes) @ coef`` without building the matrix (a gather per block)."""
        out = np.zeros(len(codes), dtype=float)
        offset = 0
        for (_, _, width), parts in zip(self._blocks(), self._columns(codes), strict=True):
            for col in parts:
                on = col >= 0
                out[on] += coef[offset + col[on]]
            offset += width
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "space_options": dict(self.space_options),
            "choices": [{"name": n, "values": list(v)} for n, v in zip(self.names, self.values, strict=True)],
            "pairs": [list(p) for p in self.pairs],
            "groups": [list(g) for g in self.groups],
            "extras": list(self.extras),
        }

    @classmethod
    def from_json(cls, space: str, doc: Mapping[str, Any]) -> ArchEncoder:
        choices = doc["choices"]
        return cls(
            space,
            dict(doc.get("space_options", {})),
            tuple(str(c["name"]) for c in choices),
            tuple(tuple(c["values"]) for c in choices),
            tuple((int(p[0]), int(p[1])) for p in doc.get("pairs", [])),
            tuple(str(e) for e in doc.get("extras", [])),
            tuple(tuple(int(i) for i in g) for g in doc.get("groups", [])),
        )


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
    return LearnedPredictor(
        space=space.name,
        device=device,
        provenance=_provenance(measurements, None, {}),
        model=model,
        fit=fit,
    )


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


def _arch_keys(codes: np.ndarray) -> list[str] | None:
    """One short string per arch (its codes as characters), or None if codes are too large."""
    if codes.size and int(codes.max()) > 150:
        return None
    chars = (codes.astype(np.uint8) + 48).astype(np.uint8)
    return [b.decode("latin-1") for b in chars.view(f"S{codes.shape[1]}").ravel()] if codes.size else []


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
    return FewShotPredictor(
        space=space.name,
        device=device,
        provenance=_provenance(measurements, reference, {}),
        model=model,
        fit=fit,
    )
