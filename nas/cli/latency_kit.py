"""``nas latency kit``: write a device kit (block files, calibration networks, manifest, runner) for
a search space; ``nas latency import RESULTS --kit KIT`` (in ``latency_profile``) reads it back."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .space import add_task_args

__all__ = ["import_kit_results", "register"]


def register(verbs: Any) -> None:
    k = verbs.add_parser(
        "kit",
        help="write a profiling kit to measure this space's latency table on any device with TFLite",
        description="One .tflite per block, the calibration networks `nas run` fits the whole-model "
        "overhead and size model on, the per-invoke pair, a manifest and measure.py (needs only "
        "Python 3.9+, numpy and a TFLite interpreter on the device).",
    )
    k.add_argument("config", nargs="?", default=None, help="run config (.yaml) whose space and task to cover")
    k.add_argument("--space", default=None, help="space name (instead of CONFIG)")
    k.add_argument("--space-options", default=None, metavar="JSON", help="space options as a JSON object")
    add_task_args(k)
    k.add_argument("--dtype", default=None, choices=("int8", "fp32"), help="default: the config's, else int8")
    k.add_argument("--archs", default=None, help="CSV (column arch): whole models to measure as well")
    k.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="measure this fraction of the blocks, chosen to span their settings (the rest are priced "
        "by the per-kind model fitted on them); default 1",
    )
    k.add_argument("--calibration-models", type=int, default=None, help="default: the config's (6)")
    k.add_argument("--seed", type=int, default=None, help="calibration-network seed (default: the config's)")
    k.add_argument("--out", required=True, help="kit folder to create")
    k.set_defaults(func=_kit)


def _status(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{text[:78]:<78}")
        sys.stderr.flush()


def _kit(args: argparse.Namespace) -> int:
    from latency_models.kit import build_kit
    from latency_models.table import DTYPES
    from search_spaces import InputError, get_space

    from .space import read_archs, space_options, task_from_args

    if (args.config is None) == (args.space is None):
        raise InputError(
            "nas latency kit: expected a run config or --space, got "
            + ("both." if args.config else "neither.")
        )
    if not 0 < args.fraction <= 1:
        raise InputError(f"--fraction: expected a number in (0, 1], got {args.fraction}.")
    rep = None
    if args.config is not None:
        from nas.config import load_config
        from nas.data import load_task

        config = load_config(args.config)
        options = dict(config.space.options)
        space = get_space(config.space.name, options)
        data = load_task(config.task)
        task = data.shape
        rep = list(data.inputs(data.x_train[:64]))
        dtype = args.dtype or config.latency.dtype
        n_cal = (
            config.latency.calibration_models if args.calibration_models is None else args.calibration_models
        )
        seed = config.search.seed if args.seed is None else args.seed
    else:
        options = space_options(args.space_options)
        space = get_space(args.space, options)
        task = task_from_args(args.space, args.input_shape, args.num_classes)
        dtype = args.dtype or "int8"
        n_cal = 6 if args.calibration_models is None else args.calibration_models
        seed = 0 if args.seed is None else args.seed
    if dtype not in DTYPES:
        raise InputError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}.")
    if n_cal < 0:
        raise InputError(f"--calibration-models: expected an int >= 0, got {n_cal}.")
    from latency_models.block_sample import blocks_to_profile

    blocks, complete = blocks_to_profile(space, task)
    if not complete:
        print(
            f"space {space.name} cannot list every block: the kit holds the {len(blocks)} blocks of its extreme "
            "and random architectures; the table imported from it prices the others by the per-kind model"
        )
    from nas.calibration import _calibration_archs

    calibration = _calibration_archs(space, n_cal, seed) if n_cal else []
    archs = read_archs(args.archs, space) if args.archs else []
    manifest = build_kit(
        space,
        task,
        args.out,
        blocks,
        calibration,
        archs,
        dtype=dtype,
        representative=rep,
        fraction=args.fraction,
        space_options=options,
        progress=_status,
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    size = sum(f["bytes"] for f in manifest["files"])
    print(
        f"kit for {space.name}: {manifest['blocks_measured']} of {manifest['blocks_total']} blocks, "
        f"{len(calibration)} calibration and {len(archs)} extra models, {size / 1e6:.2f} MB -> {args.out}\n"
        f"on the device: python3 measure.py --threads N --out results.json   "
        f"then: nas latency import results.json --kit {args.out} --out DEVICE.json"
    )
    return 0


def import_kit_results(args: argparse.Namespace) -> int:
    """``nas latency import RESULTS --kit KIT --out TABLE``."""
    from latency_models.kit import import_results
    from latency_models.measurements import write_latencies

    done = import_results(args.file, args.kit, device=args.device)
    table = done.table
    table.save(args.out)
    kit = table.meta.extra["kit"]
    lines = [
        f"{len(table)} of {kit['blocks_total']} blocks, {len(table.meta.extra['calibration'])} calibration models "
        f"(device {table.meta.device}, {table.meta.threads} thread(s)) -> {args.out}"
    ]
    if done.check:
        c = done.check
        lines.append(
            f"blocks not measured are priced by the per-kind model; on the measured ones (leave one out) "
            f"its median error is {c['median_error']:.1%}, {c['within_10pct']:.0%} within 10%"
        )
    if done.arch_latency:
        from pathlib import Path

        path = Path(args.out).with_suffix(".archs.csv")
        write_latencies(path, [a for a, _ in done.arch_latency], [m for _, m in done.arch_latency])
        lines.append(f"{len(done.arch_latency)} whole models (for nas latency fit --measurements) -> {path}")
    print("\n".join(lines))
    return 0
