"""``nas supernet train CONFIG --out DIR``: train one weight-sharing supernet for the config's
space and task (``nas.supernet``); ``nas specialize`` then picks subnets from it per device."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("supernet", help="train a weight-sharing supernet (every subnet of the space)")
    group = p.add_subparsers(dest="supernet_command", metavar="COMMAND")
    t = group.add_parser("train", help="train (or --resume) the supernet of a run config's space and task")
    t.add_argument("config", help="run configuration (YAML); its supernet section sets epochs and batch")
    t.add_argument("--out", required=True, help="checkpoint folder (supernet.json and a weight file)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint already in --out")
    t.add_argument("--epochs", type=int, help="override supernet.epochs (the total, resumed epochs included)")
    t.add_argument("--quiet", action="store_true", help="no progress lines")
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from nas.config import load_config
    from nas.guard import stop_on_signals
    from nas.supernet import train_supernet

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    config = load_config(args.config)
    with stop_on_signals():
        manifest = train_supernet(config, args.out, resume=args.resume, epochs=args.epochs, say=say)
    last = (manifest.get("history") or [{}])[-1]
    print(
        f"supernet {args.out}: epoch {manifest.get('epoch')}, validation accuracy largest "
        f"{last.get('largest_accuracy', float('nan')):.4f} smallest {last.get('smallest_accuracy', float('nan')):.4f}"
    )
    return 0
