"""How an architecture becomes features for the learned and few-shot latency models: one-hot
choices per position, shared counts, liveness and pairwise interactions (``ArchEncoder``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces import InputError, SearchSpace
from search_spaces.safeio import brief

__all__ = ["ArchEncoder", "BASIC_KINDS", "LIVE_EXTRA"]

# At most this many positions get all pairwise interaction features (nb201: 6 edges).
_MAX_PAIR_POSITIONS = 8


# The extra of a space whose decisions may compute nothing (``SearchSpace.live_choices``), named
# after the space (``nb201-live`` in saved models): some runtimes (TFLite) fold dead branches away.
LIVE_EXTRA = "{space}-live"
# Feature blocks: "count" (how often each value occurs anywhere: the same op costs the same
# everywhere), "group" (per group of positions, ``SearchSpace.choice_groups``, e.g. an fbnet stage),
# "one" (per position), "pair" (joint value of two positions); the live extra adds "livecount",
# "live", "livepair", "dead".
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
            if not extra.endswith(LIVE_EXTRA.format(space="")):
                raise InputError(
                    f"encoder extras: unknown extra {extra!r}; valid extras: [{self._live_extra!r}] "
                    "(for a space whose decisions may compute nothing)."
                )
            if extra != self._live_extra:
                raise InputError(
                    f"encoder extras: {extra!r} needs space {extra.removesuffix('-live')!r}, got {self.space!r}."
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
        values = tuple(tuple(c.values) for c in choices)
        has_live = space.live_choices(np.zeros((0, n), dtype=np.int16), values) is not None
        extras = (LIVE_EXTRA.format(space=space.name),) if has_live else ()
        return cls(
            space.name,
            dict(options or {}),
            tuple(c.name for c in choices),
            values,
            pairs,
            extras,
            space.choice_groups(),
        )

    @property
    def _live_extra(self) -> str:
        return LIVE_EXTRA.format(space=self.space)

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
        if self._live_extra in self.extras:
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
        if self._live_extra in self.extras:
            live = _space(self.space, self.space_options).live_choices(codes, self.values)
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


def _arch_keys(codes: np.ndarray) -> list[str] | None:
    """One short string per arch (its codes as characters), or None if codes are too large."""
    if codes.size and int(codes.max()) > 150:
        return None
    chars = (codes.astype(np.uint8) + 48).astype(np.uint8)
    return [b.decode("latin-1") for b in chars.view(f"S{codes.shape[1]}").ravel()] if codes.size else []


_SPACES: dict[str, SearchSpace] = {}


def _space(name: str, options: Mapping[str, Any]) -> SearchSpace:
    """The space an encoder was made for (built once per process: encoding runs per batch)."""
    import json

    from search_spaces import get_space

    key = json.dumps([name, dict(options)], sort_keys=True, default=str)
    if key not in _SPACES:
        _SPACES[key] = get_space(name, dict(options))
    return _SPACES[key]
