"""``fbnet``: the FBNet layer-wise space (22 searchable layers, 9 block types each).

An architecture is 22 space-separated block names such as ``k3_e6 skip k5_e1_g2 ...`` (the
format of HELP's FBNet latency data); the macro skeleton follows the FBNet paper, scaled by width.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, OpSequenceSpace, SizeTerms, TaskShape
from .errors import InputError
from .safeio import brief

__all__ = ["FBNET_OPS", "FbnetArch", "FbnetSpace", "LAYER_SCHEDULE", "op_spec"]

FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
# FBNet paper, Table 1: (output channels, layers, stride of the first layer) per stage at width 1.
LAYER_SCHEDULE = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))
STEM_CHANNELS = 16
HEAD_CHANNELS = 1984
NUM_LAYERS = sum(n for _, n, _ in LAYER_SCHEDULE)
_LAYER_NAMES = tuple(f"layer_{i}" for i in range(NUM_LAYERS))
# FBNet's own ImageNet task, the one its layers are defined for (``layer_blocks``): exact halvings
# down to 7x7, so the ratios between layers are not distorted by rounding.
REFERENCE_TASK = TaskShape((224, 224, 3), 1000)


def op_spec(op: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a block name; ``skip`` is (0, 0, 0)."""
    if op == "skip":
        return 0, 0, 0
    parts = op.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), 2 if len(parts) == 3 else 1


@dataclass(frozen=True)
class FbnetArch:
    """One block name per searchable layer."""

    ops: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(self.ops)


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` (grouped convs need even splits), never below it."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


@dataclass(frozen=True)
class FbnetSpace(OpSequenceSpace):
    """FBNet's macro skeleton (stem, 7 stages of TBS layers, 1x1 head, pooling, classifier).

    ``width_mult`` scales every channel count (the paper's 1.0 is far too big for 28x28 digits on
    a CPU, hence 0.25 by default); ``strides`` is the first-layer stride of each of the 7 stages.
    """

    name = "fbnet"
    decision_names = _LAYER_NAMES
    arch_class = FbnetArch

    width_mult: float = 0.25
    stem_stride: int = 2
    strides: tuple[int, ...] = tuple(s for _, _, s in LAYER_SCHEDULE)
    ops: tuple[str, ...] = FBNET_OPS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        where = "space fbnet"
        if not isinstance(self.width_mult, (int, float)) or not 0 < self.width_mult <= 4:
            raise InputError(f"{where}: `width_mult` expected a number in (0, 4], got {self.width_mult!r}.")
        if self.stem_stride not in (1, 2):
            raise InputError(f"{where}: `stem_stride` expected 1 or 2, got {self.stem_stride!r}.")
        if len(self.strides) != len(LAYER_SCHEDULE) or any(s not in (1, 2) for s in self.strides):
            raise InputError(
                f"{where}: `strides` expected {len(LAYER_SCHEDULE)} values in [1, 2], got {list(self.strides)}."
            )
        if not self.ops or any(op not in FBNET_OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise InputError(
                f"{where}: `ops` expected a non-empty subset of {list(FBNET_OPS)}, got {list(self.ops)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{where}: `dropout` expected a number in [0, 1), got {self.dropout!r}.")

    # -- decisions -----------------------------------------------------------------------------
    def choice_groups(self) -> tuple[tuple[int, ...], ...]:
        """The layers of each stage (they share a shape)."""
        bounds = list(itertools.accumulate((n for _, n, _ in LAYER_SCHEDULE), initial=0))
        return tuple(tuple(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))

    def validate(self, arch: FbnetArch) -> None:
        if len(arch.ops) != NUM_LAYERS:
            raise InputError(
                f"arch {brief(str(arch))}: expected {NUM_LAYERS} block names, got {len(arch.ops)}."
            )
        for i, op in enumerate(arch.ops):
            if op not in self.ops:
                raise InputError(
                    f"arch {brief(str(arch))}: layer {i}: unknown block {op!r}; valid blocks: {list(self.ops)}."
                )

    def parse(self, text: str) -> FbnetArch:
        ops = str(text).split()
        if len(ops) != NUM_LAYERS:
            raise InputError(
                f"arch {brief(text)}: expected {NUM_LAYERS} space-separated block names, got {len(ops)}."
            )
        for i, op in enumerate(ops):
            if op not in self.ops:
                raise InputError(
                    f"arch {brief(text)}: layer {i}: unknown block {op!r}; valid blocks: {list(self.ops)}."
                )
        return FbnetArch(tuple(ops))

    @classmethod
    def layer_blocks(
        cls, options: Mapping[str, Any], width_mult: float | None = None
    ) -> dict[tuple[int, Any], Block | None]:
        options = dict(options)
        if width_mult is not None:
            options["width_mult"] = width_mult
        space = cls.from_options(options)
        names, values = _LAYER_NAMES, space.ops
        out: dict[tuple[int, Any], Block | None] = {}
        for value in values:
            if value != "skip":
                # Every layer is a block: layer p is block 1 + p (after the stem).
                blocks = space.blocks(space.from_params(dict.fromkeys(names, value)), REFERENCE_TASK)
                for p in range(len(names)):
                    out[p, value] = blocks[1 + p]
                continue
            # A skip is free unless it changes shape: then the space prices a projection block.
            filler = next(x for x in values if x != "skip")
            for p in range(len(names)):
                params = dict.fromkeys(names, filler)
                params[names[p]] = value
                proj = [
                    b
                    for b in space.blocks(space.from_params(params), REFERENCE_TASK)
                    if b.kind == "skip_proj"
                ]
                out[p, value] = proj[0] if proj else None
        return out

    # -- networks ------------------------------------------------------------------------------
    def layer_plan(self) -> list[tuple[int, int]]:
        """(output channels, stride) of each of the 22 searchable layers."""
        plan = []
        for (channels, n, _), stride in zip(LAYER_SCHEDULE, self.strides, strict=True):
            for j in range(n):
                plan.append((_divisible(channels * self.width_mult), stride if j == 0 else 1))
        return plan

    def stem_channels(self) -> int:
        return _divisible(STEM_CHANNELS * self.width_mult)

    def head_channels(self) -> int:
        return _divisible(HEAD_CHANNELS * self.width_mult)

    def blocks(self, arch: FbnetArch, task: TaskShape) -> list[Block]:
        h, w, c = self._image_shape(task)
        out = [Block("conv", h, w, c, self.stem_channels(), kernel=3, stride=self.stem_stride, act="relu")]
        h, w, c = -(-h // self.stem_stride), -(-w // self.stem_stride), self.stem_channels()
        for op, (out_c, stride) in zip(arch.ops, self.layer_plan(), strict=True):
            if op == "skip":
                if stride != 1 or c != out_c:
                    # A skip that changes shape needs a projection (as FBNet's builder does).
                    out.append(Block("skip_proj", h, w, c, out_c, kernel=1, stride=stride))
            else:
                kernel, expand, groups = op_spec(op)
                extra = f"g{groups}" if groups > 1 else ""
                out.append(
                    Block("tbs", h, w, c, out_c, kernel, stride, float(expand), act="relu", extra=extra)
                )
            h, w, c = -(-h // stride), -(-w // stride), out_c
        out.append(Block("conv", h, w, c, self.head_channels(), kernel=1, stride=1, act="relu"))
        out.append(Block("pool_dense", h, w, self.head_channels(), task.num_classes))
        return out

    def size_terms(self, arch: FbnetArch, task: TaskShape) -> SizeTerms:
        total = SizeTerms(0, 0, 0)
        for b in self.blocks(arch, task):
            if b.kind in ("conv", "skip_proj"):
                total += SizeTerms(b.kernel * b.kernel * b.in_c * b.out_c, b.out_c, 2)
            elif b.kind == "pool_dense":
                total += SizeTerms(b.in_c * b.out_c, b.out_c, 2)
            else:
                groups = 2 if b.extra == "g2" else 1
                mid = b.in_c * int(b.expand)
                total += SizeTerms(b.in_c * mid // groups, mid, 2)  # pointwise expand
                total += SizeTerms(b.kernel * b.kernel * mid, mid, 2)  # depthwise
                total += SizeTerms(mid * b.out_c // groups, b.out_c, 2)  # pointwise project
        return total

    def build(self, arch: FbnetArch, task: TaskShape) -> Any:
        k, inputs, x = self._image_input(task)
        layers = k.layers
        x = _conv_bn(layers, x, self.stem_channels(), 3, self.stem_stride, True, "stem")
        for i, (op, (out_c, stride)) in enumerate(zip(arch.ops, self.layer_plan(), strict=True)):
            x = _tbs(layers, x, op, out_c, stride, f"l{i}")
        x = _conv_bn(layers, x, self.head_channels(), 1, 1, True, "head")
        return self._classifier(k, inputs, x, task.num_classes, self.dropout)


def _conv_bn(
    layers: Any, x: Any, filters: int, kernel: int, stride: int, relu: bool, name: str, groups: int = 1
) -> Any:
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", groups=groups, use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _shuffle(layers: Any, x: Any, groups: int, name: str) -> Any:
    """ShuffleNet channel shuffle, so the two groups of the next grouped conv see each other."""
    h, w, c = (int(d) for d in x.shape[1:])
    x = layers.Reshape((h, w, groups, c // groups), name=f"{name}_shuffle_split")(x)
    x = layers.Permute((1, 2, 4, 3), name=f"{name}_shuffle_swap")(x)
    return layers.Reshape((h, w, c), name=f"{name}_shuffle_join")(x)


def _tbs(layers: Any, inputs: Any, op: str, out_c: int, stride: int, name: str) -> Any:
    """FBNet's block: grouped 1x1 expand (+shuffle), kxk depthwise, grouped 1x1 project, residual."""
    in_c = int(inputs.shape[-1])
    if op == "skip":
        if stride == 1 and in_c == out_c:
            return inputs
        return _conv_bn(layers, inputs, out_c, 1, stride, False, f"{name}_proj")
    kernel, expand, groups = op_spec(op)
    x = _conv_bn(layers, inputs, in_c * expand, 1, 1, True, f"{name}_expand", groups)
    if groups > 1:
        x = _shuffle(layers, x, groups, name)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = _conv_bn(layers, x, out_c, 1, 1, False, f"{name}_project", groups)
    if stride == 1 and in_c == out_c:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x
