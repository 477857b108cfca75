"""Where a search's trainings run: local worker processes (``--workers N``) or a Ray cluster
(``--ray-address HOST:PORT``). The driver, its study and its screening stay the same either way.

Importing this package loads neither Ray nor TensorFlow; Ray is imported only for a Ray address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_spaces import InputError
from search_spaces.plugins import lazy_attributes

from .process import ProcessExecutor, default_workers

__all__ = [
    "ExecutorChoice",
    "ProcessExecutor",
    "RayExecutor",
    "START_HINT",
    "connect_ray",
    "default_workers",
    "parse_ray_address",
]


# The Ray executor's module is light, but keep it out of `import nas.distributed` anyway.
__getattr__ = lazy_attributes(
    __name__,
    {name: "ray_executor" for name in ("RayExecutor", "START_HINT", "connect_ray", "parse_ray_address")},
)


@dataclass(frozen=True)
class ExecutorChoice:
    """How to run trials: ``workers`` local processes, or the Ray cluster at ``ray_address``
    (where ``workers``, if given, caps the trials at once)."""

    workers: int | None = None
    ray_address: str | None = None
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    verbose: bool = False
    resume_hint: str = "rerun the same command with --resume"

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise InputError(f"--workers: expected an int >= 1, got {self.workers!r}.")
        if self.ray_address is not None:
            from .ray_executor import parse_ray_address

            parse_ray_address(self.ray_address)

    def connect(self) -> None:
        """Join the Ray cluster now (at start, before any profiling), if there is one."""
        if self.ray_address is not None:
            from .ray_executor import check_fits, connect_ray

            connect_ray(self.ray_address, self.verbose)
            check_fits(self.ray_address, self.cpus_per_trial, self.gpus_per_trial)

    def factory(self, status: Callable[[str], None] | None = None) -> Callable[[Any, Any], Any]:
        """``executor_factory(setup, data)`` for ``nas.runner.run``."""

        def make(setup: Any, data: Any) -> Any:
            if self.ray_address is not None:
                from .ray_executor import RayExecutor

                return RayExecutor(
                    setup,
                    data,
                    self.ray_address,
                    workers=self.workers,
                    cpus_per_trial=self.cpus_per_trial,
                    gpus_per_trial=self.gpus_per_trial,
                    status=status,
                    resume_hint=self.resume_hint,
                )
            return ProcessExecutor(setup, self.workers, threads=self.cpus_per_trial, status=status)

        return make
