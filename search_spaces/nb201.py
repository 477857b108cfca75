"""``nb201``: the NAS-Bench-201 cell space (5 operations on the 6 edges of a 4-node cell).

An architecture is the standard string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``; ``canonical``
maps isomorphic cells to one representative exactly as NAS-Bench-201's ``UniqueString`` groups them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ._base import Block, OpSequenceSpace, SizeTerms, TaskShape
from .errors import InputError
from .safeio import brief

__all__ = ["EDGES", "OPS", "Nb201Arch", "Nb201Space", "functional_string", "live_edges", "unique_string"]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (to_node, from_node) in the order the arch string lists them.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
_NODE_EDGES = ((0,), (1, 2), (3, 4, 5))  # edge indices feeding node 1, 2, 3
_EDGE_NAMES = tuple(f"edge_{dst}_{src}" for dst, src in EDGES)
# The standard string, matched in one go; anything else goes through the parser that names the fault.
_FAST = re.compile(r"\|(\w+)~0\|\+\|(\w+)~0\|(\w+)~1\|\+\|(\w+)~0\|(\w+)~1\|(\w+)~2\|")


@dataclass(frozen=True)
class Nb201Arch:
    """One operation per edge, in ``EDGES`` order."""

    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(EDGES):
            raise InputError(f"nb201 arch: expected {len(EDGES)} edge operations, got {len(self.ops)}.")
        for op in self.ops:
            if op not in OPS:
                raise InputError(f"nb201 arch: unknown operation {op!r}; valid operations: {list(OPS)}.")

    def __str__(self) -> str:
        nodes = []
        for edges in _NODE_EDGES:
            nodes.append("|" + "|".join(f"{self.ops[e]}~{EDGES[e][1]}" for e in edges) + "|")
        return "+".join(nodes)


def unique_string(arch: Nb201Arch) -> str:
    """NAS-Bench-201's ``Structure.to_unique_str(consider_zero=True)``: equal for isomorphic cells.

    Reproduced verbatim (including its quirks, e.g. a sum of zeros is not itself a zero) so that
    our grouping matches the published benchmark's 6,466 unique networks.
    """
    nodes = {0: "0"}
    for j, edges in enumerate(_NODE_EDGES, start=1):
        parts = []
        for e in edges:
            op, src = arch.ops[e], EDGES[e][1]
            if op == "none" or nodes[src] == "#":
                parts.append("#")
            elif op == "skip_connect":
                parts.append(nodes[src])
            else:
                parts.append(f"({nodes[src]})@{op}")
        nodes[j] = "+".join(sorted(parts))
    return nodes[3]


@cache
def _representatives() -> dict[str, Nb201Arch]:
    """unique string -> smallest arch (in ``OPS`` order per edge) of its class."""
    reps: dict[str, Nb201Arch] = {}
    for combo in itertools.product(OPS, repeat=len(EDGES)):
        arch = Nb201Arch(combo)
        reps.setdefault(unique_string(arch), arch)  # product order is ascending, so first = smallest
    return reps


def live_edges(arch: Nb201Arch) -> tuple[bool, ...]:
    """Which edges actually compute: non-zero input, not ``none``, and the result reaches node 3."""
    nonzero = [True, False, False, False]
    for j, edges in enumerate(_NODE_EDGES, start=1):
        nonzero[j] = any(arch.ops[e] != "none" and nonzero[EDGES[e][1]] for e in edges)
    reaches = [False, False, False, True]
    for i in (2, 1, 0):
        reaches[i] = any(
            src == i and arch.ops[e] != "none" and reaches[dst] for e, (dst, src) in enumerate(EDGES)
        )
    return tuple(
        arch.ops[e] != "none" and nonzero[src] and reaches[dst] and nonzero[dst]
        for e, (dst, src) in enumerate(EDGES)
    )


def functional_string(arch: Nb201Arch) -> str:
    """Equal for cells that compute the same function: like ``unique_string``, but a dead edge
    (``live_edges``) adds nothing and a node with no live input is zero. Coarser than NAS-Bench-201's
    grouping (5,390 classes against 6,466): e.g. a skip from a zero node. ``canonical`` does not
    use it: the benchmark trained each of NAS-Bench-201's groups on its own, and
    ``benchmarks/nb201_twins.py`` measures what merging them would cost."""
    live = live_edges(arch)
    nodes = {0: "0"}
    for j, edges in enumerate(_NODE_EDGES, start=1):
        parts = []
        for e in edges:
            if not live[e]:
                continue
            op, src = arch.ops[e], EDGES[e][1]
            parts.append(nodes[src] if op == "skip_connect" else f"({nodes[src]})@{op}")
        nodes[j] = "+".join(sorted(parts)) if parts else "#"
    return nodes[3]


_PATH_OPS = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
# Every sequence of up to three computing operations (40): a path's key.
_PATH_KEYS = {
    seq: i
    for i, seq in enumerate(s for n in range(4) for s in itertools.product(range(len(_PATH_OPS)), repeat=n))
}


@dataclass(frozen=True)
class Nb201Space(OpSequenceSpace):
    """The NAS-Bench-201 macro skeleton: stem, 3 stages of ``cells_per_stage`` cells joined by
    residual reduction blocks (channels double, resolution halves), BN-ReLU, pooling, classifier.

    The benchmark uses ``channels=16, cells_per_stage=5`` on 32x32 images; the defaults are
    smaller so a network trains on 28x28 MNIST on a CPU in seconds.
    """

    name = "nb201"
    decision_names = _EDGE_NAMES
    arch_class = Nb201Arch

    channels: int = 8
    cells_per_stage: int = 1
    ops: tuple[str, ...] = OPS

    def __post_init__(self) -> None:
        where = "space nb201"
        if not isinstance(self.channels, int) or isinstance(self.channels, bool) or self.channels < 1:
            raise InputError(f"{where}: `channels` expected an int >= 1, got {self.channels!r}.")
        if not isinstance(self.cells_per_stage, int) or self.cells_per_stage < 0:
            raise InputError(
                f"{where}: `cells_per_stage` expected an int >= 0, got {self.cells_per_stage!r}."
            )
        if not self.ops or any(op not in OPS for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise InputError(
                f"{where}: `ops` expected a non-empty subset of {list(OPS)}, got {list(self.ops)}."
            )

    # -- decisions -----------------------------------------------------------------------------
    def validate(self, arch: Nb201Arch) -> None:
        for (dst, src), op in zip(EDGES, arch.ops, strict=True):
            if op not in self.ops:
                raise InputError(
                    f"arch {brief(str(arch))}: edge {src}->{dst}: expected one of {list(self.ops)}, got {op!r}."
                )

    def parse(self, text: str) -> Nb201Arch:
        s = str(text).strip()
        fast = _FAST.fullmatch(s)
        if fast is not None and all(op in self.ops for op in fast.groups()):
            return Nb201Arch(fast.groups())
        example = "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'"
        nodes = s.split("+")
        if len(nodes) != 3:
            raise InputError(
                f"arch {brief(text)}: expected 3 nodes joined by '+' like {example}, got {len(nodes)}."
            )
        ops: list[str] = []
        for j, node in enumerate(nodes, start=1):
            if len(node) < 2 or not (node.startswith("|") and node.endswith("|")):
                raise InputError(f"arch {brief(text)}: node {j} must be wrapped in '|', got {node!r}.")
            edges = node[1:-1].split("|")
            if len(edges) != j:
                raise InputError(f"arch {brief(text)}: node {j} expected {j} edges, got {len(edges)}.")
            for i, edge in enumerate(edges):
                op, sep, src = edge.partition("~")
                if not sep or src != str(i):
                    raise InputError(
                        f"arch {brief(text)}: node {j} edge {i} expected 'op~{i}', got {edge!r}."
                    )
                if op not in OPS:
                    raise InputError(
                        f"arch {brief(text)}: unknown operation {op!r}; valid operations: {list(OPS)}."
                    )
                ops.append(op)
        arch = Nb201Arch(tuple(ops))
        self.validate(arch)
        return arch

    def canonical(self, arch: Any) -> Nb201Arch:
        """The smallest member (``OPS`` order per edge) of ``arch``'s isomorphism class."""
        rep = _representatives()[unique_string(arch)]
        # A narrowed ``ops`` set may exclude the global representative: keep arch then.
        return rep if all(op in self.ops for op in rep.ops) else arch

    def size(self) -> int:
        return len(self.ops) ** len(EDGES)

    # -- what is known before training ---------------------------------------------------------
    def structure_features(self, arch: Nb201Arch) -> list[float]:
        """Convolutions on the longest input-output path, input-output paths, and live
        convolutions/pools/skips (dead edges compute nothing)."""
        live = live_edges(arch)
        depth = [0, -1, -1, -1]
        paths = [1, 0, 0, 0]
        for e, (dst, src) in enumerate(EDGES):
            if live[e]:
                depth[dst] = max(depth[dst], depth[src] + int("conv" in arch.ops[e]))
                paths[dst] += paths[src]
        counts = [
            sum(1 for on, op in zip(live, arch.ops, strict=True) if on and op == name) / 6
            for name in ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect")
        ]
        return [max(depth[3], 0) / 3, paths[3] / 6, *counts]

    def path_features(self, arch: Nb201Arch) -> list[float]:
        """The cell's input-to-output paths counted by the operations along them (the path
        encoding of BANANAS, White et al. 2021).

        Skips are identities and drop out of a path, and a path through ``none`` computes nothing,
        so cells that compute the same function (e.g. ``conv(conv(x)) + x`` wired through another
        node) get the same counts although their one-hot encodings differ.
        """
        paths: dict[int, list[tuple[int, ...]]] = {0: [()]}
        for node in (1, 2, 3):
            paths[node] = [
                p + (() if op == "skip_connect" else (_PATH_OPS.index(op),))
                for (dst, src), op in zip(EDGES, arch.ops, strict=True)
                if dst == node and op != "none"
                for p in paths[src]
            ]
        counts = [0.0] * len(_PATH_KEYS)
        for p in paths[3]:
            counts[_PATH_KEYS[p]] += 1.0
        return counts

    def live_choices(self, codes: Any, values: Sequence[Sequence[Any]]) -> Any:
        """``live_edges`` for many cells at once (some runtimes, TFLite, fold away dead branches):
        edges whose input is not constant zero and whose output reaches the cell output."""
        import numpy as np

        n = len(codes)
        not_none = np.stack(
            [np.asarray([v != "none" for v in values[e]])[codes[:, e]] for e in range(len(EDGES))], axis=1
        )

        def linked(start: int, nodes: tuple[int, ...], end: int) -> Any:
            """Nodes joined to ``start`` by non-``none`` edges, visiting ``nodes`` in order: ``end``
            0 follows edges forward (a node from its sources), 1 backward (from its destinations)."""
            on = np.zeros((n, 4), dtype=bool)
            on[:, start] = True
            for j in nodes:
                for e, ends in enumerate(EDGES):
                    if ends[end] == j:
                        on[:, j] |= not_none[:, e] & on[:, ends[1 - end]]
            return on

        nonzero = linked(0, (1, 2, 3), 0)  # a non-zero input reaches the node
        reaches = linked(3, (2, 1, 0), 1)  # the node reaches the output
        live = np.zeros((n, len(EDGES)), dtype=bool)
        for e, (dst, src) in enumerate(EDGES):
            live[:, e] = not_none[:, e] & nonzero[:, src] & reaches[:, dst] & nonzero[:, dst]
        return live

    # -- networks ------------------------------------------------------------------------------
    def blocks(self, arch: Nb201Arch, task: TaskShape) -> list[Block]:
        """Stem, every live cell operation (dead edges compute nothing), reductions, head."""
        h, w, c = self._image_shape(task)
        ch = self.channels
        out = [Block("conv_bn", h, w, c, ch, kernel=3)]
        live = live_edges(arch)
        for stage in range(3):
            if stage > 0:
                out.append(Block("resblock", h, w, ch, 2 * ch, kernel=3, stride=2, act="relu"))
                h, w, ch = -(-h // 2), -(-w // 2), 2 * ch
            for _ in range(self.cells_per_stage):
                for e, op in enumerate(arch.ops):
                    if not live[e]:
                        continue
                    kernel = {"nor_conv_1x1": 1, "nor_conv_3x3": 3, "avg_pool_3x3": 3}.get(op, 1)
                    out.append(Block(op, h, w, ch, ch, kernel=kernel, act="relu" if "conv" in op else "none"))
        out.append(Block("bn_relu_pool_dense", h, w, ch, task.num_classes))
        return out

    def size_terms(self, arch: Nb201Arch, task: TaskShape) -> SizeTerms:
        # Conv + BN export as weights plus one per-channel vector (BN folds into the conv).
        total = SizeTerms(0, 0, 0)
        for b in self.blocks(arch, task):
            if b.kind in ("conv_bn", "nor_conv_1x1", "nor_conv_3x3"):
                total += SizeTerms(b.kernel * b.kernel * b.in_c * b.out_c, b.out_c, 2)
            elif b.kind == "resblock":
                conv_a = 9 * b.in_c * b.out_c
                conv_b = 9 * b.out_c * b.out_c
                total += SizeTerms(conv_a + conv_b + b.in_c * b.out_c, 2 * b.out_c, 5)
            elif b.kind == "bn_relu_pool_dense":
                total += SizeTerms(b.in_c * b.out_c, b.in_c + b.out_c, 3)
        return total

    def build(self, arch: Nb201Arch, task: TaskShape) -> Any:
        k, inputs, x = self._image_input(task)
        layers = k.layers
        ch = self.channels
        x = layers.Conv2D(ch, 3, padding="same", use_bias=False, name="stem_conv")(x)
        x = layers.BatchNormalization(name="stem_bn")(x)
        live = live_edges(arch)
        for stage in range(3):
            if stage > 0:
                ch *= 2
                x = _resblock(layers, x, ch, f"reduce{stage}")
            for cell in range(self.cells_per_stage):
                x = _cell(layers, x, arch, live, f"s{stage}c{cell}")
        x = layers.BatchNormalization(name="last_bn")(x)
        x = layers.ReLU(name="last_relu")(x)
        return self._classifier(k, inputs, x, task.num_classes)


def _relu_conv_bn(layers: Any, x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _resblock(layers: Any, x: Any, filters: int, name: str) -> Any:
    y = _relu_conv_bn(layers, x, filters, 3, 2, f"{name}_a")
    y = _relu_conv_bn(layers, y, filters, 3, 1, f"{name}_b")
    r = layers.AveragePooling2D(2, strides=2, padding="same", name=f"{name}_pool")(x)
    r = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_down")(r)
    return layers.Add(name=f"{name}_add")([r, y])


def _cell(layers: Any, x: Any, arch: Nb201Arch, live: tuple[bool, ...], name: str) -> Any:
    """Node j sums op(node i) over its incoming edges; dead edges (zero in or out) are left out."""
    ch = int(x.shape[-1])
    nodes: list[Any] = [x, None, None, None]
    for j, edges in enumerate(_NODE_EDGES, start=1):
        terms = []
        for e in edges:
            if not live[e]:
                continue
            src, op, tag = EDGES[e][1], arch.ops[e], f"{name}_e{j}{EDGES[e][1]}"
            if op == "skip_connect":
                terms.append(nodes[src])
            elif op == "avg_pool_3x3":
                terms.append(
                    layers.AveragePooling2D(3, strides=1, padding="same", name=f"{tag}_pool")(nodes[src])
                )
            else:
                kernel = 1 if op == "nor_conv_1x1" else 3
                terms.append(_relu_conv_bn(layers, nodes[src], ch, kernel, 1, tag))
        if len(terms) == 1:
            nodes[j] = terms[0]
        elif terms:
            nodes[j] = layers.Add(name=f"{name}_n{j}")(terms)
    if nodes[3] is None:
        # The cell outputs zeros (every path holds a `none`): keep the graph connected.
        return layers.Lambda(lambda t: t * 0.0, name=f"{name}_zero")(x)
    return nodes[3]
