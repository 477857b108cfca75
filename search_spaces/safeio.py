"""Bounded parsing of the files users hand us: JSON with a depth and size limit checked before
parsing, YAML without alias bombs, and short reprs so an error line stays one short line.

Every failure is an ``InputError`` naming the file; nothing here runs code from a file.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = [
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_YAML_BYTES",
    "brief",
    "check_format",
    "finite_number",
    "load_json",
    "load_yaml",
    "loads_json",
    "loads_yaml",
    "read_bounded",
    "unknown_key",
]

# Our files nest 5-6 levels; 64 leaves room for anything a tool writes and none for a bomb.
MAX_DEPTH = 64
# The largest file of its kind we ship is a few MB (a predictor embedding a 27-device table).
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_YAML_BYTES = 16 * 1024 * 1024
# An anchor used a few times is a convenience; more is how a 434-byte file expands to gigabytes.
MAX_ALIASES = 16

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def brief(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters (a value from a hostile file can be huge,
    deep or expand exponentially when printed)."""
    try:
        text = _REPR.repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else f"{text[:60]}...{text[-30:]}"


def check_format(doc: Any, where: str, fmt: str, version: int, what: str) -> dict[str, Any]:
    """``doc`` (a parsed file) as a JSON object of our format ``fmt`` at ``version``: the one
    check every reader of our files makes first (``what`` names the format in the message)."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise InputError(f'{where}: expected a JSON object with "format": "{fmt}".')
    if doc.get("version") != version:
        raise InputError(
            f"{where}: {what} format version {brief(doc.get('version'))} is not supported (expected {version})."
        )
    return doc


def unknown_key(where: str, key: Any, valid: Iterable[str]) -> InputError:
    """The error for ``key`` not among ``valid`` in the mapping at ``where`` (a dotted field name,
    empty at the top level): one short line that suggests the closest valid key (a typo) or,
    failing that, lists them all."""
    import difflib

    names = sorted(valid)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6) if isinstance(key, str) else []
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}."
    shown = key if isinstance(key, str) and len(key) <= 40 and key.isprintable() else None
    label = where if shown is None else f"{where}.{shown}" if where else shown
    other = "" if shown is not None else f" {brief(key)[:40]}"
    return InputError(f"{label}: unknown key{other}; {hint}")


def finite_number(value: Any, where: str, low: float | None = None, positive: bool = False) -> float:
    """``value`` as a float if it is a real, finite number (not a bool, not a string) within range."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            number = float(value)
        except OverflowError:
            ok = False
        else:
            ok = math.isfinite(number)
    if ok and positive and not number > 0:
        ok = False
    if ok and low is not None and not number >= low:
        ok = False
    if not ok:
        what = (
            "a finite number > 0"
            if positive
            else f"a finite number >= {low:g}"
            if low is not None
            else "a finite number"
        )
        raise InputError(f"{where}: expected {what}, got {brief(value)}.")
    return number


def read_bounded(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, refused (before reading) if it is not a file or larger than ``max_bytes``."""
    p = Path(path)
    try:
        if not p.is_file():
            raise InputError(f"{path}: {what} file not found.")
        size = p.stat().st_size
        if size > max_bytes:
            raise InputError(
                f"{path}: expected a {what} file of at most {max_bytes // (1024 * 1024)} MB, got {size / 2**20:.0f} MB."
            )
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.__class__.__name__}: {e.strerror or e}).") from None
    if len(data) > max_bytes:  # grew while we read, or a device file
        raise InputError(f"{path}: expected a {what} file of at most {max_bytes // (1024 * 1024)} MB.")
    return data


def json_depth_ok(data: bytes, max_depth: int = MAX_DEPTH) -> bool:
    """Whether the brackets of a JSON text nest at most ``max_depth`` deep (strings ignored).

    Runs in C (a regex, ``bytes.translate`` and numpy on 1 MB chunks), so a 64 MB file is checked
    in about a second with a few MB of memory.
    """
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * max_depth:
        return True
    import numpy as np

    depth = 0
    step = 1 << 20
    for start in range(0, len(brackets), step):
        chunk = np.frombuffer(brackets[start : start + step], dtype=np.uint8)
        delta = np.where((chunk == 91) | (chunk == 123), 1, -1).astype(np.int32)  # [ { open
        levels = np.cumsum(delta) + depth
        if int(levels.max()) > max_depth:
            return False
        depth = int(levels[-1])
    return True


def loads_json(data: str | bytes, where: str, what: str = "JSON") -> Any:
    """Parse JSON text with the depth limit checked first; errors name ``where`` and the line."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if not json_depth_ok(raw):
        raise InputError(
            f"{where}: expected {what} nested at most {MAX_DEPTH} levels deep, got deeper nesting."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{where}: expected {what} as UTF-8 text, got undecodable bytes.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON (line {e.lineno}: {e.msg}).") from None
    except ValueError:  # an integer of more than 4300 digits
        raise InputError(
            f"{where}: expected {what} with numbers of at most 4300 digits, got longer."
        ) from None
    except RecursionError:
        raise InputError(
            f"{where}: expected {what} nested at most {MAX_DEPTH} levels deep, got deeper nesting."
        ) from None


def load_json(path: str | os.PathLike[str], what: str = "JSON", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """``loads_json`` of a file read with a size bound."""
    return loads_json(read_bounded(path, what, max_bytes), str(path), what)


def _loader(max_aliases: int) -> type:
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader that refuses more than ``max_aliases`` alias uses (an alias bomb expands
        exponentially in anything that walks or prints the result)."""

        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > max_aliases:
                    mark = self.peek_event().start_mark
                    raise _TooManyAliases(mark.line + 1)
            return super().compose_node(parent, index)

    return BoundedLoader


class _TooManyAliases(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def loads_yaml(data: str | bytes, where: str, max_aliases: int = MAX_ALIASES) -> Any:
    """``yaml.safe_load`` with at most ``max_aliases`` aliases and ``MAX_DEPTH`` nesting."""
    import yaml

    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{where}: expected UTF-8 text, got undecodable bytes.") from None
    if _yaml_too_deep(data):
        raise InputError(
            f"{where}: expected YAML nested at most {MAX_DEPTH} levels deep, got deeper nesting."
        )
    loader = None
    try:
        loader = _loader(max_aliases)(data)  # the reader checks the characters here already
        return loader.get_single_data()
    except _TooManyAliases as e:
        raise InputError(
            f"{where}: line {e.line}: expected at most {max_aliases} uses of YAML aliases (*name), got more."
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"{where}:{line} not valid YAML ({str(problem)[:120]}).") from None
    except ValueError:  # an integer of more than 4300 digits
        raise InputError(f"{where}: expected YAML with numbers of at most 4300 digits, got longer.") from None
    except RecursionError:
        raise InputError(
            f"{where}: expected YAML nested at most {MAX_DEPTH} levels deep, got deeper nesting."
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_too_deep(text: str) -> bool:
    # Flow collections ([..], {..}) are the only way to nest deeply in a few bytes; block nesting
    # needs indentation that grows with depth, bounded by the file size limit.
    if "[" not in text and "{" not in text:
        return False
    return not json_depth_ok(text.encode("utf-8", "surrogatepass"))


def load_yaml(path: str | os.PathLike[str], what: str = "YAML", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """``loads_yaml`` of a file read with a size bound."""
    return loads_yaml(read_bounded(path, what, max_bytes), str(path))
