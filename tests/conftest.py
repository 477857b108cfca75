"""Shared fixtures. Tests run real code: real TensorFlow, real runtimes, real SQLite studies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def nas_bin() -> list[str]:
    """The installed console script (falls back to ``python -m nas``)."""
    exe = Path(sys.executable).parent / "nas"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nas"]


@pytest.fixture(scope="session", autouse=True)
def shared_profile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host-profile cache for the whole session (never the user's own ~/.cache): the tiny
    test spaces are profiled once, by whichever test needs them first."""
    path = tmp_path_factory.mktemp("edge-nas-cache")
    os.environ["EDGE_NAS_CACHE"] = str(path)
    return path


@pytest.fixture
def run_nas(nas_bin: list[str], tmp_path: Path):
    """Run the real CLI in a subprocess; returns the CompletedProcess."""

    def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [*nas_bin, *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
            timeout=timeout,
        )

    return _run


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
