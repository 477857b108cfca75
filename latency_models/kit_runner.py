#!/usr/bin/env python3
"""Measure a device kit's .tflite files on this device (``nas latency kit`` copies this file into
every kit as ``measure.py``).

    python3 measure.py --threads 4 --out results.json          # a Raspberry Pi, any Linux board
    python3 measure.py --adb --benchmark-model ./benchmark_model --out results.json   # Android
    python3 measure.py --model model.tflite      # time a shipped file the same way (any mode)

Needs only Python 3.9+, numpy and one TFLite interpreter (``ai_edge_litert``, ``tflite_runtime``
or ``tensorflow``); with ``--adb`` only ``adb`` and TFLite's ``benchmark_model`` binary.

The timing protocol is the one ``nas latency profile`` uses on the host (warm-up calls, a pinned
thread count, the median of at least RUNS calls lasting at least MIN_TOTAL_S, the preemption
filter; whole models in interleaved repeats). Its loop is a copy of
``latency_models.runtimes.time_calls`` because this file must run where the project is not
installed; the numbers (runs, warm-up, minimum time, repeats) come from the kit's manifest, which
the project writes from its own constants, and ``tests/test_device_kit.py`` checks that both
loops keep the same rule. Results are saved after every file, so a stopped run restarts where it
stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIT_FORMAT = "edge-nas-device-kit"
RESULTS_FORMAT = "edge-nas-device-results"
VERSION = 1
DEVICE_DIR = "/data/local/tmp/edge-nas-kit"


class KitError(Exception):
    """Bad input: printed as one line, exit code 2."""


# -- the timing protocol (same rule as latency_models.runtimes.time_calls) ---------------------
def time_calls(fn, runs, warmup, min_total_s, single_thread):
    """Median-based timing: warm-up calls, then at least ``runs`` timed calls and at least
    ``min_total_s`` seconds. On one thread, a run whose wall time exceeds its thread CPU time by
    more than 20 us + 10% lost the CPU mid-way and is left out."""
    import numpy as np

    for _ in range(warmup):
        fn()
    wall, kept = [], []
    start = time.perf_counter()
    while len(kept) < runs or (time.perf_counter() - start < min_total_s and len(wall) < 100 * runs):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        w, c = (t1 - t0) * 1e3, (c1 - c0) * 1e3
        wall.append(w)
        if not single_thread or w - c <= 0.02 + 0.1 * c:
            kept.append(w)
        if len(wall) >= 100 * runs:
            break
    samples = kept if len(kept) >= 3 else wall
    arr = np.asarray(samples)
    return {
        "median_ms": float(np.median(arr)),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "std_ms": float(statistics.pstdev(samples)),
        "runs": len(samples),
        "warmup": warmup,
    }


# -- interpreters ------------------------------------------------------------------------------
def find_interpreter():
    """(name, version, Interpreter class) of the first TFLite interpreter installed."""
    from importlib import metadata

    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
        ("tensorflow", "tensorflow"),
    ):
        try:
            mod = __import__(module, fromlist=["Interpreter"])
        except ImportError:
            continue
        cls = mod.lite.Interpreter if module == "tensorflow" else mod.Interpreter
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "unknown"
        return dist, version, cls
    raise KitError(
        "no TFLite interpreter: install one of ai-edge-litert, tflite-runtime or tensorflow (pip install ai-edge-litert)."
    )


class Session:
    """One .tflite loaded at a pinned thread count with a random input set (values do not change
    an int8 model's latency, only its shapes do)."""

    def __init__(self, interpreter_cls, data, threads):
        import numpy as np

        self.interpreter = interpreter_cls(model_content=data, num_threads=threads)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        rng = np.random.default_rng(0)
        x = rng.standard_normal(tuple(int(d) for d in detail["shape"])).astype(np.float32)
        dtype = detail["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(detail["index"], x.astype(dtype))

    def invoke(self):
        self.interpreter.invoke()


class LocalTimer:
    """Times kit files with this machine's TFLite interpreter."""

    def __init__(self, kit_dir, threads):
        self.kit_dir, self.threads = kit_dir, threads
        self.interpreter_name, self.interpreter_version, self.cls = find_interpreter()

    def time(self, name, timing):
        session = Session(self.cls, (self.kit_dir / name).read_bytes(), self.threads)
        runs, warmup, min_total_s = timing
        return time_calls(session.invoke, runs, warmup, min_total_s, self.threads == 1)

    def describe(self):
        return {
            **describe_this_machine(),
            "interpreter": self.interpreter_name,
            "interpreter_version": self.interpreter_version,
        }


def _cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Hardware", "cpu model", "Processor", "Model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def describe_this_machine():
    board = ""
    try:
        board = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        pass
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "board": board,
        "python": platform.python_version(),
    }


# -- Android: adb + TFLite's benchmark_model ---------------------------------------------------
_STAT = re.compile(
    r"count=(\d+)\s+first=(\S+)\s+curr=(\S+)\s+min=(\S+)\s+max=(\S+)\s+avg=(\S+)\s+std=(\S+)(.*)"
)
_TIMINGS = re.compile(
    r"Inference timings in us: Init: ([\d.e+-]+), First inference: ([\d.e+-]+), "
    r"Warmup \(avg\): ([\d.e+-]+), Inference \(avg\): ([\d.e+-]+)"
)


def parse_benchmark_model(text):
    """The timed runs of one ``benchmark_model`` output (its ``Stat`` line for the timed runs,
    the last ``count=`` line before "Inference timings in us"): the median when the binary
    prints percentiles (``p5=.. median=.. p95=..``), else the mean; ms."""
    m = _TIMINGS.search(text)
    if not m:
        raise KitError(f"benchmark_model: no 'Inference timings in us' line in its output: {_tail(text)}")
    stats = [s for s in _STAT.finditer(text[: m.start()])]
    avg_ms = float(m.group(4)) / 1e3
    out = {
        "median_ms": avg_ms,
        "mean_ms": avg_ms,
        "std_ms": 0.0,
        "runs": 0,
        "warmup": 0,
        "init_ms": float(m.group(1)) / 1e3,
        "first_ms": float(m.group(2)) / 1e3,
        "statistic": "avg",
    }
    if stats:
        s = stats[-1]
        rest = dict(re.findall(r"(\w+)=([\d.e+-]+)", s.group(8)))
        out.update(
            runs=int(s.group(1)),
            mean_ms=float(s.group(6)) / 1e3,
            std_ms=float(s.group(7)) / 1e3,
            p10_ms=float(s.group(4)) / 1e3,
            p90_ms=float(s.group(5)) / 1e3,
        )
        if "median" in rest:
            out.update(median_ms=float(rest["median"]) / 1e3, statistic="median")
        if len(stats) >= 2:
            out["warmup"] = int(stats[-2].group(1))
    return out


def _tail(text):
    """The line that says what went wrong: the first error line, else the last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error" in line]
    return (errors[0] if errors else lines[-1] if lines else "(empty)")[:160]


class AdbTimer:
    """Times kit files on an Android device with the user's ``benchmark_model`` binary (the
    device's own C++ loop: warm-up and median where the binary prints it; no preemption filter)."""

    def __init__(self, kit_dir, threads, serial, benchmark_model):
        self.kit_dir, self.threads = kit_dir, threads
        self.prefix = ["adb"] + (["-s", serial] if serial else [])
        self.pushed = set()
        self._adb(["shell", f"mkdir -p {DEVICE_DIR}"])
        local = Path(benchmark_model)
        if local.is_file():
            self.binary = f"{DEVICE_DIR}/benchmark_model"
            self._adb(["push", str(local), self.binary])
            self._adb(["shell", f"chmod 755 {self.binary}"])
        else:
            self.binary = benchmark_model  # already on the device
        self.interpreter_name, self.interpreter_version = "benchmark_model", self.binary

    def _adb(self, args):
        try:
            done = subprocess.run(self.prefix + args, capture_output=True, text=True, timeout=900)
        except FileNotFoundError:
            raise KitError(
                "--adb: the adb command is not on PATH (install Android platform-tools)."
            ) from None
        except subprocess.TimeoutExpired:
            raise KitError("adb {}: no answer within 900 s.".format(" ".join(args[:2]))) from None
        if done.returncode != 0:
            raise KitError(
                f"adb {' '.join(args[:2])}: exit code {done.returncode}: {_tail(done.stderr or done.stdout)}"
            )
        return done.stdout + done.stderr

    def time(self, name, timing):
        runs, warmup, min_total_s = timing
        remote = f"{DEVICE_DIR}/{name}"
        if name not in self.pushed:
            self._adb(["push", str(self.kit_dir / name), remote])
            self.pushed.add(name)
        command = " ".join(
            shlex.quote(a)
            for a in (
                self.binary,
                f"--graph={remote}",
                f"--num_threads={self.threads}",
                f"--warmup_runs={warmup}",
                f"--num_runs={runs}",
                f"--min_secs={min_total_s:g}",
            )
        )
        return parse_benchmark_model(self._adb(["shell", command]))

    def describe(self):
        def prop(name):
            return self._adb(["shell", f"getprop {name}"]).strip()

        return {
            "system": "Android {}".format(prop("ro.build.version.release")),
            "model": prop("ro.product.model"),
            "soc": prop("ro.board.platform"),
            "machine": prop("ro.product.cpu.abi"),
            "cpu_count": self._adb(["shell", "nproc"]).strip(),
            "interpreter": "benchmark_model",
            "interpreter_version": self.binary,
        }


# -- the kit and its results -------------------------------------------------------------------
def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(kit_dir):
    path = kit_dir / "manifest.json"
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except OSError:
        raise KitError(
            f"{path}: kit manifest not found (run measure.py inside the kit folder or pass --kit)."
        ) from None
    except ValueError:
        raise KitError(f"{path}: not valid JSON.") from None
    if not isinstance(doc, dict) or doc.get("format") != KIT_FORMAT:
        raise KitError(f'{path}: expected a JSON object with "format": "{KIT_FORMAT}".')
    if doc.get("version") != VERSION:
        raise KitError(
            f"{path}: kit format version {doc.get('version')!r} is not supported (expected {VERSION})."
        )
    timing = doc.get("timing")
    if not isinstance(timing, dict) or not all(
        k in timing for k in ("block", "repeat", "repeats", "invoke_rounds")
    ):
        raise KitError(f"{path}: timing: expected block, repeat, repeats and invoke_rounds.")
    if not doc.get("files"):
        raise KitError(f"{path}: files: expected a non-empty list.")
    for i, f in enumerate(doc["files"]):
        plain = isinstance(f, dict) and isinstance(f.get("file"), str) and "/" not in f["file"]
        if not plain or f["file"].startswith(".") or not isinstance(f.get("sha256"), str):
            raise KitError(f"{path}: files[{i}]: expected an object with a plain file name and its sha256.")
        if f.get("role") not in ("block", "invoke", "calibration", "arch"):
            raise KitError(
                f"{path}: files[{i}].role: expected block, invoke, calibration or arch, got {f.get('role')!r}."
            )
    parts = {f.get("part") for f in doc["files"] if f["role"] == "invoke"}
    if not {"a", "b", "ab"} <= parts:
        raise KitError(f"{path}: files: expected the per-invoke pair (invoke parts a, b and ab).")
    return doc, hashlib.sha256(raw).hexdigest()


def check_files(kit_dir, manifest):
    for f in manifest["files"]:
        path = kit_dir / f["file"]
        if not path.is_file():
            raise KitError(f"{path}: missing from the kit (copy the whole kit folder).")
        if sha256_of(path) != f["sha256"]:
            raise KitError(f"{path}: sha256 differs from the manifest (a damaged or changed file).")


def write_atomic(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, str(path))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_results(path, kit_id, threads, mode):
    """A previous run's results to continue, or fresh ones."""
    if not path.is_file():
        return {
            "format": RESULTS_FORMAT,
            "version": VERSION,
            "kit": kit_id,
            "threads": threads,
            "mode": mode,
            "invoke": [],
            "blocks": {},
            "models": {},
            "sessions": [],
        }
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise KitError(f"{path}: not valid JSON; move it away to start over.") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise KitError(f'{path}: expected a results file with "format": "{RESULTS_FORMAT}".')
    if doc.get("kit") != kit_id:
        raise KitError(f"{path}: measured with another kit (kit id differs); use another --out.")
    if doc.get("threads") != threads or doc.get("mode") != mode:
        raise KitError(
            "{}: measured with threads={!r} mode={!r}, now threads={!r} mode={!r}; use another --out.".format(
                path, doc.get("threads"), doc.get("mode"), threads, mode
            )
        )
    return doc


class Progress:
    def __init__(self, total, done):
        self.total, self.done, self.start, self.measured = total, done, time.time(), 0

    def step(self, label):
        self.done += 1
        self.measured += 1
        rate = (time.time() - self.start) / self.measured
        eta = rate * (self.total - self.done)
        sys.stderr.write(f"\r[{self.done}/{self.total}] {label[:48]:<48} eta {eta:4.0f} s")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def measure(kit_dir, out, timer, threads, mode, checked=None):
    """Time every file of the kit not yet in ``out``; ``checked``: the (manifest, kit id) of a
    kit whose files were already checked against their hashes."""
    manifest, kit_id = checked or load_manifest(kit_dir)
    if checked is None:
        check_files(kit_dir, manifest)
    results = load_results(out, kit_id, threads, mode)
    timing = manifest["timing"]
    block_timing = tuple(timing["block"])
    repeat_timing = tuple(timing["repeat"])
    repeats, rounds = int(timing["repeats"]), int(timing["invoke_rounds"])
    files = manifest["files"]
    blocks = [f["file"] for f in files if f["role"] == "block"]
    models = [f["file"] for f in files if f["role"] in ("calibration", "arch")]
    invoke = [
        next(f["file"] for f in files if f["role"] == "invoke" and f["part"] == p) for p in ("a", "b", "ab")
    ]
    session = len(results["sessions"])
    results["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "measured": 0})
    results["device"] = timer.describe()
    total = rounds + len(blocks) + repeats * len(models)
    done = (
        min(len(results["invoke"]), rounds)
        + sum(b in results["blocks"] for b in blocks)
        + sum(min(len(results["models"].get(m, {}).get("repeats_ms", [])), repeats) for m in models)
    )
    if done:
        sys.stderr.write(f"resuming {out}: {done} of {total} measurements done, {total - done} to go\n")
    progress = Progress(total, done)

    def save():
        results["sessions"][session]["measured"] = progress.measured
        write_atomic(out, json.dumps(results, indent=1) + "\n")

    # The per-invoke cost pair: t(A) + t(B) - t(A then B), in rounds (as invoke_overhead_ms).
    while len(results["invoke"]) < rounds:
        results["invoke"].append([timer.time(name, block_timing)["median_ms"] for name in invoke])
        progress.step(f"per-invoke cost round {len(results['invoke'])}")
        save()
    for name in blocks:
        if name in results["blocks"]:
            continue
        results["blocks"][name] = {**timer.time(name, block_timing), "session": session}
        progress.step(name)
        save()
    # Whole models: interleaved repeats, so drift of the device's speed hits them all alike.
    for r in range(repeats):
        for name in models:
            entry = results["models"].setdefault(name, {"repeats_ms": [], "runs": 0, "session": session})
            if len(entry["repeats_ms"]) > r:
                continue
            t = timer.time(name, repeat_timing)
            entry["repeats_ms"].append(t["median_ms"])
            entry["runs"] += t["runs"]
            progress.step(f"{name} repeat {r + 1}")
            save()
    save()
    return results, progress.measured


def time_models(paths, timer, timing, repeats):
    """``paths`` (local .tflite files) timed in ``repeats`` interleaved rounds with the kit's
    whole-model protocol: one row per file (file, median_ms, repeats_ms)."""
    import shutil

    names = [f"model{i}.tflite" for i in range(len(paths))]  # unique, and plain for adb push
    rounds = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        for i, path in enumerate(paths):
            shutil.copyfile(path, Path(folder) / names[i])
        timer.kit_dir = Path(folder)
        for _ in range(repeats):
            for i, path in enumerate(paths):
                try:
                    rounds[names[i]].append(timer.time(names[i], timing)["median_ms"])
                except KitError:
                    raise
                except Exception as e:  # the interpreter's own refusal of a file
                    raise KitError(
                        f"--model: {path}: the interpreter cannot run it: {_tail(str(e))}"
                    ) from None
    return [
        {"file": str(path), "median_ms": statistics.median(rounds[names[i]]), "repeats_ms": rounds[names[i]]}
        for i, path in enumerate(paths)
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Measure a device kit's models on this device.")
    parser.add_argument("--kit", default=None, help="kit folder (default: the folder of this file)")
    parser.add_argument("--threads", type=int, default=1, help="pinned interpreter threads (default 1)")
    parser.add_argument("--out", default=None, help="results file (default results.json)")
    parser.add_argument(
        "--model",
        nargs="+",
        default=None,
        metavar="FILE",
        help="time these .tflite files (e.g. a run's model.tflite) with the kit's protocol instead of the kit",
    )
    parser.add_argument("--adb", action="store_true", help="time on an Android device over adb")
    parser.add_argument("--serial", default=None, help="adb device serial (with --adb)")
    parser.add_argument(
        "--benchmark-model",
        default=None,
        help="TFLite benchmark_model binary: a local file (pushed) or a path on the device",
    )
    args = parser.parse_args(argv)
    try:
        if args.threads < 1:
            raise KitError(f"--threads: expected an int >= 1, got {args.threads}.")
        kit_dir = Path(args.kit) if args.kit else Path(__file__).resolve().parent
        out = Path(args.out or "results.json")
        # The kit first (a damaged copy is found before any device is touched), then the device.
        checked = load_manifest(kit_dir)
        if args.model:
            if args.out:
                raise KitError("--model prints its timings; --out is for measuring the kit.")
            for m in args.model:
                if not Path(m).is_file():
                    raise KitError(f"--model: {m}: no such file.")
        else:
            check_files(kit_dir, checked[0])
        if args.adb:
            if not args.benchmark_model:
                raise KitError(
                    "--adb: expected --benchmark-model PATH (TFLite's benchmark_model for the phone)."
                )
            timer = AdbTimer(kit_dir, args.threads, args.serial, args.benchmark_model)
            mode = "adb"
        else:
            if args.serial or args.benchmark_model:
                raise KitError("--serial and --benchmark-model need --adb.")
            timer = LocalTimer(kit_dir, args.threads)
            mode = "local"
        start = time.time()
        if args.model:
            timing = checked[0]["timing"]
            rows = time_models(
                [Path(m) for m in args.model], timer, tuple(timing["repeat"]), int(timing["repeats"])
            )
            where = timer.describe()
            for r in rows:
                print(
                    "{}: {:.4g} ms (median of {} interleaved repeats, {:.4g}-{:.4g} ms; {} thread(s), {} {})".format(
                        r["file"],
                        r["median_ms"],
                        len(r["repeats_ms"]),
                        min(r["repeats_ms"]),
                        max(r["repeats_ms"]),
                        args.threads,
                        where.get("interpreter"),
                        where.get("interpreter_version"),
                    )
                )
            return 0
        results, measured = measure(kit_dir, out, timer, args.threads, mode, checked)
    except KitError as e:
        sys.stderr.write(f"measure.py: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\nmeasure.py: stopped; what was measured is saved (run again to continue).\n")
        return 130
    print(
        f"{measured} measurements in {time.time() - start:.0f} s "
        f"({len(results['blocks'])} blocks, {len(results['models'])} models) -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
