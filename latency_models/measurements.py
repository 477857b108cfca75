"""Plain CSV files of end-to-end latency: measurements (``arch,latency_ms``), arch lists (``arch``)
and reference devices (``arch,<device>,...``), read strictly and written atomically.

Every problem is reported as ``FILE: line N: problem`` (an ``InputError``), never half-read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from search_spaces import InputError, SearchSpace
from search_spaces.safeio import brief

__all__ = [
    "ArchList",
    "Measurements",
    "Reference",
    "file_digest",
    "read_arch_list",
    "read_measurements",
    "read_reference",
    "write_latencies",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ArchList:
    """Architectures in file order (duplicates kept: predictions come back in the same order)."""

    path: str
    texts: tuple[str, ...]
    archs: tuple[Hashable, ...]

    def __len__(self) -> int:
        return len(self.archs)


@dataclass(frozen=True)
class Measurements(ArchList):
    """One end-to-end latency (ms) per distinct architecture, in file order."""

    latency_ms: np.ndarray

    def __post_init__(self) -> None:
        if len(self.archs) != len(self.latency_ms) or len(self.texts) != len(self.archs):
            raise InputError(f"{self.path}: expected one latency per arch, got {len(self.archs)} archs.")


@dataclass(frozen=True)
class Reference:
    """Latency (ms) of the same architectures on other devices: ``matrix[i, d]`` is arch i on device d."""

    path: str
    devices: tuple[str, ...]
    texts: tuple[str, ...]
    archs: tuple[Hashable, ...]
    matrix: np.ndarray

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.archs), len(self.devices)):
            raise InputError(
                f"{self.path}: expected a {len(self.archs)} x {len(self.devices)} latency matrix, "
                f"got {self.matrix.shape}."
            )

    def __len__(self) -> int:
        return len(self.archs)


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a file's bytes, for predictor provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _open_rows(path: str | os.PathLike[str]) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """Header and non-blank rows with their line numbers; errors name the file."""
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{where}: file not found.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{where}: cannot read as UTF-8 text ({e.__class__.__name__}).") from None
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise InputError(f"{where}: line {reader.line_num}: not valid CSV ({e}).") from None
    if header is None:
        raise InputError(f"{where}: empty file (expected a header line).")
    return where, header, rows


def _column(where: str, header: list[str], name: str, example: str) -> int:
    if name not in header:
        raise InputError(
            f"{where}: line 1: expected a column {name!r} (header like {example!r}), got {brief(header)}."
        )
    if header.count(name) > 1:
        raise InputError(f"{where}: line 1: column {name!r} appears more than once.")
    return header.index(name)


def _latency(where: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: line {line}: {column}: expected a number of ms, got {text!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(
            f"{where}: line {line}: {column}: expected a finite latency > 0 ms, got {text.strip()!r}."
        )
    return value


class _Parser:
    """Parses arch strings with the space, once per distinct string, naming the line on error."""

    def __init__(self, space: SearchSpace, where: str) -> None:
        self.space = space
        self.where = where
        self.cache: dict[str, Hashable] = {}

    def __call__(self, text: str, line: int) -> Hashable:
        arch = self.cache.get(text)
        if arch is None:
            try:
                arch = self.space.parse(text)
            except InputError as e:
                message = str(e) if len(str(e)) <= 200 else f"{str(e)[:150]}...{str(e)[-40:]}"
                raise InputError(f"{self.where}: line {line}: {message}") from None
            self.cache[text] = arch
        return arch


def _agree(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def read_arch_list(path: str | os.PathLike[str], space: SearchSpace) -> ArchList:
    """An ``arch`` column (other columns are ignored) of strings valid in ``space``."""
    where, header, rows = _open_rows(path)
    col = _column(where, header, "arch", "arch")
    parse = _Parser(space, where)
    texts, archs = [], []
    for line, row in rows:
        if col >= len(row) or not row[col].strip():
            raise InputError(
                f"{where}: line {line}: expected an arch string in column 'arch', got an empty cell."
            )
        text = row[col].strip()
        texts.append(text)
        archs.append(parse(text, line))
    if not archs:
        raise InputError(f"{where}: expected at least one architecture after the header, got none.")
    return ArchList(where, tuple(texts), tuple(archs))


def _distinct_rows(
    where: str,
    header: list[str],
    rows: Sequence[tuple[int, list[str]]],
    col_a: int,
    space: SearchSpace,
    read: Callable[[int, list[str]], T],
    agree: Callable[[T, T], bool],
    differs: Callable[[int, str, int, T, T], str],
) -> tuple[list[str], list[Hashable], list[T]]:
    """Rows of an arch and its latencies (``read``), one per distinct arch in file order: a
    repeated arch must ``agree`` with its first row, or ``differs`` says how it does not."""
    parse = _Parser(space, where)
    seen: dict[Hashable, tuple[int, T]] = {}
    texts: list[str] = []
    archs: list[Hashable] = []
    values: list[T] = []
    for line, row in rows:
        if len(row) != len(header):
            raise InputError(f"{where}: line {line}: expected {len(header)} fields, got {len(row)}.")
        text = row[col_a].strip()
        if not text:
            raise InputError(f"{where}: line {line}: expected an arch string, got an empty cell.")
        arch = parse(text, line)
        value = read(line, row)
        if arch in seen:
            first_line, first = seen[arch]
            if not agree(first, value):
                raise InputError(f"{where}: line {line}: {differs(line, text, first_line, first, value)}")
            continue
        seen[arch] = (line, value)
        texts.append(text)
        archs.append(arch)
        values.append(value)
    return texts, archs, values


def read_measurements(path: str | os.PathLike[str], space: SearchSpace) -> Measurements:
    """``arch,latency_ms`` rows; repeated archs must agree (they are kept once)."""
    where, header, rows = _open_rows(path)
    col_a = _column(where, header, "arch", "arch,latency_ms")
    col_l = _column(where, header, "latency_ms", "arch,latency_ms")
    texts, archs, values = _distinct_rows(
        where,
        header,
        rows,
        col_a,
        space,
        lambda line, row: _latency(where, line, "latency_ms", row[col_l]),
        _agree,
        lambda line, text, first_line, first, value: (
            f"arch {brief(text)} was measured at {first} ms on line {first_line}, "
            f"expected the same latency, got {value}."
        ),
    )
    if not archs:
        raise InputError(f"{where}: expected at least one measurement after the header, got none.")
    return Measurements(where, tuple(texts), tuple(archs), np.asarray(values, dtype=float))


def read_reference(path: str | os.PathLike[str], space: SearchSpace) -> Reference:
    """``arch,<device>,<device>,...``: every cell a latency in ms; repeated archs must agree."""
    where, header, rows = _open_rows(path)
    col_a = _column(where, header, "arch", "arch,<device>,<device>")
    devices = [h for i, h in enumerate(header) if i != col_a]
    if not devices:
        raise InputError(f"{where}: line 1: expected at least one device column after 'arch', got none.")
    for d in devices:
        if not d:
            raise InputError(f"{where}: line 1: expected a device name in every column, got an empty one.")
        if devices.count(d) > 1:
            raise InputError(f"{where}: line 1: device {d!r} appears more than once.")
    dev_cols = [i for i in range(len(header)) if i != col_a]
    texts, archs, matrix = _distinct_rows(
        where,
        header,
        rows,
        col_a,
        space,
        lambda line, row: [_latency(where, line, header[i], row[i]) for i in dev_cols],
        lambda first, values: all(_agree(a, b) for a, b in zip(first, values, strict=True)),
        lambda line, text, first_line, first, value: (
            f"arch {brief(text)} repeats line {first_line} with different latencies."
        ),
    )
    if not archs:
        raise InputError(f"{where}: expected at least one architecture after the header, got none.")
    return Reference(where, tuple(devices), tuple(texts), tuple(archs), np.asarray(matrix, dtype=float))


def write_latencies(
    path: str | os.PathLike[str],
    texts: Sequence[str],
    latency_ms: Sequence[float],
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """``arch,latency_ms`` (then any further ``columns``) in the given order, written atomically
    (``repr`` keeps every digit)."""
    from .table import write_atomic

    if len(texts) != len(latency_ms):
        raise InputError(
            f"{path}: expected one latency per arch, got {len(texts)} archs and {len(latency_ms)}."
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    more = dict(columns or {})
    w.writerow(["arch", "latency_ms", *more])
    for i, (text, value) in enumerate(zip(texts, latency_ms, strict=True)):
        w.writerow([text, repr(float(value)), *(col[i] for col in more.values())])
    write_atomic(path, buf.getvalue())
