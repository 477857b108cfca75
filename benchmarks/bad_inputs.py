"""Replay a catalogue of bad and hostile inputs against every ``nas`` command, each in a fresh
folder, and check the CLI promise: exit code 2, one line on stderr under 300 characters, no
traceback, nothing created, peak memory under 500 MB.

    nice -n 19 python benchmarks/bad_inputs.py [--only SUBSTRING] [--limit N]

Writes ``benchmarks/results/bad_inputs.{json,md}``. The catalogue is built here from valid files
(a tiny mbconv space, its table, predictor, measurements, an .npz task, a bundled OFA table and
net.config, a .keras model) by hostile bytes that apply to any file and by mutations of each kind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MAX_LINE = 300
MAX_RSS_MB = 500
TIMEOUT_S = 120

OPTIONS = {
    "strides": [1, 2, 2],
    "widths": [[8, 32], [16, 64], [24, 96]],
    "depths": [1],
    "kernels": [3],
    "expands": [1, 6],
    "se": [False],
    "acts": ["relu6"],
    "stem_width": 8,
}
OPTS = json.dumps(OPTIONS)
SHAPE = (8, 8, 1)
CONFIG = """task:
  data: digits
space:
  name: mbconv
  options: {options}
latency:
  device: host
  calibration_models: 2
constraints:
  max_size_kb: 24
search:
  strategy: random
  trainings: 2
training:
  epochs: 1
  final_epochs: 1
""".replace("{options}", OPTS)
BOMB = (
    b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    b"b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    b"f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    b"space: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
)


@dataclass
class Case:
    """One command line; ``{f}`` is the file under test, ``{out}`` the output location (which must
    not exist afterwards), other ``{name}`` are valid helper files."""

    group: str
    name: str
    args: list[str]
    file: bytes | str | None = None  # bytes: content; "dir", "missing", "fifo", "loop", "savedmodel"
    suffix: str = ""
    extra: dict[str, bytes] = field(default_factory=dict)


# -- valid baselines ------------------------------------------------------------------------
def baselines(folder: Path) -> dict[str, bytes]:
    """Valid files of every kind, as bytes (built with the library itself)."""
    import io

    import numpy as np

    from latency_models.predictor import TablePredictor
    from latency_models.table import Entry, LatencyTable, TableMeta
    from search_spaces import TaskShape, get_space

    space = get_space("mbconv", OPTIONS)
    task = TaskShape(SHAPE, 10)
    blocks = space.all_blocks(task)
    table = LatencyTable(
        TableMeta(
            "phone", "litert", "2.3", "int8", 1, "bench", {"space": "mbconv", "space_options": OPTIONS}
        ),
        {b: Entry(0.01 + 0.001 * i, 0.0, 10) for i, b in enumerate(blocks)},
    )
    predictor = TablePredictor(space="mbconv", device="phone", table=table, task=task, space_options=OPTIONS)
    rng = random.Random(0)
    archs = list(dict.fromkeys(space.random(rng) for _ in range(12)))
    x = np.random.default_rng(0).random((60, *SHAPE)).astype(np.float32)
    y = np.arange(60) % 3
    npz = io.BytesIO()
    np.savez(npz, x=x, y=y)
    ofa = ROOT / "latency_models" / "data" / "ofa"
    net = sorted((ofa / "specialized").glob("*.net.config"))[0]
    return {
        "config": CONFIG.encode(),
        "table_json": table.to_json().encode(),
        "table_csv": table.to_csv().encode(),
        "predictor": predictor.to_json().encode(),
        "archs": ("arch\n" + "".join(f"{a}\n" for a in archs)).encode(),
        "measurements": (
            "arch,latency_ms\n" + "".join(f"{a},{0.1 + i / 100}\n" for i, a in enumerate(archs))
        ).encode(),
        "npz": npz.getvalue(),
        "ofa_yaml": (ofa / "note10_160_lookup_table.yaml").read_bytes(),
        "net_config": net.read_bytes(),
        "model": _keras_model(folder, lambda_code=None),
        "lambda_keras": _keras_model(folder, lambda_code="keras"),
        "lambda_h5": _keras_model(folder, lambda_code="h5"),
    }


def _keras_model(folder: Path, lambda_code: str | None) -> bytes:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((8, 8, 1))
    x = inputs
    if lambda_code:
        # What a hostile model does: code that runs when the file is loaded.
        marker = folder / "CODE_RAN"
        fn = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")  # noqa: S307
        x = k.layers.Lambda(fn)(x)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(x)))
    path = folder / f"m-{lambda_code}.{'h5' if lambda_code == 'h5' else 'keras'}"
    model.save(path)
    (folder / "CODE_RAN").unlink(missing_ok=True)
    return path.read_bytes()


# -- the catalogue --------------------------------------------------------------------------
def _foreign_module(keras_file: bytes) -> bytes:
    """A .keras archive whose config asks tf_keras to import ``os`` (it would, in safe mode too)."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(keras_file)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"module": "keras.layers"', b'"module": "os"', 1)
            dst.writestr(item, data)
    return out.getvalue()


def generic(valid: bytes) -> dict[str, bytes | str]:
    """Hostile content that applies to any file argument."""
    rng = random.Random(1)
    return {
        "missing": "missing",
        "directory": "dir",
        "fifo": "fifo",
        "symlink-loop": "loop",
        "empty": b"",
        "random-bytes": bytes(rng.randrange(256) for _ in range(4096)),
        "nul-bytes": b"\0" * 1000,
        "utf16": valid[:2000].decode("utf-8", "replace").encode("utf-16"),
        "deep-json-list": b"[" * 200_000,
        "deep-json-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "huge-integer": b"[" + b"9" * 100_000 + b"]",
        "yaml-alias-bomb": BOMB,
        "truncated-half": valid[: len(valid) // 2],
        "one-3MB-line": b"x" * (3 * 2**20),
    }


def _json_mut(valid: bytes, fn: Callable[[Any], Any]) -> bytes:
    doc = json.loads(valid)
    out = fn(doc)
    return json.dumps(doc if out is None else out, allow_nan=True).encode()


def _set(path: str, value: Any) -> Callable[[Any], Any]:
    def fn(doc: Any) -> None:
        *head, last = path.split(".")
        cur = doc
        for key in head:
            cur = cur[int(key)] if isinstance(cur, list) else cur[key]
        if value is _DELETE:
            del cur[last]
        elif isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value

    return fn


_DELETE = object()


def config_mutations() -> dict[str, bytes]:
    c = CONFIG
    nested = "space: " + "[" * 200 + "]" * 200 + "\n"
    cases = {
        "negative-search-seed": c + "  seed: -1\n"
        if False
        else c.replace("trainings: 2", "trainings: 2\n  seed: -1"),
        "huge-seed": c.replace("trainings: 2", "trainings: 2\n  seed: 1000000000000000000000000"),
        "unknown-strategy": c.replace("strategy: random", "strategy: annealing"),
        "strategy-list": c.replace("strategy: random", "strategy: [random]"),
        "unknown-stage": c + "export:\n  pipeline: [int8, shrink]\n",
        "stage-bad-arg": c + "export:\n  pipeline: ['prune:1.5']\n",
        "distill-without-teacher": c + "export:\n  pipeline: [distill, int8]\n",
        "unknown-format": c + "export:\n  formats: [tflite, coreml]\n",
        "formats-without-tflite": c + "export:\n  formats: [onnx]\n",
        "empty-pipeline": c + "export:\n  pipeline: []\n",
        "calibration-samples-0": c + "export:\n  calibration_samples: 0\n",
        "negative-budget": c.replace("max_size_kb: 24", "max_size_kb: -24"),
        "nan-budget": c.replace("max_size_kb: 24", "max_size_kb: .nan"),
        "inf-budget": c.replace("max_size_kb: 24", "max_size_kb: .inf"),
        "string-budget": c.replace("max_size_kb: 24", "max_size_kb: small"),
        "exponent-as-string": c.replace("final_epochs: 1", "final_epochs: 1\n  learning_rate: 1e-2"),
        "unknown-section": c + "tuning:\n  x: 1\n",
        "unknown-key": c.replace("trainings: 2", "trainings: 2\n  trials: 5"),
        "missing-npz": c.replace("data: digits", "data: nowhere.npz"),
        "val-fraction-0.7": c.replace("data: digits", "data: digits\n  val_fraction: 0.7"),
        "task-seed-negative": c.replace("data: digits", "data: digits\n  seed: -3"),
        "device-without-table": c.replace("device: host", "device: pixel7"),
        "missing-table": c.replace("device: host", "device: pixel7\n  table: nowhere.json"),
        "dtype-int4": c.replace("device: host", "device: host\n  dtype: int4"),
        "threads-0": c.replace("device: host", "device: host\n  threads: 0"),
        "epochs-0": c.replace("epochs: 1\n  final", "epochs: 0\n  final"),
        "epochs-float": c.replace("epochs: 1\n  final", "epochs: 1.5\n  final"),
        "batch-size-string": c.replace("final_epochs: 1", "final_epochs: 1\n  batch_size: big"),
        "trainings-negative": c.replace("trainings: 2", "trainings: -2"),
        "fidelity-eta-1": c.replace("trainings: 2", "trainings: 2\n  fidelity: {eta: 1}"),
        "fidelity-min-epochs-too-big": c.replace("trainings: 2", "trainings: 2\n  fidelity: {min_epochs: 5}"),
        "workers-0": c.replace("trainings: 2", "trainings: 2\n  workers: 0"),
        "gpus-negative": c.replace("trainings: 2", "trainings: 2\n  gpus_per_trial: -1"),
        "unknown-space": c.replace("name: mbconv", "name: transformer"),
        "space-option-unknown": c.replace('"stem_width": 8', '"stem_width": 8, "heads": 4'),
        "space-option-bad-width": c.replace('"stem_width": 8', '"stem_width": -8'),
        "root-is-list": b"- task\n- space\n",
        "root-is-scalar": b"42\n",
        "empty-mapping": b"{}\n",
        "only-task": b"task:\n  data: digits\n",
        "python-tag": b"space: !!python/object/apply:os.system ['touch CODE_RAN']\n",
        "float-1e400": c.replace("max_size_kb: 24", "max_size_kb: 1.0e400"),
        "deep-flow-yaml": nested,
        "tab-indented": c.replace("  data: digits", "\tdata: digits"),
        "section-is-list": c.replace("constraints:\n  max_size_kb: 24", "constraints: [24]"),
    }
    return {k: v.encode() if isinstance(v, str) else v for k, v in cases.items()}


def table_json_mutations(valid: bytes) -> dict[str, bytes]:
    e0 = "entries.0"
    cases: dict[str, Callable[[Any], Any]] = {
        "format-wrong": _set("format", "other"),
        "version-2": _set("version", 2),
        "entries-empty": _set("entries", []),
        "entries-object": _set("entries", {"a": 1}),
        "entry-is-list": _set(e0, [1, 2]),
        "mean-nan": _set(f"{e0}.mean_ms", float("nan")),
        "mean-negative": _set(f"{e0}.mean_ms", -1.0),
        "mean-zero": _set(f"{e0}.mean_ms", 0),
        "mean-string": _set(f"{e0}.mean_ms", "fast"),
        "mean-inf": _set(f"{e0}.mean_ms", float("inf")),
        "count-2**60": _set(f"{e0}.count", 2**60),
        "count-10**400": _set(f"{e0}.count", 10**400),
        "memory-negative": _set(f"{e0}.memory_bytes", -5),
        "kind-list": _set(f"{e0}.kind", ["conv"]),
        "kind-empty": _set(f"{e0}.kind", ""),
        "in_h-negative": _set(f"{e0}.in_h", -1),
        "se-maybe": _set(f"{e0}.se", "maybe"),
        "missing-mean": _set(f"{e0}.mean_ms", _DELETE),
        "extra-list": _set("extra", [1, 2]),
        "extra-num-classes-string": _set("extra", {"num_classes": "ten"}),
        "extra-input-shape-negative": _set("extra", {"input_shape": [8, -8, 1]}),
        "extra-invoke-negative": _set("extra", {"invoke_overhead_ms": -1}),
        "extra-persistent-list": _set("extra", {"tflm_persistent_bytes": [1]}),
        "threads-0": _set("threads", 0),
        "threads-huge": _set("threads", 10**30),
        "dtype-int4": _set("dtype", "int4"),
        "device-empty": _set("device", ""),
        "device-missing": _set("device", _DELETE),
        "root-list": lambda d: [d],
        "duplicate-block-other-value": lambda d: d["entries"].append({**d["entries"][0], "mean_ms": 99.0}),
        "does-not-cover-space": lambda d: d.update(entries=d["entries"][:1]),
    }
    return {k: _json_mut(valid, fn) for k, fn in cases.items()}


def table_csv_mutations(valid: bytes) -> dict[str, bytes]:
    text = valid.decode()
    lines = text.splitlines()
    header = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    body = lines[header + 1 :]

    def with_row(row: str) -> bytes:
        return "\n".join([*lines, row]).encode() + b"\n"

    first = body[0].split(",")

    def row(**change: str) -> str:
        cols = lines[header].split(",")
        cells = list(first)
        for k, v in change.items():
            cells[cols.index(k)] = v
        return ",".join(cells)

    return {
        "missing-column": "\n".join([*lines[:header], lines[header].replace(",mean_ms", ""), *body]).encode(),
        "mean-nan": with_row(row(mean_ms="nan", in_h="99")),
        "mean-negative": with_row(row(mean_ms="-1", in_h="98")),
        "in_h-1e400": with_row(row(in_h="1e400")),
        "count-fraction": with_row(row(count="1.5", in_h="97")),
        "too-many-cells": with_row(body[0] + ",1,2,3"),
        "field-over-128KB": with_row(row(act="x" * 200_000)),
        "threads-text": text.replace("# threads: 1", "# threads: one").encode(),
        "format-other": text.replace("# format: edge-nas-latency-table", "# format: other").encode(),
        "version-9": text.replace("# version: 1", "# version: 9").encode(),
        "extra-deep-json": text.replace(
            "# extra.space:", "# extra.deep: " + "[" * 500 + "\n# extra.space:"
        ).encode(),
        "extra-num-classes-text": text.replace(
            "# extra.space:", '# extra.num_classes: "ten"\n# extra.space:'
        ).encode(),
        "no-rows": "\n".join(lines[: header + 1]).encode(),
        "unterminated-quote": with_row('"conv,1,1'),
        "duplicate-other-value": with_row(row(mean_ms="42")),
    }


def predictor_mutations(valid: bytes) -> dict[str, bytes]:
    cases: dict[str, Callable[[Any], Any]] = {
        "scale-nan": _set("correction.scale", float("nan")),
        "scale-negative": _set("correction.scale", -3.0),
        "scale-zero": _set("correction.scale", 0),
        "scale-string": _set("correction.scale", "1"),
        "offset-inf": _set("correction.offset_ms", float("inf")),
        "offset-huge-negative": _set("correction.offset_ms", -1e9),
        "n-measurements-negative": _set("correction.n_measurements", -1),
        "correction-list": _set("correction", [1, 0]),
        "kind-unknown": _set("kind", "oracle"),
        "kind-list": _set("kind", ["table"]),
        "version-2": _set("version", 2),
        "format-wrong": _set("format", "x"),
        "input-shape-zero": _set("task.input_shape", [0, 8, 1]),
        "num-classes-1": _set("task.num_classes", 1),
        "num-classes-huge": _set("task.num_classes", 10**40),
        "table-missing": _set("table", _DELETE),
        "table-mean-nan": _set("table.entries.0.mean_ms", float("nan")),
        "table-extra-list": _set("table.extra", [1]),
        "space-unknown": _set("space", "transformer"),
        "space-options-bad": _set("space_options", {"heads": 4}),
        "provenance-list": _set("provenance", [1]),
        "root-list": lambda d: [d],
    }
    return {k: _json_mut(valid, fn) for k, fn in cases.items()}


def measurement_mutations(valid: bytes) -> dict[str, bytes]:
    text = valid.decode()
    lines = text.splitlines()
    return {
        "no-latency-column": "\n".join(ln.split(",")[0] for ln in lines).encode(),
        "latency-nan": (text + lines[1].split(",")[0].replace("d1", "d1") + ",nan\n").encode(),
        "latency-negative": text.replace(lines[1], lines[1].split(",")[0] + ",-1").encode(),
        "latency-text": text.replace(lines[1], lines[1].split(",")[0] + ",fast").encode(),
        "latency-inf": text.replace(lines[1], lines[1].split(",")[0] + ",inf").encode(),
        "bad-arch": (text + "d9-k9-e9-w9-se0-relu6,0.5\n").encode(),
        "duplicate-arch-other-latency": (text + lines[1].split(",")[0] + ",99\n").encode(),
        "one-row": "\n".join(lines[:2]).encode() + b"\n",
        "header-only": lines[0].encode() + b"\n",
        "field-over-128KB": (text + "x" * 200_000 + ",1\n").encode(),
    }


def arch_mutations(valid: bytes) -> dict[str, bytes]:
    text = valid.decode()
    return {
        "no-arch-column": text.replace("arch\n", "network\n", 1).encode(),
        "bad-arch": (text + "not-an-arch\n").encode(),
        "arch-of-other-space": (text + "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|\n").encode(),
        "header-only": b"arch\n",
        "field-over-128KB": (text + "y" * 200_000 + "\n").encode(),
    }


def npz_mutations(valid: bytes) -> dict[str, bytes]:
    import io
    import zipfile

    import numpy as np

    def npz(**arrays: Any) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    x = np.random.default_rng(0).random((60, *SHAPE)).astype(np.float32)
    y = np.arange(60) % 3
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**4)}
    )
    forged = io.BytesIO()
    ybuf = io.BytesIO()
    np.save(ybuf, y)
    with zipfile.ZipFile(forged, "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", ybuf.getvalue())
    npy = io.BytesIO()
    np.save(npy, x)
    return {
        "header-claims-terabytes": forged.getvalue(),
        "npy-renamed": npy.getvalue(),
        "zero-d-arrays": npz(x=np.float32(1), y=np.int64(1)),
        "labels-up-to-1e6": npz(x=x, y=np.array([0, 1, 2, 1_000_000] * 15)),
        "complex-x": npz(x=x.astype(complex), y=y),
        "object-array": npz(x=np.array([{"a": 1}] * 60, dtype=object), y=y),
        "missing-y": npz(x=x),
        "string-x": npz(x=np.array(["a"] * 60), y=y),
        "nan-x": npz(x=np.full_like(x, np.nan), y=y),
        "one-class": npz(x=x, y=np.zeros(60, dtype=int)),
        "ten-samples": npz(x=x[:10], y=y[:10]),
        "length-mismatch": npz(x=x, y=y[:50]),
        "negative-labels": npz(x=x, y=y - 1),
        "float-labels": npz(x=x, y=y.astype(float) + 0.5),
    }


def ofa_mutations(valid: bytes) -> dict[str, bytes]:
    text = valid.decode()
    first_key = text.splitlines()[0]
    return {
        "bad-key": b"NotALayer-input:1x1:\n  mean: 1\n",
        "negative-mean": text.replace("mean: ", "mean: -", 1).encode(),
        "nan-mean": text.replace("mean: ", "mean: .nan #", 1).encode(),
        "missing-mean": (first_key + "\n  count: 3\n").encode(),
        "root-list": b"- 1\n- 2\n",
        "python-tag": b"x: !!python/object/apply:os.system ['touch CODE_RAN']\n",
        "deep-flow": ("x: " + "[" * 300 + "]" * 300 + "\n").encode(),
        "value-is-text": (first_key + " fast\n").encode(),
    }


def net_config_mutations(valid: bytes) -> dict[str, bytes]:
    cases: dict[str, Callable[[Any], Any]] = {
        "blocks-missing": _set("blocks", _DELETE),
        "blocks-not-list": _set("blocks", {"a": 1}),
        "first-conv-string": _set("first_conv", "conv"),
        "kernel-9": lambda d: d["blocks"][1]["mobile_inverted_conv"].update(kernel_size=9),
        "expand-text": lambda d: d["blocks"][1]["mobile_inverted_conv"].update(expand_ratio="six"),
        "root-list": lambda d: [d],
        "root-number": lambda d: 3,
    }
    return {k: _json_mut(valid, fn) for k, fn in cases.items()}


def catalogue(base: dict[str, bytes]) -> list[Case]:
    cases: list[Case] = []
    mb = ["--space", "mbconv", "--space-options", OPTS, "--input-shape", "8,8,1", "--num-classes", "10"]
    # (group, args with {f}, suffix, valid bytes, mutations)
    targets: list[tuple[str, list[str], str, bytes, dict[str, bytes]]] = [
        ("run config", ["run", "{f}", "--out", "{out}"], ".yaml", base["config"], config_mutations()),
        (
            "predict --table (json)",
            ["latency", "predict", "--table", "{f}", *mb, "--archs", "{archs}", "--out", "{out}/p.csv"],
            ".json",
            base["table_json"],
            table_json_mutations(base["table_json"]),
        ),
        (
            "predict --table (csv)",
            ["latency", "predict", "--table", "{f}", *mb, "--archs", "{archs}", "--out", "{out}/p.csv"],
            ".csv",
            base["table_csv"],
            table_csv_mutations(base["table_csv"]),
        ),
        (
            "fit --table",
            [
                "latency",
                "fit",
                *mb,
                "--table",
                "{f}",
                "--measurements",
                "{measurements}",
                "--out",
                "{out}/p.json",
            ],
            ".json",
            base["table_json"],
            {},
        ),
        (
            "predict --predictor",
            ["latency", "predict", "--predictor", "{f}", "--archs", "{archs}", "--out", "{out}/p.csv"],
            ".json",
            base["predictor"],
            predictor_mutations(base["predictor"]),
        ),
        (
            "evaluate --predictor",
            ["latency", "evaluate", "--predictor", "{f}", "--measurements", "{measurements}"],
            ".json",
            base["predictor"],
            {},
        ),
        (
            "evaluate --measurements",
            ["latency", "evaluate", "--predictor", "{predictor}", "--measurements", "{f}"],
            ".csv",
            base["measurements"],
            measurement_mutations(base["measurements"]),
        ),
        (
            "fit --measurements",
            ["latency", "fit", *mb, "--measurements", "{f}", "--out", "{out}/p.json"],
            ".csv",
            base["measurements"],
            {},
        ),
        (
            "predict --archs",
            ["latency", "predict", "--predictor", "{predictor}", "--archs", "{f}", "--out", "{out}/p.csv"],
            ".csv",
            base["archs"],
            arch_mutations(base["archs"]),
        ),
        (
            "data export task",
            ["data", "export", "{f}", "--split", "test", "--out", "{out}/t.npz"],
            ".npz",
            base["npz"],
            npz_mutations(base["npz"]),
        ),
        (
            "compress --task",
            ["compress", "{model}", "--task", "{f}", "--pipeline", "int8", "--out", "{out}/c"],
            ".npz",
            base["npz"],
            {},
        ),
        (
            "latency import",
            ["latency", "import", "{f}", "--format", "ofa-yaml", "--out", "{out}/t.json"],
            ".yaml",
            base["ofa_yaml"],
            ofa_mutations(base["ofa_yaml"]),
        ),
        (
            "arch from-ofa",
            ["arch", "from-ofa", "{f}"],
            ".net.config",
            base["net_config"],
            net_config_mutations(base["net_config"]),
        ),
        (
            "from-ofa --table",
            ["arch", "from-ofa", "{netconfig}", "--table", "{f}"],
            ".json",
            base["table_json"],
            {},
        ),
        (
            "compress MODEL",
            ["compress", "{f}", "--task", "digits", "--pipeline", "int8", "--out", "{out}/c"],
            ".keras",
            base["model"],
            {},
        ),
    ]
    for group, args, suffix, valid, mutations in targets:
        for name, content in generic(valid).items():
            cases.append(Case(group, name, args, content, suffix))
        for name, content in mutations.items():
            cases.append(Case(group, name, args, content, suffix))
    # Mutations that only make sense for some commands
    for name, content in table_json_mutations(base["table_json"]).items():
        if name in ("mean-nan", "extra-list", "count-10**400", "does-not-cover-space", "threads-huge"):
            cases.append(Case("fit --table", name, targets[3][1], content, ".json"))
    for name, content in predictor_mutations(base["predictor"]).items():
        if name in ("scale-nan", "scale-negative", "offset-huge-negative", "kind-list"):
            cases.append(Case("evaluate --predictor", name, targets[5][1], content, ".json"))
    for name, content in measurement_mutations(base["measurements"]).items():
        if name in ("latency-nan", "bad-arch", "one-row", "field-over-128KB"):
            cases.append(Case("fit --measurements", name, targets[7][1], content, ".csv"))
    for name, content in npz_mutations(base["npz"]).items():
        if name in (
            "header-claims-terabytes",
            "npy-renamed",
            "zero-d-arrays",
            "labels-up-to-1e6",
            "object-array",
        ):
            cases.append(Case("compress --task", name, targets[10][1], content, ".npz"))
    model_args = targets[14][1]
    for name, content, suffix in (
        ("lambda-layer-h5", base["lambda_h5"], ".h5"),
        ("lambda-layer-keras", base["lambda_keras"], ".keras"),
        ("valid-model-as-h5-name", base["lambda_h5"], ".keras"),
        ("keras-archive-named-zip", base["model"], ".zip"),
        ("savedmodel-folder", "savedmodel", ""),
        ("tflite-file", b"\x1c\x00\x00\x00TFL3" + b"\0" * 200, ".tflite"),
        ("keras-config-imports-os", _foreign_module(base["model"]), ".keras"),
    ):
        cases.append(Case("compress MODEL", name, model_args, content, suffix))
    teacher = [
        "compress",
        "{model}",
        "--teacher",
        "{f}",
        "--task",
        "digits",
        "--pipeline",
        "distill:1",
        "--out",
        "{out}/c",
    ]
    for name, content, suffix in (
        ("teacher-lambda-h5", base["lambda_h5"], ".h5"),
        ("teacher-lambda-keras", base["lambda_keras"], ".keras"),
        ("teacher-missing", "missing", ".keras"),
        ("teacher-random-bytes", generic(b"")["random-bytes"], ".keras"),
    ):
        cases.append(Case("compress --teacher", name, teacher, content, suffix))
    cases += argument_cases()
    return cases


def argument_cases() -> list[Case]:
    """Bad options and output locations, every command."""
    deep = "[" * 100_000
    rows: list[tuple[str, str, list[str]]] = [
        ("run", "out-empty", ["run", "{config}", "--out", ""]),
        ("run", "out-existing-file", ["run", "{config}", "--out", "{config}"]),
        ("run", "out-under-proc", ["run", "{config}", "--out", "/proc/nas-out"]),
        ("run", "out-under-sys", ["run", "{config}", "--out", "/sys/nas-out"]),
        ("run", "out-under-a-file", ["run", "{config}", "--out", "{config}/sub"]),
        ("run", "trainings-0", ["run", "{config}", "--out", "{out}", "--trainings", "0"]),
        ("run", "trainings-text", ["run", "{config}", "--out", "{out}", "--trainings", "many"]),
        ("run", "workers-0", ["run", "{config}", "--out", "{out}", "--workers", "0"]),
        ("run", "strategy-unknown", ["run", "{config}", "--out", "{out}", "--strategy", "annealing"]),
        ("run", "storage-bad-url", ["run", "{config}", "--out", "{out}", "--storage", "nosuchdb://x"]),
        ("run", "no-args", ["run"]),
        (
            "compress",
            "out-empty",
            ["compress", "{model}", "--task", "digits", "--pipeline", "int8", "--out", ""],
        ),
        (
            "compress",
            "out-existing-file",
            ["compress", "{model}", "--task", "digits", "--pipeline", "int8", "--out", "{config}"],
        ),
        (
            "compress",
            "out-under-proc",
            ["compress", "{model}", "--task", "digits", "--pipeline", "int8", "--out", "/proc/nas-c"],
        ),
        (
            "compress",
            "threads-0",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--out",
                "{out}",
                "--threads",
                "0",
            ],
        ),
        (
            "compress",
            "target-size-negative",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--out",
                "{out}",
                "--target-size-kb",
                "-1",
            ],
        ),
        (
            "compress",
            "target-latency-nan",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--out",
                "{out}",
                "--target-latency-ms",
                "nan",
            ],
        ),
        (
            "compress",
            "max-drop-inf",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--out",
                "{out}",
                "--max-accuracy-drop",
                "inf",
            ],
        ),
        (
            "compress",
            "unknown-stage",
            ["compress", "{model}", "--task", "digits", "--pipeline", "int8,shrink", "--out", "{out}"],
        ),
        (
            "compress",
            "unknown-format",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--formats",
                "coreml",
                "--out",
                "{out}",
            ],
        ),
        (
            "compress",
            "empty-pipeline",
            ["compress", "{model}", "--task", "digits", "--pipeline", ",", "--out", "{out}"],
        ),
        (
            "compress",
            "unknown-task",
            ["compress", "{model}", "--task", "imagenet", "--pipeline", "int8", "--out", "{out}"],
        ),
        (
            "compress",
            "seed-negative",
            [
                "compress",
                "{model}",
                "--task",
                "digits",
                "--pipeline",
                "int8",
                "--out",
                "{out}",
                "--seed",
                "-1",
            ],
        ),
        ("data export", "out-empty", ["data", "export", "digits", "--split", "test", "--out", ""]),
        (
            "data export",
            "out-not-npz",
            ["data", "export", "digits", "--split", "test", "--out", "{out}/t.txt"],
        ),
        (
            "data export",
            "out-under-proc",
            ["data", "export", "digits", "--split", "test", "--out", "/proc/t.npz"],
        ),
        ("data export", "out-is-folder", ["data", "export", "digits", "--split", "test", "--out", "{dir}"]),
        (
            "data export",
            "seed-negative",
            ["data", "export", "digits", "--split", "test", "--seed", "-1", "--out", "{out}/t.npz"],
        ),
        (
            "data export",
            "split-bogus",
            ["data", "export", "digits", "--split", "all", "--out", "{out}/t.npz"],
        ),
        (
            "data export",
            "unknown-task",
            ["data", "export", "imagenet", "--split", "test", "--out", "{out}/t.npz"],
        ),
        ("space sample", "n-0", ["space", "sample", "mbconv", "--n", "0", "--out", "{out}/a.csv"]),
        ("space sample", "n-negative", ["space", "sample", "mbconv", "--n", "-5", "--out", "{out}/a.csv"]),
        (
            "space sample",
            "unknown-space",
            ["space", "sample", "transformer", "--n", "3", "--out", "{out}/a.csv"],
        ),
        (
            "space sample",
            "options-deep-json",
            ["space", "sample", "mbconv", "--space-options", deep, "--n", "3", "--out", "{out}/a.csv"],
        ),
        (
            "space sample",
            "options-list",
            ["space", "sample", "mbconv", "--space-options", "[1]", "--n", "3", "--out", "{out}/a.csv"],
        ),
        (
            "space sample",
            "options-unknown-key",
            [
                "space",
                "sample",
                "mbconv",
                "--space-options",
                '{"heads": 2}',
                "--n",
                "3",
                "--out",
                "{out}/a.csv",
            ],
        ),
        ("space sample", "out-empty", ["space", "sample", "mbconv", "--n", "3", "--out", ""]),
        ("space sample", "out-under-proc", ["space", "sample", "mbconv", "--n", "3", "--out", "/proc/a.csv"]),
        (
            "space sample",
            "seed-negative",
            ["space", "sample", "mbconv", "--n", "3", "--seed", "-1", "--out", "{out}/a.csv"],
        ),
        (
            "space build",
            "bad-arch",
            [
                "space",
                "build",
                "mbconv",
                "--arch",
                "nonsense",
                "--format",
                "tflite-int8",
                "--out",
                "{out}/m.tflite",
            ],
        ),
        (
            "space build",
            "input-shape-zero",
            [
                "space",
                "build",
                "mbconv",
                "--arch",
                "d1-k3-e1-w8-se0-relu6",
                "--format",
                "tflite-int8",
                "--input-shape",
                "0,0,1",
                "--out",
                "{out}/m.tflite",
            ],
        ),
        (
            "space build",
            "num-classes-1",
            [
                "space",
                "build",
                "mbconv",
                "--arch",
                "d1-k3-e1-w8-se0-relu6",
                "--format",
                "tflite-int8",
                "--num-classes",
                "1",
                "--out",
                "{out}/m.tflite",
            ],
        ),
        (
            "space build",
            "input-shape-text",
            [
                "space",
                "build",
                "mbconv",
                "--arch",
                "d1-k3-e1-w8-se0-relu6",
                "--format",
                "tflite-int8",
                "--input-shape",
                "big",
                "--out",
                "{out}/m.tflite",
            ],
        ),
        (
            "latency profile",
            "threads-0",
            [
                "latency",
                "profile",
                "--space",
                "mbconv",
                "--n",
                "2",
                "--threads",
                "0",
                "--out",
                "{out}/t.json",
            ],
        ),
        (
            "latency profile",
            "n-0",
            ["latency", "profile", "--space", "mbconv", "--n", "0", "--out", "{out}/t.json"],
        ),
        (
            "latency profile",
            "unknown-space",
            ["latency", "profile", "--space", "transformer", "--n", "2", "--out", "{out}/t.json"],
        ),
        (
            "latency profile",
            "out-under-proc",
            ["latency", "profile", "--space", "mbconv", "--n", "2", "--out", "/proc/t.json"],
        ),
        (
            "latency measure",
            "archs-missing",
            ["latency", "measure", "--space", "mbconv", "--archs", "{missing}", "--out", "{out}/m.csv"],
        ),
        (
            "latency predict",
            "table-without-space",
            ["latency", "predict", "--table", "{table}", "--archs", "{archs}", "--out", "{out}/p.csv"],
        ),
        (
            "latency predict",
            "out-under-proc",
            [
                "latency",
                "predict",
                "--predictor",
                "{predictor}",
                "--archs",
                "{archs}",
                "--out",
                "/proc/p.csv",
            ],
        ),
        (
            "latency predict",
            "out-empty",
            ["latency", "predict", "--predictor", "{predictor}", "--archs", "{archs}", "--out", ""],
        ),
        ("latency fit", "nothing-to-fit", ["latency", "fit", "--space", "mbconv", "--out", "{out}/p.json"]),
        (
            "latency fit",
            "out-under-proc",
            [
                "latency",
                "fit",
                "--space",
                "mbconv",
                "--space-options",
                OPTS,
                "--measurements",
                "{measurements}",
                "--out",
                "/proc/p.json",
            ],
        ),
        (
            "latency import",
            "format-bogus",
            ["latency", "import", "{ofa}", "--format", "nn-meter", "--out", "{out}/t.json"],
        ),
        (
            "latency import",
            "out-under-proc",
            ["latency", "import", "{ofa}", "--format", "ofa-yaml", "--out", "/proc/t.json"],
        ),
        ("best", "runs-missing", ["best", "--runs", "{missing}"]),
        ("best", "runs-empty-folder", ["best", "--runs", "{dir}"]),
        ("best", "runs-is-file", ["best", "--runs", "{config}"]),
        ("best", "top-negative", ["best", "--runs", "{dir}", "--top", "-1"]),
        ("best", "latency-nan", ["best", "--runs", "{dir}", "--max-latency-ms", "nan"]),
        ("best", "size-1e400", ["best", "--runs", "{dir}", "--max-size-kb", "1e400"]),
        ("best", "latency-unit-bogus", ["best", "--runs", "{dir}", "--max-latency", "5 parsecs"]),
        ("best", "corrupt-study", ["best", "--runs", "{corrupt_runs}"]),
        ("best", "export-under-proc", ["best", "--runs", "{dir}", "--export", "/proc/x"]),
        (
            "benchmark nb201",
            "device-unknown",
            ["benchmark", "nb201", "--device", "toaster", "--json", "{out}/b.json"],
        ),
        (
            "benchmark nb201",
            "budget-negative",
            ["benchmark", "nb201", "--device", "pixel3", "--budget", "-1", "--json", "{out}/b.json"],
        ),
        ("nas", "unknown-command", ["frobnicate"]),
        ("nas", "unknown-option", ["run", "{config}", "--out", "{out}", "--turbo"]),
    ]
    return [Case(f"args: {group}", name, args) for group, name, args in rows]


# -- the runner -----------------------------------------------------------------------------
def _listing(folder: Path) -> set[str]:
    out = set()
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(root, n), folder))
    return out


def run_case(case: Case, work: Path, helpers: dict[str, Path], env: dict[str, str]) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=work))
    target = folder / f"input{case.suffix}"
    if isinstance(case.file, bytes):
        target.write_bytes(case.file)
    elif case.file == "dir":
        target.mkdir()
    elif case.file == "fifo":
        os.mkfifo(target)
    elif case.file == "loop":
        target.symlink_to(target)
    elif case.file == "savedmodel":
        target.mkdir()
        (target / "saved_model.pb").write_bytes(b"\0" * 64)
    empty = folder / "empty-dir"
    empty.mkdir()
    values = {
        **{k: str(v) for k, v in helpers.items()},
        "f": str(target),
        "out": str(folder / "out"),
        "dir": str(empty),
    }
    args = [_fill(a, values) for a in case.args]
    before = _listing(folder)
    helper_before = _listing(work / "helpers")
    start = time.time()
    logs = Path(tempfile.mkdtemp(prefix="log-", dir=work))
    with (logs / "err").open("wb") as e, (logs / "out").open("wb") as o:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nas", *args],
            cwd=folder,
            env=env,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )
    killed: list[bool] = []
    timer = threading.Timer(TIMEOUT_S, lambda: (killed.append(True), os.killpg(proc.pid, 9)))
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    timed_out = bool(killed)
    seconds = time.time() - start
    rss_mb = round(usage.ru_maxrss / 1024, 1)
    err = (logs / "err").read_text(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    created = sorted(_listing(folder) - before) + sorted(
        f"helpers/{p}" for p in _listing(work / "helpers") - helper_before
    )
    code_ran = (work / "helpers" / "CODE_RAN").exists() or (folder / "CODE_RAN").exists()
    result = {
        "group": case.group,
        "case": case.name,
        "exit": proc.returncode,
        "lines": len(lines),
        "line": lines[0][:400] if lines else "",
        "line_chars": len(lines[0]) if lines else 0,
        "traceback": "Traceback" in err,
        "created": created[:5],
        "peak_mb": rss_mb,
        "seconds": round(seconds, 2),
        "timed_out": timed_out,
        "code_ran": code_ran,
    }
    result["ok"] = (
        proc.returncode == 2
        and len(lines) == 1
        and len(lines[0]) < MAX_LINE
        and not result["traceback"]
        and not created
        and (rss_mb is None or rss_mb < MAX_RSS_MB)
        and not code_ran
        and not timed_out
    )
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    return result


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def main() -> int:
    made = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--make-baselines=")), None)
    if made:
        for kind, data in baselines(Path(made)).items():
            (Path(made) / f"base-{kind}").write_bytes(data)
        return 0
    only = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), None)
    limit = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--limit=")), None)
    work = Path(tempfile.mkdtemp(prefix="nas-bad-inputs-"))
    helpers_dir = work / "helpers"
    helpers_dir.mkdir()
    # Built in a child process: TensorFlow in this one would count in every case's peak memory
    # (Linux carries a forked child's pre-exec peak into its ru_maxrss).
    subprocess.run(
        [sys.executable, __file__, f"--make-baselines={helpers_dir}"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"},
        capture_output=True,
    )
    base = {p.name[len("base-") :]: p.read_bytes() for p in helpers_dir.glob("base-*")}
    names = {
        "config": ("config", ".yaml"),
        "table": ("table_json", ".json"),
        "predictor": ("predictor", ".json"),
        "archs": ("archs", ".csv"),
        "measurements": ("measurements", ".csv"),
        "model": ("model", ".keras"),
        "ofa": ("ofa_yaml", ".yaml"),
        "netconfig": ("net_config", ".net.config"),
    }
    helpers: dict[str, Path] = {}
    for key, (kind, suffix) in names.items():
        helpers[key] = helpers_dir / f"{key}{suffix}"
        helpers[key].write_bytes(base[kind])
    helpers["missing"] = helpers_dir / "does-not-exist.csv"
    corrupt = helpers_dir / "runs" / "r1"
    corrupt.mkdir(parents=True)
    (corrupt / "study.db").write_bytes(b"SQLite format 3\0" + os.urandom(2000))
    helpers["corrupt_runs"] = helpers_dir / "runs"
    cases = catalogue(base)
    if only:
        cases = [c for c in cases if only in f"{c.group} {c.name}"]
    if limit:
        cases = cases[:limit]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EDGE_NAS_CACHE": str(work / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_USE_LEGACY_KERAS": "1",
    }
    results = []
    started = time.time()
    for i, case in enumerate(cases):
        r = run_case(case, work, helpers, env)
        results.append(r)
        mark = "ok  " if r["ok"] else "FAIL"
        print(
            f"{i + 1:4d}/{len(cases)} {mark} {r['group']} / {r['case']}: exit {r['exit']} {r['line'][:150]}",
            flush=True,
        )
    passed = sum(r["ok"] for r in results)
    summary = {
        "cases": len(results),
        "passed": passed,
        "pass_rate": round(passed / max(len(results), 1), 4),
        "exit_2": sum(r["exit"] == 2 for r in results),
        "one_line": sum(r["lines"] == 1 for r in results),
        "line_under_300": sum(0 < r["line_chars"] < MAX_LINE for r in results),
        "tracebacks": sum(r["traceback"] for r in results),
        "created_something": sum(bool(r["created"]) for r in results),
        "code_ran": sum(r["code_ran"] for r in results),
        "timed_out": sum(r["timed_out"] for r in results),
        "peak_mb_max": max((r["peak_mb"] or 0) for r in results) if results else 0,
        "groups": len({r["group"] for r in results}),
        "wall_s": round(time.time() - started, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if not only and not limit:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "bad_inputs.json").write_text(
            json.dumps({"summary": summary, "cases": results}, indent=1) + "\n"
        )
        md = [
            "# Bad inputs replayed against every command (`benchmarks/bad_inputs.py`)",
            "",
            "Each case runs `python -m nas ...` in a fresh folder; it passes when the exit code is 2, stderr is one",
            "line under 300 characters, there is no traceback, nothing was created, no code from the file ran and",
            "peak memory (the child's own `ru_maxrss`) stayed under 500 MB.",
            "",
            "| measure | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in summary.items()],
            "",
            "## Failures",
            "",
            "| group | case | exit | lines | created | first line |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['group']} | {r['case']} | {r['exit']} | {r['lines']} | {', '.join(r['created'])} | "
                f"{r['line'][:160].replace('|', '/')} |"
                for r in results
                if not r["ok"]
            ],
        ]
        (RESULTS / "bad_inputs.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
