"""The accuracy/latency Pareto front, computed in one place for the report, its charts and the
NAS-Bench-201 benchmark."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["non_dominated"]

T = TypeVar("T")


def non_dominated(items: Iterable[T], cost: Callable[[T], float], value: Callable[[T], float]) -> list[T]:
    """The items no other item beats on both ``cost`` (lower is better, e.g. latency) and
    ``value`` (higher is better, e.g. accuracy), in order of cost; of items with equal cost and
    value, the first one given."""
    front: list[T] = []
    best = -math.inf
    for item in sorted(items, key=lambda i: (cost(i), -value(i))):
        if value(item) > best:
            front.append(item)
            best = value(item)
    return front
