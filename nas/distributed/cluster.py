"""A throwaway single-node Ray cluster on 127.0.0.1 (``ray start --head``), for tests and
benchmarks: started in its own temp folder, and stopped by the process ids it started, never
with ``ray stop`` (which would stop every cluster of this user on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalRayCluster", "free_port", "quiet_ray_env"]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc (Linux; psutil is not a dependency)."""
    out: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # The command name in stat is parenthesised and may hold spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            out[int(entry.name)] = (int(fields[1]), cmd)
    return out


def _alive(pid: int) -> bool:
    table_entry = Path(f"/proc/{pid}/stat")
    try:
        stat = table_entry.read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[:1] != ["Z"]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_ray_env() -> dict[str, str]:
    """Environment that keeps Ray's usage-stats prompt and notices out of a terminal."""
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


class LocalRayCluster:
    """``with LocalRayCluster(num_cpus=2) as c: ... c.address`` -- a real head node, then gone."""

    def __init__(self, num_cpus: int = 2, port: int | None = None) -> None:
        if num_cpus < 1:
            raise ValueError(f"num_cpus: expected an int >= 1, got {num_cpus!r}.")
        self.num_cpus = num_cpus
        self.port = port or free_port()
        # Ray puts unix sockets under the temp dir; a short path keeps them under the 107-char limit.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="nasray", dir="/tmp"))
        self.pids: list[int] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> LocalRayCluster:
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [
            str(ray_bin) if ray_bin.exists() else "ray",
            "start",
            "--head",
            f"--port={self.port}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **quiet_ray_env()},
        )
        self.pids = self._our_pids()
        if proc.returncode != 0:
            self.stop()
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"ray start failed (exit {proc.returncode}): {' | '.join(tail)}")
        return self

    def _our_pids(self) -> list[int]:
        """Every process whose command line names our temp dir, and all their descendants
        (Ray's workers rename themselves ``ray::...`` and lose their arguments)."""
        table = _process_table()
        marker = str(self.temp_dir)
        found = {pid for pid, (_, cmd) in table.items() if marker in cmd}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
            found |= children
            grew = bool(children)
        return sorted(found)

    def worker_pids(self, title_prefix: str = "ray::") -> list[int]:
        """Ray worker processes of this cluster whose title starts with ``title_prefix``."""
        table = _process_table()
        return [pid for pid in self._our_pids() if pid in table and table[pid][1].startswith(title_prefix)]

    def stop(self, grace: float = 5.0) -> None:
        """Stop exactly the processes this cluster started (and their children): SIGTERM, then
        SIGKILL for whatever is still there after ``grace`` seconds."""
        pids = set(self.pids) | set(self._our_pids())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    continue
            deadline = time.time() + grace
            while time.time() < deadline:
                pids = {pid for pid in pids if _alive(pid)}
                if not pids:
                    break
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
