"""What every elastic inverted-residual supernet shares (``mbconv``, ``ofa-mbv3``): the largest
network's weights as named variables, the masked and gated MBConv layer that computes any subnet
at the largest shapes, BatchNorm calibration, inference, and extraction into the space's own
standalone model.

A subnet is selected by ``encode``'s masks and gates (fixed shapes), so one traced TensorFlow
function serves every subnet. A depthwise kernel is cropped by a zero mask: with ``same`` padding
a zero-masked larger kernel computes what the cropped kernel does, for stride 2 too (TensorFlow
pads ``(k - 1) // 2`` or one less before, so the centre tap lands on the same input pixel for
every odd ``k``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._base import TaskShape
from .errors import InputError

__all__ = ["BN_EPSILON", "ElasticSupernet", "Slot", "Stats", "first"]

# tf_keras BatchNormalization's default epsilon: the standalone models' BN layers use it.
BN_EPSILON = 1e-3

Stats = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Slot:
    """One MBConv layer position of the largest network, with the largest shapes any subnet
    gives it. ``act`` is fixed (``relu``, ``relu6``, ``hswish``) or ``""`` when the subnet picks
    ReLU6 or hard-swish (``encode``'s ``/hswish`` gate); ``gated`` when a stage's depth may skip
    it; ``has_se`` when some subnet has squeeze-excite there. ``stage`` and ``index`` are its
    stage (-1 for a fixed layer outside the stages) and its position in the stage."""

    name: str
    stage: int
    index: int
    stride: int
    in_max: int
    mid_max: int
    out_max: int
    r_max: int
    kernel_max: int
    has_expand: bool
    has_se: bool
    act: str
    gated: bool

    @property
    def bn_names(self) -> list[str]:
        return [f"{self.name}_expand_bn"] * self.has_expand + [
            f"{self.name}_dw_bn",
            f"{self.name}_project_bn",
        ]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Its weights' names and largest shapes (BatchNorm scales and shifts are added for
        every ``bn_names`` entry by ``ElasticSupernet._make_variables``)."""
        n, out = self.name, {}
        if self.has_expand:
            out[f"{n}_expand_conv/kernel"] = (1, 1, self.in_max, self.mid_max)
        out[f"{n}_dw/depthwise_kernel"] = (self.kernel_max, self.kernel_max, self.mid_max, 1)
        if self.has_se:
            out[f"{n}_se_reduce/kernel"] = (1, 1, self.mid_max, self.r_max)
            out[f"{n}_se_reduce/bias"] = (self.r_max,)
            out[f"{n}_se_expand/kernel"] = (1, 1, self.r_max, self.mid_max)
            out[f"{n}_se_expand/bias"] = (self.mid_max,)
        out[f"{n}_project/kernel"] = (1, 1, self.mid_max, self.out_max)
        return out

    def bn_widths(self) -> dict[str, int]:
        return dict(zip(self.bn_names, [self.mid_max] * (1 + self.has_expand) + [self.out_max], strict=True))

    def encode(
        self,
        *,
        on: bool,
        expand: bool,
        kernel: int,
        mid: int,
        out: int,
        se: bool,
        r: int,
        res: bool,
        hswish: bool,
    ) -> dict[str, np.ndarray]:
        """The masks and gates that make this slot compute one subnet's layer."""
        lo = (self.kernel_max - kernel) // 2
        kmask = np.zeros((self.kernel_max, self.kernel_max, 1, 1), np.float32)
        kmask[lo : lo + kernel, lo : lo + kernel] = 1.0
        n = self.name
        return {
            f"{n}/on": np.float32(on),
            f"{n}/expand": np.float32(expand),
            f"{n}/kmask": kmask,
            f"{n}/mid": first(mid, self.mid_max),
            f"{n}/out": first(out, self.out_max),
            f"{n}/se": np.float32(se),
            f"{n}/r": first(r, self.r_max),
            f"{n}/hswish": np.float32(hswish),
            f"{n}/res": np.float32(res),
        }

    def weights(
        self,
        w: Mapping[str, np.ndarray],
        bn: Any,
        prefix: str,
        *,
        in_c: int,
        mid: int,
        kernel: int,
        out: int,
        r: int | None,
    ) -> dict[str, list[np.ndarray]]:
        """The standalone layer ``prefix``'s weights, sliced for one subnet: ``mid == in_c``
        means no expand convolution, ``r`` None no squeeze-excite; ``bn(name, c)`` gives a
        BatchNorm's four arrays."""
        n, lo, got = self.name, (self.kernel_max - kernel) // 2, {}
        if mid != in_c:
            got[f"{prefix}_expand_conv"] = [w[f"{n}_expand_conv/kernel"][:, :, :in_c, :mid]]
            got[f"{prefix}_expand_bn"] = bn(f"{n}_expand_bn", mid)
        got[f"{prefix}_dw"] = [w[f"{n}_dw/depthwise_kernel"][lo : lo + kernel, lo : lo + kernel, :mid]]
        got[f"{prefix}_dw_bn"] = bn(f"{n}_dw_bn", mid)
        if r is not None:
            got[f"{prefix}_se_reduce"] = [
                w[f"{n}_se_reduce/kernel"][:, :, :mid, :r],
                w[f"{n}_se_reduce/bias"][:r],
            ]
            got[f"{prefix}_se_expand"] = [
                w[f"{n}_se_expand/kernel"][:, :, :r, :mid],
                w[f"{n}_se_expand/bias"][:mid],
            ]
        got[f"{prefix}_project"] = [w[f"{n}_project/kernel"][:, :, :mid, :out]]
        got[f"{prefix}_project_bn"] = bn(f"{n}_project_bn", out)
        return got


def first(n: int, size: int) -> np.ndarray:
    """A channel mask: the first ``n`` of ``size`` channels."""
    mask = np.zeros((size,), np.float32)
    mask[:n] = 1.0
    return mask


class ElasticSupernet(ABC):
    """The weights of a space's largest network for a task, shared by every subnet.

    Call sequence: ``encode(arch)`` once per subnet, ``calibrate(enc, x)`` for its BN statistics,
    then ``predict(x, enc, stats)`` or ``extract(arch, stats)``. Trainers call ``logits(x, enc,
    training=True)`` inside their own ``tf.function`` and update ``trainable`` (a list of
    ``tf.Variable``); ``get_weights``/``set_weights`` move every weight as named numpy arrays.

    A subclass names its ``space_class`` and ``arch_class``, calls ``super().__init__`` (which
    checks and keeps the space and task), sets ``image_shape`` and ``slots``, calls
    ``_make_variables`` with its stem's and head's shapes, and implements ``encode`` (after
    ``_checked(arch)``), ``subnet_weights`` (the standalone layers' names and weights) and
    ``_network`` (its stem and head around ``_Context.body``).
    """

    space_class: ClassVar[type]
    arch_class: ClassVar[type]
    image_shape: tuple[int, int, int]
    slots: tuple[Slot, ...]

    def __init__(self, space: Any, task: TaskShape) -> None:
        name = self.space_class.name
        if not isinstance(space, self.space_class):
            raise InputError(f"supernet: expected an {name} space, got {getattr(space, 'name', space)!r}.")
        self.space, self.task = space, task

    def _checked(self, arch: Any) -> Any:
        """``arch`` if it is an architecture of this supernet's space, else ``InputError``."""
        if not isinstance(arch, self.arch_class):
            raise InputError(f"supernet: expected an {self.space_class.name} architecture, got {arch!r}.")
        self.space.validate(arch)
        return arch

    def _make_variables(
        self, shapes: Mapping[str, tuple[int, ...]], bn_widths: Mapping[str, int], seed: int
    ) -> None:
        """Every weight as a ``tf.Variable``: ``shapes`` and ``bn_widths`` (the stem's and the
        head's) besides the slots'; kernels Glorot-uniform, BN scales 1, the rest 0."""
        from .backend import keras, tf

        t, k = tf(), keras()
        all_shapes, widths = dict(shapes), dict(bn_widths)
        for s in self.slots:
            all_shapes.update(s.shapes())
            widths.update(s.bn_widths())
        for bn, width in widths.items():
            all_shapes[f"{bn}/gamma"] = (width,)
            all_shapes[f"{bn}/beta"] = (width,)
        self.shapes: dict[str, tuple[int, ...]] = all_shapes
        self.bn_widths: dict[str, int] = widths
        self.variables: dict[str, Any] = {}
        for i, (name, shape) in enumerate(sorted(all_shapes.items())):
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

    # -- what a space's supernet defines ---------------------------------------------------------
    @abstractmethod
    def encode(self, arch: Hashable) -> dict[str, Any]:
        """The masks and gates that make the largest network compute ``arch`` (fixed shapes)."""

    @abstractmethod
    def subnet_weights(self, arch: Any, stats: Stats) -> dict[str, list[np.ndarray]]:
        """Each standalone layer's weights (``space.build``'s names) for ``arch``."""

    @abstractmethod
    def _network(self, x: Any, enc: Mapping[str, Any], training: bool, ctx: _Context) -> Any:
        """The logits of the (H, W, C) float batch ``x``: stem, ``ctx.body``, head."""

    # -- subnets -------------------------------------------------------------------------------
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

    def _bn_arrays(self, stats: Stats) -> Any:
        """``bn(name, c)``: a standalone BatchNorm's weights (scale, shift, mean, variance) from
        the first ``c`` channels of the supernet's and of ``stats``."""
        w = self.get_weights()

        def bn(name: str, c: int) -> list[np.ndarray]:
            mean, var = stats[name]
            return [w[f"{name}/gamma"][:c], w[f"{name}/beta"][:c], mean[:c], var[:c]]

        return w, bn

    def extract(self, arch: Any, stats: Stats) -> Any:
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
        from .backend import tf

        h, w, c = self.image_shape
        ctx = _Context(self, stats)
        x = tf().reshape(tf().cast(x, tf().float32), [-1, h, w, c])
        return self._network(x, enc, training, ctx), ctx.used

    def _infer_fn(self, x: Any, enc: Any, stats: Any) -> Any:
        from .backend import tf

        return tf().nn.softmax(self.logits(x, enc, stats=stats)[0])

    def _moments_fn(self, x: Any, enc: Any) -> Any:
        return self.logits(x, enc)[1]


class _Context:
    """One call of ``logits``: BatchNorm with the batch's or the given statistics, recording the
    (mean, variance) each BatchNorm used, and the slots' masked layers."""

    def __init__(self, net: ElasticSupernet, stats: Mapping[str, Any] | None) -> None:
        from .backend import keras, tf

        self.net, self.stats, self.t = net, stats, tf()
        self.v = net.variables
        self.hard_sigmoid = keras().activations.hard_sigmoid
        self.used: dict[str, Any] = {}

    def bn(self, h: Any, name: str) -> Any:
        """``h`` normalized by BatchNorm ``name`` (its statistics recorded in ``used``)."""
        y, mean, var = self._bn(h, name)
        self.used[name] = (mean, var)
        return y

    def _bn(self, h: Any, name: str) -> tuple[Any, Any, Any]:
        t, v = self.t, self.v
        mean, var = t.nn.moments(h, axes=[0, 1, 2]) if self.stats is None else self.stats[name]
        out = t.nn.batch_normalization(h, mean, var, v[f"{name}/beta"], v[f"{name}/gamma"], BN_EPSILON)
        return out, mean, var

    def act(self, h: Any, act: str, hswish: Any = None) -> Any:
        """``act`` applied to ``h``; ``""``: hard-swish where the ``hswish`` gate is on, else ReLU6."""
        t = self.t
        if act == "":
            return t.cond(hswish > 0.5, lambda: self.act(h, "hswish"), lambda: self.act(h, "relu6"))
        if act == "hswish":
            return h * self.hard_sigmoid(h)
        return t.nn.relu6(h) if act == "relu6" else t.nn.relu(h)

    def channels(self, h: Any, n: int) -> Any:
        c = int(h.shape[-1])
        return h[..., :n] if c >= n else self.t.pad(h, [[0, 0], [0, 0], [0, 0], [0, n - c]])

    def layer(self, x: Any, s: Slot, enc: Mapping[str, Any]) -> tuple[Any, ...]:
        """Slot ``s`` for the subnet ``enc``: its output and its BatchNorms' (mean, variance)."""
        t, v, n = self.t, self.v, s.name
        hs, mid_mask = enc[f"{n}/hswish"], enc[f"{n}/mid"]
        moments: list[Any] = []
        if s.has_expand:

            def expand() -> tuple[Any, Any, Any]:
                e, mean, var = self._bn(
                    t.nn.conv2d(x, v[f"{n}_expand_conv/kernel"], 1, "SAME"), f"{n}_expand_bn"
                )
                return self.act(e, s.act, hs) * mid_mask, mean, var

            def no_expand() -> tuple[Any, Any, Any]:
                return self.channels(x, s.mid_max), t.zeros([s.mid_max]), t.ones([s.mid_max])

            y, mean, var = t.cond(enc[f"{n}/expand"] > 0.5, expand, no_expand)
            moments += [mean, var]
        else:
            y = self.channels(x, s.mid_max)
        kernel = v[f"{n}_dw/depthwise_kernel"] * enc[f"{n}/kmask"]
        y, mean, var = self._bn(
            t.nn.depthwise_conv2d(y, kernel, [1, s.stride, s.stride, 1], "SAME"), f"{n}_dw_bn"
        )
        moments += [mean, var]
        y = self.act(y, s.act, hs) * mid_mask
        if s.has_se:

            def excite(y: Any = y) -> Any:
                p = t.reduce_mean(y, axis=[1, 2], keepdims=True)
                p = t.nn.conv2d(p, v[f"{n}_se_reduce/kernel"], 1, "SAME") + v[f"{n}_se_reduce/bias"]
                p = t.nn.relu(p) * enc[f"{n}/r"]
                p = t.nn.conv2d(p, v[f"{n}_se_expand/kernel"], 1, "SAME") + v[f"{n}_se_expand/bias"]
                return y * self.hard_sigmoid(p)

            y = t.cond(enc[f"{n}/se"] > 0.5, excite, lambda y=y: y)
        y, mean, var = self._bn(t.nn.conv2d(y, v[f"{n}_project/kernel"], 1, "SAME"), f"{n}_project_bn")
        moments += [mean, var]
        y = y * enc[f"{n}/out"]
        if s.stride == 1:
            y = y + self.channels(x, s.out_max) * enc[f"{n}/res"]
        return (y, *moments)

    def body(self, x: Any, enc: Mapping[str, Any], slots: tuple[Slot, ...]) -> Any:
        """``slots`` in order; a gated slot runs only where the subnet's depth reaches it."""
        t = self.t
        for s in slots:
            if not s.gated:
                out = self.layer(x, s, enc)
            else:

                def skip(x: Any = x, s: Slot = s) -> tuple[Any, ...]:
                    widths = [self.net.bn_widths[b] for b in s.bn_names]
                    return (x, *[m for c in widths for m in (t.zeros([c]), t.ones([c]))])

                out = t.cond(enc[f"{s.name}/on"] > 0.5, lambda x=x, s=s: self.layer(x, s, enc), skip)
            x = out[0]
            for i, name in enumerate(s.bn_names):
                self.used[name] = (out[1 + 2 * i], out[2 + 2 * i])
        return x
