"""``nas data export TASK|CONFIG --split S --out F.npz``: the exact arrays a split uses (for a
run config: the arrays that run's model is evaluated on, after resizing and conversion)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="task data tools")
    verbs = p.add_subparsers(dest="data_command", metavar="VERB", parser_class=type(p))
    e = verbs.add_parser("export", help="write a task split as .npz (x: model input, y: labels)")
    e.add_argument(
        "task",
        help="bundled task (mnist5k, digits, mnist1d), an .npz path, an image folder, or a run config (.yaml)",
    )
    e.add_argument("--split", required=True, choices=("train", "val", "test"))
    e.add_argument(
        "--seed",
        type=int,
        default=None,
        help="split seed (default 0; a run config's task.seed is used as is)",
    )
    e.add_argument("--out", required=True)
    e.set_defaults(func=_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _export(args: argparse.Namespace) -> int:
    from nas.data import TaskSpec, export_split
    from search_spaces import InputError

    if args.task.endswith((".yaml", ".yml")):
        from nas.config import load_config

        spec = load_config(args.task).task
        if args.seed is not None and args.seed != spec.seed:
            raise InputError(
                f"--seed: expected none or the config's task.seed ({spec.seed}) with a run config, got {args.seed}."
            )
    else:
        spec = TaskSpec(data=args.task, seed=0 if args.seed is None else args.seed)
    path = export_split(spec, args.split, args.out)
    print(path)
    return 0
