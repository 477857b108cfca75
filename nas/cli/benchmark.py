"""``nas benchmark nb201``: run strategies on NAS-Bench-201 with real device latencies."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    parser = sub.add_parser("benchmark", help="search benchmarks with known answers (NAS-Bench-201)")
    kinds = parser.add_subparsers(dest="benchmark_command", metavar="BENCHMARK", parser_class=type(parser))
    nb = kinds.add_parser(
        "nb201",
        help="search NAS-Bench-201 under a device latency budget; accuracy look-ups stand for trainings",
    )
    nb.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or imagenet16")
    nb.add_argument("--device", required=True, help="a device column of the latency table, e.g. pixel3")
    nb.add_argument("--max-latency-ms", type=float, help="latency budget (required unless --pareto)")
    nb.add_argument("--budget", type=int, default=100, help="accuracy look-ups (trainings) per search")
    nb.add_argument("--seeds", type=int, default=20, help="searches per strategy (seeds 0..N-1)")
    nb.add_argument("--first-seed", type=int, default=0, help="first seed")
    nb.add_argument("--strategy", default="default,random", help="comma-separated strategy names")
    nb.add_argument(
        "--latency-samples",
        type=int,
        help="measure at most K true latencies: a few-shot transfer model (the other hardware's"
        " tables as reference) prices the rest, and the network shipped is measured first",
    )
    nb.add_argument(
        "--pareto", action="store_true", help="search the accuracy/latency front; records carry `front`"
    )
    nb.add_argument("--json", required=True, dest="json_out", help="where to write the records")
    nb.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    nb.set_defaults(func=_nb201)
    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _nb201(args: argparse.Namespace) -> int:
    from latency_models.table import write_atomic
    from nas.benchmark.nb201 import BenchmarkConfig, run_benchmark, to_json

    config = BenchmarkConfig(
        dataset=args.dataset,
        device=args.device,
        max_latency_ms=args.max_latency_ms,
        budget=args.budget,
        seeds=args.seeds,
        strategies=tuple(s.strip() for s in args.strategy.split(",") if s.strip()),
        latency_samples=args.latency_samples,
        pareto=args.pareto,
        first_seed=args.first_seed,
    )
    from nas.benchmark.nb201 import load_data

    load_data().device_latency(config.device)  # unknown devices fail before any search

    def progress(r: dict[str, Any]) -> None:
        if not args.quiet:
            sys.stderr.write(
                f"{r['strategy']:>12} seed {r['seed']:3}: {len(r['queried'])} queried, "
                f"best {r['best_accuracy']}, {r['seconds']:.1f}s\n"
            )

    records = run_benchmark(config, progress)
    write_atomic(args.json_out, to_json(config, records))
    return 0
