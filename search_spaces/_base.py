"""What every search space is: choices to sample, architectures as canonical strings, a Keras
builder, and the list of blocks (with their input shapes) that a latency table prices."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import InputError
from .safeio import brief

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["Block", "Choice", "OpSequenceSpace", "SearchSpace", "SizeTerms", "TaskShape"]


@dataclass(frozen=True, order=True)
class Block:
    """One priced unit of a network: what a latency table has a row for.

    ``expand`` is the expansion ratio (MBConv), ``extra`` holds space-specific qualifiers that
    change the cost but have no column of their own (e.g. ``idskip:1``).
    """

    kind: str
    in_h: int
    in_w: int
    in_c: int
    out_c: int
    kernel: int = 1
    stride: int = 1
    expand: float = 1.0
    se: bool = False
    act: str = "none"
    extra: str = ""

    def __post_init__(self) -> None:
        if not self.kind or any(ch in self.kind for ch in " ,\n"):
            raise InputError(f"block kind: expected a non-empty word, got {self.kind!r}.")
        for name in ("in_h", "in_w", "in_c", "out_c", "kernel", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"block {name}: expected an int >= 0, got {value!r}.")
        if not (isinstance(self.expand, (int, float)) and math.isfinite(self.expand) and self.expand > 0):
            raise InputError(f"block expand: expected a number > 0, got {self.expand!r}.")

    @property
    def key(self) -> str:
        """Readable, unique key: ``mbconv-14x14x16-o24-k3-s1-e4-se0-relu6``."""
        expand = f"{self.expand:g}"
        text = (
            f"{self.kind}-{self.in_h}x{self.in_w}x{self.in_c}-o{self.out_c}-k{self.kernel}-s{self.stride}"
            f"-e{expand}-se{int(self.se)}-{self.act}"
        )
        return f"{text}-{self.extra}" if self.extra else text


@dataclass(frozen=True)
class Choice:
    """One categorical decision of a space (optuna ``suggest_categorical`` / keras-tuner ``Choice``)."""

    name: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.values) == 0:
            raise InputError(f"choice {self.name}: expected at least one value, got none.")


@dataclass(frozen=True)
class SizeTerms:
    """Counts an exported model's size is linear in: kernel weights (int8 bytes each once
    quantized), per-channel values (biases, scales: int32 each) and weight tensors (headers)."""

    weights: int
    channels: int
    tensors: int

    def __add__(self, other: SizeTerms) -> SizeTerms:
        return SizeTerms(
            self.weights + other.weights, self.channels + other.channels, self.tensors + other.tensors
        )


@dataclass(frozen=True)
class TaskShape:
    """What a space needs to know of the task to build or price a network."""

    input_shape: tuple[int, ...]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.input_shape) not in (1, 2, 3) or any(int(d) <= 0 for d in self.input_shape):
            raise InputError(f"input_shape: expected 1 to 3 positive sizes, got {self.input_shape!r}.")
        if self.num_classes < 2:
            raise InputError(f"num_classes: expected an int >= 2, got {self.num_classes!r}.")


# ``SearchSpace.value_cost`` of the decision values known by name (every other name ranks 5).
_NAMED_COSTS = {"none": -1, "skip_connect": 0, "relu6": 0, "hswish": 1}


@dataclass(frozen=True)
class SearchSpace(ABC):
    """A family of networks. Subclasses are frozen dataclasses whose fields are the space's options.

    The contract (``tests/test_spaces_contract.py`` checks it for every space):

    * ``parse(str(arch)) == arch`` and ``arch`` is hashable;
    * ``sample(trial)`` and ``sample_hp(hp)`` return valid architectures;
    * ``build(arch, task)`` returns a tf_keras model with ``task.input_shape`` and ``num_classes``;
    * ``blocks(arch, task)`` lists every block a latency table must price, in network order.
    """

    name: ClassVar[str]
    # Whether the name and options alone fix every network (so facts about them, such as file
    # sizes, can be cached across runs). False when the networks come from code that can change.
    defined_by_options: ClassVar[bool] = True
    # Rough cost of pricing one new architecture (``blocks`` and ``size_terms``), in ms. Code that
    # prices random samples of the space (budgets, pools of candidates) takes fewer of them from a
    # space that is slow to price (``affordable``); the counts stay fixed for a space, so seeded
    # runs repeat.
    pricing_ms: ClassVar[float] = 0.1

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SearchSpace:
        """The space for config values: its dataclass fields by name (lists become tuples;
        unknown keys are an error). A space whose options need more than that overrides it."""
        cls._check_options(options, set(cls.__dataclass_fields__))
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})

    @classmethod
    def _check_options(cls, options: Mapping[str, Any], known: set[str]) -> None:
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(
                f"space {cls.name}: unknown option {unknown[0]!r}; valid options: {sorted(known)}."
            )

    # -- decisions -----------------------------------------------------------------------------
    @abstractmethod
    def choices(self) -> tuple[Choice, ...]:
        """The flat list of categorical decisions that define an architecture."""

    @abstractmethod
    def from_params(self, params: Mapping[str, Any]) -> Hashable:
        """The architecture for one value per choice (as sampled)."""

    @abstractmethod
    def to_params(self, arch: Hashable) -> dict[str, Any]:
        """Inverse of ``from_params``: used to enqueue known architectures into a study."""

    @abstractmethod
    def parse(self, text: str) -> Hashable:
        """Parse a canonical arch string; raise ``InputError`` naming what is wrong."""

    def canonical(self, arch: Hashable) -> Hashable:
        """The representative of ``arch``'s equivalence class (isomorphic cells); identity by default."""
        return arch

    # -- the cheapest and the largest network -------------------------------------------------
    def value_cost(self, value: Any) -> Any:
        """A decision value's rank by cost, the one ordering of a choice's values (``cheapest``,
        ``largest``): numbers by value (a bool as 0 or 1); among names ``none`` (nothing) first,
        then ``skip_connect`` and ``relu6``, then ``hswish``, then any other name. A space whose
        values this misranks overrides it."""
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (int, float)):
            return value
        return _NAMED_COSTS.get(value, 5)

    def cheapest(self) -> Hashable | None:
        """The cheapest value of every decision (``value_cost``), or None when that combination
        is not an architecture of the space (budgets, calibration and the smallest achievable
        value start from it)."""
        return self._extreme(min)

    def largest(self) -> Hashable | None:
        """The costliest value of every decision (``value_cost``), or None when that combination
        is not an architecture of the space."""
        return self._extreme(max)

    def _extreme(self, pick: Callable[..., Any]) -> Hashable | None:
        try:
            return self.from_params({c.name: pick(c.values, key=self.value_cost) for c in self.choices()})
        except (InputError, TypeError):  # TypeError: values that do not order (mixed kinds)
            return None

    # -- what is known about an architecture before training ------------------------------------
    def structure_features(self, arch: Hashable) -> list[float]:
        """Zero-cost structure signals of ``arch``, each in [0, 1] (e.g. depth, live operations),
        that a strategy may use to tell networks apart before training; none by default."""
        return []

    def path_features(self, arch: Hashable) -> list[float]:
        """A cell space's path encoding: counts of the input-output paths by the operations along
        them, so cells that compute one function look alike where their decisions differ; none by
        default. A strategy that gets them weighs the one-hot decisions down beside them."""
        return []

    @classmethod
    def layer_blocks(
        cls, options: Mapping[str, Any], width_mult: float | None = None
    ) -> dict[tuple[int, Any], Block | None] | None:
        """For a space whose every decision is one layer of the network: the block that each
        value prices at each decision's position (``(position, value) -> block``, None where the
        value computes nothing), in the space with ``options`` (at channel width ``width_mult``
        when given) on the task its layers are defined for. A latency model's physics prior is
        built on them. None (the default) when the decisions are not layers of their own."""
        return None

    def live_choices(self, codes: Any, values: Sequence[Sequence[Any]]) -> Any:
        """Which decisions compute something, for many architectures at once (a runtime folds the
        others away, so a latency model should not price them).

        ``codes`` is an integer array with one row per architecture: the index of each decision's
        value in ``values`` (the values of ``choices()``, as a latency model was fitted on). Returns
        a boolean array of its shape, or ``None`` (the default) when every decision always computes.
        """
        return None

    def choice_groups(self) -> tuple[tuple[int, ...], ...]:
        """Positions in ``choices()`` that share a shape and the same values (e.g. the layers of a
        stage): a latency model may share what it learns within a group. None by default."""
        return ()

    def sample(self, trial: optuna.trial.BaseTrial) -> Hashable:
        return self.from_params(
            {c.name: trial.suggest_categorical(c.name, list(c.values)) for c in self.choices()}
        )

    def sample_hp(self, hp: Any) -> Hashable:
        """Sample through keras-tuner ``HyperParameters`` (its oracles then drive our space)."""
        return self.from_params({c.name: hp.Choice(c.name, list(c.values)) for c in self.choices()})

    def random(self, rng: random.Random) -> Hashable:
        return self.from_params({c.name: rng.choice(c.values) for c in self.choices()})

    def size(self) -> int:
        """Number of distinct parameter settings (before de-duplication)."""
        return math.prod(len(c.values) for c in self.choices())

    def affordable(self, n: int, seconds: float, least: int = 200) -> int:
        """How many of ``n`` random architectures to price when pricing may take ``seconds``: ``n``
        for a fast space, fewer (at least ``least``) for one whose ``pricing_ms`` is high."""
        return min(n, max(least, int(seconds * 1000.0 / max(self.pricing_ms, 1e-6))))

    # -- networks ------------------------------------------------------------------------------
    @abstractmethod
    def build(self, arch: Hashable, task: TaskShape) -> Any:
        """A trainable tf_keras model (not compiled) for the task."""

    @abstractmethod
    def blocks(self, arch: Hashable, task: TaskShape) -> list[Block]:
        """The priced blocks of ``arch`` in network order, each with its input shape."""

    def all_blocks(self, task: TaskShape) -> list[Block] | None:
        """Every distinct block any architecture of the space can contain (for profiling a full
        table up front), or ``None`` when the space cannot enumerate them."""
        return None

    def _image_shape(self, task: TaskShape) -> tuple[int, int, int]:
        """(H, W, C) of an image task; (H, W) inputs get one channel."""
        shape = task.input_shape
        if len(shape) == 3:
            return int(shape[0]), int(shape[1]), int(shape[2])
        if len(shape) == 2:
            return int(shape[0]), int(shape[1]), 1
        raise InputError(
            f"space {self.name}: needs image input (H, W) or (H, W, C), got input_shape {shape!r}."
        )

    def _image_input(self, task: TaskShape) -> tuple[Any, Any, Any]:
        """The keras module, a network's input for ``task``, and that input as an (H, W, C) image."""
        from .backend import keras

        k = keras()
        h, w, c = self._image_shape(task)
        inputs = k.Input(shape=tuple(task.input_shape), name="input")
        x = inputs if len(task.input_shape) == 3 else k.layers.Reshape((h, w, c))(inputs)
        return k, inputs, x

    def _classifier(self, k: Any, inputs: Any, x: Any, num_classes: int, dropout: float = 0.0) -> Any:
        """The end of a network (pooling, dropout when any, a softmax classifier): the model."""
        x = k.layers.GlobalAveragePooling2D(name="pool")(x)
        if dropout:
            x = k.layers.Dropout(dropout, name="dropout")(x)
        outputs = k.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
        return k.Model(inputs, outputs, name=self.name)

    def block_model(self, block: Block) -> Any:
        """A tf_keras model of ``block`` alone (input of the block's shape), for profiling."""
        raise NotImplementedError(f"space {self.name} cannot build single blocks for profiling")

    def _block_model(self, block: Block, kinds: Mapping[str, Callable[[Any, Any], Any]]) -> Any:
        """``block_model`` from a table: each block kind's layers on an input (``layers, x -> y``);
        ``pool_dense``, the classifier, is the same in every space that has one."""
        from .backend import keras

        k = keras()
        inputs = k.Input(shape=(block.in_h, block.in_w, block.in_c), batch_size=1, name="input")

        def pool_dense(layers: Any, x: Any) -> Any:
            x = layers.GlobalAveragePooling2D(name="pool")(x)
            return layers.Dense(block.out_c, activation="softmax", name="classifier")(x)

        kinds = {**kinds, "pool_dense": pool_dense}
        if block.kind not in kinds:
            raise InputError(
                f"space {self.name}: unknown block kind {block.kind!r}; valid kinds: {sorted(kinds)}."
            )
        return k.Model(inputs, kinds[block.kind](k.layers, inputs), name=block.key.replace(".", "_"))

    def size_terms(self, arch: Hashable, task: TaskShape) -> SizeTerms:
        """What an exported file's size grows with; spaces override with a closed form."""
        model = self.build(arch, task)
        weights = biases = tensors = 0
        for layer in model.layers:
            for w in layer.get_weights():
                tensors += 1
                if w.ndim == 1:
                    biases += int(w.size)
                else:
                    weights += int(w.size)
        return SizeTerms(weights, biases, tensors)


@dataclass(frozen=True)
class OpSequenceSpace(SearchSpace):
    """A space whose architecture is one operation per position (``fbnet``'s layers, ``nb201``'s
    edges): decision ``decision_names[i]`` picks one of the space's ``ops`` (a dataclass field of
    the subclass), and ``arch_class(ops)`` is the architecture, holding them as ``arch.ops``."""

    decision_names: ClassVar[tuple[str, ...]]
    arch_class: ClassVar[Callable[[tuple[str, ...]], Any]]
    if TYPE_CHECKING:  # pragma: no cover - a field of every subclass, not of this base
        ops: tuple[str, ...]

    def choices(self) -> tuple[Choice, ...]:
        return tuple(Choice(name, self.ops) for name in self.decision_names)

    def from_params(self, params: Mapping[str, Any]) -> Any:
        ops = []
        for key in self.decision_names:
            if key not in params:
                raise InputError(f"space {self.name}: missing parameter {key!r}.")
            ops.append(str(params[key]))
        arch = self.arch_class(tuple(ops))
        self.validate(arch)
        return arch

    def to_params(self, arch: Any) -> dict[str, Any]:
        return dict(zip(self.decision_names, arch.ops, strict=True))

    @abstractmethod
    def validate(self, arch: Any) -> None:
        """Raise ``InputError`` naming the first operation of ``arch`` the space does not allow."""


def parse_int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{where}: expected an integer, got {brief(text)}.") from None


def one_of(value: Any, allowed: Sequence[Any], where: str) -> Any:
    if value not in allowed:
        raise InputError(f"{where}: expected one of {list(allowed)}, got {brief(value)}.")
    return value
