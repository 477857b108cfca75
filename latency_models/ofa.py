"""Import Once-for-All and ProxylessNAS YAML lookup tables into our ``LatencyTable``.

Each key (``expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:3-stride:2-idskip:0-se:0-hs:0``,
``Conv-...``, ``Conv_1-...``, ``Conv_2-...``, ``AvgPool2D-...``, ``Logits-...``) becomes the
``Block`` that the ``ofa-mbv3`` space lists for the same layer, so an imported table prices any
of that space's architectures. OFA tables give mean/std/count, ProxylessNAS mean/var/count.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from search_spaces import Block, InputError
from search_spaces.safeio import brief

from .table import Entry, LatencyTable, TableMeta, add_entry

__all__ = ["OfaKey", "block_for_key", "load_ofa_yaml", "parse_key", "vendored"]

LAYER_TYPES = ("AvgPool2D", "Conv", "Conv_1", "Conv_2", "Logits", "expanded_conv")
_SHAPE = r"(\d+(?:x\d+)*)"
_KEY = re.compile(
    rf"(?P<type>[A-Za-z_0-9]+?)-input:(?P<input>{_SHAPE})-output:(?P<output>{_SHAPE})(?P<rest>(?:-[a-z]+:\d+)*)"
)
_EXPANDED_FIELDS = ("expand", "kernel", "stride", "idskip")


@dataclass(frozen=True)
class OfaKey:
    """A parsed lookup-table key: layer type, input and output shapes and the named fields."""

    layer: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    fields: tuple[tuple[str, int], ...] = ()

    def get(self, name: str) -> int | None:
        return dict(self.fields).get(name)

    def __str__(self) -> str:
        text = f"{self.layer}-input:{'x'.join(map(str, self.input))}-output:{'x'.join(map(str, self.output))}"
        return text + "".join(f"-{k}:{v}" for k, v in self.fields)


def parse_key(key: str) -> OfaKey:
    """Parse one key; an unknown layer type or a malformed key raises ``InputError`` naming it."""
    m = _KEY.fullmatch(str(key))
    if not m:
        raise InputError(
            f"key {key!r}: expected '<layer>-input:HxWxC-output:HxWxC[-name:int...]' "
            "(e.g. 'Conv-input:224x224x3-output:112x112x16')."
        )
    layer = m.group("type")
    if layer not in LAYER_TYPES:
        raise InputError(f"key {key!r}: unknown layer type {layer!r}; valid types: {list(LAYER_TYPES)}.")
    fields = tuple((name, int(value)) for name, value in re.findall(r"-([a-z]+):(\d+)", m.group("rest")))
    names = [n for n, _ in fields]
    if len(set(names)) != len(names):
        raise InputError(f"key {key!r}: a field is repeated.")
    parsed = OfaKey(layer, _shape(m.group("input")), _shape(m.group("output")), fields)
    if layer == "expanded_conv":
        missing = [f for f in _EXPANDED_FIELDS if f not in names]
        if missing:
            raise InputError(
                f"key {key!r}: expanded_conv needs fields {list(_EXPANDED_FIELDS)}, missing {missing}."
            )
    for where, shape in (("input", parsed.input), ("output", parsed.output)):
        if any(d <= 0 for d in shape):
            raise InputError(f"key {key!r}: {where} sizes must be > 0, got {'x'.join(map(str, shape))}.")
    if len(parsed.input) != 3:
        raise InputError(f"key {key!r}: input must be HxWxC, got {'x'.join(map(str, parsed.input))}.")
    return parsed


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x"))


def _stride(in_size: int, out_size: int) -> int:
    return max(1, round(in_size / out_size))


def block_for_key(key: OfaKey, family: str) -> Block:
    """The ``Block`` for a key. ``family`` is ``mbv3`` (OFA: keys carry se/hs, ``expand`` is the
    middle width) or ``proxyless`` (ProxylessNAS: ReLU6, ``expand`` is the ratio)."""
    h, w, c = key.input
    out = key.output
    out_c = out[-1]
    stem_act = "hswish" if family == "mbv3" else "relu6"
    if key.layer == "Conv":
        return Block("conv", h, w, c, out_c, kernel=3, stride=_stride(h, out[0]), act=stem_act)
    if key.layer == "Conv_1":
        return Block("conv", h, w, c, out_c, kernel=1, stride=_stride(h, out[0]), act=stem_act)
    if key.layer == "Conv_2":
        return Block("conv", h, w, c, out_c, kernel=1, stride=1, act="hswish", extra="nobn")
    if key.layer == "AvgPool2D":
        return Block("pool", h, w, c, out_c)
    if key.layer == "Logits":
        return Block("dense" if h * w == 1 else "pool_dense", h, w, c, out_c)
    expand = key.get("expand") or 0
    ratio = expand / c if family == "mbv3" else float(expand)
    if ratio <= 0:
        raise InputError(f"key {key}: expand must be > 0, got {expand}.")
    if family == "mbv3":
        act = "hswish" if key.get("hs") else "relu"
    else:
        act = "relu6"
    return Block(
        "mbconv",
        h,
        w,
        c,
        out_c,
        kernel=int(key.get("kernel") or 0),
        stride=int(key.get("stride") or 0),
        expand=ratio,
        se=bool(key.get("se")),
        act=act,
        extra=f"idskip:{key.get('idskip')}",
    )


def _entry(value: Any, key: str) -> Entry:
    if not isinstance(value, dict):
        raise InputError(f"key {key!r}: expected a mapping with mean/std/count, got {type(value).__name__}.")
    if "mean" not in value:
        raise InputError(f"key {key!r}: missing 'mean'.")

    def number(name: str) -> float:
        try:
            return float(value[name])
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name}: expected a number, got {brief(value[name])}.") from None

    try:
        mean = number("mean")
        if "std" in value:
            std = number("std")
        elif "var" in value:
            var = number("var")
            if not (math.isfinite(var) and var >= 0):
                raise InputError(f"var: expected a finite number >= 0, got {brief(value['var'])}.")
            std = math.sqrt(var)
        else:
            std = 0.0
        count = value.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int):
            raise InputError(f"count: expected an int >= 1, got {brief(count)}.")
        return Entry(mean_ms=mean, std_ms=std, count=count)
    except (TypeError, ValueError) as e:
        raise InputError(f"key {brief(key)}: {str(e).rstrip('.')[:120]}.") from None


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        if line and not line[0].isspace() and not line.startswith("#"):
            # Keys hold colons themselves; the key ends at the last ': ' or the line's final ':'.
            stripped = line.rstrip()
            key = stripped[:-1] if stripped.endswith(":") else stripped.rsplit(": ", 1)[0]
            lines.setdefault(key.strip().strip("'\""), i)
    return lines


def load_ofa_yaml(path: str | os.PathLike[str], device: str | None = None) -> LatencyTable:
    """Read an OFA/ProxylessNAS lookup table; every problem names the file, line and key."""

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: lookup table file not found.")
    from search_spaces.safeio import MAX_JSON_BYTES, loads_yaml, read_bounded

    raw = read_bounded(path, "lookup table", MAX_JSON_BYTES)
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}).") from None
    doc = loads_yaml(text, str(path))
    if not isinstance(doc, dict) or not doc:
        raise InputError(
            f"{path}: expected a YAML mapping from layer keys to mean/std/count, got {type(doc).__name__}."
        )
    lines = _key_lines(text)
    keys: dict[str, OfaKey] = {}
    for key in doc:
        try:
            keys[str(key)] = parse_key(str(key))
        except InputError as e:
            raise InputError(f"{path}: line {lines.get(str(key), '?')}: {e}") from None
    family = (
        "mbv3"
        if any(k.get("se") is not None or k.get("hs") is not None for k in keys.values())
        else "proxyless"
    )
    entries: dict[Block, Entry] = {}
    source_keys: dict[Block, str] = {}
    for key, value in doc.items():
        at = f"{path}: line {lines.get(str(key), '?')}"
        try:
            block = block_for_key(keys[str(key)], family)
            entry = _entry(value, str(key))
        except InputError as e:
            raise InputError(f"{at}: {e}") from None
        if not add_entry(entries, block, entry):
            raise InputError(
                f"{at}: key {key!r} is the same block as {source_keys[block]!r} with a different value."
            )
        source_keys[block] = str(key)
    stems = [k for k in keys.values() if k.layer == "Conv"]
    logits = [k for k in keys.values() if k.layer == "Logits"]
    extra: dict[str, Any] = {
        "format": "ofa-yaml",
        "family": family,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if len(stems) == 1:
        extra["input_shape"] = list(stems[0].input)
    if len(logits) == 1:
        extra["num_classes"] = logits[0].output[-1]
    if family == "mbv3":
        extra["space"] = "ofa-mbv3"
    name = device or re.sub(r"_(lookup_table|trim)$", "", path.stem)
    meta = TableMeta(
        device=name,
        runtime="unknown",
        runtime_version="",
        # OFA measured float TF-Lite models on the phones.
        dtype="fp32",
        threads=1,
        source=path.name,
        extra=extra,
    )
    return LatencyTable(meta, entries)


def vendored(name: str) -> Path:
    """A file shipped in ``latency_models/data/ofa`` (tables and ``specialized/*.net.config``)."""
    base = Path(str(resources.files("latency_models") / "data" / "ofa"))
    path = base / name
    if not path.is_file():
        names = sorted(
            p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and p.name != "README.md"
        )
        raise InputError(f"ofa data: no file {name!r}; shipped files: {names}.")
    return path
