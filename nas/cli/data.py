"""``nas data export TASK --split S --out F.npz``: the exact arrays a split uses."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="task data tools")
    verbs = p.add_subparsers(dest="data_command", metavar="VERB", parser_class=type(p))
    e = verbs.add_parser("export", help="write a task split as .npz (x: model input, y: labels)")
    e.add_argument("task", help="bundled task (mnist5k, digits, mnist1d) or an .npz path")
    e.add_argument("--split", required=True, choices=("train", "val", "test"))
    e.add_argument("--seed", type=int, default=0, help="split seed (task.seed in the config)")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _export(args: argparse.Namespace) -> int:
    from nas.data import TaskSpec, export_split

    path = export_split(TaskSpec(data=args.task, seed=args.seed), args.split, args.out)
    print(path)
    return 0
