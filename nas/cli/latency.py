"""``nas latency ...``: import, profile, measure, fit, predict and evaluate latency models.

The verbs live in their own modules (``latency_profile``: import/profile/measure;
``latency_fit``: fit/predict/evaluate), each with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
from typing import Any

from search_spaces.plugins import import_plugin

VERB_MODULES = ("nas.cli.latency_profile", "nas.cli.latency_fit", "nas.cli.latency_kit")


def register(sub: Any) -> None:
    parser = sub.add_parser("latency", help="device latency tables and predictors")
    verbs = parser.add_subparsers(dest="latency_command", metavar="VERB", parser_class=type(parser))
    for name in VERB_MODULES:
        import_plugin(name, "nas.cli.latency.VERB_MODULES").register(verbs)
    parser.set_defaults(func=lambda args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
