"""The elastic ``mbconv`` supernet: one set of weights, those of the space's largest network, of
which every architecture of the space is a subnet (Once-for-All / BigNAS weight sharing).

A subnet is the first ``depth`` layers of each stage, the centre ``k x k`` of each depthwise
kernel, the first channels of each expansion and width, squeeze-excite on or off and ReLU6 or
hard-swish. The supernet always computes with the largest network's tensor shapes and switches
subnets with masks and gates (``encode``), so one traced TensorFlow function serves every subnet
instead of one trace per subnet. With ``same`` padding a zero-masked larger kernel computes what
the cropped kernel does, for stride 2 too (TensorFlow pads ``(k - 1) // 2`` or one less before,
so the centre tap lands on the same input pixel for every odd ``k``).

BatchNorm has no shared statistics that suit every subnet: ``calibrate`` measures a subnet's own
(the mean of batch means and of batch variances, as ``compress.training.recalibrate_batchnorm``
does) and ``predict``/``extract`` use them. ``extract`` gives ``MbconvSpace.build``'s standalone
model with the subnet's weights and statistics copied in.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import TaskShape
from .errors import InputError
from .mbconv import MbconvArch, MbconvSpace, MbconvStage
from .mbconv import _se_width as se_width

__all__ = ["BN_EPSILON", "MbconvSupernet", "Slot"]

# tf_keras BatchNormalization's default epsilon: the standalone model's BN layers use it.
BN_EPSILON = 1e-3

Stats = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Slot:
    """One layer position of the largest network, with the largest shapes any subnet gives it."""

    stage: int
    index: int
    stride: int
    in_max: int
    mid_max: int
    out_max: int
    r_max: int
    kernel_max: int
    has_expand: bool

    @property
    def name(self) -> str:
        return f"s{self.stage}b{self.index}"


class MbconvSupernet:
    """The weights of ``space``'s largest network for ``task``, shared by every subnet.

    Call sequence: ``encode(arch)`` once per subnet, ``calibrate(enc, x)`` for its BN statistics,
    then ``predict(x, enc, stats)`` or ``extract(arch, stats)``. Trainers call ``logits(x, enc,
    training=True)`` inside their own ``tf.function`` and update ``trainable`` (a list of
    ``tf.Variable``); ``get_weights``/``set_weights`` move every weight as named numpy arrays.
    """

    def __init__(self, space: MbconvSpace, task: TaskShape, seed: int = 0) -> None:
        from .backend import keras, tf

        if not isinstance(space, MbconvSpace):
            raise InputError(f"supernet: expected an mbconv space, got {getattr(space, 'name', space)!r}.")
        self.space, self.task = space, task
        self.image_shape = space._image_shape(task)
        t, k = tf(), keras()
        e_max, k_max = max(space.expands), max(space.kernels)
        slots, in_max = [], space.stem_width
        for i, (widths, stride) in enumerate(zip(space.widths, space.strides, strict=True)):
            for j in range(max(space.depths)):
                mid = in_max * e_max
                slots.append(
                    Slot(
                        i,
                        j,
                        stride if j == 0 else 1,
                        in_max,
                        mid,
                        max(widths),
                        se_width(mid),
                        k_max,
                        e_max > 1,
                    )
                )
                in_max = max(widths)
        self.slots: tuple[Slot, ...] = tuple(slots)
        shapes: dict[str, tuple[int, ...]] = {
            "stem_conv/kernel": (3, 3, self.image_shape[2], space.stem_width)
        }
        self.bn_widths: dict[str, int] = {"stem_bn": space.stem_width}
        for s in slots:
            n = s.name
            if s.has_expand:
                shapes[f"{n}_expand_conv/kernel"] = (1, 1, s.in_max, s.mid_max)
                self.bn_widths[f"{n}_expand_bn"] = s.mid_max
            shapes[f"{n}_dw/depthwise_kernel"] = (s.kernel_max, s.kernel_max, s.mid_max, 1)
            self.bn_widths[f"{n}_dw_bn"] = s.mid_max
            if True in space.se:
                shapes[f"{n}_se_reduce/kernel"] = (1, 1, s.mid_max, s.r_max)
                shapes[f"{n}_se_reduce/bias"] = (s.r_max,)
                shapes[f"{n}_se_expand/kernel"] = (1, 1, s.r_max, s.mid_max)
                shapes[f"{n}_se_expand/bias"] = (s.mid_max,)
            shapes[f"{n}_project/kernel"] = (1, 1, s.mid_max, s.out_max)
            self.bn_widths[f"{n}_project_bn"] = s.out_max
        features = in_max
        if space.head_width:
            shapes["head_conv/kernel"] = (1, 1, in_max, space.head_width)
            self.bn_widths["head_bn"] = space.head_width
            features = space.head_width
        shapes["classifier/kernel"] = (features, task.num_classes)
        shapes["classifier/bias"] = (task.num_classes,)
        for bn, width in self.bn_widths.items():
            shapes[f"{bn}/gamma"] = (width,)
            shapes[f"{bn}/beta"] = (width,)
        self.shapes = shapes
        self.variables: dict[str, Any] = {}
        for i, (name, shape) in enumerate(sorted(shapes.items())):
            if name.endswith("/gamma"):
                init = np.ones(shape, np.float32)
            elif len(shape) == 1:
                init = np.zeros(shape, np.float32)
            else:
                init = k.initializers.GlorotUniform(seed=seed * 1000 + i)(shape).numpy()
            self.variables[name] = t.Variable(init, name=name.replace("/", "__"))
        self.trainable = [self.variables[n] for n in sorted(self.variables)]
        self._infer = t.function(self._infer_fn, reduce_retracing=True)
        self._moments = t.function(self._moments_fn, reduce_retracing=True)

    # -- subnets -------------------------------------------------------------------------------
    def encode(self, arch: Hashable) -> dict[str, Any]:
        """The masks and gates that make the largest network compute ``arch`` (fixed shapes)."""
        from .backend import tf

        if not isinstance(arch, MbconvArch):
            raise InputError(f"supernet: expected an mbconv architecture, got {arch!r}.")
        self.space.validate(arch)
        enc: dict[str, np.ndarray] = {}
        in_c = self.space.stem_width
        for s in self.slots:
            stage = arch.stages[s.stage]
            mid, k = in_c * stage.expand, stage.kernel
            lo = (s.kernel_max - k) // 2
            kmask = np.zeros((s.kernel_max, s.kernel_max, 1, 1), np.float32)
            kmask[lo : lo + k, lo : lo + k] = 1.0
            n = s.name
            enc[f"{n}/on"] = np.float32(s.index < stage.depth)
            enc[f"{n}/expand"] = np.float32(stage.expand != 1)
            enc[f"{n}/kmask"] = kmask
            enc[f"{n}/mid"] = _first(mid, s.mid_max)
            enc[f"{n}/out"] = _first(stage.width, s.out_max)
            enc[f"{n}/se"] = np.float32(stage.se)
            enc[f"{n}/r"] = _first(se_width(mid), s.r_max)
            enc[f"{n}/hswish"] = np.float32(stage.act == "hswish")
            enc[f"{n}/res"] = np.float32(s.stride == 1 and in_c == stage.width)
            if s.index < stage.depth:
                in_c = stage.width
        return {key: tf().constant(value) for key, value in enc.items()}

    def calibrate(
        self, enc: Mapping[str, Any], x: np.ndarray, batch_size: int = 200, samples: int = 1000
    ) -> Stats:
        """The subnet's BatchNorm statistics: the mean of its batch means and batch variances over
        the first ``samples`` rows of ``x`` in batches of ``batch_size``."""
        batches = [
            self._moments(np.asarray(x[start : start + batch_size], np.float32), enc)
            for start in range(0, min(len(x), samples), batch_size)
        ]
        if not batches:
            raise InputError("supernet calibration: expected at least one sample, got none.")
        return {
            name: (
                np.mean([b[name][0].numpy() for b in batches], axis=0),
                np.mean([b[name][1].numpy() for b in batches], axis=0),
            )
            for name in batches[0]
        }

    def predict(
        self, x: np.ndarray, enc: Mapping[str, Any], stats: Stats, batch_size: int = 500
    ) -> np.ndarray:
        """Class probabilities of the subnet ``enc`` in inference mode with BN ``stats``."""
        from .backend import tf

        tensors = {n: (tf().constant(m), tf().constant(v)) for n, (m, v) in stats.items()}
        out = [
            self._infer(np.asarray(x[i : i + batch_size], np.float32), enc, tensors).numpy()
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.task.num_classes), np.float32)

    def accuracy(self, x: np.ndarray, y: np.ndarray, enc: Mapping[str, Any], stats: Stats) -> float:
        return float(np.mean(np.argmax(self.predict(x, enc, stats), axis=1) == y))

    def tracing_count(self) -> int:
        """How many times the inference and calibration functions were traced (1 each ideally)."""
        return int(
            self._infer.experimental_get_tracing_count() + self._moments.experimental_get_tracing_count()
        )

    # -- weights -------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: v.numpy() for name, v in self.variables.items()}

    def set_weights(self, weights: Mapping[str, np.ndarray], where: str = "supernet weights") -> None:
        """Assign every weight; names and shapes must be exactly this supernet's."""
        missing = sorted(set(self.shapes) - set(weights))
        extra = sorted(set(weights) - set(self.shapes))
        if missing or extra:
            raise InputError(
                f"{where}: expected the weights of this supernet, got {len(missing)} missing "
                f"({missing[:2]}) and {len(extra)} unknown ({extra[:2]})."
            )
        for name, shape in self.shapes.items():
            if tuple(weights[name].shape) != shape:
                raise InputError(
                    f"{where}: {name}: expected shape {list(shape)}, got {list(weights[name].shape)}."
                )
        for name, value in weights.items():
            self.variables[name].assign(np.asarray(value, np.float32))

    def subnet_weights(self, arch: MbconvArch, stats: Stats) -> dict[str, list[np.ndarray]]:
        """Each standalone layer's weights (``MbconvSpace.build``'s names and order) for ``arch``."""
        w = self.get_weights()
        out: dict[str, list[np.ndarray]] = {}

        def bn(name: str, c: int) -> list[np.ndarray]:
            mean, var = stats[name]
            return [w[f"{name}/gamma"][:c], w[f"{name}/beta"][:c], mean[:c], var[:c]]

        out["stem_conv"] = [w["stem_conv/kernel"]]
        out["stem_bn"] = bn("stem_bn", self.space.stem_width)
        in_c = self.space.stem_width
        for s in self.slots:
            stage: MbconvStage = arch.stages[s.stage]
            if s.index >= stage.depth:
                continue
            n, mid, k = s.name, in_c * stage.expand, stage.kernel
            lo = (s.kernel_max - k) // 2
            if stage.expand != 1:
                out[f"{n}_expand_conv"] = [w[f"{n}_expand_conv/kernel"][:, :, :in_c, :mid]]
                out[f"{n}_expand_bn"] = bn(f"{n}_expand_bn", mid)
            out[f"{n}_dw"] = [w[f"{n}_dw/depthwise_kernel"][lo : lo + k, lo : lo + k, :mid]]
            out[f"{n}_dw_bn"] = bn(f"{n}_dw_bn", mid)
            if stage.se:
                r = se_width(mid)
                out[f"{n}_se_reduce"] = [
                    w[f"{n}_se_reduce/kernel"][:, :, :mid, :r],
                    w[f"{n}_se_reduce/bias"][:r],
                ]
                out[f"{n}_se_expand"] = [
                    w[f"{n}_se_expand/kernel"][:, :, :r, :mid],
                    w[f"{n}_se_expand/bias"][:mid],
                ]
            out[f"{n}_project"] = [w[f"{n}_project/kernel"][:, :, :mid, : stage.width]]
            out[f"{n}_project_bn"] = bn(f"{n}_project_bn", stage.width)
            in_c = stage.width
        if self.space.head_width:
            out["head_conv"] = [w["head_conv/kernel"][:, :, :in_c]]
            out["head_bn"] = bn("head_bn", self.space.head_width)
            in_c = self.space.head_width
        out["classifier"] = [w["classifier/kernel"][:in_c], w["classifier/bias"]]
        return out

    def extract(self, arch: MbconvArch, stats: Stats) -> Any:
        """``space.build(arch, task)`` with the subnet's inherited weights and BN ``stats``."""
        model = self.space.build(arch, self.task)
        weights = self.subnet_weights(arch, stats)
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in weights:
                raise InputError(
                    f"supernet extract: layer {layer.name!r} of {arch} has no inherited weights."
                )
            layer.set_weights(weights.pop(layer.name))
        if weights:
            raise InputError(f"supernet extract: {arch} has no layers {sorted(weights)[:3]}.")
        return model

    # -- the computation -----------------------------------------------------------------------
    def logits(
        self, x: Any, enc: Mapping[str, Any], training: bool = False, stats: Mapping[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Logits of subnet ``enc`` and every BatchNorm's (mean, variance) as used: the batch's
        when ``stats`` is None (training, calibration), else ``stats`` (inference).

        Gates that skip work (a layer beyond the depth, no expansion, no squeeze-excite, the
        activation) are ``tf.cond``s, so a small subnet does not pay for the largest one's layers;
        channel and kernel masks keep the largest shapes."""
        from .backend import keras, tf

        t, v = tf(), self.variables
        hard_sigmoid = keras().activations.hard_sigmoid

        def bn(h: Any, name: str) -> tuple[Any, Any, Any]:
            mean, var = t.nn.moments(h, axes=[0, 1, 2]) if stats is None else stats[name]
            out = t.nn.batch_normalization(h, mean, var, v[f"{name}/beta"], v[f"{name}/gamma"], BN_EPSILON)
            return out, mean, var

        def act(h: Any, hswish: Any) -> Any:
            return t.cond(hswish > 0.5, lambda: h * hard_sigmoid(h), lambda: t.nn.relu6(h))

        def channels(h: Any, n: int) -> Any:
            c = int(h.shape[-1])
            return h[..., :n] if c >= n else t.pad(h, [[0, 0], [0, 0], [0, 0], [0, n - c]])

        def layer(x: Any, s: Slot) -> tuple[Any, ...]:
            n, hs, mid_mask = s.name, enc[f"{s.name}/hswish"], enc[f"{s.name}/mid"]
            moments: list[Any] = []
            if s.has_expand:

                def expand() -> tuple[Any, Any, Any]:
                    e, mean, var = bn(
                        t.nn.conv2d(x, v[f"{n}_expand_conv/kernel"], 1, "SAME"), f"{n}_expand_bn"
                    )
                    return act(e, hs) * mid_mask, mean, var

                def no_expand() -> tuple[Any, Any, Any]:
                    return channels(x, s.mid_max), t.zeros([s.mid_max]), t.ones([s.mid_max])

                y, mean, var = t.cond(enc[f"{n}/expand"] > 0.5, expand, no_expand)
                moments += [mean, var]
            else:
                y = channels(x, s.mid_max)
            kernel = v[f"{n}_dw/depthwise_kernel"] * enc[f"{n}/kmask"]
            y, mean, var = bn(
                t.nn.depthwise_conv2d(y, kernel, [1, s.stride, s.stride, 1], "SAME"), f"{n}_dw_bn"
            )
            moments += [mean, var]
            y = act(y, hs) * mid_mask
            if f"{n}_se_reduce/kernel" in v:

                def excite(y: Any = y) -> Any:
                    p = t.reduce_mean(y, axis=[1, 2], keepdims=True)
                    p = t.nn.conv2d(p, v[f"{n}_se_reduce/kernel"], 1, "SAME") + v[f"{n}_se_reduce/bias"]
                    p = t.nn.relu(p) * enc[f"{n}/r"]
                    p = t.nn.conv2d(p, v[f"{n}_se_expand/kernel"], 1, "SAME") + v[f"{n}_se_expand/bias"]
                    return y * hard_sigmoid(p)

                y = t.cond(enc[f"{n}/se"] > 0.5, excite, lambda y=y: y)
            y, mean, var = bn(t.nn.conv2d(y, v[f"{n}_project/kernel"], 1, "SAME"), f"{n}_project_bn")
            moments += [mean, var]
            y = y * enc[f"{n}/out"]
            if s.stride == 1:
                y = y + channels(x, s.out_max) * enc[f"{n}/res"]
            return (y, *moments)

        def names(s: Slot) -> list[str]:
            return [f"{s.name}_expand_bn"] * s.has_expand + [f"{s.name}_dw_bn", f"{s.name}_project_bn"]

        h, w, c = self.image_shape
        x = t.reshape(t.cast(x, t.float32), [-1, h, w, c])
        s0 = self.space.stem_stride
        x, mean, var = bn(t.nn.conv2d(x, v["stem_conv/kernel"], [1, s0, s0, 1], "SAME"), "stem_bn")
        used: dict[str, Any] = {"stem_bn": (mean, var)}
        x = t.nn.relu6(x)
        for s in self.slots:
            if s.index == 0:  # every subnet has a stage's first layer (depths are >= 1)
                out = layer(x, s)
            else:

                def skip(x: Any = x, s: Slot = s) -> tuple[Any, ...]:
                    dummies = [(t.zeros([self.bn_widths[b]]), t.ones([self.bn_widths[b]])) for b in names(s)]
                    return (x, *[m for pair in dummies for m in pair])

                out = t.cond(enc[f"{s.name}/on"] > 0.5, lambda x=x, s=s: layer(x, s), skip)
            x = out[0]
            for i, name in enumerate(names(s)):
                used[name] = (out[1 + 2 * i], out[2 + 2 * i])
        if self.space.head_width:
            x, mean, var = bn(t.nn.conv2d(x, v["head_conv/kernel"], 1, "SAME"), "head_bn")
            used["head_bn"] = (mean, var)
            x = t.nn.relu6(x)
        x = t.reduce_mean(x, axis=[1, 2])
        if training and self.space.dropout:
            x = t.nn.dropout(x, rate=self.space.dropout)
        return t.matmul(x, v["classifier/kernel"]) + v["classifier/bias"], used

    def _infer_fn(self, x: Any, enc: Any, stats: Any) -> Any:
        from .backend import tf

        return tf().nn.softmax(self.logits(x, enc, stats=stats)[0])

    def _moments_fn(self, x: Any, enc: Any) -> Any:
        return self.logits(x, enc)[1]


def _first(n: int, size: int) -> np.ndarray:
    mask = np.zeros((size,), np.float32)
    mask[:n] = 1.0
    return mask
