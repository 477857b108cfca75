"""``nas arch from-ofa NET.config [--table TABLE]``: an OFA subnet as an ``ofa-mbv3`` arch string,
optionally priced with a latency table."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("arch", help="architecture tools (convert published subnets to arch strings)")
    verbs = p.add_subparsers(dest="arch_command", metavar="VERB", parser_class=type(p))
    f = verbs.add_parser("from-ofa", help="print the ofa-mbv3 arch string of an OFA net.config")
    f.add_argument("config", help="OFA net.config (JSON)")
    f.add_argument("--table", default=None, help="also print its latency priced with this table")
    f.add_argument(
        "--resolution", type=int, default=None, help="input resolution (default: the table's, else 224)"
    )
    f.set_defaults(func=_from_ofa)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _from_ofa(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latency_models.table import LatencyTable
    from search_spaces import InputError, TaskShape, get_space
    from search_spaces.safeio import load_json

    path = Path(args.config)
    if not path.is_file():
        raise InputError(f"{path}: net.config file not found.")
    doc = load_json(path, "net.config", max_bytes=16 * 1024 * 1024)
    first = doc.get("first_conv") if isinstance(doc, dict) else None
    stem = first.get("out_channels") if isinstance(first, dict) else None
    # The config says which supernet it came from: width 1.0 nets start with 16 channels.
    options = {"width_mult": 1.0} if stem == 16 else {}
    space = get_space("ofa-mbv3", options)
    arch = space.from_net_config(doc, str(path))
    if args.table is None:
        print(arch)
        return 0
    table = LatencyTable.load(args.table)
    shape = table.meta.extra.get("input_shape")
    resolution = args.resolution or (int(shape[0]) if shape else 224)
    classes = int(table.meta.extra.get("num_classes", 1000))
    latency = table.price(space.blocks(arch, TaskShape((resolution, resolution, 3), classes)))
    note = "" if not options else "  (width_mult 1.0)"
    print(arch)
    print(f"{latency:.3f} ms ({table.meta.device}, {resolution}x{resolution}){note}")
    return 0
