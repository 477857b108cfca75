"""``nas specialize --supernet DIR [--device host | --table T | --predictor P] --max-latency-ms X
--max-size-kb Y [--config CONFIG] --out RUN``: a device's model picked from a trained supernet
(``nas.specialize``), shipped like a ``nas run`` winner."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("specialize", help="pick, export and measure a device's model from a trained supernet")
    p.add_argument("--supernet", required=True, help="a folder `nas supernet train` wrote")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--device", help="host: this machine, profiled (the default without --table or --predictor)"
    )
    where.add_argument("--table", help="a device's latency table (nas latency profile/import)")
    where.add_argument("--predictor", help="a device's latency predictor file (nas latency fit)")
    p.add_argument(
        "--config",
        help="a `nas run` config of the supernet's space and task: its device (unless one is named "
        "here), budgets (those not given here), strategy, training and export settings",
    )
    p.add_argument(
        "--max-latency-ms", type=float, metavar="MS", help="latency budget in ms (default: the config's)"
    )
    p.add_argument(
        "--max-size-kb",
        type=float,
        metavar="KB",
        help="size budget of model.tflite in KB (default: the config's)",
    )
    p.add_argument(
        "--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune the chosen subnet (default 0)"
    )
    p.add_argument(
        "--evaluations", type=int, default=60, metavar="N", help="subnets to evaluate (default 60)"
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="evaluate subnets in N local worker processes (default: in this process); "
        "with --ray-address, a cap on the cluster's slots",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="evaluate subnets on the Ray cluster whose head is at HOST:PORT (see `ray start --head`)",
    )
    p.add_argument("--out", required=True, help="run folder (report.json, model.tflite, study.db)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_specialize)


def _specialize(args: argparse.Namespace) -> int:
    from nas.guard import stop_on_signals
    from nas.specialize import specialize

    def say(message: str) -> None:
        args.phase = message  # names what was going on if a write fails
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    execution = None
    if args.workers is not None or args.ray_address:
        from nas.distributed import ExecutorChoice

        execution = ExecutorChoice(
            workers=args.workers,
            ray_address=args.ray_address,
            verbose=bool(getattr(args, "verbose", False)),
            resume_hint="nas specialize does not resume; rerun it with a new --out",
        )
        execution.connect()
    with stop_on_signals():
        report = specialize(
            args.supernet,
            args.out,
            max_latency_ms=args.max_latency_ms,
            max_size_kb=args.max_size_kb,
            device=args.device or (None if args.table or args.predictor or args.config else "host"),
            table=args.table,
            predictor=args.predictor,
            finetune_epochs=args.finetune_epochs,
            evaluations=args.evaluations,
            say=say,
            config=args.config,
            execution=execution,
        )
    best = report["best"]
    measured = best.get("measured_latency_ms")
    latency = f"{measured:.4f} ms measured" if measured is not None else "latency not measurable here"
    print(
        f"best {best['arch']}: test accuracy {best['accuracy']:.4f} ({best['file']}), {best['size_bytes']} bytes, "
        f"{latency} / {best['predicted_latency_ms']:.4f} ms predicted; report: {args.out}/report.json"
    )
    return 0
