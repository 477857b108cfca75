"""Latency predictors: price architectures of a space, saved as plain JSON that loads anywhere.

``TablePredictor`` sums a device table over an architecture's blocks and corrects the sum for the
whole-model overhead with ``a * sum + b`` fitted on a few end-to-end measurements. Blocks the
table lacks are priced by a per-kind cost model fitted on its entries (``extrapolate``) unless
the predictor is ``strict``. Other kinds
(learned, few-shot transfer) register in ``PREDICTORS`` and share the file envelope.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from search_spaces import InputError, SearchSpace, TaskShape, get_space
from search_spaces.safeio import brief, check_format, finite_number, load_json, unknown_key

from .table import LatencyTable, write_atomic

__all__ = [
    "PREDICTOR_FORMAT",
    "PREDICTOR_VERSION",
    "PREDICTORS",
    "LatencyPredictor",
    "LinearCorrection",
    "TablePredictor",
    "load_predictor",
]

PREDICTOR_FORMAT = "edge-nas-latency-predictor"
PREDICTOR_VERSION = 1


@dataclass(frozen=True)
class LinearCorrection:
    """``measured ~= scale * table_sum + offset_ms``: the whole-model overhead a table misses."""

    scale: float = 1.0
    offset_ms: float = 0.0
    n_measurements: int = 0

    def __post_init__(self) -> None:
        # A scale <= 0 inverts or flattens the ranking and can price networks at negative ms;
        # NaN prices every network NaN and screens nothing out.
        finite_number(self.scale, "correction.scale", positive=True)
        finite_number(self.offset_ms, "correction.offset_ms")
        if (
            isinstance(self.n_measurements, bool)
            or not isinstance(self.n_measurements, int)
            or not 0 <= self.n_measurements < 2**53
        ):
            raise InputError(
                f"correction.n_measurements: expected an int >= 0, got {brief(self.n_measurements)}."
            )

    def __call__(self, raw: np.ndarray | float) -> Any:
        return self.scale * np.asarray(raw, dtype=float) + self.offset_ms

    @classmethod
    def fit(cls, raw: Sequence[float], measured: Sequence[float]) -> LinearCorrection:
        """Least squares in relative error (each model counts the same, large or small).

        With one measurement only the offset is fitted; the scale stays 1.
        """
        x = np.asarray(raw, dtype=float)
        y = np.asarray(measured, dtype=float)
        if len(x) == 0:
            return cls()
        if len(x) == 1 or np.ptp(x) == 0:
            return cls(1.0, float(np.mean(y - x)), len(x))
        w = 1.0 / y
        a = np.stack([x * w, w], axis=1)
        (scale, offset), *_ = np.linalg.lstsq(a, y * w, rcond=None)
        if scale <= 0:  # a degenerate fit would invert the ranking: keep the table's ranking
            return cls(1.0, float(np.mean(y - x)), len(x))
        return cls(float(scale), float(offset), len(x))


@dataclass(frozen=True)
class LatencyPredictor(ABC):
    """Predicts end-to-end latency (ms) of architectures of one space on one device."""

    kind: ClassVar[str]
    space: str
    device: str
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @abstractmethod
    def predict(self, archs: Sequence[Hashable]) -> np.ndarray:
        """Latency in ms for each architecture (parsed arch objects of ``space``)."""

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """The kind-specific part of the JSON file."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, doc: Mapping[str, Any], where: str) -> LatencyPredictor:
        """Inverse of ``_payload`` (``doc`` is the whole file)."""

    def to_json(self) -> str:
        doc = {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "kind": self.kind,
            "space": self.space,
            "device": self.device,
            "provenance": dict(self.provenance),
            **self._payload(),
        }
        return json.dumps(doc, indent=1) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        write_atomic(path, self.to_json())


@dataclass(frozen=True)
class TablePredictor(LatencyPredictor):
    """Sum of a per-block table, corrected for whole-model overhead. A block the table lacks is
    priced by ``latency_models.extrapolate`` (fitted on the table's entries, which stay exact);
    ``strict`` refuses it with ``MissingEntryError`` instead."""

    kind = "table"
    table: LatencyTable | None = None
    task: TaskShape | None = None
    space_options: Mapping[str, Any] = field(default_factory=dict)
    correction: LinearCorrection = field(default_factory=LinearCorrection)
    strict: bool = False

    def __post_init__(self) -> None:
        if self.table is None or self.task is None:
            raise InputError("table predictor: expected a latency table and a task shape, got none.")
        if not isinstance(self.strict, bool):
            raise InputError(f"strict: expected true or false, got {brief(self.strict)}.")

    def _space(self) -> SearchSpace:
        return _cached_space(self.space, json.dumps(dict(self.space_options), sort_keys=True))

    @cached_property
    def block_model(self) -> Any:
        """The per-kind cost model fitted on the table (built on first use)."""
        from .extrapolate import fit_block_model

        assert self.table is not None
        return fit_block_model(self.table.entries)

    def _fill(self, block: Any) -> float:
        value = self.block_model.price(block)
        if value is None:  # no entry of its kind to fit on: the table's own message
            assert self.table is not None
            self.table.lookup(block)
        return float(value)

    def extrapolated(self, archs: Sequence[Hashable]) -> list[int]:
        """How many of each architecture's blocks the table lacks (priced by the cost model)."""
        space = self._space()
        assert self.table is not None and self.task is not None
        return [sum(b not in self.table for b in space.blocks(a, self.task)) for a in archs]

    def raw(self, archs: Sequence[Hashable]) -> np.ndarray:
        """Table sums before the overhead correction."""
        space = self._space()
        assert self.table is not None and self.task is not None
        fill = None if self.strict else self._fill
        return np.array([self.table.price(space.blocks(a, self.task), fill) for a in archs], dtype=float)

    def predict(self, archs: Sequence[Hashable]) -> np.ndarray:
        out = np.asarray(self.correction(self.raw(archs)), dtype=float)
        bad = ~(np.isfinite(out) & (out > 0))
        if bad.any():  # never let a network look free (or cost -3 ms) to the search
            i = int(np.argmax(bad))
            raise InputError(
                f"predictor for {self.device}: expected a latency > 0 ms for {brief(str(archs[i]))}, got "
                f"{out[i]:.4g} (correction scale {self.correction.scale:g}, offset_ms {self.correction.offset_ms:g})."
            )
        return out

    def with_correction(self, archs: Sequence[Hashable], measured_ms: Sequence[float]) -> TablePredictor:
        from dataclasses import replace

        return replace(self, correction=LinearCorrection.fit(self.raw(archs), measured_ms))

    def _payload(self) -> dict[str, Any]:
        assert self.table is not None and self.task is not None
        return {
            "task": {"input_shape": list(self.task.input_shape), "num_classes": self.task.num_classes},
            "space_options": dict(self.space_options),
            "correction": {
                "scale": self.correction.scale,
                "offset_ms": self.correction.offset_ms,
                "n_measurements": self.correction.n_measurements,
            },
            "table": json.loads(self.table.to_json()),
            **({"strict": True} if self.strict else {}),
        }

    @classmethod
    def _from_payload(cls, doc: Mapping[str, Any], where: str) -> TablePredictor:
        try:
            task_doc = _mapping(doc.get("task"), "task")
            shape = task_doc.get("input_shape")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape
            ):
                raise InputError(f"task.input_shape: expected a list of sizes > 0, got {brief(shape)}.")
            classes = task_doc.get("num_classes")
            if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes < 2**31:
                raise InputError(f"task.num_classes: expected an int >= 2, got {brief(classes)}.")
            task = TaskShape(tuple(shape), classes)
            corr = _mapping(doc.get("correction", {}), "correction")
            for key in corr:
                if key not in ("scale", "offset_ms", "n_measurements"):
                    raise unknown_key("correction", key, ("n_measurements", "offset_ms", "scale"))
            table = LatencyTable._from_doc(doc.get("table"), "table")
            return cls(
                space=_text(doc.get("space"), "space"),
                device=_text(doc.get("device"), "device"),
                provenance=_mapping(doc.get("provenance", {}), "provenance"),
                table=table,
                task=task,
                space_options=_mapping(doc.get("space_options", {}), "space_options"),
                correction=LinearCorrection(
                    corr.get("scale", 1.0), corr.get("offset_ms", 0.0), corr.get("n_measurements", 0)
                ),
                strict=doc.get("strict", False),
            )
        except InputError as e:
            raise InputError(f"{where}: {e}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected a mapping, got {brief(value)}.")
    return dict(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a non-empty name, got {brief(value)}.")
    return value


_SPACE_CACHE: dict[tuple[str, str], SearchSpace] = {}


def _cached_space(name: str, options_json: str) -> SearchSpace:
    key = (name, options_json)
    if key not in _SPACE_CACHE:
        _SPACE_CACHE[key] = get_space(name, json.loads(options_json))
    return _SPACE_CACHE[key]


# kind -> class; other modules add theirs (e.g. the few-shot transfer predictor).
PREDICTORS: dict[str, Callable[..., Any]] = {"table": TablePredictor}


def load_predictor(path: str | os.PathLike[str]) -> LatencyPredictor:
    """Load any predictor file; unknown kinds and versions are named."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: predictor file not found.")
    doc = load_json(path, "predictor")
    doc = check_format(doc, str(path), PREDICTOR_FORMAT, PREDICTOR_VERSION, "predictor")
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise InputError(f"{path}: kind: expected one of {sorted(PREDICTORS)}, got {brief(kind)}.")
    if kind not in PREDICTORS:
        _load_plugins()
    if kind not in PREDICTORS:
        raise InputError(f"{path}: unknown predictor kind {brief(kind)}; valid kinds: {sorted(PREDICTORS)}.")
    return PREDICTORS[kind]._from_payload(doc, str(path))


# Modules that register further predictor kinds when imported (one that fails to import is an
# error, PluginError).
PREDICTOR_MODULES = ("latency_models.transfer",)


def _load_plugins() -> None:
    """Import the modules that register further predictor kinds."""
    from search_spaces.plugins import import_plugin

    for module in PREDICTOR_MODULES:
        import_plugin(module, "latency_models.predictor.PREDICTOR_MODULES")
