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
    p.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql://user@host/db (default: sqlite:///OUT/study.db)",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="trainings at once: local worker processes (default: search.workers, else one per core); "
        "with --ray-address, a cap on the cluster's slots",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run trainings on the Ray cluster whose head is at HOST:PORT (see `ray start --head`)",
    )
    p.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    p.set_defaults(func=_run)


def _status_printer(quiet: bool, trainings: int = 0, stages: Any = ()) -> Any:
    """The run's progress display: a live bar on a terminal, plain lines otherwise, none with --quiet."""
    from nas.progress import RunProgress

    return RunProgress(trainings, quiet=quiet, stages=stages, stream=sys.stderr)


def _executor_choice(args: argparse.Namespace, config: Any) -> Any:
    """Local worker processes or the Ray cluster, and the exact command that resumes this run."""
    from nas.distributed import ExecutorChoice

    resume = f"nas run {args.config} --out {args.out} --resume"
    if args.ray_address:
        resume += f" --ray-address {args.ray_address}"
    if args.storage:
        resume += f" --storage {args.storage}"
    return ExecutorChoice(
        workers=config.search.workers,
        ray_address=args.ray_address,
        cpus_per_trial=config.search.cpus_per_trial,
        gpus_per_trial=config.search.gpus_per_trial,
        verbose=bool(getattr(args, "verbose", False)),
        resume_hint=resume,
    )


def _check_storage(url: str) -> None:
    """Open the study storage now, not after the latency model is built."""
    import optuna

    from search_spaces import InputError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        optuna.study.get_all_study_names(url)
    except Exception as e:  # noqa: BLE001 - any failure to open it is the user's URL
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        hint = (
            "; install the database's driver, e.g. pip install psycopg2-binary"
            if isinstance(e, ImportError)
            else ""
        )
        raise InputError(f"--storage: cannot open {url!r} ({e.__class__.__name__}: {first}){hint}.") from None


def _run(args: argparse.Namespace) -> int:
    from nas.guard import RunFinished, stop_on_signals

    with stop_on_signals():
        try:
            return _run_job(args)
        except RunFinished as e:
            print(f"nas: {e}", file=sys.stderr)
            return 0


def _run_job(args: argparse.Namespace) -> int:
    import dataclasses

    from nas.config import load_config
    from nas.guard import check_out_dir, raise_if_stopped
    from nas.runner import run
    from search_spaces import InputError

    config = load_config(args.config)
    check_out_dir(args.out)  # before the storage or a cluster is touched
    search = config.search
    if args.strategy:
        search = dataclasses.replace(search, strategy=args.strategy)
    if args.trainings is not None:
        if args.trainings < 1:
            raise InputError(f"--trainings: expected an int >= 1, got {args.trainings}.")
        search = dataclasses.replace(search, trainings=args.trainings)
    if args.workers is not None:
        if args.workers < 1:
            raise InputError(f"--workers: expected an int >= 1, got {args.workers}.")
        search = dataclasses.replace(search, workers=args.workers)
    config = dataclasses.replace(config, search=search)
    choice = _executor_choice(args, config)
    if args.storage:
        _check_storage(args.storage)
    choice.connect()
    progress = _status_printer(args.quiet, config.search.trainings, config.export.pipeline)
    on_event = progress.on_event

    def say(message: str) -> None:
        raise_if_stopped()
        args.phase = message  # names what was going on if a write fails
        progress.status(message)

    run = progress.closing_after(run)  # the bar is put away before the summary or an error line

    report = run(
        config,
        args.out,
        resume=args.resume,
        storage=args.storage,
        executor_factory=choice.factory(say),
        status=say,
        on_event=on_event,
    )
    best = report["best"]
    measured = best["measured_latency_ms"]
    latency = (
        f"latency {measured:.4f} ms measured / {best['predicted_latency_ms']:.4f} ms predicted"
        if measured is not None
        else f"latency {best['predicted_latency_ms']:.4f} ms predicted (time it on the device: the kit's "
        f"measure.py --model {args.out}/{best['file']})"
    )
    budget = report["constraints"].get("max_latency_ms")
    print(
        f"best {best['arch']}: test accuracy {best['accuracy']:.4f} ({best['file']}), {best['size_bytes']} bytes, "
        f"{latency}{f' (budget {budget:.4f} ms)' if budget is not None else ''}; report: {args.out}/report.json"
    )
    return 0
