"""The ``nas`` command: a thin layer that parses arguments, calls the Python API and maps known
errors to one line and exit code 2.

Each subcommand group lives in its own module with a ``register(subparsers)`` function; those
modules import nothing heavy at import time so ``nas --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from search_spaces.plugins import import_plugin

__all__ = ["main", "COMMAND_MODULES"]

# Modules that add subcommands, in help order. One that fails to import is an error (PluginError).
COMMAND_MODULES = (
    "nas.cli.run",
    "nas.cli.data",
    "nas.cli.space",
    "nas.cli.latency",
    "nas.cli.arch",
    "nas.cli.benchmark",
    "nas.cli.compress",
    "nas.cli.best",
    "nas.cli.supernet",
    "nas.cli.specialize",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas",
        description="Hardware-aware neural architecture search: the most accurate model that fits your device.",
    )
    parser.add_argument("--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        import_plugin(name, "nas.cli.COMMAND_MODULES").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from search_spaces.errors import FatalError, InputError, NasError, PluginError

    try:
        parser = build_parser()
    except PluginError as e:  # a broken installation: one line, not a traceback
        sys.stderr.write(f"nas: error: {e}\n")
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_common(args)
        return int(args.func(args) or 0)
    except InputError as e:
        if getattr(args, "verbose", False):
            raise
        sys.stderr.write(f"nas: error: {e}\n")
        return 2
    except (FatalError, NasError) as e:  # e.g. a compression stage that fails on the winner
        if getattr(args, "verbose", False):
            raise
        sys.stderr.write(f"nas: stopped: {e}\n")
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or nas.guard.Stopped for SIGINT/SIGTERM
        why = f"stopped by {e.args[0]}" if getattr(e, "exit_code", None) else "interrupted"
        sys.stderr.write(f"nas: {why}; completed trials are saved (rerun with --resume to continue).\n")
        return int(getattr(e, "exit_code", 130))
    except Exception as e:
        from nas.guard import write_failure

        message = write_failure(e, str(getattr(args, "phase", "") or ""), str(getattr(args, "out", "") or ""))
        if message is None or getattr(args, "verbose", False):
            raise
        sys.stderr.write(f"nas: stopped: {message}\n")
        return 1


# Commands whose --out is a folder (and ``nas latency kit``); every other --out (and nb201's
# --json) is a file.
_FOLDER_OUTPUTS = ("run", "compress", "supernet", "specialize")


def _check_common(args: argparse.Namespace) -> None:
    """What every command shares, checked before any work: ``--seed`` (numpy's and Optuna's
    range) and every output location (not empty, not under a system folder, writable)."""
    from nas.guard import check_out_dir
    from search_spaces import InputError

    seed = getattr(args, "seed", None)
    if isinstance(seed, int) and not 0 <= seed < 2**32:
        raise InputError(f"--seed: expected an int in [0, 2**32), got {seed}.")
    if isinstance(getattr(args, "out", None), str):
        folder = args.command in _FOLDER_OUTPUTS or getattr(args, "latency_command", None) == "kit"
        check_out_dir(args.out, "--out", folder=folder)
    if isinstance(getattr(args, "export", None), str) and args.command == "best":
        check_out_dir(args.export, "--export")
    if isinstance(getattr(args, "json_out", None), str):
        check_out_dir(args.json_out, "--json", folder=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
