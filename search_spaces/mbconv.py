"""``mbconv``: MobileNetV2/V3-style inverted-residual networks, searched per stage.

Per stage: depth, kernel size, expansion ratio, width, squeeze-excite on/off and ReLU6 or
hard-swish. The input resolution is the task's. An architecture's canonical string joins its
stages with ``+``, e.g. ``d1-k3-e1-w16-se0-relu6+d2-k5-e4-w24-se1-hswish``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape, one_of, parse_int
from .errors import InputError
from .safeio import brief

__all__ = ["MbconvArch", "MbconvSpace", "MbconvStage"]

ACTS = ("relu6", "hswish")
# Short proxy trainings: a slow BatchNorm average would leave inference-mode accuracy at chance.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class MbconvStage:
    depth: int
    kernel: int
    expand: int
    width: int
    se: bool
    act: str

    def __str__(self) -> str:
        return f"d{self.depth}-k{self.kernel}-e{self.expand}-w{self.width}-se{int(self.se)}-{self.act}"


@dataclass(frozen=True)
class MbconvArch:
    stages: tuple[MbconvStage, ...]

    def __str__(self) -> str:
        return "+".join(str(s) for s in self.stages)


def _se_width(channels: int) -> int:
    return max(8, channels // 4)


@dataclass(frozen=True)
class MbconvSpace(SearchSpace):
    """Options narrow or widen the space; every tuple is the allowed values of one decision.

    ``widths`` has one tuple per stage; ``strides`` one stride per stage (first layer).
    """

    name = "mbconv"

    strides: tuple[int, ...] = (1, 2, 2)
    widths: tuple[tuple[int, ...], ...] = ((8, 16), (16, 24, 32), (24, 32, 48))
    depths: tuple[int, ...] = (1, 2, 3)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (1, 3, 4, 6)
    se: tuple[bool, ...] = (False, True)
    acts: tuple[str, ...] = ACTS
    stem_width: int = 16
    stem_stride: int = 2
    head_width: int = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        where = "space mbconv"
        if len(self.strides) == 0 or len(self.widths) != len(self.strides):
            raise InputError(
                f"{where}: `widths` must have one tuple per stage ({len(self.strides)} strides), got {len(self.widths)}."
            )
        for name, values, allowed in (
            ("kernels", self.kernels, (1, 3, 5, 7, 9)),
            ("expands", self.expands, (1, 2, 3, 4, 5, 6, 8)),
            ("strides", self.strides, (1, 2)),
            ("acts", self.acts, ACTS),
            ("se", self.se, (False, True)),
        ):
            if not values or any(v not in allowed for v in values):
                raise InputError(
                    f"{where}: `{name}` must be a non-empty subset of {list(allowed)}, got {list(values)}."
                )
        for name, values in (
            ("depths", self.depths),
            *((f"widths[{i}]", w) for i, w in enumerate(self.widths)),
        ):
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise InputError(f"{where}: `{name}` must be non-empty positive ints, got {list(values)}.")
        if self.stem_width < 1 or self.stem_stride not in (1, 2) or self.head_width < 0:
            raise InputError(
                f"{where}: expected stem_width >= 1, stem_stride in [1, 2], head_width >= 0, got "
                f"{self.stem_width}, {self.stem_stride}, {self.head_width}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{where}: `dropout` must be in [0, 1), got {self.dropout!r}.")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MbconvSpace:
        """Build from config values (lists become tuples; unknown keys are an error)."""
        cls._check_options(options, set(cls.__dataclass_fields__))
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key == "widths":
                if not isinstance(value, (list, tuple)) or not all(
                    isinstance(w, (list, tuple)) for w in value
                ):
                    raise InputError(
                        f"space mbconv: `widths` must be a list of lists (one per stage), got {value!r}."
                    )
                kwargs[key] = tuple(tuple(w) for w in value)
            elif isinstance(value, list):
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    # -- decisions -----------------------------------------------------------------------------
    def choices(self) -> tuple[Choice, ...]:
        out: list[Choice] = []
        for i, widths in enumerate(self.widths):
            out += [
                Choice(f"s{i}_depth", self.depths),
                Choice(f"s{i}_kernel", self.kernels),
                Choice(f"s{i}_expand", self.expands),
                Choice(f"s{i}_width", widths),
                Choice(f"s{i}_se", self.se),
                Choice(f"s{i}_act", self.acts),
            ]
        return tuple(out)

    def from_params(self, params: Mapping[str, Any]) -> MbconvArch:
        stages = []
        for i in range(len(self.strides)):
            try:
                stages.append(
                    MbconvStage(
                        depth=int(params[f"s{i}_depth"]),
                        kernel=int(params[f"s{i}_kernel"]),
                        expand=int(params[f"s{i}_expand"]),
                        width=int(params[f"s{i}_width"]),
                        se=bool(params[f"s{i}_se"]),
                        act=str(params[f"s{i}_act"]),
                    )
                )
            except KeyError as e:
                raise InputError(f"space mbconv: missing parameter {e.args[0]!r}.") from None
        arch = MbconvArch(tuple(stages))
        self.validate(arch)
        return arch

    def to_params(self, arch: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, s in enumerate(arch.stages):
            out.update(
                {
                    f"s{i}_depth": s.depth,
                    f"s{i}_kernel": s.kernel,
                    f"s{i}_expand": s.expand,
                    f"s{i}_width": s.width,
                    f"s{i}_se": s.se,
                    f"s{i}_act": s.act,
                }
            )
        return out

    def validate(self, arch: MbconvArch) -> None:
        if len(arch.stages) != len(self.strides):
            raise InputError(
                f"arch {brief(str(arch))}: expected {len(self.strides)} stages, got {len(arch.stages)}."
            )
        for i, s in enumerate(arch.stages):
            where = f"arch {brief(str(arch))}: stage {i}"
            one_of(s.depth, self.depths, f"{where} depth")
            one_of(s.kernel, self.kernels, f"{where} kernel")
            one_of(s.expand, self.expands, f"{where} expand")
            one_of(s.width, self.widths[i], f"{where} width")
            one_of(s.se, self.se, f"{where} se")
            one_of(s.act, self.acts, f"{where} act")

    def parse(self, text: str) -> MbconvArch:
        stages = []
        for i, part in enumerate(str(text).strip().split("+")):
            fields = part.split("-")
            if len(fields) != 6:
                raise InputError(
                    f"arch {brief(text)}: stage {i} must look like 'd2-k3-e4-w16-se0-relu6', got {part!r}."
                )
            d, k, e, w, se, act = fields
            for field_text, prefix in ((d, "d"), (k, "k"), (e, "e"), (w, "w"), (se, "se")):
                if not field_text.startswith(prefix):
                    raise InputError(
                        f"arch {brief(text)}: stage {i} field {field_text!r} must start with {prefix!r}."
                    )
            se_value = parse_int(se[2:], f"arch {brief(text)} stage {i} se")
            if se_value not in (0, 1):
                raise InputError(f"arch {brief(text)}: stage {i} se must be se0 or se1, got {se!r}.")
            stages.append(
                MbconvStage(
                    depth=parse_int(d[1:], f"arch {brief(text)} stage {i} depth"),
                    kernel=parse_int(k[1:], f"arch {brief(text)} stage {i} kernel"),
                    expand=parse_int(e[1:], f"arch {brief(text)} stage {i} expand"),
                    width=parse_int(w[1:], f"arch {brief(text)} stage {i} width"),
                    se=bool(se_value),
                    act=act,
                )
            )
        arch = MbconvArch(tuple(stages))
        self.validate(arch)
        return arch

    # -- networks ------------------------------------------------------------------------------
    def blocks(self, arch: MbconvArch, task: TaskShape) -> list[Block]:
        h, w, c = self._image_shape(task)
        out = [Block("conv", h, w, c, self.stem_width, kernel=3, stride=self.stem_stride, act="relu6")]
        h, w, c = -(-h // self.stem_stride), -(-w // self.stem_stride), self.stem_width
        for stage, stride in zip(arch.stages, self.strides, strict=True):
            for layer in range(stage.depth):
                s = stride if layer == 0 else 1
                out.append(
                    Block("mbconv", h, w, c, stage.width, stage.kernel, s, stage.expand, stage.se, stage.act)
                )
                h, w, c = -(-h // s), -(-w // s), stage.width
        if self.head_width:
            out.append(Block("conv", h, w, c, self.head_width, kernel=1, stride=1, act="relu6"))
            c = self.head_width
        out.append(Block("pool_dense", h, w, c, task.num_classes))
        return out

    def all_blocks(self, task: TaskShape) -> list[Block]:
        h, w, c = self._image_shape(task)
        out = [Block("conv", h, w, c, self.stem_width, kernel=3, stride=self.stem_stride, act="relu6")]
        h, w = -(-h // self.stem_stride), -(-w // self.stem_stride)
        in_widths: tuple[int, ...] = (self.stem_width,)
        combos = [
            (k, e, se, act) for k in self.kernels for e in self.expands for se in self.se for act in self.acts
        ]
        for widths, stride in zip(self.widths, self.strides, strict=True):
            for c_in in in_widths:
                for c_out in widths:
                    out += [
                        Block("mbconv", h, w, c_in, c_out, k, stride, e, se, act) for k, e, se, act in combos
                    ]
            h, w = -(-h // stride), -(-w // stride)
            if max(self.depths) > 1:
                for c_out in widths:
                    out += [Block("mbconv", h, w, c_out, c_out, k, 1, e, se, act) for k, e, se, act in combos]
            in_widths = widths
        for c in in_widths:
            if self.head_width:
                out.append(Block("conv", h, w, c, self.head_width, kernel=1, stride=1, act="relu6"))
            else:
                out.append(Block("pool_dense", h, w, c, task.num_classes))
        if self.head_width:
            out.append(Block("pool_dense", h, w, self.head_width, task.num_classes))
        return list(dict.fromkeys(out))

    def size_terms(self, arch: MbconvArch, task: TaskShape) -> SizeTerms:
        total = SizeTerms(0, 0, 0)
        for b in self.blocks(arch, task):
            if b.kind == "conv":
                total += SizeTerms(b.kernel * b.kernel * b.in_c * b.out_c, b.out_c, 3)
            elif b.kind == "pool_dense":
                total += SizeTerms(b.in_c * b.out_c, b.out_c, 5)
            else:
                # tensors: weights, biases and the activations between ops (each has a header)
                mid = b.in_c * int(b.expand)
                terms = SizeTerms(b.kernel * b.kernel * mid + mid * b.out_c, mid + b.out_c, 6)
                if b.expand != 1:
                    terms += SizeTerms(b.in_c * mid, mid, 3)
                if b.se:
                    r = _se_width(mid)
                    terms += SizeTerms(2 * mid * r, r + mid, 11)
                if b.stride == 1 and b.in_c == b.out_c:
                    terms += SizeTerms(0, 0, 1)
                total += terms
        return total

    def block_model(self, block: Block) -> Any:
        def mbconv(layers: Any, x: Any) -> Any:
            stage = MbconvStage(1, block.kernel, int(block.expand), block.out_c, block.se, block.act)
            return _mbconv(layers, x, stage, block.stride, "b")

        return self._block_model(
            block,
            {
                "conv": lambda layers, x: _conv_bn_act(
                    layers, x, block.out_c, block.kernel, block.stride, block.act, "conv"
                ),
                "mbconv": mbconv,
            },
        )

    def build(self, arch: MbconvArch, task: TaskShape) -> Any:
        k, inputs, x = self._image_input(task)
        layers = k.layers
        x = _conv_bn_act(layers, x, self.stem_width, 3, self.stem_stride, "relu6", "stem")
        for i, (stage, stride) in enumerate(zip(arch.stages, self.strides, strict=True)):
            for j in range(stage.depth):
                x = _mbconv(layers, x, stage, stride if j == 0 else 1, f"s{i}b{j}")
        if self.head_width:
            x = _conv_bn_act(layers, x, self.head_width, 1, 1, "relu6", "head")
        return self._classifier(k, inputs, x, task.num_classes, self.dropout)


def _act(layers: Any, x: Any, act: str, name: str) -> Any:
    if act == "relu6":
        return layers.ReLU(6.0, name=f"{name}_relu6")(x)
    gate = layers.Activation("hard_sigmoid", name=f"{name}_hsig")(x)
    return layers.Multiply(name=f"{name}_hswish")([x, gate])


def _conv_bn_act(layers: Any, x: Any, filters: int, kernel: int, stride: int, act: str, name: str) -> Any:
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return _act(layers, x, act, name)


def _mbconv(layers: Any, inputs: Any, stage: MbconvStage, stride: int, name: str) -> Any:
    in_c = int(inputs.shape[-1])
    mid = in_c * stage.expand
    x = inputs
    if stage.expand != 1:
        x = _conv_bn_act(layers, x, mid, 1, 1, stage.act, f"{name}_expand")
    x = layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = _act(layers, x, stage.act, f"{name}_dw")
    if stage.se:
        s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
        s = layers.Conv2D(_se_width(mid), 1, activation="relu", name=f"{name}_se_reduce")(s)
        s = layers.Conv2D(mid, 1, activation="hard_sigmoid", name=f"{name}_se_expand")(s)
        x = layers.Multiply(name=f"{name}_se")([x, s])
    x = layers.Conv2D(stage.width, 1, padding="same", use_bias=False, name=f"{name}_project")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(x)
    if stride == 1 and in_c == stage.width:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x
