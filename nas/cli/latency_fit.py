"""``nas latency fit|predict|evaluate``: build a latency predictor from whatever the user has (a
per-block table, K end-to-end measurements, reference devices), price archs with it, score it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .space import add_space_args, add_task_args

__all__ = ["register"]


def register(verbs: Any) -> None:
    f = verbs.add_parser(
        "fit",
        help="build a predictor from a table and/or measurements (optionally reference devices)",
        description="Table only: sum of blocks. Table + measurements: the sum corrected for whole-model "
        "overhead. Measurements only: a learned model on arch features. Measurements + --reference: "
        "few-shot transfer from the reference devices.",
    )
    add_space_args(f)
    add_task_args(f)
    f.add_argument("--table", default=None, help="per-block latency table (.json or .csv)")
    f.add_argument("--measurements", default=None, help="CSV arch,latency_ms measured on the target device")
    f.add_argument(
        "--reference", default=None, help="CSV arch,<device>,... of the same archs on other devices"
    )
    f.add_argument("--device", default=None, help="target device name stored in the predictor")
    _strict_arg(f)
    f.add_argument("--out", required=True, help="predictor file (.json)")
    f.set_defaults(func=_fit)

    p = verbs.add_parser("predict", help="price architectures with a predictor (or a table)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictor", default=None, help="predictor file from `nas latency fit`")
    src.add_argument("--table", default=None, help="per-block table (needs --space)")
    add_space_args(p, required=False)
    add_task_args(p)
    p.add_argument("--archs", required=True, help="CSV with an arch column")
    _strict_arg(p)
    p.add_argument(
        "--out",
        required=True,
        help="output CSV arch,latency_ms in the same order (table-backed: and extrapolated_blocks)",
    )
    p.set_defaults(func=_predict)

    e = verbs.add_parser("evaluate", help="score a predictor against measurements")
    e.add_argument("--predictor", required=True, help="predictor file from `nas latency fit`")
    e.add_argument("--measurements", required=True, help="CSV arch,latency_ms")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.set_defaults(func=_evaluate)


def _strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse blocks the table lacks instead of pricing them with the per-kind model fitted on it",
    )


def _table_predictor(args: argparse.Namespace, table_path: str) -> Any:
    """A TablePredictor; the table's ``meta.extra`` may carry space_options, input_shape, num_classes."""
    from latency_models.table import LatencyTable
    from search_spaces import InputError, TaskShape, get_space

    from ..latency_model import predictor_from_table
    from .space import space_options

    table = LatencyTable.load(table_path)
    extra = dict(table.meta.extra)
    if not args.space:
        args.space = extra.get("space")  # profiled and imported tables record their space
    if not args.space:
        raise InputError(
            f"--space: expected the space the table prices (e.g. mbconv); {table_path} does not record it."
        )
    options = (
        space_options(args.space_options) if args.space_options else dict(extra.get("space_options", {}))
    )
    space = get_space(args.space, options)
    if args.input_shape:
        try:
            shape = tuple(int(d) for d in args.input_shape.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputError(
                f"--input-shape: expected sizes like 28,28,1, got {args.input_shape!r}."
            ) from None
    elif "input_shape" in extra:
        shape = tuple(int(d) for d in extra["input_shape"])
    else:
        from .space import DEFAULT_TASKS

        shape = DEFAULT_TASKS.get(args.space, ((28, 28, 1), 10))[0]
    classes = args.num_classes if args.num_classes is not None else int(extra.get("num_classes", 0) or 0)
    if not classes:
        from .space import DEFAULT_TASKS

        classes = DEFAULT_TASKS.get(args.space, ((28, 28, 1), 10))[1]
    task = TaskShape(shape, classes)
    predictor = predictor_from_table(
        table,
        space.name,
        task,
        options,
        device=getattr(args, "device", None) or table.meta.device,
        strict=bool(getattr(args, "strict", False)),
        provenance={"table": {"file": str(table_path), "entries": len(table), "device": table.meta.device}},
    )
    return predictor, space


def _fit(args: argparse.Namespace) -> int:
    from latency_models.measurements import read_measurements, read_reference
    from search_spaces import InputError

    from .space import space_from_args

    if args.reference is not None and args.measurements is None:
        raise InputError("--reference: expected --measurements on the target device too, got none.")
    if args.table is None and args.measurements is None:
        raise InputError("nas latency fit: expected --table and/or --measurements, got neither.")
    if args.table is not None:
        if args.reference is not None:
            raise InputError(
                "--reference: cannot be combined with --table (fit either from a table or by transfer)."
            )
        predictor, space = _table_predictor(args, args.table)
        # A table that misses blocks of the space would fail at the first network that needs one.
        blocks = space.all_blocks(predictor.task)
        missing = predictor.table.missing(blocks) if blocks is not None else []
        if missing and not predictor.strict:
            print(
                f"{len(missing)} of {len(set(blocks or []))} blocks of the space are not in {args.table}: "
                "priced by the per-kind model fitted on its entries (--strict refuses them)"
            )
        elif missing:
            raise InputError(
                f"{args.table}: expected a row for every block of space {space.name} at input "
                f"{'x'.join(map(str, predictor.task.input_shape))}, got {len(missing)} of {len(set(blocks))} "
                f"missing (e.g. {missing[0].key}); narrow the space with --space-options."
            )
        if args.measurements is not None:
            m = read_measurements(args.measurements, space)
            predictor = predictor.with_correction(list(m.archs), m.latency_ms)
            from dataclasses import replace

            from latency_models.measurements import file_digest

            prov = dict(predictor.provenance)
            prov["measurements"] = {
                "file": args.measurements,
                "sha256": file_digest(args.measurements),
                "n_archs": len(m),
            }
            predictor = replace(predictor, provenance=prov)
        predictor.save(args.out)
        c = predictor.correction
        print(
            f"table predictor ({len(predictor.table)} blocks, scale {c.scale:.4g}, offset {c.offset_ms:.4g} ms, "
            f"{c.n_measurements} measurements) -> {args.out}"
        )
        return 0

    from latency_models.transfer import fit_learned, fit_transfer, one_blas_thread

    from .space import space_options

    options = space_options(args.space_options)
    space = space_from_args(args.space, args.space_options)
    m = read_measurements(args.measurements, space)
    device = args.device or "target"
    with one_blas_thread():
        if args.reference is not None:
            r = read_reference(args.reference, space)
            predictor = fit_transfer(space, m, r, device=device, space_options=options)
        else:
            predictor = fit_learned(space, m, device=device, space_options=options)
    predictor.save(args.out)
    fit = predictor.fit
    print(
        f"{predictor.kind} predictor ({fit.method}, {fit.target} target, {len(m)} measurements, "
        f"leave-one-out relative error {fit.loo_rel_rmse:.3g}) -> {args.out}"
    )
    return 0


def _space_of(predictor: Any) -> Any:
    from search_spaces import get_space

    return get_space(predictor.space, predictor.space_options)


def _predict(args: argparse.Namespace) -> int:
    from latency_models.measurements import read_arch_list, write_latencies

    if args.predictor is not None:
        from latency_models.predictor import load_predictor

        predictor = load_predictor(args.predictor)
        space = _space_of(predictor)
    else:
        args.device = None
        predictor, space = _table_predictor(args, args.table)
    archs = read_arch_list(args.archs, space)
    if args.strict and hasattr(predictor, "strict"):
        from dataclasses import replace

        predictor = replace(predictor, strict=True)
    if not hasattr(predictor, "extrapolated"):
        write_latencies(args.out, archs.texts, predictor.predict(list(archs.archs)))
        return 0
    counts = predictor.extrapolated(list(archs.archs))
    guessed = (
        args.table is not None and not args.input_shape and "input_shape" not in predictor.table.meta.extra
    )
    if guessed and all(
        c == len(space.blocks(a, predictor.task)) for a, c in zip(archs.archs, counts, strict=True)
    ):
        # The input was the space's usual one, not the table's, and not one block of any network
        # is in the table: every price would be the cost model's guess for an input nobody chose.
        from search_spaces import InputError

        task = predictor.task
        raise InputError(
            f"{args.table}: holds none of the blocks of these architectures for the space's usual input "
            f"{','.join(map(str, task.input_shape))} ({task.num_classes} classes) and does not record its own; "
            "pass the --input-shape and --num-classes it was measured for."
        )
    pred = predictor.predict(list(archs.archs))
    write_latencies(args.out, archs.texts, pred, {"extrapolated_blocks": counts})
    n = sum(1 for c in counts if c)
    print(
        f"{len(counts)} architectures priced; {n} with blocks the table lacks "
        f"({sum(counts)} blocks in all, priced by the per-kind model) -> {args.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from latency_models.measurements import read_measurements
    from latency_models.metrics import latency_metrics
    from latency_models.predictor import load_predictor

    predictor = load_predictor(args.predictor)
    m = read_measurements(args.measurements, _space_of(predictor))
    if len(m) < 2:  # a rank correlation of one point is no measure at all (it printed 0)
        from search_spaces import InputError

        raise InputError(
            f"{args.measurements}: expected at least 2 measured archs to evaluate, got {len(m)}."
        )
    metrics = latency_metrics(predictor.predict(list(m.archs)), m.latency_ms)
    if args.json:
        print(json.dumps(metrics.to_dict()))
    else:
        sys.stdout.write("\n".join(metrics.lines()) + "\n")
    return 0
