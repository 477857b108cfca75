"""Progress of ``nas run``: the live bar on a terminal, plain lines otherwise, nothing with quiet;
ETA from the trainings finished so far."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nas.progress import RunProgress, format_eta
from nas.search import SearchStats


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _drive(progress: RunProgress, clock: _Clock) -> None:
    """What a run with 4 trainings says: profiling, calibration, then trials every 10 s."""
    progress.status("host latency table: 23 distinct blocks (litert int8, 1 thread)")
    progress.status("profiling block 0/23")
    progress.status("profiling block 20/23")
    progress.status("calibrating the latency and size models: model 1/4")
    progress.status("searching: 4 trainings, strategy random")
    stats = SearchStats()
    for i, (kind, acc) in enumerate([("infeasible", None), ("complete", 0.81), ("complete", 0.9)]):
        clock.t += 10.0
        stats.asked += 1
        if kind == "infeasible":
            stats.infeasible += 1
            progress.on_event(kind, {"arch": f"a{i}", "stats": stats})
            continue
        progress.on_event("submitted", {"arch": f"a{i}", "stats": stats})
        stats.trained += 1
        stats.best_accuracy = max(acc, stats.best_accuracy or 0.0)
        progress.on_event(kind, {"arch": f"a{i}", "accuracy": acc, "stats": stats})


def test_plain_lines_with_feasible_best_and_eta() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = RunProgress(4, mode="plain", stream=out, clock=clock)
    _drive(progress, clock)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[nas] host latency table: 23 distinct blocks (litert int8, 1 thread)"
    assert "[nas] profiling block 20/23" in lines
    trials = [line for line in lines if line.startswith("[nas] trial complete")]
    assert len(trials) == 2
    # 2 trainings done 30 s after the search started: 15 s each, 2 to go
    assert trials[-1].endswith("trained 2/4, feasible 2, screened out 1, failed 0, best 0.9000, ETA 30s")
    assert "\x1b" not in out.getvalue()  # no terminal codes in a log file


def test_bar_on_a_terminal_fits_80_columns() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = RunProgress(4, mode="bar", stream=out, clock=clock)
    progress._bar.console.width = 80
    _drive(progress, clock)
    progress.on_event("stage", {"name": "prune", "index": 1, "total": 2})
    progress.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    final = text.strip().splitlines()[-4:]
    search = next(line for line in final if line.startswith("search"))
    assert "2/4" in search and "best 0.9000" in search and "feasible 2" in search and "ETA 30s" in search
    assert "…" not in search
    profiling = next(line for line in final if line.startswith("profiling"))
    assert "23/23" in profiling  # the search started, so profiling was finished
    assert any(line.startswith("compress") for line in final)
    assert out.getvalue().endswith("\x1b[?25h")  # the cursor is given back


def test_quiet_says_nothing_and_the_mode_follows_the_stream() -> None:
    out, clock = io.StringIO(), _Clock()
    progress = RunProgress(4, quiet=True, stream=out, clock=clock)
    _drive(progress, clock)
    progress.close()
    assert progress.mode == "quiet" and out.getvalue() == ""
    assert RunProgress(4, stream=io.StringIO()).mode == "plain"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = RunProgress(4, stream=Terminal())
    assert bar.mode == "bar"
    bar.close()
    with pytest.raises(ValueError, match="mode"):
        RunProgress(4, mode="fancy")


def test_eta_format_and_close_on_error() -> None:
    assert [format_eta(s) for s in (None, 0, 59.4, 75, 3900)] == ["?", "0s", "59s", "1m15s", "1h05m"]
    out = io.StringIO()
    progress = RunProgress(2, mode="bar", stream=out)

    def boom() -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        progress.closing_after(boom)()
    assert out.getvalue().endswith("\x1b[?25h")  # closed before the error reaches the CLI


@pytest.mark.slow  # a real (small) search in a pseudo-terminal
def test_real_run_in_a_terminal_and_quiet(tmp_path: Path) -> None:
    import pty

    from tests.test_retrieve import _config, _write_table

    table = tmp_path / "board.json"
    _write_table(table, "board-a", 1.0)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_config("board-a", table, seed=0))
    exe = Path(sys.executable).parent / "nas"
    env = {**os.environ, "EDGE_NAS_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(exe), "run", str(cfg), "--out", str(tmp_path / "tty")], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=600) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in text and re.search(r"search\s.*3/3", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))

    quiet = subprocess.run(
        [str(exe), "run", str(cfg), "--out", str(tmp_path / "quiet"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "[nas]" not in quiet.stderr and quiet.stdout.startswith("best ")
