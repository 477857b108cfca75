"""The host's persistent cache of latency tables: where it lives, the machine fingerprint in
each file's name, and the lock that keeps two processes from profiling the same blocks twice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

from search_spaces import InputError, SearchSpace

from .runtimes import get_runtime
from .table import LatencyTable, TableMeta

__all__ = ["cache_dir", "locked", "machine_fingerprint", "table_path"]


def cache_dir() -> Path:
    """``$EDGE_NAS_CACHE``, else ``$XDG_CACHE_HOME/edge-nas/tables``, else ``~/.cache/edge-nas/tables``."""
    if os.environ.get("EDGE_NAS_CACHE"):
        return Path(os.environ["EDGE_NAS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edge-nas" / "tables"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def machine_fingerprint() -> dict[str, str]:
    """What makes one host's timings differ from another's: OS, architecture and CPU model."""
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count() or 0),
    }


def _fingerprint_id(fp: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def table_path(
    space: SearchSpace, runtime: str, dtype: str, threads: int, directory: Path | None = None
) -> Path:
    """The cache file of one (space, runtime, runtime version, dtype, threads, machine).

    The space is part of the key because two spaces may build different models for blocks with
    the same fields (e.g. their squeeze-excite widths differ).
    """
    rt = get_runtime(runtime)
    fp = _fingerprint_id(machine_fingerprint())
    name = f"{_safe(space.name)}-{rt.name}-{_safe(rt.version())}-{dtype}-t{threads}-{fp}.json"
    return (directory if directory is not None else cache_dir()) / name


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to ``path`` so two processes do not profile the same blocks twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic writes still keep the file whole
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load_cached(path: Path, meta: TableMeta) -> LatencyTable | None:
    if not path.is_file():
        return None
    try:
        table = LatencyTable.load(path)
    except InputError:
        # A cache is ours to rebuild: a damaged file costs a re-profile, not a failed search.
        return None
    if (table.meta.runtime, table.meta.runtime_version, table.meta.dtype, table.meta.threads) != (
        meta.runtime,
        meta.runtime_version,
        meta.dtype,
        meta.threads,
    ):
        return None
    return table
