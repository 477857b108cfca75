"""The project's error kinds: one root, bad user input versus a failed trial versus a fatal stop.

Every package raises these (they live here, at the bottom of the dependency chain), and the CLI
maps ``InputError`` to one line on stderr and exit code 2.
"""

from __future__ import annotations

__all__ = ["NasError", "InputError", "TrialFailedError", "FatalError", "check"]


class NasError(Exception):
    """Root of every error this project raises on purpose."""


class InputError(NasError, ValueError):
    """A file, field or argument given by the user is wrong. The message is one line naming it."""


class TrialFailedError(NasError):
    """This trial failed (NaN loss, a build error, ...); the search records it and goes on."""


class FatalError(NasError):
    """The run cannot go on (too many failures in a row, a lost cluster, ...)."""


def check(condition: bool, where: str, expected: str, got: object) -> None:
    """Raise the project's one message template when ``condition`` is false.

    >>> check(1 > 0, "max_latency_ms", "a number > 0", 1)
    """
    if not condition:
        raise InputError(f"{where}: expected {expected}, got {got!r}.")
