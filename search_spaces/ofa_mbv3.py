"""``ofa-mbv3``: Once-for-All's MobileNetV3 supernet (width 1.2 by default), priced by OFA's
published lookup tables.

Five stages of 2-4 inverted-residual layers, each layer with kernel {3,5,7} and expansion
{3,4,6}. The input resolution is the task's (OFA's tables exist for 160, 176, 192, 208 and 224),
not part of the architecture, so one arch string means the same network on every table. The
canonical string joins stages with ``+`` and a stage's layers with ``_``:
``k3e3_k3e3+k5e4_k3e3_k3e4+k5e4_k5e4_k3e3+k3e6_k3e4_k3e4+k3e6_k3e6_k3e4_k3e3``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape, one_of
from .errors import InputError
from .safeio import brief

__all__ = ["OfaLayer", "OfaMbv3Arch", "OfaMbv3Space", "make_divisible"]

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # stem, first block, 5 stages, head, mix
STRIDES = (2, 2, 2, 1, 2)
ACTS = ("relu", "relu", "hswish", "hswish", "hswish")
SE = (False, True, False, True, True)
MAX_DEPTH = 4
_LAYER = re.compile(r"k(\d+)e(\d+)")


def make_divisible(value: float, divisor: int = 8) -> int:
    """OFA's (and TF's MobileNet) channel rounding: nearest multiple, never 10% below ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


@dataclass(frozen=True)
class OfaLayer:
    kernel: int
    expand: int

    def __str__(self) -> str:
        return f"k{self.kernel}e{self.expand}"


@dataclass(frozen=True)
class OfaMbv3Arch:
    stages: tuple[tuple[OfaLayer, ...], ...]

    def __str__(self) -> str:
        return "+".join("_".join(str(layer) for layer in stage) for stage in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)


@dataclass(frozen=True)
class OfaMbv3Space(SearchSpace):
    """Options: ``width_mult`` (1.2 is the supernet OFA's Note10 tables price; 1.0 the Pixel 1
    subnets'), and the allowed ``depths``, ``kernels``, ``expands`` (subsets of OFA's)."""

    name = "ofa-mbv3"

    width_mult: float = 1.2
    depths: tuple[int, ...] = (2, 3, 4)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        where = "space ofa-mbv3"
        for name, values, allowed in (
            ("depths", self.depths, (2, 3, 4)),
            ("kernels", self.kernels, (3, 5, 7)),
            ("expands", self.expands, (3, 4, 6)),
        ):
            if not values or any(v not in allowed for v in values):
                raise InputError(
                    f"{where}: `{name}` must be a non-empty subset of {list(allowed)}, got {list(values)}."
                )
        if self.width_mult not in (1.0, 1.2):
            raise InputError(f"{where}: `width_mult` must be one of [1.0, 1.2], got {self.width_mult!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{where}: `dropout` must be in [0, 1), got {self.dropout!r}.")

    # -- widths --------------------------------------------------------------------------------
    @property
    def widths(self) -> tuple[int, ...]:
        """Stem, first block, the 5 stages, final expand and feature mix widths."""
        w = [make_divisible(c * self.width_mult) for c in BASE_WIDTHS[:-2]]
        head = make_divisible(BASE_WIDTHS[-2] * self.width_mult)
        mix = make_divisible(BASE_WIDTHS[-1] * self.width_mult) if self.width_mult > 1.0 else BASE_WIDTHS[-1]
        return (*w, head, mix)

    # -- decisions -----------------------------------------------------------------------------
    def choices(self) -> tuple[Choice, ...]:
        out: list[Choice] = []
        for i in range(5):
            out.append(Choice(f"s{i}_depth", self.depths))
            for j in range(MAX_DEPTH):
                out += [Choice(f"s{i}l{j}_kernel", self.kernels), Choice(f"s{i}l{j}_expand", self.expands)]
        return tuple(out)

    def from_params(self, params: Mapping[str, Any]) -> OfaMbv3Arch:
        try:
            stages = tuple(
                tuple(
                    OfaLayer(int(params[f"s{i}l{j}_kernel"]), int(params[f"s{i}l{j}_expand"]))
                    for j in range(int(params[f"s{i}_depth"]))
                )
                for i in range(5)
            )
        except KeyError as e:
            raise InputError(f"space ofa-mbv3: missing parameter {e.args[0]!r}.") from None
        arch = OfaMbv3Arch(stages)
        self.validate(arch)
        return arch

    def to_params(self, arch: OfaMbv3Arch) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, stage in enumerate(arch.stages):
            out[f"s{i}_depth"] = len(stage)
            for j in range(MAX_DEPTH):
                # Slots past the depth do not change the network; fill them with the layer
                # before so a study sees one fixed setting for them.
                layer = stage[min(j, len(stage) - 1)]
                out[f"s{i}l{j}_kernel"], out[f"s{i}l{j}_expand"] = layer.kernel, layer.expand
        return out

    def validate(self, arch: OfaMbv3Arch) -> None:
        if len(arch.stages) != 5:
            raise InputError(f"arch {brief(str(arch))}: expected 5 stages, got {len(arch.stages)}.")
        for i, stage in enumerate(arch.stages):
            one_of(len(stage), self.depths, f"arch {brief(str(arch))}: stage {i} depth")
            for j, layer in enumerate(stage):
                one_of(layer.kernel, self.kernels, f"arch {brief(str(arch))}: stage {i} layer {j} kernel")
                one_of(layer.expand, self.expands, f"arch {brief(str(arch))}: stage {i} layer {j} expand")

    def parse(self, text: str) -> OfaMbv3Arch:
        stages = []
        for i, part in enumerate(str(text).strip().split("+")):
            layers = []
            for j, item in enumerate(part.split("_")):
                m = _LAYER.fullmatch(item)
                if not m:
                    raise InputError(
                        f"arch {brief(text)}: stage {i} layer {j} must look like 'k3e4', got {item!r}."
                    )
                layers.append(OfaLayer(int(m.group(1)), int(m.group(2))))
            stages.append(tuple(layers))
        arch = OfaMbv3Arch(tuple(stages))
        self.validate(arch)
        return arch

    def from_net_config(self, doc: Any, where: str = "net.config") -> OfaMbv3Arch:
        """The architecture of an OFA ``net.config`` (a specialised MobileNetV3 subnet)."""
        if (
            not isinstance(doc, dict)
            or doc.get("name") != "MobileNetV3"
            or not isinstance(doc.get("blocks"), list)
        ):
            raise InputError(f"{where}: expected an OFA MobileNetV3 net.config with a 'blocks' list.")
        widths = self.widths
        try:
            stem = int(doc["first_conv"]["out_channels"])
            convs = [b["mobile_inverted_conv"] for b in doc["blocks"]]
            if stem != widths[0]:
                raise InputError(
                    f"{where}: stem width {stem} is not width_mult {self.width_mult}'s {widths[0]} "
                    f"(a width-{'1.0' if stem == 16 else '1.2'} net: set space option width_mult)."
                )
            stages: list[list[OfaLayer]] = [[] for _ in range(5)]
            for k, conv in enumerate(convs[1:], start=1):
                out_c = int(conv["out_channels"])
                if out_c not in widths[2:7]:
                    raise InputError(
                        f"{where}: block {k} has {out_c} output channels; stage widths are {list(widths[2:7])}."
                    )
                stages[widths[2:7].index(out_c)].append(
                    OfaLayer(int(conv["kernel_size"]), int(conv["expand_ratio"]))
                )
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError, IndexError, AttributeError) as e:
            raise InputError(
                f"{where}: malformed OFA net.config ({e.__class__.__name__}: {str(e)[:80]})."
            ) from None
        arch = OfaMbv3Arch(tuple(tuple(s) for s in stages))
        self.validate(arch)
        return arch

    # -- networks ------------------------------------------------------------------------------
    def _image(self, task: TaskShape) -> tuple[int, int]:
        shape = task.input_shape
        if len(shape) != 3 or shape[0] != shape[1] or shape[0] < 32:
            raise InputError(
                f"space ofa-mbv3: needs square RGB-like input (R, R, C) with R >= 32, got input_shape {shape!r}."
            )
        return int(shape[0]), int(shape[2])

    def blocks(self, arch: OfaMbv3Arch, task: TaskShape) -> list[Block]:
        """Exactly the blocks ``latency_models.ofa`` creates from OFA's table keys."""
        r, c = self._image(task)
        w = self.widths
        out = [Block("conv", r, r, c, w[0], kernel=3, stride=2, act="hswish")]
        size = (r - 1) // 2 + 1
        out.append(Block("mbconv", size, size, w[0], w[1], 3, 1, 1.0, False, "relu", "idskip:1"))
        in_c = w[1]
        for i, stage in enumerate(arch.stages):
            for j, layer in enumerate(stage):
                stride = STRIDES[i] if j == 0 else 1
                out_size = (size - 1) // stride + 1
                skip = int(stride == 1 and in_c == w[2 + i])
                mid = make_divisible(round(in_c * layer.expand))
                out.append(
                    Block(
                        "mbconv", size, size, in_c, w[2 + i], layer.kernel, stride,
                        mid / in_c, SE[i], ACTS[i], f"idskip:{skip}",
                    )
                )  # fmt: skip
                in_c, size = w[2 + i], out_size
        out.append(Block("conv", size, size, in_c, w[7], kernel=1, act="hswish"))
        out.append(Block("pool", size, size, w[7], w[7]))
        out.append(Block("conv", 1, 1, w[7], w[8], kernel=1, act="hswish", extra="nobn"))
        out.append(Block("dense", 1, 1, w[8], task.num_classes))
        return out

    def all_blocks(self, task: TaskShape) -> list[Block]:
        """Every block of the space: a stage's first layer and its later layers, for each kernel
        and expansion (96 with the full space, the same 96 keys as an OFA Note10 table)."""
        first = self.blocks(
            OfaMbv3Arch(tuple((OfaLayer(3, 3),) * 2 for _ in range(5))),
            TaskShape(task.input_shape, task.num_classes),
        )
        out = first[:2]
        size, in_c, w = first[1].in_h, first[1].out_c, self.widths
        for i in range(5):
            for j in (0, 1):
                stride = STRIDES[i] if j == 0 else 1
                c = in_c if j == 0 else w[2 + i]
                for k in self.kernels:
                    for e in self.expands:
                        mid = make_divisible(round(c * e))
                        skip = int(stride == 1 and c == w[2 + i])
                        out.append(
                            Block(
                                "mbconv",
                                size,
                                size,
                                c,
                                w[2 + i],
                                k,
                                stride,
                                mid / c,
                                SE[i],
                                ACTS[i],
                                f"idskip:{skip}",
                            )
                        )
                size = (size - 1) // stride + 1
            in_c = w[2 + i]
        out += first[-4:]
        return list(dict.fromkeys(out))

    def size_terms(self, arch: OfaMbv3Arch, task: TaskShape) -> SizeTerms:
        """What ``SearchSpace.size_terms`` counts on the built model (kernels, 1-D arrays such as
        BatchNorm's four and biases, arrays), in closed form: building the model takes about a
        second, and budgets price thousands of architectures."""
        total = SizeTerms(0, 0, 0)
        for b in self.blocks(arch, task):
            if b.kind == "conv":
                bn = b.extra != "nobn"
                total += SizeTerms(
                    b.kernel * b.kernel * b.in_c * b.out_c, b.out_c * (4 if bn else 1), 5 if bn else 2
                )
            elif b.kind == "dense":
                total += SizeTerms(b.in_c * b.out_c, b.out_c, 2)
            elif b.kind == "mbconv":
                mid = round(b.in_c * b.expand)
                if mid != b.in_c:
                    total += SizeTerms(b.in_c * mid, 4 * mid, 5)
                total += SizeTerms(b.kernel * b.kernel * mid, 4 * mid, 5)
                if b.se:
                    r = make_divisible(mid // 4)
                    total += SizeTerms(2 * mid * r, r + mid, 4)
                total += SizeTerms(mid * b.out_c, 4 * b.out_c, 5)
        return total

    def block_model(self, block: Block) -> Any:
        from .backend import keras

        k = keras()
        layers = k.layers
        inputs = k.Input(shape=(block.in_h, block.in_w, block.in_c), batch_size=1, name="input")
        if block.kind == "conv":
            x = _conv(
                layers,
                inputs,
                block.out_c,
                block.kernel,
                block.stride,
                block.act,
                "c",
                bn=block.extra != "nobn",
            )
        elif block.kind == "mbconv":
            x = _mbconv(layers, inputs, block, "b")
        elif block.kind == "pool":
            x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(inputs)
        elif block.kind == "dense":
            x = layers.Flatten(name="flatten")(inputs)
            x = layers.Dense(block.out_c, activation="softmax", name="classifier")(x)
        else:
            raise InputError(
                f"space ofa-mbv3: unknown block kind {block.kind!r}; valid kinds: ['conv', 'dense', 'mbconv', 'pool']."
            )
        return k.Model(inputs, x, name=re.sub(r"[^A-Za-z0-9_]", "_", block.key))

    def build(self, arch: OfaMbv3Arch, task: TaskShape) -> Any:
        from .backend import keras

        k = keras()
        layers = k.layers
        self._image(task)
        inputs = k.Input(shape=tuple(task.input_shape), name="input")
        blocks = self.blocks(arch, task)
        x = _conv(layers, inputs, blocks[0].out_c, 3, 2, "hswish", "stem")
        for n, block in enumerate(blocks[1:-4], start=1):
            x = _mbconv(layers, x, block, f"b{n}")
        head, _pool, mix, _dense = blocks[-4:]
        x = _conv(layers, x, head.out_c, 1, 1, "hswish", "head")
        x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
        x = _conv(layers, x, mix.out_c, 1, 1, "hswish", "mix", bn=False)
        x = layers.Flatten(name="flatten")(x)
        if self.dropout:
            x = layers.Dropout(self.dropout, name="dropout")(x)
        outputs = layers.Dense(task.num_classes, activation="softmax", name="classifier")(x)
        return k.Model(inputs, outputs, name="ofa_mbv3")


def _act(layers: Any, x: Any, act: str, name: str) -> Any:
    if act == "relu":
        return layers.ReLU(name=f"{name}_relu")(x)
    # Keras 2's piecewise-linear hard sigmoid, as in the ``mbconv`` space: no Lambda layers, so
    # models save, load and quantize (tfmot) like any other.
    gate = layers.Activation("hard_sigmoid", name=f"{name}_hsig")(x)
    return layers.Multiply(name=f"{name}_hswish")([x, gate])


def _conv(
    layers: Any, x: Any, filters: int, kernel: int, stride: int, act: str, name: str, bn: bool = True
) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=not bn, name=f"{name}_conv")(
        x
    )
    if bn:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return _act(layers, x, act, name)


def _mbconv(layers: Any, inputs: Any, block: Block, name: str) -> Any:
    mid = round(block.in_c * block.expand)
    x = inputs
    if mid != block.in_c:
        x = _conv(layers, x, mid, 1, 1, block.act, f"{name}_expand")
    x = layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = _act(layers, x, block.act, f"{name}_dw")
    if block.se:
        s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
        s = layers.Conv2D(make_divisible(mid // 4), 1, activation="relu", name=f"{name}_se_reduce")(s)
        s = layers.Conv2D(mid, 1, activation="hard_sigmoid", name=f"{name}_se_expand")(s)
        x = layers.Multiply(name=f"{name}_se")([x, s])
    x = layers.Conv2D(block.out_c, 1, padding="same", use_bias=False, name=f"{name}_project")(x)
    x = layers.BatchNormalization(name=f"{name}_project_bn")(x)
    if block.extra == "idskip:1":
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x
