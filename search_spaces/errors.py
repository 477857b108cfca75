"""The project's error kinds: one root, bad user input versus a failed trial versus a fatal stop.

Every package raises these (they live here, at the bottom of the dependency chain), and the CLI
maps ``InputError`` to one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = ["NasError", "InputError", "TrialFailedError", "FatalError", "PluginError", "check"]


class NasError(Exception):
    """Root of every error this project raises on purpose."""


class InputError(NasError, ValueError):
    """A file, field or argument given by the user is wrong. The message is one line naming it.

    Whatever a message quotes from the user's input, it stays one short line: line breaks become
    spaces and a word longer than a path could sensibly be (a 150-digit number, a mangled
    architecture string) is cut in the middle. Sites should still quote values with ``brief``;
    this is the floor under all of them."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_one_short_line(args[0]),)
        super().__init__(*args)


# A message longer than this has its longest words cut (not paths: a word with a '/' or '\\' is
# kept unless it is longer than _LONG_PATH) until it fits, or nothing is left to cut.
_MAX_MESSAGE = 240
_CUT_TO = 40
_LONG_PATH = 300


def _one_short_line(message: str) -> str:
    import re

    message = message.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    words = re.split(r"(\s+)", message)

    def cuttable(word: str) -> bool:
        is_path = "/" in word or "\\" in word
        return len(word) > (_LONG_PATH if is_path else _CUT_TO + 3)

    while sum(map(len, words)) > _MAX_MESSAGE:
        candidates = [i for i, w in enumerate(words) if cuttable(w)]
        if not candidates:
            break
        i = max(candidates, key=lambda k: len(words[k]))
        word = words[i]
        keep = _LONG_PATH if ("/" in word or "\\" in word) else _CUT_TO
        words[i] = f"{word[: keep * 2 // 3]}...{word[-(keep // 3) :]}"
    return "".join(words)


class TrialFailedError(NasError):
    """This trial failed (NaN loss, a build error, ...); the search records it and goes on."""


class FatalError(NasError):
    """The run cannot go on (too many failures in a row, a lost cluster, ...)."""


class PluginError(FatalError, ImportError):
    """A module a registry names cannot be imported: the installation is broken, not the input."""


def check(condition: bool, where: str, expected: str, got: object) -> None:
    """Raise the project's one message template when ``condition`` is false.

    >>> check(1 > 0, "max_latency_ms", "a number > 0", 1)
    """
    if not condition:
        raise InputError(f"{where}: expected {expected}, got {got!r}.")
