"""Device latency tables: per-block measured latency (and memory) with the device's metadata.

The file format is versioned JSON (``format: edge-nas-latency-table``) or CSV with ``# key: value``
metadata lines; both are validated on load and written atomically. Schema: docs/file-formats.md.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from search_spaces import Block, InputError
from search_spaces.safeio import MAX_JSON_BYTES, brief, check_format, loads_json, read_bounded

__all__ = [
    "CALIBRATION_KEY",
    "FORMAT",
    "INVOKE_KEY",
    "VERSION",
    "Entry",
    "LatencyTable",
    "MissingEntryError",
    "TableMeta",
    "add_entry",
    "write_atomic",
]

FORMAT = "edge-nas-latency-table"
VERSION = 1
DTYPES = ("int8", "fp32", "fp16")
BLOCK_COLUMNS = ("kind", "in_h", "in_w", "in_c", "out_c", "kernel", "stride", "expand", "se", "act", "extra")
VALUE_COLUMNS = ("mean_ms", "std_ms", "count", "memory_bytes")
CSV_REQUIRED = (*BLOCK_COLUMNS[:-1], "mean_ms")
# meta.extra keys of a TFLite Micro table (see ``LatencyTable.memory``)
PERSISTENT_KEY = "tflm_persistent_bytes"
OVERHEAD_KEY = "tflm_model_overhead_bytes"
# meta.extra key of a profiled table: the fixed cost of one invoke (ms), which every separately
# timed block paid once and a whole network pays once in all (see ``LatencyTable.price``)
INVOKE_KEY = "invoke_overhead_ms"
# meta.extra key of a device table imported from a kit: whole calibration networks measured on
# the device ({arch, latency_ms, spread_ms, size_bytes}), which fit the whole-model correction
CALIBRATION_KEY = "calibration"


class MissingEntryError(InputError):
    """The table has no row for a block that an architecture needs."""


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; users share the files they keep
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Entry:
    """What was measured for one block: latency statistics in ms, and optionally memory."""

    mean_ms: float
    std_ms: float = 0.0
    count: int = 1
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.mean_ms, (int, float)) and math.isfinite(self.mean_ms) and self.mean_ms > 0):
            raise InputError(f"mean_ms: expected a finite number > 0, got {self.mean_ms!r}.")
        if not (isinstance(self.std_ms, (int, float)) and math.isfinite(self.std_ms) and self.std_ms >= 0):
            raise InputError(f"std_ms: expected a finite number >= 0, got {self.std_ms!r}.")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count < _MAX_INT:
            raise InputError(f"count: expected an int >= 1, got {self.count!r}.")
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or not 0 <= self.memory_bytes < _MAX_INT
        ):
            raise InputError(f"memory_bytes: expected an int >= 0 or empty, got {self.memory_bytes!r}.")


@dataclass(frozen=True)
class TableMeta:
    """Where and how a table was measured."""

    device: str
    runtime: str = "unknown"
    runtime_version: str = ""
    dtype: str = "int8"
    threads: int = 1
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device.strip():
            raise InputError(f"device: expected a non-empty name, got {brief(self.device)}.")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype: expected one of {list(DTYPES)}, got {brief(self.dtype)}.")
        if (
            isinstance(self.threads, bool)
            or not isinstance(self.threads, int)
            or not 1 <= self.threads <= 4096
        ):
            raise InputError(f"threads: expected an int in [1, 4096], got {brief(self.threads)}.")
        if not isinstance(self.extra, Mapping):
            raise InputError(f"extra: expected a mapping of metadata, got {brief(self.extra)}.")
        invoke = self.extra.get(INVOKE_KEY, 0.0)
        if isinstance(invoke, bool) or not isinstance(invoke, (int, float)) or not 0 <= invoke < math.inf:
            raise InputError(f"extra.{INVOKE_KEY}: expected a finite number of ms >= 0, got {brief(invoke)}.")
        _check_extra(self.extra)


def _check_extra(extra: Mapping[str, Any]) -> None:
    """The metadata keys that pricing reads: right type and range, or one line naming the key."""

    def count(value: Any, where: str, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _MAX_INT:
            raise InputError(f"{where}: expected an int in [{low}, 2**53), got {brief(value)}.")

    if OVERHEAD_KEY in extra:
        count(extra[OVERHEAD_KEY], f"extra.{OVERHEAD_KEY}")
    persistent = extra.get(PERSISTENT_KEY)
    if persistent is not None:
        if not isinstance(persistent, Mapping):
            raise InputError(
                f"extra.{PERSISTENT_KEY}: expected a mapping of block key to bytes, got {brief(persistent)}."
            )
        for key, value in persistent.items():
            count(value, f"extra.{PERSISTENT_KEY}.{key}")
    if "input_shape" in extra:
        shape = extra["input_shape"]
        if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 3:
            raise InputError(f"extra.input_shape: expected 1 to 3 sizes, got {brief(shape)}.")
        for i, d in enumerate(shape):
            count(d, f"extra.input_shape[{i}]", low=1)
    if "num_classes" in extra:
        count(extra["num_classes"], "extra.num_classes", low=2)
    if "space_options" in extra and not isinstance(extra["space_options"], Mapping):
        raise InputError(f"extra.space_options: expected a mapping, got {brief(extra['space_options'])}.")
    calibration = extra.get(CALIBRATION_KEY)
    if calibration is not None:
        if not isinstance(calibration, list):
            raise InputError(
                f"extra.{CALIBRATION_KEY}: expected a list of measured models, got {brief(calibration)}."
            )
        for i, r in enumerate(calibration):
            where = f"extra.{CALIBRATION_KEY}[{i}]"
            if not isinstance(r, Mapping) or not isinstance(r.get("arch"), str):
                raise InputError(f"{where}: expected an object with an arch string, got {brief(r)}.")
            for key in ("latency_ms", "spread_ms"):
                v = r.get(key, 0.0)
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                if not ok or v < 0 or (key == "latency_ms" and v <= 0):
                    raise InputError(f"{where}.{key}: expected a finite number of ms, got {brief(v)}.")
            count(r.get("size_bytes"), f"{where}.size_bytes", low=1)
    if "space" in extra and not isinstance(extra["space"], str):
        raise InputError(f"extra.space: expected a space name, got {brief(extra['space'])}.")


# Integers beyond 2**53 are not exact as floats: no measured count or size is that large.
_MAX_INT = 2**53
# A CSV table's cells are numbers and short names; the csv module's own limit is 128 KB.
_MAX_CELL = 4096


@dataclass(frozen=True)
class LatencyTable:
    """A device's per-block latencies. ``lookup`` never treats a missing block as free."""

    meta: TableMeta
    entries: Mapping[Block, Entry]

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, block: object) -> bool:
        return block in self.entries

    def lookup(self, block: Block) -> Entry:
        try:
            return self.entries[block]
        except KeyError:
            raise MissingEntryError(self._missing_message(block)) from None

    def price(self, blocks: Iterable[Block], fill: Callable[[Block], float] | None = None) -> float:
        """Sum of mean latencies (ms), less the per-invoke cost that each separately timed
        block paid once too often when the table records it (``meta.extra[INVOKE_KEY]``).
        ``fill`` prices the blocks the table lacks (else they raise ``MissingEntryError``)."""
        blocks = list(blocks)
        total = sum(
            self.entries[b].mean_ms
            if fill is not None and b in self.entries
            else fill(b)
            if fill is not None
            else self.lookup(b).mean_ms
            for b in blocks
        )
        invoke = float(self.meta.extra.get(INVOKE_KEY, 0.0))
        if invoke > 0 and len(blocks) > 1:
            total = max(total - invoke * (len(blocks) - 1), total / len(blocks))
        return total

    def memory(self, blocks: Iterable[Block]) -> int:
        """Peak memory (bytes) of a network of ``blocks``.

        A TFLite Micro table (profiled with runtime ``tflm``) also records each block's
        persistent bytes: activations are planned per op and freed, so the network needs the
        largest block's activation arena, while persistent buffers all stay and add up, less the
        per-model overhead each separately profiled block paid once too often. Other tables give
        the peak of per-block memory.
        """
        blocks = list(blocks)
        if not blocks:
            raise InputError("blocks: expected at least one block, got none.")
        persistent = self.meta.extra.get(PERSISTENT_KEY)
        head = tail = 0
        for b in blocks:
            total = self.lookup(b).memory_bytes
            if total is None:
                raise MissingEntryError(f"table for {self.meta.device}: block {b.key} has no memory_bytes.")
            if isinstance(persistent, Mapping):
                if b.key not in persistent:
                    raise MissingEntryError(
                        f"table for {self.meta.device}: block {b.key} has no persistent-bytes measurement."
                    )
                part = int(persistent[b.key])
                head, tail = max(head, total - part), tail + part
            else:
                head = max(head, total)
        if not isinstance(persistent, Mapping):
            return head
        return head + tail - int(self.meta.extra.get(OVERHEAD_KEY, 0)) * (len(blocks) - 1)

    def missing(self, blocks: Iterable[Block]) -> list[Block]:
        return [b for b in dict.fromkeys(blocks) if b not in self.entries]

    def merged(self, more: Mapping[Block, Entry]) -> LatencyTable:
        return replace(self, entries={**self.entries, **more})

    def _missing_message(self, block: Block) -> str:
        same_kind = [b for b in self.entries if b.kind == block.kind]

        def distance(b: Block) -> float:
            return (
                sum(
                    abs(math.log(max(getattr(b, f), 1e-9)) - math.log(max(getattr(block, f), 1e-9)))
                    for f in ("in_h", "in_c", "out_c", "kernel", "stride", "expand")
                )
                + (b.se != block.se)
                + (b.act != block.act)
                + (b.extra != block.extra)
            )

        nearest = sorted(same_kind, key=distance)[:3]
        hint = (
            f"; nearest entries: {', '.join(b.key for b in nearest)}"
            if nearest
            else f"; the table has no {block.kind!r} blocks"
        )
        return f"latency table for {self.meta.device}: no entry for block {block.key}{hint}."

    # -- files ---------------------------------------------------------------------------------
    def to_json(self) -> str:
        rows = []
        for block, entry in sorted(self.entries.items(), key=lambda kv: kv[0].key):
            row: dict[str, Any] = asdict(block)
            row.update({k: v for k, v in asdict(entry).items() if v is not None})
            rows.append(row)
        meta = asdict(self.meta)
        doc = {"format": FORMAT, "version": VERSION, **meta, "unit": "ms", "entries": rows}
        return json.dumps(doc, indent=1) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if path.suffix.lower() == ".csv":
            write_atomic(path, self.to_csv())
        else:
            write_atomic(path, self.to_json())

    def to_csv(self) -> str:
        buf = io.StringIO()
        meta = asdict(self.meta)
        buf.write(f"# format: {FORMAT}\n# version: {VERSION}\n")
        for key in ("device", "runtime", "runtime_version", "dtype", "threads", "source"):
            buf.write(f"# {key}: {_meta_text(meta[key])}\n")
        # Every extra key as JSON, so the CSV prices exactly as the JSON (invoke_overhead_ms,
        # input_shape, num_classes, space_options, tflm_persistent_bytes, ...).
        for key, value in sorted(meta["extra"].items()):
            buf.write(f"# extra.{key}: {json.dumps(value, sort_keys=True)}\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow((*BLOCK_COLUMNS, *VALUE_COLUMNS))
        for block, entry in sorted(self.entries.items(), key=lambda kv: kv[0].key):
            b, e = asdict(block), asdict(entry)
            writer.writerow(
                [
                    *(b[c] if c != "se" else int(b[c]) for c in BLOCK_COLUMNS),
                    *("" if e[c] is None else e[c] for c in VALUE_COLUMNS),
                ]
            )
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: latency table file not found.")
        data = read_bounded(path, "latency table", MAX_JSON_BYTES)
        if path.suffix.lower() == ".csv":
            try:
                text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not a column name
            except UnicodeDecodeError:
                raise InputError(
                    f"{path}: expected a UTF-8 CSV latency table, got undecodable bytes."
                ) from None
            return cls._from_csv(text, str(path))
        return cls._from_json(data, str(path))

    @classmethod
    def _from_json(cls, text: str | bytes, where: str) -> LatencyTable:
        return cls._from_doc(loads_json(text, where, "a latency table"), where)

    @classmethod
    def _from_doc(cls, doc: Any, where: str) -> LatencyTable:
        """A table from its parsed JSON document (also embedded in predictor files)."""
        doc = check_format(doc, where, FORMAT, VERSION, "table")
        meta = _meta(doc, where)
        rows = doc.get("entries")
        if not isinstance(rows, list) or not rows:
            raise InputError(f'{where}: "entries" must be a non-empty list.')
        return cls(meta, _entries(rows, where, "entry"))

    @classmethod
    def _from_csv(cls, text: str, where: str) -> LatencyTable:
        meta_doc: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        text = text.removeprefix("\ufeff")
        body_start = 0
        offset = 0
        while offset < len(text) and text.startswith("#", offset):
            end = text.find("\n", offset)
            end = len(text) if end < 0 else end
            line = text[offset:end].rstrip("\r")
            offset = end + 1
            body_start += 1
            key, sep, value = line[1:].partition(":")
            key, value = key.strip(), value.strip()
            if not sep:
                continue
            if len(value) > MAX_JSON_BYTES // 4:
                raise InputError(f"{where}: line {body_start}: metadata '# {key}:' is too long.")
            if key.startswith("extra."):
                extra[key[len("extra.") :]] = loads_json(value, f"{where}: line {body_start}: '# {key}:'")
            else:
                meta_doc[key] = _meta_value(value, f"{where}: line {body_start}")
        if extra:
            meta_doc["extra"] = extra
        if meta_doc.get("format", FORMAT) != FORMAT:
            raise InputError(f"{where}: '# format:' must be {FORMAT}, got {meta_doc['format']!r}.")
        if "version" in meta_doc and meta_doc["version"] != str(VERSION):
            raise InputError(
                f"{where}: table format version {meta_doc['version']!r} is not supported (expected {VERSION})."
            )
        if "threads" in meta_doc:
            try:
                meta_doc["threads"] = int(meta_doc["threads"])
            except ValueError:
                raise InputError(
                    f"{where}: '# threads:' must be an integer, got {meta_doc['threads']!r}."
                ) from None
        meta = _meta(meta_doc, where)
        body = io.StringIO(text[offset:] if body_start else text, newline="")
        reader = csv.DictReader(body)
        try:
            header = reader.fieldnames or []
            missing = [c for c in CSV_REQUIRED if c not in header]
            if missing:
                raise InputError(
                    f"{where}: missing column(s) {brief(missing)}; the header must have {list(CSV_REQUIRED)}."
                )
            rows = []
            for r in reader:
                if None in r or any(len(v) > _MAX_CELL for v in r.values() if isinstance(v, str)):
                    raise InputError(
                        f"{where}: line {body_start + reader.line_num}: expected {len(header)} cells of at most "
                        f"{_MAX_CELL} characters, got more."
                    )
                rows.append(dict(r))
        except csv.Error as e:
            raise InputError(
                f"{where}: line {body_start + reader.line_num}: not valid CSV ({str(e)[:80]})."
            ) from None
        if not rows:
            raise InputError(f"{where}: the table has no rows.")
        return cls(meta, _entries(rows, where, "line", first_line=body_start + 2))


def _meta(doc: Mapping[str, Any], where: str) -> TableMeta:
    if "device" not in doc:
        raise InputError(f"{where}: missing metadata 'device'.")
    extra = doc.get("extra", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, Mapping):
        raise InputError(f"{where}: extra: expected a mapping of metadata, got {brief(extra)}.")
    try:
        return TableMeta(
            device=doc["device"],
            runtime=str(doc.get("runtime", "unknown")),
            runtime_version=str(doc.get("runtime_version", "")),
            dtype=doc.get("dtype", "int8"),
            threads=doc.get("threads", 1),
            source=str(doc.get("source", "")),
            extra=dict(extra),
        )
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def _number(row: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = row.get(key, default)
    if value is None or value == "":
        if default is None and key in CSV_REQUIRED:
            raise InputError(f"column {key!r} is empty.")
        return default
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > 64):
        raise InputError(f"{key}: expected a number, got {brief(value)}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{key}: expected a finite number, got {brief(value)}.") from None
    if not math.isfinite(number):
        raise InputError(f"{key}: expected a finite number, got {brief(value)}.")
    if kind is int:
        if not number.is_integer() or abs(number) >= _MAX_INT:
            raise InputError(f"{key}: expected an integer below 2**53, got {brief(value)}.")
        return int(number)
    return number


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", ""):
        return False
    raise InputError(f"{key}: expected 0/1 or true/false, got {brief(value)}.")


def _entries(rows: list[Any], where: str, unit: str, first_line: int = 0) -> dict[Block, Entry]:
    entries: dict[Block, Entry] = {}
    for i, row in enumerate(rows):
        at = f"{where}: {unit} {first_line + i if first_line else i}"
        if not isinstance(row, dict):
            raise InputError(f"{at}: expected an object, got {type(row).__name__}.")
        for c in ("kind", "act", "extra"):
            if c in row and not isinstance(row[c], (str, type(None))):
                raise InputError(f"{at}: {c}: expected a string, got {brief(row[c])}.")
        try:
            missing = [c for c in CSV_REQUIRED if c not in row]
            if missing:
                raise InputError(f"missing field(s) {missing}.")
            block = Block(
                kind=str(row["kind"]),
                in_h=_number(row, "in_h", int),
                in_w=_number(row, "in_w", int),
                in_c=_number(row, "in_c", int),
                out_c=_number(row, "out_c", int),
                kernel=_number(row, "kernel", int),
                stride=_number(row, "stride", int),
                expand=_number(row, "expand", float),
                se=_bool(row["se"], "se"),
                act=str(row["act"]),
                extra=str(row.get("extra", "") or ""),
            )
            entry = Entry(
                mean_ms=_number(row, "mean_ms", float),
                std_ms=_number(row, "std_ms", float, 0.0),
                count=_number(row, "count", int, 1),
                memory_bytes=_number(row, "memory_bytes", int, None),
            )
        except InputError as e:
            raise InputError(f"{at}: {str(e).rstrip('.')}.") from None
        if not add_entry(entries, block, entry):
            raise InputError(
                f"{at}: duplicate block {block.key} with a different value ({entries[block].mean_ms} ms before)."
            )
    return entries


def add_entry(entries: dict[Block, Entry], block: Block, entry: Entry) -> bool:
    """Add a row read from a file to ``entries``; False (and nothing added) when the block is
    there already with another value, which the reader reports (a block has one value)."""
    if block in entries and entries[block] != entry:
        return False
    entries[block] = entry
    return True


def _meta_text(value: Any) -> str:
    """A metadata value for a ``# key: value`` line; one that would not read back as itself
    (a newline, surrounding spaces, a leading quote) is written as a JSON string."""
    text = str(value)
    if text != text.strip() or "\n" in text or "\r" in text or text.startswith('"'):
        return json.dumps(text)
    return text


def _meta_value(text: str, where: str) -> Any:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        value = loads_json(text, where)
        if isinstance(value, str):
            return value
    return text
