"""The device's latency model for a run: the latency predictor (this machine's profiled table,
a user's table or a fitted predictor), the size model and the memory table, corrected on
whole-model measurements (``nas.calibration``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from search_spaces import InputError, SearchSpace

from .calibration import _calibrate, _calibration_path

if TYPE_CHECKING:  # pragma: no cover
    from latency_models.predictor import LinearCorrection, TablePredictor
    from latency_models.table import LatencyTable
    from search_spaces import TaskShape

    from .config import RunConfig
    from .data import TaskData

__all__ = ["LatencyModel", "build_latency_model", "memory_table", "predictor_from_table"]


@dataclass(frozen=True)
class LatencyModel:
    """The device's models: latency predictor, size model, optional memory table. ``calibration``
    holds the whole-model measurements the correction was fitted on, ``drift`` what re-timing
    a cached profile's calibration models found this run (None: nothing to compare)."""

    predictor: Any
    size: Any
    memory_table: Any
    description: str
    calibration: list[dict[str, Any]]
    drift: dict[str, Any] | None = None

    def refined(self, measured: Sequence[tuple[str, float]], space: SearchSpace) -> LatencyModel:
        """The same model with its correction re-fitted on the calibration models plus
        ``measured`` (arch string, ms) whole-file measurements (a table predictor only)."""
        if not measured or not hasattr(self.predictor, "with_correction") or not self.calibration:
            return self
        pairs = [(c["arch"], c["latency_ms"]) for c in self.calibration] + list(measured)
        archs = [space.parse(a) for a, _ in pairs]
        return replace(self, predictor=self.predictor.with_correction(archs, [m for _, m in pairs]))

    def with_calibration(
        self, records: Sequence[dict[str, Any]], space: SearchSpace, task: Any
    ) -> LatencyModel:
        """The model re-fitted (latency correction and size model) on ``records``."""
        from latency_models.size import SizeModel

        archs = [space.parse(c["arch"]) for c in records]
        sized = [(a, c["size_bytes"]) for a, c in zip(archs, records, strict=True) if c.get("size_bytes")]
        size = SizeModel.fit(
            [space.size_terms(a, task) for a, _ in sized], [b for _, b in sized], self.size.dtype
        )
        predictor = self.predictor
        if hasattr(predictor, "with_correction"):
            predictor = predictor.with_correction(archs, [c["latency_ms"] for c in records])
        return replace(self, predictor=predictor, size=size, calibration=list(records))


def predictor_from_table(
    table: LatencyTable,
    space: str,
    task: TaskShape,
    space_options: Mapping[str, Any],
    *,
    device: str,
    strict: bool = False,
    correction: LinearCorrection | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TablePredictor:
    """The one way a latency table becomes a predictor (``nas run``, ``nas best``, ``nas latency
    fit``): ``space`` with ``space_options`` priced on ``task`` by the sum of ``table``'s blocks,
    a block it lacks priced by the per-kind model fitted on it (``strict`` refuses it instead)."""
    from latency_models.predictor import LinearCorrection, TablePredictor

    return TablePredictor(
        space=space,
        device=device,
        provenance=dict(provenance or {}),
        table=table,
        task=task,
        space_options=dict(space_options),
        correction=LinearCorrection() if correction is None else correction,
        strict=strict,
    )


def memory_table(table: LatencyTable) -> LatencyTable | None:
    """``table`` when every entry carries its peak memory (memory budgets can be checked on it),
    else None."""
    if table.entries and all(e.memory_bytes is not None for e in table.entries.values()):
        return table
    return None


def build_latency_model(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    status: Callable[[str], None] = lambda s: None,
    measured: Sequence[tuple[str, float]] = (),
) -> LatencyModel:
    """Host: profile (or reuse) this machine's table, re-time its calibration models, then fit
    the whole-model overhead and the size model on them (and on ``measured``, files a study
    verified). Otherwise load the user's table or predictor."""
    from latency_models.predictor import load_predictor
    from latency_models.size import SizeModel
    from latency_models.table import LatencyTable

    lat = config.latency
    task = data.shape
    if lat.device != "host":
        if lat.predictor:
            predictor = load_predictor(lat.predictor)
            if predictor.space != space.name:
                raise InputError(
                    f"latency.predictor: predicts space {predictor.space!r}, but the run searches {space.name!r}."
                )
            return LatencyModel(predictor, SizeModel(lat.dtype), None, f"predictor {lat.predictor}", [])
        table = LatencyTable.load(lat.table)
        predictor = predictor_from_table(
            table, space.name, task, config.space.options, device=lat.device, strict=lat.strict
        )
        description = f"table {lat.table}"
        if lat.strict:
            _check_covered(space, table, task)
        else:
            blocks = space.all_blocks(task)
            missing = table.missing(blocks) if blocks is not None else []
            if missing:
                description += (
                    f" ({len(missing)} of {len(set(blocks or []))} blocks of the space extrapolated)"
                )
                status(
                    f"latency table {lat.table}: {len(missing)} of {len(set(blocks or []))} blocks of the space "
                    "are not in it; priced by the per-kind model fitted on its entries (latency.strict refuses)"
                )
        memory = memory_table(table)
        model = LatencyModel(predictor, SizeModel(lat.dtype), memory, description, [])
        records = _table_calibration(table, space, task, lat.table, status)
        return model.with_calibration(records, space, task) if records else model

    from latency_models.block_sample import blocks_to_profile

    blocks, complete = blocks_to_profile(space, task)
    if not complete:
        status(
            f"space {space.name} cannot list every block: profiling the {len(blocks)} blocks of its extreme "
            "and random architectures; blocks outside them are priced by the per-kind model fitted on these"
        )
    predictor = _host_predictor(config, space, task, blocks, status)
    calibration, drift = _calibrate(config, space, data, predictor, status)
    if drift is not None and drift["drifted"] and lat.on_drift == "reprofile":
        status(f"re-profiling this machine: {drift['message']}")
        _forget_host_profile(config, space, predictor)
        predictor = _host_predictor(config, space, task, blocks, status)
        calibration, _ = _calibrate(config, space, data, predictor, status)
        drift = {**drift, "action": "re-profiled"}
    archs = [space.parse(c["arch"]) for c in calibration]
    size = SizeModel.fit(
        [space.size_terms(a, task) for a in archs], [c["size_bytes"] for c in calibration], lat.dtype
    )
    memory = memory_table(predictor.table)
    model = LatencyModel(
        predictor,
        size,
        memory,
        f"host profile ({lat.runtime} {lat.dtype}, {lat.threads} thread)"
        + ("" if complete else f"; {len(blocks)} sampled blocks, the others extrapolated"),
        calibration,
        drift,
    )
    if calibration:
        model = replace(
            model,
            predictor=predictor.with_correction(archs, [c["latency_ms"] for c in calibration]),
        )
    return model.refined(measured, space)


def _host_predictor(
    config: RunConfig, space: SearchSpace, task: Any, blocks: Any, status: Callable[[str], None]
) -> Any:
    from latency_models.profile import host_table

    lat = config.latency
    status(
        f"host latency table: {len(blocks)} distinct blocks ({lat.runtime} {lat.dtype}, {lat.threads} thread)"
    )
    table = host_table(
        space,
        task,
        blocks,
        lat.runtime,
        lat.dtype,
        lat.threads,
        progress=lambda i, n: status(f"profiling block {i}/{n}") if n and i % 20 == 0 else None,
    )
    return predictor_from_table(
        table,
        space.name,
        task,
        config.space.options,
        device="host",
        provenance={
            "table": "host profile",
            "runtime": lat.runtime,
            "dtype": lat.dtype,
            "threads": lat.threads,
        },
    )


def _forget_host_profile(config: RunConfig, space: SearchSpace, predictor: Any) -> None:
    """Delete this machine's cached table and calibration for the run's space and runtime."""
    from latency_models.profile import table_path

    lat = config.latency
    table_path(space, lat.runtime, lat.dtype, lat.threads).unlink(missing_ok=True)
    path = _calibration_path(config, space, predictor.task, predictor)[0]
    for p in [path, *path.parent.glob(path.stem + "-*.bin")]:
        p.unlink(missing_ok=True)


def _table_calibration(
    table: Any, space: SearchSpace, task: Any, where: str, status: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The whole-model measurements a device table carries (``nas latency import --kit``), on
    which the overhead correction and the size model are fitted as for the host; none when the
    table has none or was measured for another input than the run's task."""
    from latency_models.table import CALIBRATION_KEY

    records = table.meta.extra.get(CALIBRATION_KEY)
    if not records:
        return []
    shape, classes = table.meta.extra.get("input_shape"), table.meta.extra.get("num_classes")
    if (shape is not None and tuple(shape) != tuple(task.input_shape)) or (
        classes is not None and classes != task.num_classes
    ):
        status(
            f"latency table {where}: its calibration models were measured for input {shape} and "
            f"{classes} classes, the run's task is {list(task.input_shape)} and {task.num_classes}: "
            "not used (no whole-model correction)"
        )
        return []
    for i, r in enumerate(records):
        try:
            space.parse(r["arch"])
        except InputError as e:
            raise InputError(f"{where}: extra.{CALIBRATION_KEY}[{i}]: {e}") from None
    status(f"latency table {where}: whole-model correction fitted on its {len(records)} calibration models")
    return [dict(r) for r in records]


def _check_covered(space: SearchSpace, table: Any, task: Any) -> None:
    blocks = space.all_blocks(task)
    if blocks is None:
        return
    missing = table.missing(blocks)
    if missing:
        table.lookup(missing[0])  # raises MissingEntryError naming the block and the nearest entries
