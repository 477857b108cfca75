"""README.md is for users: at most 300 lines, and every command in it runs as written.

From README.md's fenced code blocks, links and `code` spans:

* every CLI subcommand has an example; every ``nas ...`` line parses with the real CLI parser
  (the subcommand exists, every flag exists, required arguments are given), and its subcommand
  answers ``--help`` in a fresh process; the ``--arch`` of ``nas space build`` parses in its space;
* the cheap commands (``CHEAP``: well under 5 s each here) are run as written, in README order,
  in a scratch folder that sees the repository's files, and must exit 0;
* every repository path mentioned exists, and every relative link (and #anchor) in README.md,
  docs/*.md and benchmarks/README.md resolves;
* the Quickstart is exactly ``make run`` and ``make test``, and both are Makefile targets.

The checks are plain functions that return problems; ``test_the_checks_can_fail`` runs them on a
broken README so this file cannot pass by checking nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 300

# Top-level names of the repository: a `code` token starting with one of these is a path that
# must exist. Outputs a command writes (runs/..., archs.csv) start with none of them.
REPO_DIRS = ("nas", "latency_models", "search_spaces", "compress", "examples", "benchmarks", "docs", "tests")
REPO_FILES = ("Makefile", "pyproject.toml", "README.md")

# Pages that may be linked before they exist (none now: every linked page is in the tree).
PENDING_PAGES: set[str] = set()

# Subcommands whose README examples are cheap enough to run here (each well under 5 s on the
# 2-core test machine: no TensorFlow model built, no profiling, no training). `nas --help` too.
# Everything else (run, best, compress, latency profile/measure, space build, benchmark) is
# only parsed and its --help run.
CHEAP = {
    (),  # nas --help
    ("space", "sample"),
    ("latency", "import"),
    ("arch", "from-ofa"),
    ("latency", "fit"),
    ("latency", "predict"),
    ("latency", "evaluate"),
    ("data", "export"),
}
CHEAP_SECONDS = 10.0  # generous for a loaded shared machine; they take 0.2-2.5 s when quiet


# -- extraction ------------------------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def nas_commands(text: str) -> list[list[str]]:
    """Every ``nas ...`` command line of the shell code blocks, as argv (without ``nas``)."""
    out = []
    for lang, body in code_blocks(text):
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line.startswith("nas ") and line != "nas":
                continue
            out.append(shlex.split(line, comments=True)[1:])
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands here; there is no public API
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, ...]:
    """The leading words of ``argv`` that name (nested) subcommands: ("latency", "fit")."""
    path: list[str] = []
    for word in argv:
        choices = _subparsers(parser)
        if word not in choices:
            break
        path.append(word)
        parser = choices[word]
    return tuple(path)


def path_tokens(text: str) -> list[str]:
    """Repository paths mentioned in `code` spans and code blocks (outputs are not: they start
    with no repository name)."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    spans += [body for lang, body in code_blocks(text) if lang not in ("python", "json", "yaml")]
    out = []
    for span in spans:
        for token in re.split(r"[\s\"'=,()]+", span):
            token = token.rstrip(".:;")
            if not token or any(ch in token for ch in "*{}<>[]|$"):
                continue
            head = token.split("/")[0]
            if (head in REPO_DIRS and "/" in token) or token in REPO_FILES:
                out.append(token)
    return out


def links(text: str) -> list[str]:
    """Relative link targets of a markdown page (no URLs)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page: one per heading (slugged), plus explicit ``<a id>``s."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    out = set(re.findall(r'<a id="([^"]+)"', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


# -- checks (each returns a list of problems) ------------------------------------------------


def check_length(text: str) -> list[str]:
    n = len(text.splitlines())
    return [] if n <= MAX_LINES else [f"README.md has {n} lines; the limit is {MAX_LINES}"]


def check_quickstart(text: str) -> list[str]:
    section = text.split("## Quickstart", 1)[-1].split("\n## ", 1)[0]
    blocks = code_blocks(section)
    if not blocks or blocks[0][1].split() != ["make", "run", "make", "test"]:
        return ["the Quickstart's first code block must be exactly `make run` and `make test`"]
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    return [f"Makefile has no target {t!r}" for t in ("run", "test") if t not in targets]


def check_commands_parse(text: str) -> list[str]:
    from nas.cli import build_parser

    problems = []
    parser = build_parser()
    commands = nas_commands(text)
    if not commands:
        problems.append("no `nas ...` command found in the README's code blocks")
    for argv in commands:
        shown = "nas " + " ".join(argv)
        if "--help" in argv or "-h" in argv:
            continue  # parsing would print help and exit; the subprocess check runs it
        sub = subcommand(parser, argv)
        if not sub or _subparsers(_parser_at(parser, sub)):
            problems.append(f"{shown}: no such subcommand")
            continue
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            problems.append(f"{shown}: does not parse (see the error line above)")
            continue
        if sub == ("space", "build"):
            from search_spaces import InputError, get_space

            try:
                get_space(args.space).parse(args.arch)
            except InputError as e:
                problems.append(f"{shown}: --arch does not parse: {e}")
    return problems


def _parser_at(parser: argparse.ArgumentParser, sub: tuple[str, ...]) -> argparse.ArgumentParser:
    for word in sub:
        parser = _subparsers(parser)[word]
    return parser


def check_paths(text: str, base: Path = ROOT) -> list[str]:
    return [f"{p}: mentioned but not in the repository" for p in path_tokens(text) if not (base / p).exists()]


def check_links(page: Path, text: str | None = None) -> list[str]:
    text = page.read_text() if text is None else text
    problems = []
    for target in links(text):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page.resolve()
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in PENDING_PAGES:
                problems.append(f"{page.name}: link {target} does not resolve")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{page.name}: link {target}: no heading #{anchor} in {rel}")
    return problems


# -- tests -----------------------------------------------------------------------------------


def test_readme_is_at_most_300_lines() -> None:
    assert check_length(README.read_text()) == []


def test_quickstart_is_make_run_and_make_test() -> None:
    assert check_quickstart(README.read_text()) == []


def test_every_nas_command_parses() -> None:
    assert check_commands_parse(README.read_text()) == []


def leaf_subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every runnable subcommand of the CLI: ("run",), ("latency", "fit"), ..."""
    subs = _subparsers(parser)
    if not subs:
        return {prefix}
    return {leaf for name, sub in subs.items() for leaf in leaf_subcommands(sub, (*prefix, name))}


def test_every_subcommand_has_an_example() -> None:
    """The README's tour shows every command the CLI has, one example at least."""
    from nas.cli import build_parser

    parser = build_parser()
    shown = {subcommand(parser, argv) for argv in nas_commands(README.read_text())}
    missing = sorted(" ".join(s) for s in leaf_subcommands(parser) - shown)
    assert missing == [], f"README.md has no example of: nas {', nas '.join(missing)}"


def test_every_subcommand_answers_help() -> None:
    from nas.cli import build_parser

    parser = build_parser()
    subs = sorted({subcommand(parser, argv) for argv in nas_commands(README.read_text())})
    assert subs, "no nas commands found"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for sub in subs:
        done = subprocess.run(
            [sys.executable, "-m", "nas", *sub, "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0 and "usage: nas" in done.stdout, (
            f"nas {' '.join(sub)} --help: {done.stderr}"
        )


def test_every_repository_path_exists() -> None:
    text = README.read_text()
    assert path_tokens(text), "no repository path found: the extraction is broken"
    assert check_paths(text) == []


def test_every_link_resolves() -> None:
    pages = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = [p for page in pages for p in check_links(page)]
    assert problems == []


def test_cheap_commands_run_as_written(tmp_path: Path) -> None:
    """In README order, in a scratch folder where the repository's files are visible (symlinks)
    and outputs land in the scratch folder, never in the repository."""
    from nas.cli import build_parser

    for entry in (*REPO_DIRS, *REPO_FILES):
        if (ROOT / entry).exists():
            (tmp_path / entry).symlink_to(ROOT / entry)
    parser = build_parser()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGE_NAS_CACHE": str(tmp_path / "cache")}
    ran = []
    for argv in nas_commands(README.read_text()):
        if subcommand(parser, argv) not in CHEAP:
            continue
        out = getattr(build_parser().parse_args(argv), "out", None) if "--help" not in argv else None
        assert out is None or Path(out).parts[0] not in (*REPO_DIRS, *REPO_FILES), (
            f"nas {' '.join(argv)}: writes into the repository"
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "nas", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        seconds = time.monotonic() - started
        assert done.returncode == 0, f"nas {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}"
        assert seconds < CHEAP_SECONDS, (
            f"nas {' '.join(argv)} took {seconds:.1f} s: not cheap, remove it from CHEAP"
        )
        ran.append(argv)
    assert len(ran) >= 5, f"only {len(ran)} cheap commands ran: {ran}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    broken = "\n".join(
        [
            "# broken",
            "## Quickstart",
            "```",
            "make run",
            "```",
            "```sh",
            "nas spaces sample mbconv --n 3 --out a.csv",
            "nas latency fit --space nb201 --no-such-flag --out p.json",
            'nas space build mbconv --arch "d9-nonsense" --format tflite-int8 --out m.tflite',
            "nas run examples/no-such-config.yaml --out runs/x",
            "```",
            "See [the guide](docs/no-such-page.md), [a heading](docs/configuration.md#no-such-heading)",
            "and [a page that exists](docs/runtimes.md).",
            *["filler"] * MAX_LINES,
        ]
    )
    page = tmp_path / "README.md"
    page.write_text(broken)
    assert check_length(broken)
    assert check_quickstart(broken)
    problems = check_commands_parse(broken)
    assert any("nas spaces sample" in p for p in problems)
    assert any("--no-such-flag" in p for p in problems)
    assert any("--arch does not parse" in p for p in problems)
    assert check_paths(broken) == ["examples/no-such-config.yaml: mentioned but not in the repository"]
    # links are resolved against the repository root (the page pretends to live there)
    link_problems = check_links(ROOT / "README.md", broken)
    assert any("docs/no-such-page.md" in p for p in link_problems)
    assert any("#no-such-heading" in p for p in link_problems)
    assert not any("runtimes.md" in p for p in link_problems)


@pytest.mark.parametrize(
    "heading,slug",
    [
        ("## `constraints`: the budgets", "constraints-the-budgets"),
        ("## compress_report.json", "compress_reportjson"),
        ("## nas best --json and retrieval.json", "nas-best---json-and-retrievaljson"),
    ],
)
def test_anchor_slugs_follow_github(heading: str, slug: str) -> None:
    assert slug in anchors(heading)
