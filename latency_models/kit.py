"""Device kits: everything a board or phone needs to measure a space's latency table itself (one
.tflite per block, the calibration networks, the per-invoke pair, a manifest and the standalone
runner ``measure.py``), and the import of its results into a ``LatencyTable``.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Block, InputError, SearchSpace, TaskShape
from search_spaces.safeio import MAX_JSON_BYTES, brief, check_format, loads_json, read_bounded

from .table import CALIBRATION_KEY, INVOKE_KEY, Entry, LatencyTable, TableMeta

__all__ = [
    "KIT_FORMAT",
    "KIT_VERSION",
    "RESULTS_FORMAT",
    "KitImport",
    "build_kit",
    "import_results",
    "spanning_subset",
]

KIT_FORMAT = "edge-nas-device-kit"
KIT_VERSION = 1
RESULTS_FORMAT = "edge-nas-device-results"
RUNNER = "measure.py"
# Calibration networks are timed in as many interleaved repeats as ``nas run`` uses.
CALIBRATION_REPEATS = 3
INVOKE_ROUNDS = 5

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KitImport:
    """An imported kit: the table, whole-model measurements of ``--archs`` (arch, ms) and, when
    the kit measured a subset of the blocks, how well the measured ones predict each other."""

    table: LatencyTable
    arch_latency: tuple[tuple[str, float], ...]
    check: dict[str, Any] | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spanning_subset(blocks: Sequence[Block], fraction: float) -> list[Block]:
    """``ceil(fraction * len(blocks))`` blocks chosen to span the settings: the cheapest and the
    most expensive of every structural group first, then greedily the block farthest (in log
    input size, channels, kernel and expansion) from every block chosen so far."""
    from .extrapolate import block_features, group_of, log_settings

    if not 0 < fraction <= 1:
        raise InputError(f"fraction: expected a number in (0, 1], got {brief(fraction)}.")
    blocks = sorted(dict.fromkeys(blocks), key=lambda b: b.key)
    n = max(1, math.ceil(fraction * len(blocks)))
    if n >= len(blocks):
        return blocks
    groups: dict[tuple[object, ...], list[Block]] = {}
    for b in blocks:
        groups.setdefault(group_of(b), []).append(b)

    def cost(b: Block) -> float:
        return float(block_features(b)[1][1:].sum())

    chosen: list[Block] = []
    for members in groups.values():
        for pick in (min(members, key=cost), max(members, key=cost)):
            if pick not in chosen and len(chosen) < n:
                chosen.append(pick)
    x = {b: log_settings(b) for b in blocks}
    group_index = {g: i for i, g in enumerate(groups)}

    def distance(a: Block, b: Block) -> float:
        return float(np.abs(x[a] - x[b]).sum()) + (0.0 if group_of(a) == group_of(b) else 100.0)

    nearest = {b: min((distance(b, c) for c in chosen), default=math.inf) for b in blocks}
    while len(chosen) < n:
        best = max(
            (b for b in blocks if b not in chosen), key=lambda b: (nearest[b], -group_index[group_of(b)])
        )
        chosen.append(best)
        for b in blocks:
            nearest[b] = min(nearest[b], distance(b, best))
    return sorted(chosen, key=lambda b: b.key)


def build_kit(
    space: SearchSpace,
    task: TaskShape,
    out: str | Path,
    blocks: Sequence[Block],
    calibration_archs: Sequence[Hashable],
    archs: Sequence[Hashable] = (),
    dtype: str = "int8",
    representative: Sequence[np.ndarray] | None = None,
    fraction: float = 1.0,
    space_options: dict[str, Any] | None = None,
    progress: Progress = lambda s: None,
) -> dict[str, Any]:
    """Write a kit for ``blocks`` (a spanning ``fraction`` of them) into the folder ``out``: built
    in a temp folder beside it and renamed, so a stopped build leaves nothing half-written.
    Returns the manifest."""
    from search_spaces.backend import keras
    from search_spaces.weights import like_trained

    from .profile import (
        BLOCK_TIMING,
        REPEAT_TIMING,
        _convert_block,
        convert_blocks,
        convert_runnable,
        invoke_pair,
    )
    from .profile import random_representative as random_samples
    from .runtimes import get_runtime

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out: {out} exists and is not an empty folder; the kit needs a new folder.")
    rt = get_runtime("litert")
    rt.check_dtype(dtype)
    every = sorted(dict.fromkeys(blocks), key=lambda b: b.key)
    measured = spanning_subset(every, fraction)
    rep = list(representative) if representative is not None else random_samples(task.input_shape)
    files: list[dict[str, Any]] = []
    datas: dict[str, bytes] = {}

    def add(name: str, data: bytes, **fields: Any) -> None:
        datas[name] = data
        files.append({"file": name, "sha256": _sha256(data), "bytes": len(data), **fields})

    progress(f"converting {len(measured)} blocks")
    converted = convert_blocks(space, measured, rt.name, dtype)
    for i, block in enumerate(measured):
        artifact = converted.get(block)
        if artifact is None:
            artifact, _ = _convert_block(space, block, rt, dtype)
        add(f"b{i:04d}.tflite", artifact.data, role="block", key=block.key, block=asdict(block))
    for part, (artifact, _) in zip(("a", "b", "ab"), invoke_pair(rt.name, dtype), strict=True):
        add(f"invoke_{part}.tflite", artifact.data, role="invoke", part=part)
    for role, group in (("calibration", calibration_archs), ("arch", archs)):
        for i, arch in enumerate(group):
            progress(f"converting {role} model {i + 1}/{len(group)}")
            # As ``nas run`` calibrates: weights that look trained, so the file's size is real.
            artifact = convert_runnable(
                rt, like_trained(space, arch, task, seed=i), dtype, rep if dtype == "int8" else None
            )
            add(f"{role[:3]}{i:03d}.tflite", artifact.data, role=role, arch=str(arch))
    keras().backend.clear_session()
    manifest = {
        "format": KIT_FORMAT,
        "version": KIT_VERSION,
        "space": space.name,
        "space_options": dict(space_options or {}),
        "input_shape": list(task.input_shape),
        "num_classes": task.num_classes,
        "dtype": dtype,
        "converter": {"runtime": rt.name, "version": rt.version()},
        "timing": {
            "block": list(BLOCK_TIMING),
            "repeat": list(REPEAT_TIMING),
            "repeats": CALIBRATION_REPEATS,
            "invoke_rounds": INVOKE_ROUNDS,
        },
        "blocks_total": len(every),
        "blocks_measured": len(measured),
        "fraction": fraction,
        "runner": RUNNER,
        "files": files,
    }
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, data in datas.items():
            (tmp / name).write_bytes(data)
        shutil.copyfile(Path(__file__).with_name("kit_runner.py"), tmp / RUNNER)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# -- import ---------------------------------------------------------------------------------------
def _load_doc(path: Path, what: str) -> tuple[Any, bytes]:
    if not path.is_file():
        raise InputError(f"{path}: {what} not found.")
    raw = read_bounded(path, what, MAX_JSON_BYTES)
    return loads_json(raw, str(path), what), raw


def _timing_ms(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InputError(f"{where}: expected a finite number of ms > 0, got {brief(value)}.")
    return float(value)


def _runs(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise InputError(f"{where}: expected an int >= 0, got {brief(value)}.")
    return value


def _check_manifest(kit: Path) -> tuple[dict[str, Any], str]:
    manifest_path = kit / "manifest.json"
    manifest, raw = _load_doc(manifest_path, "kit manifest")
    manifest = check_format(manifest, str(manifest_path), KIT_FORMAT, KIT_VERSION, "kit")
    timing = manifest.get("timing")
    ok = isinstance(timing, dict) and all(
        isinstance(timing.get(k), list)
        and len(timing[k]) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in timing[k])
        for k in ("block", "repeat")
    )
    ok = ok and all(
        isinstance(timing.get(k), int) and not isinstance(timing.get(k), bool) and 1 <= timing[k] <= 100
        for k in ("repeats", "invoke_rounds")
    )
    if not ok:
        raise InputError(
            f"{manifest_path}: timing: expected block and repeat [runs, warmup, min_s] and repeats, "
            f"invoke_rounds in [1, 100], got {brief(timing)}."
        )
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise InputError(f"{manifest_path}: files: expected a non-empty list, got {brief(files)}.")
    for i, f in enumerate(files):
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("file"), str)
            or not isinstance(f.get("sha256"), str)
        ):
            raise InputError(f"{manifest_path}: files[{i}]: expected an object with file and sha256.")
        if f.get("role") not in ("block", "invoke", "calibration", "arch"):
            raise InputError(
                f"{manifest_path}: files[{i}].role: expected block, invoke, calibration or arch, got {brief(f.get('role'))}."
            )
        path = kit / f["file"]
        if "/" in f["file"] or not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing from the kit.")
        if _sha256(path.read_bytes()) != f["sha256"]:
            raise InputError(f"{path}: sha256 differs from the kit's manifest (a changed or damaged file).")
    return manifest, _sha256(raw)


def import_results(results_path: str | Path, kit: str | Path, device: str | None = None) -> KitImport:
    """Check ``results_path`` against the kit (its id, every file's hash, every block and model
    present) and build the device's table with its calibration measurements and per-invoke cost.
    Any mismatch raises ``InputError`` naming what differs."""
    from .profile import invoke_overhead_from

    results_path, kit = Path(results_path), Path(kit)
    manifest, kit_id = _check_manifest(kit)
    doc, _ = _load_doc(results_path, "kit results")
    where = str(results_path)
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise InputError(f'{where}: expected a JSON object with "format": "{RESULTS_FORMAT}".')
    if doc.get("kit") != kit_id:
        raise InputError(
            f"{where}: measured with another kit (kit id {brief(str(doc.get('kit'))[:12])}, "
            f"{kit / 'manifest.json'} is {kit_id[:12]})."
        )
    files = manifest["files"]
    blocks_doc = doc.get("blocks")
    models_doc = doc.get("models")
    if not isinstance(blocks_doc, dict) or not isinstance(models_doc, dict):
        raise InputError(f"{where}: blocks and models: expected objects keyed by kit file name.")
    known = {f["file"] for f in files}
    stray = sorted(set(blocks_doc) - known) + sorted(set(models_doc) - known)
    if stray:
        raise InputError(f"{where}: {brief(stray[0])} is not a file of this kit.")
    block_files = [f for f in files if f.get("role") == "block"]
    missing = [f for f in block_files if f["file"] not in blocks_doc]
    if missing:
        raise InputError(
            f"{where}: {len(missing)} of {len(block_files)} blocks not measured (e.g. {missing[0]['file']} "
            f"{missing[0].get('key')}); run measure.py again to finish."
        )
    entries: dict[Block, Entry] = {}
    for f in block_files:
        t = blocks_doc[f["file"]]
        at = f"{where}: blocks.{f['file']}"
        if not isinstance(t, dict):
            raise InputError(f"{at}: expected an object, got {brief(t)}.")
        try:
            block = Block(**f["block"])
        except (TypeError, InputError) as e:
            raise InputError(f"{kit / 'manifest.json'}: {f['file']}: bad block ({e}).") from None
        std = t.get("std_ms", 0.0)
        entries[block] = Entry(
            mean_ms=_timing_ms(t.get("median_ms"), f"{at}.median_ms"),
            std_ms=float(std) if isinstance(std, (int, float)) and math.isfinite(std) and std >= 0 else 0.0,
            count=max(1, _runs(t.get("runs", 1), f"{at}.runs")),
        )
    repeats = int(manifest["timing"]["repeats"])
    measured_models: dict[str, list[float]] = {}
    for f in files:
        if f.get("role") not in ("calibration", "arch"):
            continue
        m = models_doc.get(f["file"])
        reps = m.get("repeats_ms") if isinstance(m, dict) else None
        if not isinstance(reps, list) or len(reps) < repeats:
            raise InputError(
                f"{where}: model {f['file']} ({f.get('role')}) has {len(reps) if isinstance(reps, list) else 0} "
                f"of {repeats} repeats; run measure.py again to finish."
            )
        measured_models[f["file"]] = [
            _timing_ms(v, f"{where}: models.{f['file']}.repeats_ms[{i}]") for i, v in enumerate(reps)
        ]
    rounds = doc.get("invoke")
    if not isinstance(rounds, list) or len(rounds) < int(manifest["timing"]["invoke_rounds"]):
        raise InputError(
            f"{where}: invoke: expected {manifest['timing']['invoke_rounds']} rounds of the per-invoke pair."
        )
    pairs = []
    for i, r in enumerate(rounds):
        if not isinstance(r, list) or len(r) != 3:
            raise InputError(f"{where}: invoke[{i}]: expected [t(A), t(B), t(A then B)], got {brief(r)}.")
        pairs.append([_timing_ms(v, f"{where}: invoke[{i}]") for v in r])
    calibration = []
    arch_latency = []
    for f in files:
        if f["file"] not in measured_models:
            continue
        reps = measured_models[f["file"]]
        median, spread = float(np.median(reps)), (max(reps) - min(reps)) / 2.0
        if f["role"] == "calibration":
            calibration.append(
                {"arch": f["arch"], "latency_ms": median, "spread_ms": spread, "size_bytes": int(f["bytes"])}
            )
        else:
            arch_latency.append((str(f["arch"]), median))
    desc = doc.get("device") if isinstance(doc.get("device"), dict) else {}
    name = device or str(desc.get("model") or desc.get("board") or desc.get("cpu") or "device")
    threads = doc.get("threads", 1)
    interpreter = str(desc.get("interpreter", "unknown"))
    extra: dict[str, Any] = {
        "space": manifest.get("space"),
        "space_options": manifest.get("space_options", {}),
        "input_shape": manifest.get("input_shape"),
        "num_classes": manifest.get("num_classes"),
        INVOKE_KEY: invoke_overhead_from(pairs),
        CALIBRATION_KEY: calibration,
        "device_description": {k: str(v)[:200] for k, v in desc.items()},
        "kit": {
            "id": kit_id,
            "blocks_total": manifest.get("blocks_total"),
            "blocks_measured": len(entries),
            "mode": str(doc.get("mode", "local")),
        },
    }
    check = None
    if len(entries) < int(manifest.get("blocks_total") or 0):
        check = extrapolation_check(entries)
        extra["kit"]["extrapolation_check"] = check
    try:
        meta = TableMeta(
            device=name[:120],
            runtime="litert" if interpreter == "ai-edge-litert" else interpreter,
            runtime_version=str(desc.get("interpreter_version", "")),
            dtype=str(manifest.get("dtype", "int8")),
            threads=threads,
            source=f"measured on the device with an edge-nas kit ({RUNNER})",
            extra=extra,
        )
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return KitImport(LatencyTable(meta, entries), tuple(arch_latency), check)


def extrapolation_check(entries: dict[Block, Entry]) -> dict[str, Any]:
    """Leave-one-out over the measured blocks: each priced by the model fitted on the others."""
    from .extrapolate import fit_block_model

    errors = []
    for block, entry in entries.items():
        others = {b: e for b, e in entries.items() if b != block}
        if not others:
            break
        value = fit_block_model(others).price(block)
        if value is not None:
            errors.append(abs(value / entry.mean_ms - 1.0))
    if not errors:
        return {"blocks": 0}
    arr = np.asarray(errors)
    return {
        "blocks": len(errors),
        "median_error": float(np.median(arr)),
        "p90_error": float(np.percentile(arr, 90)),
        "within_10pct": float(np.mean(arr <= 0.10)),
    }
