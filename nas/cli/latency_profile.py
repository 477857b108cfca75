"""``nas latency import|profile|measure``: tables in (OFA YAML), per-block tables measured on this
machine's runtimes, and whole-model measurements with their spread."""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from .space import add_space_args, add_task_args

__all__ = ["register"]

RUNTIME_NAMES = ("litert", "onnxruntime", "openvino", "tflm", "tvm", "executorch")


def register(verbs: Any) -> None:
    i = verbs.add_parser(
        "import", help="convert a third-party lookup table, or a device kit's results, into our table format"
    )
    i.add_argument("file", help="the table to import (OFA / ProxylessNAS YAML) or a kit's results.json")
    i.add_argument("--format", default=None, choices=("ofa-yaml", "kit-results"))
    i.add_argument("--kit", default=None, help="the kit folder results.json was measured with")
    i.add_argument("--device", default=None, help="device name (default: from the file name)")
    i.add_argument("--out", required=True, help="output table (.json or .csv)")
    i.set_defaults(func=_import)

    p = verbs.add_parser("profile", help="measure a per-block table on this machine with a real runtime")
    add_space_args(p)
    _runtime_args(p)
    add_task_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--archs", default=None, help="CSV (column arch) whose blocks to profile")
    src.add_argument(
        "--n", type=int, default=None, help="profile the blocks of N random architectures (default 20)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --n")
    p.add_argument(
        "--no-cache", action="store_true", help="profile every block again instead of reusing the host cache"
    )
    p.add_argument("--out", required=True, help="output table (.json or .csv)")
    p.set_defaults(func=_profile)

    m = verbs.add_parser("measure", help="time whole models (median and spread) on this machine")
    add_space_args(m)
    _runtime_args(m)
    add_task_args(m)
    m.add_argument("--archs", required=True, help="CSV (column arch)")
    m.add_argument(
        "--out", required=True, help="output CSV: arch,latency_ms,p10_ms,p90_ms,runs[,arena_bytes]"
    )
    m.set_defaults(func=_measure)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="litert", choices=RUNTIME_NAMES)
    p.add_argument("--dtype", default="int8", choices=("int8", "fp32"))
    p.add_argument("--threads", type=int, default=1, help="pinned thread count (default 1)")


def _progress(label: str) -> Any:
    def report(done: int, total: int) -> None:
        if total and sys.stderr.isatty():
            sys.stderr.write(f"\r{label} {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


def _import(args: argparse.Namespace) -> int:
    from latency_models.ofa import load_ofa_yaml
    from search_spaces import InputError

    if args.kit is not None and args.format not in (None, "kit-results"):
        raise InputError(f"--kit: reads a kit's results.json, not --format {args.format}.")
    if args.kit is not None or args.format == "kit-results":
        if args.kit is None:
            raise InputError(
                "--format kit-results: expected --kit KIT (the kit folder it was measured with)."
            )
        from .latency_kit import import_kit_results

        return import_kit_results(args)
    if args.format is None:
        raise InputError("nas latency import: expected --format ofa-yaml, or --kit KIT for a kit's results.")

    table = load_ofa_yaml(args.file, device=args.device)
    table.save(args.out)
    print(
        f"{len(table)} entries ({table.meta.extra.get('family')}, device {table.meta.device}) -> {args.out}"
    )
    return 0


def _profile(args: argparse.Namespace) -> int:
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from latency_models.profile import host_table
    from latency_models.table import LatencyTable

    from .space import read_archs, space_and_task, space_options

    space, task = space_and_task(args)
    if args.archs:
        archs = read_archs(args.archs, space)
    else:
        n = 20 if args.n is None else args.n
        if n < 1:
            from search_spaces import InputError

            raise InputError(f"--n: expected an int >= 1, got {n}.")
        rng = random.Random(args.seed)
        archs = [space.random(rng) for _ in range(n)]
    blocks = list(dict.fromkeys(b for a in archs for b in space.blocks(a, task)))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) if args.no_cache else None
        table = host_table(
            space,
            task,
            blocks,
            args.runtime,
            args.dtype,
            args.threads,
            cache_dir=cache,
            progress=_progress("profile"),
        )
    extra = {
        **table.meta.extra,
        "space": space.name,
        "space_options": space_options(args.space_options),
        "input_shape": list(task.input_shape),
        "num_classes": task.num_classes,
    }
    needed = set(blocks)
    if "tflm_persistent_bytes" in extra:
        keys = {b.key for b in needed}
        extra["tflm_persistent_bytes"] = {
            k: v for k, v in extra["tflm_persistent_bytes"].items() if k in keys
        }
    out = LatencyTable(
        replace(table.meta, extra=extra), {b: e for b, e in table.entries.items() if b in needed}
    )
    out.save(args.out)
    print(
        f"{len(out)} blocks of {len(archs)} architectures ({args.runtime} {args.dtype}, {args.threads} thread(s)) -> {args.out}"
    )
    return 0


def _measure(args: argparse.Namespace) -> int:
    from latency_models.profile import measure_archs, measure_arenas

    from .space import read_archs, space_and_task, write_csv

    space, task = space_and_task(args)
    archs = read_archs(args.archs, space)
    timings = measure_archs(
        space, task, archs, args.runtime, args.dtype, args.threads, progress=_progress("measure")
    )
    header = ["arch", "latency_ms", "p10_ms", "p90_ms", "runs"]
    rows: list[list[Any]] = [
        [str(a), f"{t.median_ms:.6g}", f"{t.p10_ms:.6g}", f"{t.p90_ms:.6g}", t.runs]
        for a, t in zip(archs, timings, strict=True)
    ]
    if args.runtime == "tflm" and args.dtype == "int8":
        header.append("arena_bytes")
        for row, arena in zip(rows, measure_arenas(space, task, archs), strict=True):
            row.append(arena)
    write_csv(args.out, header, rows)
    print(f"{len(rows)} architectures measured ({args.runtime} {args.dtype}) -> {args.out}")
    return 0
