"""The elastic ``ofa-mbv3`` supernet: Once-for-All's MobileNetV3 as one set of weights of which
every architecture of the space (with its options) is a subnet.

A subnet is the first ``depth`` layers of each stage, the centre ``k x k`` of each layer's
depthwise kernel and the first channels of each layer's expansion. Widths, activations and
squeeze-excite are fixed per stage, as ``OfaMbv3Space`` defines them; only a stage's first layer
may change the resolution, so every layer's input width is the same in every subnet. The masked,
gated computation, BN calibration and extraction are ``search_spaces._supernet``'s;
``extract`` gives ``OfaMbv3Space.build``'s standalone model with the inherited weights.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from ._base import TaskShape
from ._supernet import ElasticSupernet, Slot, Stats, _Context
from .ofa_mbv3 import ACTS, SE, STRIDES, OfaMbv3Arch, OfaMbv3Space, make_divisible

__all__ = ["OfaMbv3Supernet"]


def _mid(in_c: int, expand: int) -> int:
    """A layer's expansion width, as ``OfaMbv3Space.blocks`` rounds it."""
    return make_divisible(round(in_c * expand))


def _se_width(mid: int) -> int:
    return make_divisible(mid // 4)


class OfaMbv3Supernet(ElasticSupernet):
    """Once-for-All's MobileNetV3 at its largest depth, kernel and expansion for ``task``: the
    weights every architecture of ``space`` shares. Slot ``first`` is the fixed first block,
    ``s{i}b{j}`` layer ``j`` of stage ``i`` (``ElasticSupernet`` has the call sequence)."""

    space_class = OfaMbv3Space
    arch_class = OfaMbv3Arch

    def __init__(self, space: OfaMbv3Space, task: TaskShape, seed: int = 0) -> None:
        super().__init__(space, task)
        size, channels = space._image(task)
        self.image_shape = (size, size, channels)
        w = space.widths
        # The fixed first block: a 3x3 depthwise layer without expansion, with its residual.
        slots = [
            Slot(
                name="first",
                stage=-1,
                index=0,
                stride=1,
                in_max=w[0],
                mid_max=w[0],
                out_max=w[1],
                r_max=0,
                kernel_max=3,
                has_expand=False,
                has_se=False,
                act="relu",
                gated=False,
            )
        ]
        for i in range(5):
            for j in range(max(space.depths)):
                in_c = (w[1] if i == 0 else w[1 + i]) if j == 0 else w[2 + i]
                mids = [_mid(in_c, e) for e in space.expands]
                slots.append(
                    Slot(
                        name=f"s{i}b{j}",
                        stage=i,
                        index=j,
                        stride=STRIDES[i] if j == 0 else 1,
                        in_max=in_c,
                        mid_max=max(mids),
                        out_max=w[2 + i],
                        r_max=max(_se_width(m) for m in mids),
                        kernel_max=max(space.kernels),
                        has_expand=True,
                        has_se=SE[i],
                        act=ACTS[i],
                        gated=j >= min(space.depths),
                    )
                )
        self.slots: tuple[Slot, ...] = tuple(slots)
        shapes = {
            "stem_conv/kernel": (3, 3, channels, w[0]),
            "head_conv/kernel": (1, 1, w[6], w[7]),
            "mix_conv/kernel": (1, 1, w[7], w[8]),
            "mix_conv/bias": (w[8],),
            "classifier/kernel": (w[8], task.num_classes),
            "classifier/bias": (task.num_classes,),
        }
        self._make_variables(shapes, {"stem_bn": w[0], "head_bn": w[7]}, seed)

    # -- subnets -------------------------------------------------------------------------------
    def _layers(self, arch: OfaMbv3Arch) -> list[tuple[Slot, Any]]:
        """Each slot with the arch's layer there (None beyond a stage's depth; the first block
        gets None too, it has no choices)."""
        return [
            (
                s,
                arch.stages[s.stage][s.index]
                if 0 <= s.stage and s.index < len(arch.stages[s.stage])
                else None,
            )
            for s in self.slots
        ]

    def encode(self, arch: Hashable) -> dict[str, Any]:
        """The masks and gates that make the largest network compute ``arch`` (fixed shapes)."""
        from .backend import tf

        arch = self._checked(arch)
        enc: dict[str, np.ndarray] = {}
        for s, layer in self._layers(arch):
            kernel, mid = (layer.kernel, _mid(s.in_max, layer.expand)) if layer else (s.kernel_max, s.mid_max)
            enc.update(
                s.encode(
                    on=layer is not None or s.stage < 0,
                    expand=s.has_expand,
                    kernel=kernel,
                    mid=mid,
                    out=s.out_max,
                    se=s.has_se,
                    r=_se_width(mid),
                    res=s.stride == 1 and s.in_max == s.out_max,
                    hswish=s.act == "hswish",
                )
            )
        return {key: tf().constant(value) for key, value in enc.items()}

    def subnet_weights(self, arch: OfaMbv3Arch, stats: Stats) -> dict[str, list[np.ndarray]]:
        """Each standalone layer's weights (``OfaMbv3Space.build``'s names: ``b1`` the first
        block, then ``b2``, ``b3``, ... the arch's layers in order) for ``arch``."""
        w, bn = self._bn_arrays(stats)
        widths = self.space.widths
        out: dict[str, list[np.ndarray]] = {
            "stem_conv": [w["stem_conv/kernel"]],
            "stem_bn": bn("stem_bn", widths[0]),
        }
        n = 0
        for s, layer in self._layers(arch):
            if s.stage >= 0 and layer is None:
                continue
            n += 1
            kernel, mid = (layer.kernel, _mid(s.in_max, layer.expand)) if layer else (s.kernel_max, s.in_max)
            r = _se_width(mid) if s.has_se else None
            out.update(s.weights(w, bn, f"b{n}", in_c=s.in_max, mid=mid, kernel=kernel, out=s.out_max, r=r))
        out["head_conv"] = [w["head_conv/kernel"]]
        out["head_bn"] = bn("head_bn", widths[7])
        out["mix_conv"] = [w["mix_conv/kernel"], w["mix_conv/bias"]]
        out["classifier"] = [w["classifier/kernel"], w["classifier/bias"]]
        return out

    # -- the computation -----------------------------------------------------------------------
    def _network(self, x: Any, enc: Mapping[str, Any], training: bool, ctx: _Context) -> Any:
        t, v = ctx.t, ctx.v
        x = ctx.act(ctx.bn(t.nn.conv2d(x, v["stem_conv/kernel"], [1, 2, 2, 1], "SAME"), "stem_bn"), "hswish")
        x = ctx.body(x, enc, self.slots)
        x = ctx.act(ctx.bn(t.nn.conv2d(x, v["head_conv/kernel"], 1, "SAME"), "head_bn"), "hswish")
        x = t.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = ctx.act(t.nn.conv2d(x, v["mix_conv/kernel"], 1, "SAME") + v["mix_conv/bias"], "hswish")
        x = t.reshape(x, [-1, int(x.shape[-1])])
        if training and self.space.dropout:
            x = t.nn.dropout(x, rate=self.space.dropout)
        return t.matmul(x, v["classifier/kernel"]) + v["classifier/bias"]
