"""``nas run CONFIG --out DIR``: search, retrain, compress, export, re-measure, report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="search, compress and export the best model under the budgets")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("--out", required=True, help="output folder (report.json, model.tflite, study.db, ...)")
    p.add_argument("--resume", action="store_true", help="continue the study already in --out (or --storage)")
    p.add_argument("--strategy", help="override search.strategy (e.g. default, tpe, nsga2, random)")
    p.add_argument("--trainings", type=int, help="override search.trainings")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    p.set_defaults(func=_run)


def _status_printer(quiet: bool, trainings: int = 0, stages: Any = ()) -> Any:
    """The run's progress display: a live bar on a terminal, plain lines otherwise, none with --quiet."""
    from nas.progress import RunProgress

    return RunProgress(trainings, quiet=quiet, stages=stages, stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from nas.config import load_config
    from nas.run import run
    from search_spaces import InputError

    config = load_config(args.config)
    search = config.search
    if args.strategy:
        search = dataclasses.replace(search, strategy=args.strategy)
    if args.trainings is not None:
        if args.trainings < 1:
            raise InputError(f"--trainings: expected an int >= 1, got {args.trainings}.")
        search = dataclasses.replace(search, trainings=args.trainings)
    config = dataclasses.replace(config, search=search)
    progress = _status_printer(args.quiet, config.search.trainings, config.export.pipeline)
    say, on_event = progress.status, progress.on_event
    run = progress.closing_after(run)  # the bar is put away before the summary or an error line

    report = run(config, args.out, resume=args.resume, storage=args.storage, status=say, on_event=on_event)
    best = report["best"]
    print(
        f"best {best['arch']}: test accuracy {best['accuracy']:.4f} ({best['file']}), {best['size_bytes']} bytes, "
        f"latency {best['measured_latency_ms']:.4f} ms measured / {best['predicted_latency_ms']:.4f} ms predicted; "
        f"report: {args.out}/report.json"
    )
    return 0
