"""``dsconv``: stacks of depthwise-separable convolutions, as in the classic edge tuners.

A stem convolution, then ``n_blocks`` blocks (depthwise ``k x k`` + pointwise ``1 x 1``, each
with BatchNorm and ReLU6), each with its own filters, kernel and stride; pooling and a classifier.
An architecture reads ``f16-k3-s1+f32-k5-s2+...``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape, one_of, parse_int
from .errors import InputError
from .safeio import brief

__all__ = ["DsBlock", "DsconvArch", "DsconvSpace"]

BN_MOMENTUM = 0.9  # short proxy trainings: a slow moving average leaves inference BN untrained


@dataclass(frozen=True)
class DsBlock:
    filters: int
    kernel: int
    stride: int

    def __str__(self) -> str:
        return f"f{self.filters}-k{self.kernel}-s{self.stride}"


@dataclass(frozen=True)
class DsconvArch:
    blocks: tuple[DsBlock, ...]

    def __str__(self) -> str:
        return "+".join(str(b) for b in self.blocks)


def _positive_ints(values: Any, where: str) -> None:
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise InputError(f"{where}: expected a non-empty list of ints >= 1, got {list(values)!r}.")


@dataclass(frozen=True)
class DsconvSpace(SearchSpace):
    """Every tuple is the allowed values of one per-block decision."""

    name = "dsconv"

    n_blocks: int = 4
    filters: tuple[int, ...] = (8, 16, 32, 64)
    kernels: tuple[int, ...] = (3, 5)
    strides: tuple[int, ...] = (1, 2)
    stem_width: int = 16
    stem_stride: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        where = "space dsconv"
        if (
            not isinstance(self.n_blocks, int)
            or isinstance(self.n_blocks, bool)
            or not 1 <= self.n_blocks <= 16
        ):
            raise InputError(f"{where}: `n_blocks` expected an int in [1, 16], got {self.n_blocks!r}.")
        _positive_ints(self.filters, f"{where}: `filters`")
        _positive_ints(self.kernels, f"{where}: `kernels`")
        if not self.strides or any(s not in (1, 2) for s in self.strides):
            raise InputError(
                f"{where}: `strides` expected a non-empty subset of [1, 2], got {list(self.strides)!r}."
            )
        if not isinstance(self.stem_width, int) or self.stem_width < 1 or self.stem_stride not in (1, 2):
            raise InputError(
                f"{where}: expected stem_width >= 1 and stem_stride in [1, 2], got "
                f"{self.stem_width!r}, {self.stem_stride!r}."
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{where}: `dropout` expected a number in [0, 1), got {self.dropout!r}.")

    # -- decisions -----------------------------------------------------------------------------
    def choices(self) -> tuple[Choice, ...]:
        out: list[Choice] = []
        for i in range(self.n_blocks):
            out += [
                Choice(f"b{i}_filters", self.filters),
                Choice(f"b{i}_kernel", self.kernels),
                Choice(f"b{i}_stride", self.strides),
            ]
        return tuple(out)

    def from_params(self, params: Mapping[str, Any]) -> DsconvArch:
        blocks = []
        for i in range(self.n_blocks):
            try:
                blocks.append(
                    DsBlock(
                        int(params[f"b{i}_filters"]), int(params[f"b{i}_kernel"]), int(params[f"b{i}_stride"])
                    )
                )
            except KeyError as e:
                raise InputError(f"space dsconv: missing parameter {e.args[0]!r}.") from None
        arch = DsconvArch(tuple(blocks))
        self.validate(arch)
        return arch

    def to_params(self, arch: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, b in enumerate(arch.blocks):
            out.update({f"b{i}_filters": b.filters, f"b{i}_kernel": b.kernel, f"b{i}_stride": b.stride})
        return out

    def validate(self, arch: DsconvArch) -> None:
        if len(arch.blocks) != self.n_blocks:
            raise InputError(
                f"arch {brief(str(arch))}: expected {self.n_blocks} blocks, got {len(arch.blocks)}."
            )
        for i, b in enumerate(arch.blocks):
            where = f"arch {brief(str(arch))}: block {i}"
            one_of(b.filters, self.filters, f"{where} filters")
            one_of(b.kernel, self.kernels, f"{where} kernel")
            one_of(b.stride, self.strides, f"{where} stride")

    def parse(self, text: str) -> DsconvArch:
        blocks = []
        for i, part in enumerate(str(text).strip().split("+")):
            fields = part.split("-")
            if len(fields) != 3 or not all(f[:1] == p for f, p in zip(fields, "fks", strict=False)):
                raise InputError(f"arch {brief(text)}: block {i} must look like 'f16-k3-s1', got {part!r}.")
            blocks.append(
                DsBlock(
                    parse_int(fields[0][1:], f"arch {brief(text)} block {i} filters"),
                    parse_int(fields[1][1:], f"arch {brief(text)} block {i} kernel"),
                    parse_int(fields[2][1:], f"arch {brief(text)} block {i} stride"),
                )
            )
        arch = DsconvArch(tuple(blocks))
        self.validate(arch)
        return arch

    # -- networks ------------------------------------------------------------------------------
    def blocks(self, arch: DsconvArch, task: TaskShape) -> list[Block]:
        h, w, c = self._image_shape(task)
        out = [Block("conv", h, w, c, self.stem_width, kernel=3, stride=self.stem_stride, act="relu6")]
        h, w, c = -(-h // self.stem_stride), -(-w // self.stem_stride), self.stem_width
        for b in arch.blocks:
            out.append(Block("dsconv", h, w, c, b.filters, kernel=b.kernel, stride=b.stride, act="relu6"))
            h, w, c = -(-h // b.stride), -(-w // b.stride), b.filters
        out.append(Block("pool_dense", h, w, c, task.num_classes))
        return out

    def all_blocks(self, task: TaskShape) -> list[Block]:
        """Every block any architecture can hold: per position, each reachable resolution and
        input width, times the block's own choices."""
        h0, w0, c0 = self._image_shape(task)
        out = [Block("conv", h0, w0, c0, self.stem_width, kernel=3, stride=self.stem_stride, act="relu6")]
        h0, w0 = -(-h0 // self.stem_stride), -(-w0 // self.stem_stride)
        states = {(h0, w0, self.stem_width)}
        for _ in range(self.n_blocks):
            nxt = set()
            for (h, w, c), f, k, s in itertools.product(
                sorted(states), self.filters, self.kernels, self.strides
            ):
                out.append(Block("dsconv", h, w, c, f, kernel=k, stride=s, act="relu6"))
                nxt.add((-(-h // s), -(-w // s), f))
            states = nxt
        out += [Block("pool_dense", h, w, c, task.num_classes) for h, w, c in sorted(states)]
        return list(dict.fromkeys(out))

    def size_terms(self, arch: DsconvArch, task: TaskShape) -> SizeTerms:
        # BatchNorm folds into the convolutions: one per-channel bias vector per conv.
        total = SizeTerms(0, 0, 0)
        for b in self.blocks(arch, task):
            if b.kind == "conv":
                total += SizeTerms(b.kernel * b.kernel * b.in_c * b.out_c, b.out_c, 3)
            elif b.kind == "dsconv":
                total += SizeTerms(b.kernel * b.kernel * b.in_c + b.in_c * b.out_c, b.in_c + b.out_c, 6)
            else:
                total += SizeTerms(b.in_c * b.out_c, b.out_c, 5)
        return total

    def block_model(self, block: Block) -> Any:
        return self._block_model(
            block,
            {
                "conv": lambda layers, x: _conv_bn(
                    layers, x, block.out_c, block.kernel, block.stride, "conv"
                ),
                "dsconv": lambda layers, x: _dsconv(
                    layers, x, DsBlock(block.out_c, block.kernel, block.stride), "b"
                ),
            },
        )

    def build(self, arch: DsconvArch, task: TaskShape) -> Any:
        k, inputs, x = self._image_input(task)
        x = _conv_bn(k.layers, x, self.stem_width, 3, self.stem_stride, "stem")
        for i, b in enumerate(arch.blocks):
            x = _dsconv(k.layers, x, b, f"b{i}")
        return self._classifier(k, inputs, x, task.num_classes, self.dropout)


def _conv_bn(layers: Any, x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x)


def _dsconv(layers: Any, x: Any, b: DsBlock, name: str) -> Any:
    x = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False, name=f"{name}_dw")(
        x
    )
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    return _conv_bn(layers, x, b.filters, 1, 1, f"{name}_pw")
