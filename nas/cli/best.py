"""``nas best --runs DIR``: the most accurate trained model of past studies, or subnet of a trained
supernet, that meets the budgets on a device; ``--export OUT`` retrains, compresses and exports
a trained winner like ``nas run``, or specializes a subnet winner like ``nas specialize``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "best",
        help="the best model of past studies or trained supernets for a task, device and budgets",
        description="The most accurate candidates under --runs that meet the budgets on --device: the "
        "trained trials of run folders (study.db), re-priced for the device, and the subnets of "
        "supernet folders (supernet.json, from nas supernet train), searched for the device as nas "
        "specialize does (--evaluations per supernet, inherited weights; no training). --export "
        "retrains a trained winner, or specializes a subnet winner, into OUT.",
    )
    p.add_argument(
        "--runs",
        required=True,
        help="folder holding run folders (each with study.db) and/or supernet folders (supernet.json)",
    )
    p.add_argument(
        "--task", help="only studies and supernets of this task (e.g. mnist5k, digits, or an .npz's stem)"
    )
    p.add_argument(
        "--device",
        default="host",
        help="host (this machine's cached profile), a latency table/predictor file, or a device name "
        "a study under --runs was searched for (default: host)",
    )
    p.add_argument("--max-latency-ms", type=str, metavar="MS", help="latency budget in ms")
    p.add_argument("--max-size-kb", type=str, metavar="KB", help="size budget of the exported file in KB")
    p.add_argument("--max-memory-kb", type=str, metavar="KB", help="peak memory (arena) budget in KB")
    p.add_argument("--max-latency", metavar="TIME", help="latency budget with a unit (e.g. 0.5ms, 2s)")
    p.add_argument("--max-size", metavar="SIZE", help="size budget with a unit (e.g. 40kb, 1.5mb)")
    p.add_argument("--max-memory", metavar="SIZE", help="memory budget with a unit (e.g. 256kb)")
    p.add_argument("--top", type=str, default="5", help="how many candidates to list (default 5)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument(
        "--evaluations",
        type=str,
        metavar="N",
        help="subnets to evaluate per supernet under --runs (default 60, as nas specialize)",
    )
    p.add_argument(
        "--export",
        metavar="OUT",
        help="retrain, compress and export the winner into OUT (a supernet's subnet: nas specialize into OUT, "
        "which needs both a latency and a size budget)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines while exporting")
    p.set_defaults(func=_best)


def _number(text: str | None, flag: str, unit: str, kind: str) -> float | None:
    """A plain number in the flag's unit; a value with a unit is accepted when it converts."""
    from nas.retrieve import parse_quantity
    from search_spaces import InputError

    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_quantity(text, kind, flag)
    except InputError:
        raise InputError(f"{flag}: expected a number of {unit} (e.g. 0.5), got {text!r}.") from None


def _budget(args: argparse.Namespace, name: str, unit: str, kind: str) -> float | None:
    from nas.retrieve import parse_quantity
    from search_spaces import InputError

    plain_flag, unit_flag = f"--max-{name}-{unit.lower()}", f"--max-{name}"
    plain = _number(getattr(args, f"max_{name}_{unit.lower()}"), plain_flag, unit, kind)
    text = getattr(args, f"max_{name}")
    if text is not None and plain is not None:
        raise InputError(f"{unit_flag}: expected either {unit_flag} or {plain_flag}, got both.")
    return parse_quantity(text, kind, unit_flag) if text is not None else plain


def _best(args: argparse.Namespace) -> int:
    from nas.retrieve import best
    from search_spaces import InputError

    try:
        top = int(args.top)
    except ValueError:
        raise InputError(f"--top: expected an int >= 1, got {args.top!r}.") from None
    try:
        evaluations = None if args.evaluations is None else int(args.evaluations)
    except ValueError:
        raise InputError(f"--evaluations: expected an int >= 1, got {args.evaluations!r}.") from None
    status = None
    if args.export and not args.quiet:
        status = lambda s: print(f"[nas] {s}", file=sys.stderr, flush=True)  # noqa: E731
    answer = best(
        args.runs,
        device=args.device,
        task=args.task,
        max_latency_ms=_budget(args, "latency", "ms", "time"),
        max_size_kb=_budget(args, "size", "KB", "bytes"),
        max_memory_kb=_budget(args, "memory", "KB", "bytes"),
        top=top,
        export=args.export,
        status=status,
        evaluations=evaluations,
    )
    if args.json:
        print(json.dumps(answer.as_dict(), indent=1, default=str))
        return 0 if answer.found else 1
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    if not answer.found:
        print(answer.summary())
        return 1
    print(_table(answer))
    if answer.exported:
        b = answer.exported["best"]
        if b.get("measured_latency_ms") is not None:
            latency = f"latency {b['measured_latency_ms']:.4f} ms measured"
        else:  # a file for another device is not timed here; its latency is the device model's
            latency = f"latency {b['predicted_latency_ms']:.4f} ms predicted for {answer.device}"
        print(
            f"exported {b['arch']} to {answer.exported['out']}: test accuracy {b['accuracy']:.4f} ({b['file']}), "
            f"{b['size_bytes']} bytes, {latency}"
        )
    return 0


def _table(answer: Any) -> str:
    budgets = ", ".join(f"{k} {v:g}" for k, v in answer.budgets.as_dict().items()) or "no budgets"
    head = (
        f"best on {answer.device} ({answer.device_model}); {budgets}; "
        f"{answer.considered} candidates in {answer.studies} studies and {answer.supernets} supernets"
    )
    rows = [("#", "accuracy", "latency ms", "size KB", "memory KB", "source", "arch", "study (trial)")]
    for i, c in enumerate(answer.candidates, 1):
        rows.append(
            (
                str(i),
                f"{c.accuracy:.4f}",
                f"{c.latency_ms:.4f}" + ("*" if c.repriced else ""),
                f"{c.size_bytes / 1024:.1f}",
                "-" if c.memory_bytes is None else f"{c.memory_bytes / 1024:.1f}",
                "supernet subnet" if c.source == "supernet" else "trained trial",
                c.arch,
                f"{c.study} ({c.trial})",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for r in rows:
        lines.append(
            "  ".join(
                v.rjust(w) if i < 5 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    if any(c.repriced for c in answer.candidates):
        lines.append(
            "* re-priced with this device's latency model (the study was searched for another device)"
        )
    if any(c.source == "supernet" for c in answer.candidates):
        lines.append(
            "a supernet subnet's accuracy is its inherited validation accuracy (BN-recalibrated, not trained); "
            "--export specializes it"
        )
    return "\n".join(lines)
