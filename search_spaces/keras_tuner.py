"""``keras-tuner``: any user ``build(hp)`` function as a search space, made hardware-aware.

The option ``build: "mypkg.models:build"`` names the function, written as keras-tuner's
documentation writes it: an unbuilt ``Sequential`` (built here on the task's input shape), a
functional model, a compiled model, conditional hyperparameters, ``import keras`` (Keras 3,
translated to tf_keras). Hyperparameters are discovered by re-running ``build(hp)`` on the values
found until no new one appears; one that appears only under some values of another (a
``for i in range(hp.Int("layers", 1, 3))`` loop, an ``if``, a ``conditional_scope``) is
conditional, and an architecture holds only its active hyperparameters, as sorted
``name=value`` pairs. Each hyperparameter is a categorical choice (an ``Int``/``Float`` with a
step lists its grid, a ``Float`` without one is cut into ``float_points`` values). Latency is
priced per layer (one block per Conv2D / DepthwiseConv2D / SeparableConv2D / Dense with its
input shape), read without building the model (``keras_layers``); a space too large to list every
block is profiled on a sample of them (``latency_models.block_sample``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape
from .errors import InputError, TrialFailedError
from .keras3 import is_keras3
from .keras_layers import PRICED_LAYERS, read_built, read_unbuilt
from .safeio import brief
from .user_code import build_on_input, first_line, load_build, user_frame

# first_line, load_build and user_frame live in search_spaces.user_code; re-exported for their users.
__all__ = ["KtArch", "KerasTunerSpace", "UserCompile", "first_line", "load_build", "user_frame"]

# A space this small lists every block up front (so ``latency.device: host`` can profile it).
ENUMERATE_BLOCKS_LIMIT = 64
# Discovery re-runs build(hp) once per tried value; a hyperparameter with more values than this
# is tried at this many values spread over its range (conditions hang on small choices).
DISCOVERY_VALUES = 16
DISCOVERY_MAX_CALLS = 400


@dataclass(frozen=True)
class KtArch:
    """One value per active hyperparameter, sorted by name."""

    values: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        return ",".join(f"{k}={_fmt(v)}" for k, v in self.values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class UserCompile:
    """What the search keeps of a ``build(hp)`` that compiled its model: the optimizer (class
    and settings, so a searched learning rate still acts) and whether its loss takes logits.
    Loss (sparse categorical cross-entropy on integer labels), metrics, epochs and batch size
    are the search's own."""

    optimizer: str
    config: tuple[tuple[str, Any], ...]
    from_logits: bool


@dataclass(frozen=True)
class Condition:
    """``name`` is active only when ``parent`` is active and holds one of ``values``."""

    parent: str
    values: tuple[Any, ...]


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class _Discovered:
    choices: tuple[Choice, ...]
    defaults: tuple[tuple[str, Any], ...]
    # per hyperparameter, in discovery order (parents before children)
    conditions: tuple[tuple[str, tuple[Condition, ...]], ...]
    calls: int


_DISCOVERED: dict[tuple[str, int], _Discovered] = {}
_BLOCKS: dict[tuple[Any, str, TaskShape], tuple[list[Block], SizeTerms]] = {}


def _geometric(lo: float, hi: float, factor: float, integer: bool) -> list[Any]:
    """``lo, lo * factor, lo * factor**2, ...`` up to ``hi`` (a factor <= 1: just ``lo``)."""
    values, x = [], float(lo)
    while x <= float(hi) * (1 + 1e-9) and len(values) < 10_000:
        values.append(int(round(x)) if integer else float(f"{x:.12g}"))
        if float(factor) <= 1:
            break
        x *= float(factor)
    return list(dict.fromkeys(values))


def _spread(values: list[Any], n: int) -> list[Any]:
    if len(values) <= n:
        return values
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return [values[i] for i in idx]


@dataclass(frozen=True)
class KerasTunerSpace(SearchSpace):
    name = "keras-tuner"
    defined_by_options = False  # the networks are the user's build(hp), edited at will
    pricing_ms = 8.0  # a call of the user's build(hp) (keras_layers.read_unbuilt), ~6 ms here

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
        cls._check_options(options, {"build", "float_points"})
        if "build" not in options:
            raise InputError("space keras-tuner: `build` expected 'module:function', got none.")
        return cls(build_fn=options["build"], float_points=options.get("float_points", 5))

    # -- decisions -----------------------------------------------------------------------------
    def _discovered(self) -> _Discovered:
        key = (self.build_fn, self.float_points)
        if key not in _DISCOVERED:
            _DISCOVERED[key] = self._discover()
        return _DISCOVERED[key]

    def choices(self) -> tuple[Choice, ...]:
        return self._discovered().choices

    def conditions(self) -> dict[str, tuple[Condition, ...]]:
        """Each hyperparameter's conditions (empty: always active)."""
        return dict(self._discovered().conditions)

    def _run(self, values: Mapping[str, Any]) -> tuple[list[Any], set[str]]:
        """Call build(hp) with ``values`` preset: the hyperparameters it registered (keras-tuner
        objects, in order) and the names of those active."""
        from .backend import tf

        tf()  # TensorFlow configured (Keras 2, quiet) before keras-tuner imports it
        import keras_tuner as kt

        hp = kt.HyperParameters()
        hp.values.update(values)
        self._call(hp, discovering=True)
        return list(hp.space), {p.name for p in hp.space if hp.is_active(p)}

    def _discover(self) -> tuple[Choice, ...]:
        """Re-run build(hp) on every value of every hyperparameter found (from the run that found
        it), until no new one appears. A hyperparameter registered under some values of a parent
        and not under others gets the condition ``parent in values`` (keras-tuner's
        ``conditional_scope`` conditions are kept as they are)."""
        try:
            space, active = self._run({})
        except TrialFailedError as e:
            # With its default values the function must build: otherwise the space is unusable.
            raise InputError(f"space keras-tuner: discovering hyperparameters: {e}") from None
        params: dict[str, Any] = {}  # name -> keras-tuner hyperparameter (first seen)
        values: dict[str, list[Any]] = {}
        base_of: dict[str, dict[str, Any]] = {}  # name -> a full assignment in which it is active
        explicit: dict[str, list[Condition]] = {}
        inferred: dict[str, Condition] = {}
        order: list[str] = []
        calls = 1

        def learn(found: list[Any], assignment: dict[str, Any], active_names: set[str]) -> list[str]:
            new = []
            for p in found:
                if p.name in params:
                    continue
                params[p.name] = p
                values[p.name] = self._values_of(p)
                explicit[p.name] = [
                    Condition(c.name, tuple(c.values)) for c in p.conditions if type(c).__name__ == "Parent"
                ]
                order.append(p.name)
                new.append(p.name)
            for name in active_names:
                base_of.setdefault(name, assignment)
            return new

        first = {p.name: self._default(p) for p in space}
        learn(space, first, active)
        queue = list(order)
        while queue:
            name = queue.pop(0)
            if name not in base_of:
                continue  # never active: keras-tuner's own conditions decide it
            base = base_of[name]
            seen: dict[Any, set[str]] = {}
            for v in _spread(values[name], DISCOVERY_VALUES):
                if calls >= DISCOVERY_MAX_CALLS:
                    raise InputError(
                        f"space keras-tuner: discovering hyperparameters: {self.build_fn} needed more than "
                        f"{DISCOVERY_MAX_CALLS} calls of build(hp); expected a smaller space, got "
                        f"{len(params)} hyperparameters so far."
                    )
                assignment = {**base, name: v}
                try:
                    found, act = self._run(assignment)
                except TrialFailedError:
                    seen[v] = set()  # that value fails to build: the search records it
                    calls += 1
                    continue
                calls += 1
                full = {**assignment, **{p.name: assignment.get(p.name, self._default(p)) for p in found}}
                queue += learn(found, full, act)
                seen[v] = {p.name for p in found}
            # A hyperparameter registered under some of this one's values and not others hangs on it.
            tried = [v for v in seen if seen[v]]
            for other in params:
                if other == name or other in inferred or explicit[other]:
                    continue
                present = tuple(v for v in values[name] if v in seen and other in seen[v])
                if tried and present and len(present) < len(tried):
                    inferred[other] = Condition(name, present)
        choices = []
        for name in order:
            vals = values[name]
            for v in vals:
                if isinstance(v, str) and ("," in v or "=" in v):
                    raise InputError(
                        f"space keras-tuner: hyperparameter {name!r}: values may not hold ',' or '=', got {v!r}."
                    )
            choices.append(Choice(name, tuple(vals)))
        if not choices:
            raise InputError(
                f"space keras-tuner: {self.build_fn} defines no hyperparameters (nothing to search)."
            )
        conditions = tuple((n, tuple(explicit[n]) + ((inferred[n],) if n in inferred else ())) for n in order)
        defaults = tuple((n, self._default(params[n])) for n in order)
        return _Discovered(tuple(sorted(choices, key=lambda c: c.name)), defaults, conditions, calls)

    def _default(self, p: Any) -> Any:
        values = self._values_of(p)
        default = getattr(p, "default", None)
        return default if default in values else values[0]

    def _values_of(self, p: Any) -> list[Any]:
        kind = type(p).__name__
        cfg = p.get_config()
        if kind == "Choice":
            return list(cfg["values"])
        if kind == "Boolean":
            return [False, True]
        if kind == "Fixed":
            return [cfg["value"]]
        log = cfg.get("sampling") in ("log", "reverse_log")
        if kind in ("Int", "Float") and log and cfg.get("step"):
            # keras-tuner's log sampling with a step multiplies by it: 16, 32, 64, 128 for
            # Int(16, 128, step=2, sampling="log"); 1e-4, 1e-3, 1e-2 for a Float with step=10.
            return _geometric(cfg["min_value"], cfg["max_value"], cfg["step"], integer=kind == "Int")
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

    def active(self, params: Mapping[str, Any]) -> list[str]:
        """The hyperparameters active under ``params`` (conditions checked parents first)."""
        found = self._discovered()
        on: set[str] = set()
        for name, conds in found.conditions:
            if all(c.parent in on and params.get(c.parent) in c.values for c in conds):
                on.add(name)
        return [n for n, _ in found.conditions if n in on]

    def from_params(self, params: Mapping[str, Any]) -> KtArch:
        by_name = {c.name: c for c in self.choices()}
        filled = {**dict(self._discovered().defaults), **params}
        values = []
        for name in sorted(self.active(filled)):
            c = by_name[name]
            if name not in params:
                raise InputError(f"space keras-tuner: missing parameter {name!r}.")
            value = params[name]
            # keras-tuner hands booleans back as 0/1: keep the choice's own value.
            same = [v for v in c.values if v == value and (type(v) is type(value) or isinstance(v, bool))]
            if not same:
                raise InputError(f"arch: {name}: expected one of {list(c.values)}, got {value!r}.")
            values.append((name, same[0]))
        return KtArch(tuple(values))

    def to_params(self, arch: Any) -> dict[str, Any]:
        """Every choice (inactive ones at their defaults), as a sampler proposes them."""
        return {**dict(self._discovered().defaults), **arch.as_dict()}

    def parse(self, text: str) -> KtArch:
        by_name = {c.name: c for c in self.choices()}
        params: dict[str, Any] = {}
        for part in str(text).strip().split(","):
            name, sep, raw = part.partition("=")
            if not sep or name not in by_name:
                raise InputError(
                    f"arch {brief(text)}: expected 'name=value' pairs for {sorted(by_name)}, got {part!r}."
                )
            matches = [v for v in by_name[name].values if _fmt(v) == raw]
            if not matches:
                raise InputError(
                    f"arch {brief(text)}: {name}: expected one of {[_fmt(v) for v in by_name[name].values]}, got {raw!r}."
                )
            params[name] = matches[0]
        arch = self.from_params({**dict(self._discovered().defaults), **params})
        extra = sorted(set(params) - set(arch.as_dict()))
        if extra:
            raise InputError(
                f"arch {brief(text)}: expected only active hyperparameters, got inactive {extra}."
            )
        missing = sorted(set(arch.as_dict()) - set(params))
        if missing:
            raise InputError(
                f"arch {brief(text)}: expected a value for every active hyperparameter, missing {missing}."
            )
        return arch

    def sample_hp(self, hp: Any) -> KtArch:
        return self.from_params({c.name: hp.Choice(c.name, list(c.values)) for c in self.choices()})

    # -- networks ------------------------------------------------------------------------------
    def _call(self, hp: Any, discovering: bool = False) -> Any:
        func = load_build(self.build_fn)
        try:
            model = func(hp)
        except Exception as e:  # the user's code: one line with the user's own frame
            raise TrialFailedError(
                f"{user_frame(e, func)}: build(hp) raised {type(e).__name__}: {first_line(e)}"
            ) from None
        if not _is_model(model):
            raise TrialFailedError(
                f"{user_frame(Exception(), func)}: build(hp) expected to return a tf_keras or Keras 3 Model, "
                f"got {type(model).__module__}.{type(model).__name__}."
            )
        return model

    def build(self, arch: KtArch, task: TaskShape) -> Any:
        import keras_tuner as kt

        hp = kt.HyperParameters()
        hp.values.update(self.to_params(arch))
        func = load_build(self.build_fn)
        model = self._call(hp)
        unknown = sorted({p.name for p in hp.space} - {c.name for c in self.choices()})
        if unknown:
            raise TrialFailedError(
                f"{user_frame(Exception(), func)}: build(hp) registered hyperparameter(s) {unknown} that "
                f"discovery did not find under {arch}; expected the same hyperparameters for the same values."
            )
        compiled = _user_compile(model)
        shape = tuple(int(d) for d in task.input_shape)
        if is_keras3(model):
            from .keras3 import to_tf_keras

            model = to_tf_keras(model, shape, where=f"{user_frame(Exception(), func)}: build(hp)")
        elif not model.built or getattr(model, "inputs", None) is None:
            build_on_input(
                model,
                shape,
                lambda: (
                    f"{user_frame(Exception(), func)}: build(hp)'s model does not build on the task's input shape"
                ),
            )
        got = tuple(int(d) for d in model.input_shape[1:] if d is not None)
        if got != shape:
            raise TrialFailedError(
                f"{self.build_fn}: model input shape expected {shape} (the task's), got {got}."
            )
        if int(model.output_shape[-1]) != task.num_classes:
            raise TrialFailedError(
                f"{self.build_fn}: model outputs expected {task.num_classes} classes, got {model.output_shape[-1]}."
            )
        if compiled is not None:
            model.edge_nas_compile = compiled
        return model

    def _priced(self, arch: KtArch, task: TaskShape) -> tuple[list[Block], SizeTerms]:
        """The blocks and size terms of ``arch``: read from the model ``build(hp)`` returns
        without building it when it can be (``keras_layers.read_unbuilt``), else from the built
        tf_keras model."""
        key = (self, str(arch), task)
        if key not in _BLOCKS:
            import keras_tuner as kt

            hp = kt.HyperParameters()
            hp.values.update(self.to_params(arch))
            fast = read_unbuilt(self._call(hp), task.input_shape, task.num_classes)
            if fast is not None and {p.name for p in hp.space} <= {c.name for c in self.choices()}:
                _BLOCKS[key] = fast
            else:
                _BLOCKS[key] = read_built(self.build(arch, task))
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
        archs = {
            self.from_params({c.name: v for c, v in zip(choices, combo, strict=True)})
            for combo in itertools.product(*(c.values for c in choices))
        }  # settings that differ only in inactive hyperparameters are one network
        for arch in sorted(archs, key=str):
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


def _is_model(model: Any) -> bool:
    if is_keras3(model):
        import keras

        return isinstance(model, keras.Model)
    from .backend import keras as tf_keras

    return isinstance(model, tf_keras().Model)


def _user_compile(model: Any) -> UserCompile | None:
    """The optimizer and loss a build(hp) compiled its model with (None when not compiled)."""
    import numpy as np

    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or isinstance(optimizer, str):
        return None
    try:
        cfg = optimizer.get_config()
    except Exception:
        return None
    keep = []
    for key in ("learning_rate", "momentum", "nesterov", "beta_1", "beta_2", "epsilon", "rho", "amsgrad"):
        value = cfg.get(key)
        if isinstance(value, (bool, np.bool_)):
            keep.append((key, bool(value)))
        elif isinstance(value, (int, float, np.number)):
            keep.append((key, float(value)))
    loss = getattr(model, "loss", None)
    from_logits = False
    if loss is not None and not isinstance(loss, str):
        try:
            from_logits = bool(loss.get_config().get("from_logits", False))
        except Exception:
            from_logits = bool(getattr(loss, "from_logits", False))
    return UserCompile(type(optimizer).__name__, tuple(keep), from_logits)


def _grid(lo: float, hi: float, n: int, log: bool) -> list[float]:
    if log and lo > 0:
        return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.6g}") for i in range(n)]
    return [float(f"{lo + (hi - lo) * i / (n - 1):.6g}") for i in range(n)]
