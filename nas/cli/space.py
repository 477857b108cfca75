"""``nas space sample|build``: random valid arch strings, and one model file to time anywhere.

Also the small readers the latency verbs share: arch CSV files, ``--input-shape`` and
``--space-options``.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from collections.abc import Hashable
from pathlib import Path
from typing import Any

__all__ = ["add_space_args", "read_archs", "register", "space_from_args", "task_from_args", "write_csv"]

BUILD_FORMATS = ("tflite-int8", "tflite-fp32")


def register(sub: Any) -> None:
    p = sub.add_parser("space", help="search-space tools: sample arch strings, build one model file")
    verbs = p.add_subparsers(dest="space_command", metavar="VERB", parser_class=type(p))

    s = verbs.add_parser("sample", help="write N distinct random valid architectures (CSV column 'arch')")
    s.add_argument("space", help="space name (mbconv, ofa-mbv3, nb201, fbnet, ...)")
    s.add_argument("--space-options", default=None, metavar="JSON", help="space options as a JSON object")
    s.add_argument("--n", type=int, required=True, help="number of architectures")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output CSV (header: arch)")
    s.set_defaults(func=_sample)

    b = verbs.add_parser("build", help="write one model (random weights) as .tflite to time independently")
    b.add_argument("space")
    b.add_argument("--space-options", default=None, metavar="JSON")
    b.add_argument("--arch", required=True, help="canonical arch string")
    b.add_argument("--format", required=True, choices=BUILD_FORMATS)
    add_task_args(b)
    b.add_argument("--seed", type=int, default=0, help="weights and representative-data seed")
    b.add_argument("--out", required=True)
    b.set_defaults(func=_build)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# -- shared argument helpers ----------------------------------------------------------------------
def add_space_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--space", required=required, help="space name (mbconv, ofa-mbv3, ...)")
    p.add_argument("--space-options", default=None, metavar="JSON", help="space options as a JSON object")


def add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape", default=None, help="model input, e.g. 28,28,1 (default: the space's usual task)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes (default: the space's usual task)")


# A space's usual task when none is given: what its tables and papers assume.
DEFAULT_TASKS: dict[str, tuple[tuple[int, ...], int]] = {
    "mbconv": ((28, 28, 1), 10),
    "ofa-mbv3": ((224, 224, 3), 1000),
    "nb201": ((32, 32, 3), 10),
    "fbnet": ((224, 224, 3), 1000),
}


def space_options(text: str | None) -> dict[str, Any]:
    from search_spaces import InputError

    if not text:
        return {}
    from search_spaces.safeio import brief, loads_json

    options = loads_json(text, "--space-options", "a JSON object")
    if not isinstance(options, dict):
        raise InputError(f"--space-options: expected a JSON object, got {brief(text)}.")
    return options


def space_from_args(name: str, options_text: str | None) -> Any:
    from search_spaces import get_space

    return get_space(name, space_options(options_text))


def task_from_args(space_name: str, input_shape: str | None, num_classes: int | None) -> Any:
    from search_spaces import InputError, TaskShape

    default_shape, default_classes = DEFAULT_TASKS.get(space_name, ((28, 28, 1), 10))
    shape = default_shape
    if input_shape:
        try:
            shape = tuple(int(d) for d in input_shape.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputError(f"--input-shape: expected sizes like 28,28,1, got {input_shape!r}.") from None
    return TaskShape(shape, default_classes if num_classes is None else num_classes)


def space_and_task(args: argparse.Namespace) -> tuple[Any, Any]:
    """The space and the task that ``add_space_args`` and ``add_task_args`` options name."""
    return space_from_args(args.space, args.space_options), task_from_args(
        args.space, args.input_shape, args.num_classes
    )


def read_archs(path: str | Path, space: Any) -> list[Hashable]:
    """Architectures from a CSV with an ``arch`` column; a bad row names the file and line."""
    from search_spaces import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: arch file not found.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}).") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "arch" not in reader.fieldnames:
        raise InputError(f"{path}: missing column 'arch'; the header must have it, got {reader.fieldnames}.")
    archs = []
    for row in reader:
        line = reader.line_num
        value = (row.get("arch") or "").strip()
        if not value:
            raise InputError(f"{path}: line {line}: empty arch.")
        try:
            archs.append(space.parse(value))
        except InputError as e:
            raise InputError(f"{path}: line {line}: {e}") from None
    if not archs:
        raise InputError(f"{path}: no architectures (only a header).")
    return archs


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    from latency_models.table import write_atomic

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


# -- verbs ----------------------------------------------------------------------------------------
def _sample(args: argparse.Namespace) -> int:
    from search_spaces import InputError

    if args.n < 1:
        raise InputError(f"--n: expected an int >= 1, got {args.n}.")
    space = space_from_args(args.space, args.space_options)
    rng = random.Random(args.seed)
    seen: dict[str, None] = {}
    # Distinct canonical strings; a small space may hold fewer than n, so give up after many misses.
    misses = 0
    while len(seen) < args.n and misses < 1000 + 10 * args.n:
        text = str(space.canonical(space.random(rng)))
        if text in seen:
            misses += 1
        seen[text] = None
    if len(seen) < args.n:
        raise InputError(
            f"--n: the space {args.space} yielded only {len(seen)} distinct architectures, got --n {args.n}."
        )
    write_csv(args.out, ["arch"], [[a] for a in seen])
    print(f"{len(seen)} architectures -> {args.out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from latency_models.profile import random_representative
    from latency_models.runtimes import get_runtime
    from latency_models.table import write_atomic
    from search_spaces.backend import set_seed

    space = space_from_args(args.space, args.space_options)
    arch = space.parse(args.arch)
    task = task_from_args(args.space, args.input_shape, args.num_classes)
    set_seed(args.seed)
    model = space.build(arch, task)
    dtype = args.format.split("-", 1)[1]
    samples = random_representative(task.input_shape, seed=args.seed) if dtype == "int8" else None
    artifact = get_runtime("litert").convert(model, dtype, samples)
    write_atomic(args.out, artifact.data)
    print(f"{args.out}: {artifact.size_bytes} bytes ({args.format}, input {list(task.input_shape)})")
    return 0
