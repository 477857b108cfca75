"""``keras-tuner``: any user ``build(hp)`` function as a search space, made hardware-aware.

The option ``build: "mypkg.models:build"`` names the function. Its hyperparameters are found by
calling it once with a recording ``HyperParameters``; each becomes a categorical choice (an
``Int``/``Float`` with a step lists its grid, a ``Float`` without one is cut into
``float_points`` values). An architecture is the sorted ``name=value`` pairs. Latency is priced
per layer (one block per Conv2D / DepthwiseConv2D / SeparableConv2D / Dense with its input
shape), so a host table can be profiled for small spaces; larger ones need a predictor fitted
on measured models (``nas latency fit``).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape
from .errors import InputError, TrialFailedError

__all__ = ["KtArch", "KerasTunerSpace", "load_build"]

# A space this small lists every block up front (so ``latency.device: host`` can profile it).
ENUMERATE_BLOCKS_LIMIT = 64
PRICED_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


@dataclass(frozen=True)
class KtArch:
    """One value per hyperparameter, sorted by name."""

    values: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return ",".join(f"{k}={_fmt(v)}" for k, v in self.values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def load_build(spec: str) -> Callable[[Any], Any]:
    """The function named by ``module:function`` (the working folder is importable)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"space keras-tuner: `build` expected 'module:function', got {spec!r}.")
    module_name, func_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise InputError(f"space keras-tuner: `build` module {module_name!r} not found ({e}).") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise InputError(
            f"space keras-tuner: `build` expected a function {func_name!r} in {module_name}, got {func!r}."
        )
    return func


_DISCOVERED: dict[tuple[str, int], tuple[Choice, ...]] = {}
_BLOCKS: dict[tuple[Any, str, TaskShape], tuple[list[Block], SizeTerms]] = {}


@dataclass(frozen=True)
class KerasTunerSpace(SearchSpace):
    name = "keras-tuner"

    build_fn: str = ""
    float_points: int = 5

    def __post_init__(self) -> None:
        if (
            not isinstance(self.float_points, int)
            or isinstance(self.float_points, bool)
            or self.float_points < 2
        ):
            raise InputError(
                f"space keras-tuner: `float_points` expected an int >= 2, got {self.float_points!r}."
            )
        load_build(self.build_fn)
        self.choices()  # discover now: a broken build(hp) is reported before any search

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> KerasTunerSpace:
        known = {"build", "float_points"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(
                f"space keras-tuner: unknown option {unknown[0]!r}; valid options: {sorted(known)}."
            )
        if "build" not in options:
            raise InputError("space keras-tuner: `build` expected 'module:function', got none.")
        return cls(build_fn=options["build"], float_points=options.get("float_points", 5))

    # -- decisions -----------------------------------------------------------------------------
    def choices(self) -> tuple[Choice, ...]:
        key = (self.build_fn, self.float_points)
        if key not in _DISCOVERED:
            _DISCOVERED[key] = self._discover()
        return _DISCOVERED[key]

    def _discover(self) -> tuple[Choice, ...]:
        import keras_tuner as kt

        hp = kt.HyperParameters()
        try:
            self._call(hp)
        except TrialFailedError as e:
            # With its default values the function must build: otherwise the space is unusable.
            raise InputError(f"space keras-tuner: discovering hyperparameters: {e}") from None
        out = []
        for p in hp.space:
            values = self._values_of(p)
            for v in values:
                if isinstance(v, str) and ("," in v or "=" in v):
                    raise InputError(
                        f"space keras-tuner: hyperparameter {p.name!r}: values may not hold ',' or '=', got {v!r}."
                    )
            out.append(Choice(p.name, tuple(values)))
        if not out:
            raise InputError(
                f"space keras-tuner: {self.build_fn} defines no hyperparameters (nothing to search)."
            )
        return tuple(sorted(out, key=lambda c: c.name))

    def _values_of(self, p: Any) -> list[Any]:
        kind = type(p).__name__
        cfg = p.get_config()
        if kind == "Choice":
            return list(cfg["values"])
        if kind == "Boolean":
            return [False, True]
        if kind == "Fixed":
            return [cfg["value"]]
        if kind == "Int":
            step = cfg.get("step") or 1
            if cfg.get("sampling") == "log" and cfg.get("step") is None:
                return sorted(
                    {
                        int(round(x))
                        for x in _grid(cfg["min_value"], cfg["max_value"], self.float_points, True)
                    }
                )
            return list(range(int(cfg["min_value"]), int(cfg["max_value"]) + 1, int(step)))
        if kind == "Float":
            lo, hi, step = float(cfg["min_value"]), float(cfg["max_value"]), cfg.get("step")
            if step:
                n = int(math.floor((hi - lo) / float(step) + 1e-9)) + 1
                return [round(lo + i * float(step), 12) for i in range(n)]
            return _grid(lo, hi, self.float_points, cfg.get("sampling") in ("log", "reverse_log"))
        raise InputError(f"space keras-tuner: hyperparameter {p.name!r}: unsupported kind {kind!r}.")

    def from_params(self, params: Mapping[str, Any]) -> KtArch:
        values = []
        for c in self.choices():
            if c.name not in params:
                raise InputError(f"space keras-tuner: missing parameter {c.name!r}.")
            value = params[c.name]
            # keras-tuner hands booleans back as 0/1: keep the choice's own value.
            same = [v for v in c.values if v == value and (type(v) is type(value) or isinstance(v, bool))]
            if not same:
                raise InputError(f"arch: {c.name}: expected one of {list(c.values)}, got {value!r}.")
            values.append((c.name, same[0]))
        return KtArch(tuple(values))

    def to_params(self, arch: Any) -> dict[str, Any]:
        return arch.as_dict()

    def parse(self, text: str) -> KtArch:
        by_name = {c.name: c for c in self.choices()}
        params: dict[str, Any] = {}
        for part in str(text).strip().split(","):
            name, sep, raw = part.partition("=")
            if not sep or name not in by_name:
                raise InputError(
                    f"arch {text!r}: expected 'name=value' pairs for {sorted(by_name)}, got {part!r}."
                )
            matches = [v for v in by_name[name].values if _fmt(v) == raw]
            if not matches:
                raise InputError(
                    f"arch {text!r}: {name}: expected one of {[_fmt(v) for v in by_name[name].values]}, got {raw!r}."
                )
            params[name] = matches[0]
        return self.from_params(params)

    def sample_hp(self, hp: Any) -> KtArch:
        return self.from_params({c.name: hp.Choice(c.name, list(c.values)) for c in self.choices()})

    # -- networks ------------------------------------------------------------------------------
    def _call(self, hp: Any) -> Any:
        from .backend import keras

        func = load_build(self.build_fn)
        try:
            model = func(hp)
        except Exception as e:  # the user's code: any failure marks the trial failed
            raise TrialFailedError(f"{self.build_fn}: build(hp) raised {type(e).__name__}: {e}") from e
        if not isinstance(model, keras().Model):
            raise TrialFailedError(
                f"{self.build_fn}: build(hp) expected to return a tf_keras Model, got {type(model).__module__}.{type(model).__name__}."
            )
        return model

    def build(self, arch: KtArch, task: TaskShape) -> Any:
        import keras_tuner as kt

        hp = kt.HyperParameters()
        for c in self.choices():
            hp.Choice(c.name, list(c.values))
            hp.values[c.name] = arch.as_dict()[c.name]
        model = self._call(hp)
        shape = tuple(int(d) for d in model.input_shape[1:] if d is not None)
        if shape != tuple(task.input_shape):
            raise TrialFailedError(
                f"{self.build_fn}: model input shape expected {tuple(task.input_shape)} (the task's), got {shape}."
            )
        if int(model.output_shape[-1]) != task.num_classes:
            raise TrialFailedError(
                f"{self.build_fn}: model outputs expected {task.num_classes} classes, got {model.output_shape[-1]}."
            )
        return model

    def _priced(self, arch: KtArch, task: TaskShape) -> tuple[list[Block], SizeTerms]:
        key = (self, str(arch), task)
        if key not in _BLOCKS:
            model = self.build(arch, task)
            blocks = []
            for layer in model.layers:
                kind = type(layer).__name__
                if kind not in PRICED_LAYERS:
                    continue
                shape = (
                    tuple(int(d or 1) for d in layer.input_shape[1:]) if hasattr(layer, "input_shape") else ()
                )
                h, w, c = (shape + (1, 1, 1))[:3] if len(shape) == 3 else (1, 1, shape[-1] if shape else 1)
                cfg = layer.get_config()
                out_c = int(cfg.get("filters") or cfg.get("units") or c)
                kernel = int((cfg.get("kernel_size") or (1,))[0])
                stride = int((cfg.get("strides") or (1,))[0])
                act = str(cfg.get("activation", "linear"))
                extra = f"pad{cfg['padding']}" if "padding" in cfg else ""
                blocks.append(Block(kind.lower(), h, w, c, out_c, kernel, stride, act=act, extra=extra))
            weights = channels = tensors = 0
            for layer in model.layers:
                for wt in layer.get_weights():
                    tensors += 1
                    if wt.ndim == 1:
                        channels += int(wt.size)
                    else:
                        weights += int(wt.size)
            _BLOCKS[key] = (blocks, SizeTerms(weights, channels, tensors))
        return _BLOCKS[key]

    def blocks(self, arch: KtArch, task: TaskShape) -> list[Block]:
        """One block per Conv2D / DepthwiseConv2D / SeparableConv2D / Dense layer, with its input
        shape (other layers are not priced: fold their cost in with a calibrated correction)."""
        return list(self._priced(arch, task)[0])

    def size_terms(self, arch: KtArch, task: TaskShape) -> SizeTerms:
        return self._priced(arch, task)[1]

    def all_blocks(self, task: TaskShape) -> list[Block] | None:
        if self.size() > ENUMERATE_BLOCKS_LIMIT:
            return None
        import itertools

        out: list[Block] = []
        choices = self.choices()
        for combo in itertools.product(*(c.values for c in choices)):
            arch = KtArch(tuple((c.name, v) for c, v in zip(choices, combo, strict=True)))
            try:
                out += self.blocks(arch, task)
            except TrialFailedError:
                continue
        return list(dict.fromkeys(out))

    def block_model(self, block: Block) -> Any:
        from .backend import keras

        k = keras()
        flat = block.kind == "dense"
        shape = (block.in_c,) if flat else (block.in_h, block.in_w, block.in_c)
        inputs = k.Input(shape=shape, batch_size=1, name="input")
        act = None if block.act in ("linear", "none") else block.act
        padding = block.extra[3:] if block.extra.startswith("pad") else "valid"
        if block.kind == "dense":
            x = k.layers.Dense(block.out_c, activation=act)(inputs)
        elif block.kind == "conv2d":
            x = k.layers.Conv2D(
                block.out_c, block.kernel, strides=block.stride, padding=padding, activation=act
            )(inputs)
        elif block.kind == "depthwiseconv2d":
            x = k.layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding=padding, activation=act)(
                inputs
            )
        elif block.kind == "separableconv2d":
            x = k.layers.SeparableConv2D(
                block.out_c, block.kernel, strides=block.stride, padding=padding, activation=act
            )(inputs)
        else:
            raise InputError(
                f"space keras-tuner: unknown block kind {block.kind!r}; valid kinds: {[n.lower() for n in PRICED_LAYERS]}."
            )
        return k.Model(inputs, x, name=block.key.replace(".", "_"))


def _grid(lo: float, hi: float, n: int, log: bool) -> list[float]:
    if log and lo > 0:
        return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.6g}") for i in range(n)]
    return [float(f"{lo + (hi - lo) * i / (n - 1):.6g}") for i in range(n)]
