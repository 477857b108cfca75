"""Run configuration: a YAML file validated completely when it is loaded, before any work.

Every section is a frozen dataclass; unknown keys, wrong types and out-of-range values raise an
``InputError`` that names the field (``constraints.max_latency_ms``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import InputError
from search_spaces.safeio import brief, unknown_key

from .data import BUNDLED, TaskSpec

__all__ = [
    "BUDGETS",
    "Constraints",
    "ExportConfig",
    "FidelityConfig",
    "LatencyConfig",
    "RunConfig",
    "SearchConfig",
    "SpaceConfig",
    "SupernetConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
]


def _seed(value: Any, where: str) -> None:
    # numpy's and Optuna's generators take seeds in [0, 2**32).
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InputError(f"{where}: expected an int in [0, 2**32), got {brief(value)}.")


def _positive(value: Any, where: str, allow_none: bool = True, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "an int" if integer else "a number"
        raise InputError(f"{where}: expected {kind} > 0, got {brief(value)}.")


def _count(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{where}: expected an int >= 0, got {value!r}.")


# The budgets a run can have, and the unit of each absolute value.
BUDGETS: dict[str, str] = {"max_latency_ms": "ms", "max_size_kb": "KB", "max_memory_kb": "KB"}


@dataclass(frozen=True)
class Constraints:
    """Hard budgets. ``None`` means no budget on that quantity.

    Each quantity takes one form: absolute (``max_latency_ms: 0.3``), or relative to the space's
    predicted values on the run's device, resolved once its latency model exists
    (``nas.budgets.resolve``): ``max_latency_quantile: 0.3`` is the 0.3 quantile of the
    predicted latencies of random architectures (30% of the space fits), and
    ``max_latency_times_smallest: 1.5`` is 1.5x the smallest achievable latency. A device's real
    limit is absolute; the relative forms let one config bind on any CPU.
    """

    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_memory_kb: float | None = None
    max_latency_quantile: float | None = None
    max_size_quantile: float | None = None
    max_memory_quantile: float | None = None
    max_latency_times_smallest: float | None = None
    max_size_times_smallest: float | None = None
    max_memory_times_smallest: float | None = None

    def __post_init__(self) -> None:
        for name in BUDGETS:
            _positive(getattr(self, name), f"constraints.{name}")
            q = getattr(self, relative_key(name, "quantile"))
            where = f"constraints.{relative_key(name, 'quantile')}"
            if q is not None and not (
                isinstance(q, (int, float)) and not isinstance(q, bool) and math.isfinite(q) and 0 < q < 1
            ):
                raise InputError(f"{where}: expected a number in (0, 1), got {q!r}.")
            m = getattr(self, relative_key(name, "times_smallest"))
            where = f"constraints.{relative_key(name, 'times_smallest')}"
            if m is not None and not (
                isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m >= 1
            ):
                raise InputError(f"{where}: expected a number >= 1, got {m!r}.")
            given = [k for k in (name, *relative_keys(name)) if getattr(self, k) is not None]
            if len(given) > 1:
                raise InputError(
                    f"constraints.{given[1]}: one budget per quantity, but {given[0]} is set too; keep one."
                )

    def as_dict(self) -> dict[str, float]:
        """The absolute budgets (relative ones are in ``relative()`` until resolved)."""
        return {k: getattr(self, k) for k in BUDGETS if getattr(self, k) is not None}

    def relative(self) -> dict[str, tuple[str, float]]:
        """``{absolute name: (form, value)}`` for every budget given in a relative form."""
        out = {}
        for name in BUDGETS:
            for form in ("quantile", "times_smallest"):
                value = getattr(self, relative_key(name, form))
                if value is not None:
                    out[name] = (form, float(value))
        return out

    def requested(self) -> dict[str, float]:
        """Every budget as the user wrote it (``{key: value}``, absolute and relative)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


def relative_key(name: str, form: str) -> str:
    """``("max_latency_ms", "quantile")`` -> ``"max_latency_quantile"``."""
    return f"{name.rsplit('_', 1)[0]}_{form}"


def relative_keys(name: str) -> tuple[str, str]:
    return relative_key(name, "quantile"), relative_key(name, "times_smallest")


@dataclass(frozen=True)
class SpaceConfig:
    name: str = "mbconv"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencyConfig:
    """Where latency comes from. ``device: host`` profiles this machine (cached); otherwise
    ``table`` (a latency table file) or ``predictor`` (a predictor file) is required."""

    device: str = "host"
    runtime: str = "litert"
    dtype: str = "int8"
    threads: int = 1
    table: str | None = None
    predictor: str | None = None
    calibration_models: int = 6
    # A cached host profile is re-checked every run (its calibration models re-timed); when they
    # drifted beyond the profile's spread: "refit" fits the correction on the fresh timings,
    # "reprofile" measures every block again.
    on_drift: str = "refit"
    # A table that lacks blocks of the space prices them with a per-kind model fitted on its
    # entries (``latency_models.extrapolate``); strict refuses such a table instead.
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.strict, bool):
            raise InputError(f"latency.strict: expected true or false, got {self.strict!r}.")
        if self.on_drift not in ("refit", "reprofile"):
            raise InputError(
                f"latency.on_drift: expected one of ['refit', 'reprofile'], got {self.on_drift!r}."
            )
        if not isinstance(self.device, str) or not self.device:
            raise InputError(
                f"latency.device: expected a device name ('host' for this machine), got {self.device!r}."
            )
        _positive(self.threads, "latency.threads", allow_none=False, integer=True)
        _count(self.calibration_models, "latency.calibration_models")
        if self.device == "host" and (self.table or self.predictor):
            # Profiling this machine would ignore the file without a word (a user who gave a
            # table without its device got this machine's latencies instead of the device's).
            name, file = ("table", self.table) if self.table else ("predictor", self.predictor)
            raise InputError(
                f"latency.device: expected the name of the device latency.{name} {file!r} is for "
                "(device 'host' profiles this machine and would ignore it), got 'host'."
            )
        if self.device != "host" and not (self.table or self.predictor):
            raise InputError(
                f"latency: device {self.device!r} needs a latency model: set latency.table or latency.predictor "
                "(or use device: host to profile this machine)."
            )
        if self.dtype not in ("int8", "fp32", "fp16"):
            raise InputError(f"latency.dtype: expected one of ['int8', 'fp32', 'fp16'], got {self.dtype!r}.")


def file_device(name: str | None, path: str | os.PathLike[str]) -> str:
    """The device name for ``latency.device`` of a table or predictor file: the one it records,
    unless that is empty or ``host`` (this machine's profile saved as a table prices a device
    by its file, not by profiling): then the file's stem."""
    return name if name and name != "host" else Path(path).stem


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    final_epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    max_train_samples: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"training.optimizer: expected one of ['adam', 'sgd'], got {self.optimizer!r}.")
        for name in ("epochs", "final_epochs", "batch_size"):
            _positive(getattr(self, name), f"training.{name}", allow_none=False, integer=True)
        _positive(self.learning_rate, "training.learning_rate", allow_none=False)
        _positive(self.max_train_samples, "training.max_train_samples", integer=True)


@dataclass(frozen=True)
class FidelityConfig:
    """Multi-fidelity search (asynchronous successive halving): every candidate is trained first
    for ``min_epochs``; a result in the top 1/``eta`` of its rung so far is retrained at ``eta``
    times the epochs, up to ``training.epochs``; the others stop there."""

    min_epochs: int = 1
    eta: int = 3

    def __post_init__(self) -> None:
        _positive(self.min_epochs, "search.fidelity.min_epochs", allow_none=False, integer=True)
        if isinstance(self.eta, bool) or not isinstance(self.eta, int) or self.eta < 2:
            raise InputError(f"search.fidelity.eta: expected an int >= 2, got {self.eta!r}.")

    def rungs(self, max_epochs: int) -> tuple[int, ...]:
        """The epochs of each rung: min_epochs * eta**k, the last one ``max_epochs``."""
        if self.min_epochs >= max_epochs:
            raise InputError(
                f"search.fidelity.min_epochs: expected an int < training.epochs ({max_epochs}), "
                f"got {self.min_epochs!r}."
            )
        out = [self.min_epochs]
        while out[-1] * self.eta < max_epochs:
            out.append(out[-1] * self.eta)
        return (*out, max_epochs)


@dataclass(frozen=True)
class SearchConfig:
    strategy: str = "default"
    trainings: int = 20
    max_asks: int | None = None
    seed: int = 0
    max_failures_in_row: int = 5
    # Trainings at once: local worker processes, or a cap on the Ray cluster's slots.
    # None: one per core locally, every slot the cluster has with --ray-address.
    workers: int | None = None
    # What each training asks for: CPU threads (and Ray CPUs), and Ray GPUs (0 = none).
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    # None: every candidate is trained for training.epochs. With a fidelity, the budget stays
    # ``trainings * training.epochs`` epochs, spent on short trainings and promotions.
    fidelity: FidelityConfig | None = None

    def __post_init__(self) -> None:
        _positive(self.trainings, "search.trainings", allow_none=False, integer=True)
        _positive(self.max_asks, "search.max_asks", integer=True)
        _positive(self.max_failures_in_row, "search.max_failures_in_row", allow_none=False, integer=True)
        _positive(self.workers, "search.workers", integer=True)
        _positive(self.cpus_per_trial, "search.cpus_per_trial", allow_none=False, integer=True)
        if (
            isinstance(self.gpus_per_trial, bool)
            or not isinstance(self.gpus_per_trial, (int, float))
            or not math.isfinite(self.gpus_per_trial)
            or self.gpus_per_trial < 0
        ):
            raise InputError(f"search.gpus_per_trial: expected a number >= 0, got {self.gpus_per_trial!r}.")
        _seed(self.seed, "search.seed")
        from .strategies import STRATEGIES

        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise InputError(
                f"search.strategy: expected one of {sorted(STRATEGIES)}, got {brief(self.strategy)}."
            )
        if self.fidelity is not None and not isinstance(self.fidelity, FidelityConfig):
            raise InputError(f"search.fidelity: expected a mapping of settings, got {self.fidelity!r}.")


@dataclass(frozen=True)
class ExportConfig:
    """Compression stages (``STAGE[:ARG]``, as ``nas compress --pipeline``) and export formats.
    The last quantization stage decides ``model.tflite``; a bare ``int8`` stage calibrates on
    ``calibration_samples`` training samples."""

    pipeline: tuple[str, ...] = ("int8",)
    formats: tuple[str, ...] = ("tflite",)
    calibration_samples: int = 300
    # Before shipping, the most accurate candidates (this many, more when their predictions sit
    # near a budget) are exported and their files measured (``nas.verify``).
    verify_candidates: int = 3
    # With ``tvm`` among the formats: also cross-compile for this TVM target (the Pi's
    # ``llvm -mtriple=aarch64-linux-gnu``); only the host library is run here.
    tvm_target: str | None = None

    def __post_init__(self) -> None:
        _positive(self.calibration_samples, "export.calibration_samples", allow_none=False, integer=True)
        _positive(self.verify_candidates, "export.verify_candidates", allow_none=False, integer=True)
        for name in ("pipeline", "formats"):
            value = getattr(self, name)
            if not value or not all(isinstance(v, str) and v for v in value):
                raise InputError(
                    f"export.{name}: expected a non-empty list of names, got {brief(list(value))}."
                )
        # The stages and formats are checked now, not after the search trained every candidate.
        from compress import Trainer, build_pipeline
        from compress.exporters import get_exporter
        from compress.registry import stage_class

        for i, spec in enumerate(self.pipeline):
            try:
                if stage_class(spec.split(":")[0].strip()).name == "distill":
                    raise InputError("stage distill needs a teacher model, which nas run does not have.")
                build_pipeline([spec], Trainer())
            except InputError as e:
                raise InputError(f"export.pipeline[{i}]: {e}") from None
        for i, name in enumerate(self.formats):
            try:
                get_exporter(name)
            except InputError as e:
                raise InputError(f"export.formats[{i}]: {e}") from None
        if "tflite" not in self.formats:
            raise InputError(
                f"export.formats: expected a list including 'tflite' (for model.tflite), got {list(self.formats)!r}."
            )
        if self.tvm_target is not None:
            if "tvm" not in self.formats:
                raise InputError(
                    f"export.tvm_target: expected export.formats to include 'tvm', got {list(self.formats)!r}."
                )
            if not isinstance(self.tvm_target, str) or not self.tvm_target.strip().startswith(("llvm", "{")):
                raise InputError(
                    f"export.tvm_target: expected an LLVM target like 'llvm -mtriple=aarch64-linux-gnu', got {brief(self.tvm_target)}."
                )

    def stages(self) -> list[str]:
        return [f"int8:{self.calibration_samples}" if s == "int8" else s for s in self.pipeline]


@dataclass(frozen=True)
class SupernetConfig:
    """``nas supernet train``: epochs over the training split, each step training the largest,
    the smallest and ``random_subnets`` random subnets (sandwich rule, in-place distillation);
    ``calibration_samples`` training samples re-estimate a subnet's BatchNorm statistics."""

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 0.003
    random_subnets: int = 2
    calibration_samples: int = 1000
    max_train_samples: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "calibration_samples"):
            _positive(getattr(self, name), f"supernet.{name}", allow_none=False, integer=True)
        _positive(self.learning_rate, "supernet.learning_rate", allow_none=False)
        _positive(self.max_train_samples, "supernet.max_train_samples", integer=True)
        _count(self.random_subnets, "supernet.random_subnets")


@dataclass(frozen=True)
class RunConfig:
    task: TaskSpec = field(default_factory=TaskSpec)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    constraints: Constraints = field(default_factory=Constraints)
    search: SearchConfig = field(default_factory=SearchConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)

    def __post_init__(self) -> None:
        if self.search.fidelity is not None:
            self.search.fidelity.rungs(self.training.epochs)  # min_epochs < training.epochs

    def as_dict(self) -> dict[str, Any]:
        return _to_plain(self)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Coerce YAML values to the annotated type (ints stay ints, lists become tuples)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if annotation is float:
        if isinstance(value, str) and _is_number(value):
            # YAML 1.1 reads 1e-2 (no dot) as a string; say so rather than just "not a number".
            raise InputError(
                f"{where}: expected a number, got the string {brief(value)} (YAML reads exponents "
                "without a dot as text: write 1.0e-2 or 0.01)."
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: expected a number, got {brief(value)}.")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {brief(value)}.")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {brief(value)}.")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {brief(value)}.")
        return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        return _section(annotation, value, where)
    if origin in (Mapping, dict) or annotation is Mapping:
        if not isinstance(value, Mapping):
            raise InputError(f"{where}: expected a mapping, got {brief(value)}.")
        return dict(value)
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: expected a mapping of settings, got {brief(raw)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key(where, key, fields)
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


SECTIONS: dict[str, type] = {
    "task": TaskSpec,
    "space": SpaceConfig,
    "latency": LatencyConfig,
    "constraints": Constraints,
    "search": SearchConfig,
    "training": TrainConfig,
    "export": ExportConfig,
    "supernet": SupernetConfig,
}


def parse_config(doc: Any, where: str = "config", base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping (as loaded from YAML). Relative paths resolve against ``base_dir``."""
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise InputError(
            f"{where}: expected a mapping with sections {sorted(SECTIONS)}, got {type(doc).__name__}."
        )
    unknown = sorted(set(doc) - set(SECTIONS), key=str)  # YAML keys need not be strings
    if unknown:
        raise InputError(f"{where}: {unknown_key('', unknown[0], SECTIONS)}")
    sections = {name: _section(cls, doc.get(name), name) for name, cls in SECTIONS.items()}
    if base_dir is not None:
        task = sections["task"]
        if task.data not in BUNDLED and not os.path.isabs(task.data):  # an .npz or an image folder
            sections["task"] = dataclasses.replace(task, data=str((base_dir / task.data).resolve()))
        lat = sections["latency"]
        for key in ("table", "predictor"):
            value = getattr(lat, key)
            if value and not os.path.isabs(value):
                lat = dataclasses.replace(lat, **{key: str((base_dir / value).resolve())})
        sections["latency"] = lat
        space = sections["space"]
        build = space.options.get("build") if space.name == "keras-tuner" else None
        if isinstance(build, str) and build.count(":") == 1 and build.split(":")[0].endswith(".py"):
            file, func = build.split(":")
            if not os.path.isabs(file):
                options = {**space.options, "build": f"{(base_dir / file).resolve()}:{func}"}
                sections["space"] = dataclasses.replace(space, options=options)
    task = sections["task"]
    if task.data not in BUNDLED and not Path(task.data).exists():
        raise InputError(
            f"task.data: file {task.data!r} not found (expected a bundled task {sorted(BUNDLED)}, an .npz path "
            "or an image folder)."
        )
    for key in ("table", "predictor"):
        value = getattr(sections["latency"], key)
        if value and not Path(value).is_file():
            raise InputError(f"latency.{key}: file {value!r} not found.")
    # The device's latency model is read now too (numbers finite, a positive correction scale),
    # not after the task is loaded; the run reads it again, which costs milliseconds.
    if sections["latency"].predictor:
        from latency_models.predictor import load_predictor

        load_predictor(sections["latency"].predictor)
    elif sections["latency"].table:
        from latency_models.table import LatencyTable

        LatencyTable.load(sections["latency"].table)
    # Validate the space options now, not forty minutes into the search.
    from search_spaces import get_space

    get_space(sections["space"].name, sections["space"].options)
    return RunConfig(**sections)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    from search_spaces.safeio import load_yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found.")
    doc = load_yaml(path, "config", max_bytes=1024 * 1024)
    try:
        config = parse_config(doc, str(path), base_dir=path.parent)
    except InputError as e:
        message = str(e)
        raise InputError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None
    if doc is None or (isinstance(doc, Mapping) and not (set(doc) - {"task"})):
        # An empty file, or one naming only the data, says nothing of the space, device or budget;
        # running every default would profile and search the 900-block mbconv space unbounded.
        raise InputError(
            f"{path}: expected at least one section besides 'task' (space, latency, constraints, search, "
            f"training or export; defaults: space {SpaceConfig().name!r}, device 'host', no budget), "
            f"got {brief(sorted(doc or {}))}."
        )
    return config
