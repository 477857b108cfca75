"""The elastic ``mbconv`` supernet: one set of weights, those of the space's largest network, of
which every architecture of the space is a subnet (Once-for-All / BigNAS weight sharing).

A subnet is the first ``depth`` layers of each stage, the centre ``k x k`` of each depthwise
kernel, the first channels of each expansion and width, squeeze-excite on or off and ReLU6 or
hard-swish. The supernet always computes with the largest network's tensor shapes and switches
subnets with masks and gates (``encode``; the shared machinery is ``search_spaces._supernet``).

BatchNorm has no shared statistics that suit every subnet: ``calibrate`` measures a subnet's own
(the mean of batch means and of batch variances, as ``compress.training.recalibrate_batchnorm``
does) and ``predict``/``extract`` use them. ``extract`` gives ``MbconvSpace.build``'s standalone
model with the subnet's weights and statistics copied in.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from ._base import TaskShape
from ._supernet import BN_EPSILON, ElasticSupernet, Slot, Stats, _Context
from .mbconv import MbconvArch, MbconvSpace, MbconvStage
from .mbconv import _se_width as se_width

__all__ = ["BN_EPSILON", "MbconvSupernet", "Slot"]


class MbconvSupernet(ElasticSupernet):
    """The weights of ``space``'s largest network for ``task``, shared by every subnet (the call
    sequence is ``ElasticSupernet``'s)."""

    space_class = MbconvSpace
    arch_class = MbconvArch

    def __init__(self, space: MbconvSpace, task: TaskShape, seed: int = 0) -> None:
        super().__init__(space, task)
        self.image_shape = space._image_shape(task)
        e_max, k_max = max(space.expands), max(space.kernels)
        slots, in_max = [], space.stem_width
        for i, (widths, stride) in enumerate(zip(space.widths, space.strides, strict=True)):
            for j in range(max(space.depths)):
                mid = in_max * e_max
                slots.append(
                    Slot(
                        name=f"s{i}b{j}",
                        stage=i,
                        index=j,
                        stride=stride if j == 0 else 1,
                        in_max=in_max,
                        mid_max=mid,
                        out_max=max(widths),
                        r_max=se_width(mid),
                        kernel_max=k_max,
                        has_expand=e_max > 1,
                        has_se=True in space.se,
                        act="",
                        gated=j >= min(space.depths),
                    )
                )
                in_max = max(widths)
        self.slots: tuple[Slot, ...] = tuple(slots)
        shapes: dict[str, tuple[int, ...]] = {
            "stem_conv/kernel": (3, 3, self.image_shape[2], space.stem_width)
        }
        bn_widths = {"stem_bn": space.stem_width}
        features = in_max
        if space.head_width:
            shapes["head_conv/kernel"] = (1, 1, in_max, space.head_width)
            bn_widths["head_bn"] = space.head_width
            features = space.head_width
        shapes["classifier/kernel"] = (features, task.num_classes)
        shapes["classifier/bias"] = (task.num_classes,)
        self._make_variables(shapes, bn_widths, seed)

    # -- subnets -------------------------------------------------------------------------------
    def encode(self, arch: Hashable) -> dict[str, Any]:
        """The masks and gates that make the largest network compute ``arch`` (fixed shapes)."""
        from .backend import tf

        arch = self._checked(arch)
        enc: dict[str, np.ndarray] = {}
        in_c = self.space.stem_width
        for s in self.slots:
            stage = arch.stages[s.stage]
            mid = in_c * stage.expand
            enc.update(
                s.encode(
                    on=s.index < stage.depth,
                    expand=stage.expand != 1,
                    kernel=stage.kernel,
                    mid=mid,
                    out=stage.width,
                    se=stage.se,
                    r=se_width(mid),
                    res=s.stride == 1 and in_c == stage.width,
                    hswish=stage.act == "hswish",
                )
            )
            if s.index < stage.depth:
                in_c = stage.width
        return {key: tf().constant(value) for key, value in enc.items()}

    def subnet_weights(self, arch: MbconvArch, stats: Stats) -> dict[str, list[np.ndarray]]:
        """Each standalone layer's weights (``MbconvSpace.build``'s names and order) for ``arch``."""
        w, bn = self._bn_arrays(stats)
        out: dict[str, list[np.ndarray]] = {
            "stem_conv": [w["stem_conv/kernel"]],
            "stem_bn": bn("stem_bn", self.space.stem_width),
        }
        in_c = self.space.stem_width
        for s in self.slots:
            stage: MbconvStage = arch.stages[s.stage]
            if s.index >= stage.depth:
                continue
            mid = in_c * stage.expand
            r = se_width(mid) if stage.se else None
            out.update(
                s.weights(w, bn, s.name, in_c=in_c, mid=mid, kernel=stage.kernel, out=stage.width, r=r)
            )
            in_c = stage.width
        if self.space.head_width:
            out["head_conv"] = [w["head_conv/kernel"][:, :, :in_c]]
            out["head_bn"] = bn("head_bn", self.space.head_width)
            in_c = self.space.head_width
        out["classifier"] = [w["classifier/kernel"][:in_c], w["classifier/bias"]]
        return out

    # -- the computation -----------------------------------------------------------------------
    def _network(self, x: Any, enc: Mapping[str, Any], training: bool, ctx: _Context) -> Any:
        t, v, s0 = ctx.t, ctx.v, self.space.stem_stride
        x = ctx.act(ctx.bn(t.nn.conv2d(x, v["stem_conv/kernel"], [1, s0, s0, 1], "SAME"), "stem_bn"), "relu6")
        x = ctx.body(x, enc, self.slots)
        if self.space.head_width:
            x = ctx.act(ctx.bn(t.nn.conv2d(x, v["head_conv/kernel"], 1, "SAME"), "head_bn"), "relu6")
        x = t.reduce_mean(x, axis=[1, 2])
        if training and self.space.dropout:
            x = t.nn.dropout(x, rate=self.space.dropout)
        return t.matmul(x, v["classifier/kernel"]) + v["classifier/bias"]
