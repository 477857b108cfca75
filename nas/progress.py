"""Progress of ``nas run``: a live bar (trials trained, feasible, best so far, ETA; per-stage bars
for profiling, calibration and compression) on a terminal, plain log lines otherwise, nothing
but warnings with ``--quiet``. It consumes the ``status`` and ``on_event`` callbacks of ``run``."""

from __future__ import annotations

import atexit
import functools
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

__all__ = ["MODES", "RunProgress", "format_eta"]

T = TypeVar("T")

MODES = ("bar", "plain", "quiet")
# "profiling block 20/23", "calibrating the latency and size models: model 1/4"
_COUNTED = re.compile(r"^(?P<label>[a-z][^0-9]*?)[:\s]+(?:\w+\s)?(?P<i>\d+)/(?P<n>\d+)\s*$")
# compress.pipeline says "stage <spec> ..." before each stage
_STAGE = re.compile(r"^stage (?P<spec>\S+) \.\.\.$")


def format_eta(seconds: float | None) -> str:
    """``None`` -> "?", 75 -> "1m15s", 3900 -> "1h05m"."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class _Search:
    total: int
    trained: float = 0
    feasible: int = 0
    screened: int = 0
    failed: int = 0
    best: float | None = None
    started: float | None = None
    done_here: float = 0  # trainings finished in this process (a resumed run restores the rest)

    def eta(self, now: float) -> float | None:
        if self.started is None or self.done_here == 0:
            return None
        per = (now - self.started) / self.done_here
        return max(0, self.total - self.trained) * per

    def line(self, now: float) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (
            f"trained {self.trained:g}/{self.total}, feasible {self.feasible}, screened out {self.screened}, "
            f"failed {self.failed}, best {best}, ETA {format_eta(self.eta(now))}"
        )


class RunProgress:
    """``status(message)`` and ``on_event(kind, info)`` for ``nas.runner.run``; use as a context
    manager (or call ``close``) so a live bar leaves the terminal clean."""

    def __init__(
        self,
        trainings: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        mode: str | None = None,
        stages: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode is None:
            mode = "quiet" if quiet else ("bar" if _is_terminal(self.stream) else "plain")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}.")
        self.mode = mode
        self.clock = clock
        self.search = _Search(trainings)
        self.stages = list(stages)
        self._stage_done = 0
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._closed = False
        if mode == "bar":
            self._start_bar()
            atexit.register(self.close)

    # -- the callbacks ---------------------------------------------------------------------------
    def status(self, message: str) -> None:
        if self.mode == "quiet":
            return
        if message.startswith("searching:") and self.search.started is None:
            self.search.started = self.clock()
        if self.mode == "plain":
            self._print(f"[nas] {message}")
            return
        counted = _COUNTED.match(message)
        if counted:
            self._counted(counted.group("label").strip(), int(counted.group("i")), int(counted.group("n")))
            return
        stage = _STAGE.match(message)
        if stage:
            self._stage(stage.group("spec"))
        self._bar.console.print(f"[nas] {message}", markup=False, highlight=False)

    def on_event(self, kind: str, info: dict[str, Any]) -> None:
        """SearchLoop events: submitted, duplicate, infeasible, trained (a result promoted to more
        epochs), promoted (that training submitted), complete, failed; and ``stage``
        ({"name", "index", "total"}) from a compression pipeline that reports its stages."""
        if kind == "stage":
            self._stage(str(info.get("name")), info.get("index"), info.get("total"))
            return
        s = self.search
        now = self.clock()
        if s.started is None:
            s.started = now
        stats = info.get("stats")
        if stats is not None:
            s.trained = _trainings_done(stats, s.total)
            s.screened = stats.infeasible
            s.failed = stats.failed
            s.feasible = max(0, stats.asked - stats.infeasible)
            s.best = stats.best_accuracy
        if kind in ("complete", "failed", "trained"):
            s.done_here += _full_trainings(info, stats, s.total)
        if self.mode == "quiet":
            return
        epochs = _epochs_note(info, stats)
        if self.mode == "plain":
            if kind == "complete":
                self._print(
                    f"[nas] trial complete: {info.get('arch')} accuracy {info['accuracy']:.4f}{epochs} | "
                    f"{s.line(now)}"
                )
            elif kind == "trained":
                self._print(
                    f"[nas] trial promoted: {info.get('arch')} accuracy {info['accuracy']:.4f}{epochs} | "
                    f"{s.line(now)}"
                )
            elif kind == "failed":
                self._print(f"[nas] trial failed: {info.get('arch')} ({info.get('error')}) | {s.line(now)}")
            return
        if kind in ("complete", "failed", "trained"):
            what = (
                f"failed ({info.get('error')})"
                if kind == "failed"
                else f"accuracy {info['accuracy']:.4f}{epochs}" + (", promoted" if kind == "trained" else "")
            )
            self._bar.console.print(f"[nas] trial {info.get('arch')}: {what}", markup=False, highlight=False)
        self._update_search(now)

    # -- bar mode --------------------------------------------------------------------------------
    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=self.stream, force_terminal=True, highlight=False)
        self._bar = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(bar_width=14),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            auto_refresh=False,  # redrawn on every event: no thread to leak if the run dies
        )
        self._bar.start()

    def _task(self, name: str, total: float | None) -> Any:
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(name, total=total, info="")
        return self._tasks[name]

    def _update_search(self, now: float) -> None:
        s = self.search
        if "search" not in self._tasks:
            self._finish_phases()
        task = self._task("search", s.total)
        best = "-" if s.best is None else f"{s.best:.4f}"
        failed = f" · failed {s.failed}" if s.failed else ""
        # fits an 80-column terminal: rich truncates the whole row to "…" when it does not
        info = f"best {best} · feasible {s.feasible} · screened out {s.screened}{failed} · ETA {format_eta(s.eta(now))}"
        self._bar.update(task, completed=s.trained, info=info, refresh=True)

    def _finish_phases(self, keep: str = "") -> None:
        """Phases run one after another: when one starts, the earlier ones are done (their
        callers report progress only every so often, never a last "n/n")."""
        for name, task in self._tasks.items():
            if name not in (keep, "search", "compress"):
                total = self._bar.tasks[task].total
                self._bar.update(task, completed=total)

    def _counted(self, label: str, i: int, n: int) -> None:
        self._finish_phases(keep=label[:9])
        task = self._task(label[:9], n)
        self._bar.update(task, completed=i, total=n, info=label, refresh=True)

    def _stage(self, name: str, index: int | None = None, total: int | None = None) -> None:
        self._stage_done = index if index is not None else self._stage_done + 1
        total = total or (len(self.stages) or None)
        if self.mode == "plain":
            self._print(f"[nas] compression stage {self._stage_done}/{total or '?'}: {name}")
            return
        if self.mode == "bar":
            task = self._task("compress", total)
            self._bar.update(
                task, completed=self._stage_done - 1, total=total, info=f"stage {name}", refresh=True
            )

    # -- both ------------------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            for name, task in self._tasks.items():
                if name == "compress":
                    self._bar.update(task, completed=self._bar.tasks[task].total or self._stage_done)
            self._bar.refresh()
            self._bar.stop()

    def closing_after(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` wrapped so the display is closed when it returns or raises (before the caller
        prints a summary or an error line under the bar)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                self.close()

        return wrapper

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _trainings_done(stats: Any, total: int) -> float:
    """Trainings done; on a multi-fidelity run, in full trainings' worth of epochs (the budget's
    unit), so the bar ends at the budget however the epochs were spent."""
    if not stats.budget_epochs or len(stats.rungs) <= 1:
        return stats.trained
    return round(stats.epochs_spent * max(total, 1) / stats.budget_epochs, 1)


def _full_trainings(info: dict[str, Any], stats: Any, total: int) -> float:
    """How many full trainings' worth of epochs one finished training was."""
    if stats is None or not stats.budget_epochs or len(stats.rungs) <= 1 or info.get("epochs") is None:
        return 1.0
    return float(info["epochs"]) * max(total, 1) / stats.budget_epochs


def _epochs_note(info: dict[str, Any], stats: Any) -> str:
    """ " at 1 epochs" on multi-fidelity runs, nothing otherwise."""
    if stats is None or len(stats.rungs) <= 1 or info.get("epochs") is None:
        return ""
    return f" at {info['epochs']} epochs"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
