"""The device kit (``nas latency kit`` / ``measure.py`` / ``nas latency import --kit``) and tables
that price blocks they lack (``latency_models.extrapolate``), on real conversions and LiteRT."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latency_models import kit_runner
from latency_models.extrapolate import fit_block_model, merge_tables
from latency_models.predictor import TablePredictor
from latency_models.table import Entry, LatencyTable, MissingEntryError
from nas.cli import main
from search_spaces import Block, TaskShape, get_space

ROOT = Path(__file__).resolve().parent.parent
TINY = {  # 6 blocks: a kit of it builds and measures in seconds
    "strides": [2],
    "widths": [[8]],
    "depths": [1],
    "kernels": [3, 5],
    "expands": [1, 3],
    "se": [False],
    "acts": ["relu6"],
}

# benchmark_model output as its sources print it (tensorflow/lite/tools/benchmark/benchmark_model.cc
# "Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..";
# the Stat line of tensorflow/core/util/stats_calculator: "count= first= curr= min= max= avg= std="
# and, in newer builds, " p5= median= p95="), once plain and once through logcat.
BENCH_NEW = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/edge-nas-kit/b0000.tflite]
INFO: Loaded model /data/local/tmp/edge-nas-kit/b0000.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.004312
INFO: Initialized session in 1.204ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=3566 first=178 curr=131 min=117 max=603 avg=134.2 std=18 p5=121 median=131 p95=160

INFO: Running benchmark for at least 50 iterations and at least 0.3 seconds but terminate if exceeding 150 seconds.
INFO: count=2251 first=140 curr=129 min=118 max=388 avg=132.97 std=12 p5=122 median=128 p95=151

INFO: Inference timings in us: Init: 1204, First inference: 178, Warmup (avg): 134.2, Inference (avg): 132.97
INFO: Memory footprint delta from the start of the tool (MB): init=1.25 overall=1.5
"""
BENCH_OLD_LOGCAT = """\
07-14 13:14:52.190 22838 22838 I tflite  : The input model file size (MB): 3.06409
07-14 13:14:52.190 22838 22838 I tflite  : Initialized session in 92.318ms.
07-14 13:14:52.859 22838 22838 I tflite  : count=3 first=235158 curr=200386 min=199462 max=235158 avg=211669 std=16613
07-14 13:14:56.520 22838 22838 I tflite  : count=25 first=187533 curr=140990 min=140071 max=195121 avg=145528 std=13583
07-14 13:14:56.521 22838 22838 I tflite  : Inference timings in us: Init: 92318, First inference: 235158, Warmup (avg): 211669, Inference (avg): 145528
"""


# -- benchmark_model parsing and the adb command lines ------------------------------------------
def test_benchmark_model_output_is_parsed_median_when_printed_else_mean() -> None:
    new = kit_runner.parse_benchmark_model(BENCH_NEW)
    assert new["statistic"] == "median" and new["median_ms"] == pytest.approx(0.128)
    assert new["mean_ms"] == pytest.approx(0.13297) and new["runs"] == 2251 and new["warmup"] == 3566
    assert new["init_ms"] == pytest.approx(1.204)
    old = kit_runner.parse_benchmark_model(BENCH_OLD_LOGCAT)
    assert old["statistic"] == "avg" and old["median_ms"] == pytest.approx(145.528)
    assert old["runs"] == 25 and old["std_ms"] == pytest.approx(13.583)
    with pytest.raises(kit_runner.KitError, match="no .Inference timings in us. line.*Failed to apply GPU"):
        kit_runner.parse_benchmark_model("ERROR: Failed to apply GPU delegate.\nBenchmarking failed.\n")


def _fake_kit(folder: Path) -> Path:
    """A kit folder whose files only ``adb push`` reads (the stand-in adb never runs them)."""
    folder.mkdir()
    files = []
    for name, role, extra in (
        ("b0000.tflite", "block", {"key": "k0"}),
        ("b0001.tflite", "block", {"key": "k1"}),
        ("invoke_a.tflite", "invoke", {"part": "a"}),
        ("invoke_b.tflite", "invoke", {"part": "b"}),
        ("invoke_ab.tflite", "invoke", {"part": "ab"}),
        ("cal000.tflite", "calibration", {"arch": "x"}),
    ):
        data = name.encode() * 10
        (folder / name).write_bytes(data)
        files.append(
            {"file": name, "sha256": kit_runner.hashlib.sha256(data).hexdigest(), "role": role, **extra}
        )
    manifest = {
        "format": kit_runner.KIT_FORMAT,
        "version": kit_runner.VERSION,
        "timing": {"block": [50, 10, 0.3], "repeat": [50, 10, 0.3], "repeats": 2, "invoke_rounds": 1},
        "blocks_total": 2,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(ROOT / "latency_models" / "kit_runner.py", folder / "measure.py")
    return folder


def test_adb_mode_pushes_and_runs_benchmark_model_with_the_kit_protocol(tmp_path: Path) -> None:
    kit = _fake_kit(tmp_path / "kit")
    bin_dir, log = tmp_path / "bin", tmp_path / "adb.log"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {log}\n'
        'case "$*" in\n'
        f"  *benchmark_model\\ --graph*) cat {tmp_path / 'bench.txt'} ;;\n"
        '  *getprop\\ ro.product.model*) echo "Pixel 4" ;;\n'
        '  *getprop*) echo "13" ;;\n'
        '  *nproc*) echo "8" ;;\n'
        "esac\n"
    )
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "bench.txt").write_text(BENCH_NEW)
    bench = tmp_path / "benchmark_model"
    bench.write_bytes(b"\x7fELF stand-in")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, str(kit / "measure.py"), "--adb", "--serial", "R5X", "--threads", "4"]
    done = subprocess.run(
        [*cmd, "--benchmark-model", str(bench), "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "-s R5X shell mkdir -p /data/local/tmp/edge-nas-kit"
    assert f"-s R5X push {bench} /data/local/tmp/edge-nas-kit/benchmark_model" in lines
    runs = [ln for ln in lines if "--graph=" in ln]
    # 1 invoke round (3 files) + 2 blocks + 2 repeats of 1 model, each file pushed once
    assert len(runs) == 3 + 2 + 2
    assert runs[3] == (
        "-s R5X shell /data/local/tmp/edge-nas-kit/benchmark_model "
        "--graph=/data/local/tmp/edge-nas-kit/b0000.tflite --num_threads=4 --warmup_runs=10 "
        "--num_runs=50 --min_secs=0.3"
    )
    assert sum(ln.startswith("-s R5X push") and "cal000" in ln for ln in lines) == 1
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["mode"] == "adb" and result["device"]["model"] == "Pixel 4"
    assert result["blocks"]["b0000.tflite"]["median_ms"] == pytest.approx(0.128)
    # a failing benchmark_model: one line, exit 2, what was measured kept
    (tmp_path / "bench.txt").write_text("ERROR: Failed to apply GPU delegate.\nBenchmarking failed.\n")
    done = subprocess.run(
        [*cmd, "--benchmark-model", str(bench), "--out", str(tmp_path / "r2.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Failed to apply GPU delegate" in done.stderr


def test_adb_missing_and_bad_arguments_are_one_line(tmp_path: Path) -> None:
    kit = _fake_kit(tmp_path / "kit")
    env = {**os.environ, "PATH": str(tmp_path)}  # no adb here
    for args, expect in (
        (["--adb", "--benchmark-model", "/data/local/tmp/bm"], "adb command is not on PATH"),
        (["--adb"], "expected --benchmark-model"),
        (["--serial", "X"], "need --adb"),
        (["--threads", "0"], "--threads"),
    ):
        done = subprocess.run(
            [sys.executable, str(kit / "measure.py"), *args, "--out", str(tmp_path / "r.json")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2 and expect in done.stderr and "Traceback" not in done.stderr


# -- the runner's timing loop is the project's -----------------------------------------------------
def test_runner_timing_loop_keeps_the_same_rule_as_time_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loops on the same scripted clock: same runs dropped as preempted, same statistics."""
    from latency_models import runtimes

    rng = np.random.default_rng(3)
    # (wall, cpu) ms per call; every 7th call lost the CPU for 2 ms
    calls = [(w + (2.0 if i % 7 == 3 else 0.0), w) for i, w in enumerate(rng.uniform(0.1, 0.3, 400))]

    def run(fn_module_time_calls: object) -> dict:
        clock = {"wall": 0.0, "cpu": 0.0, "i": 0}

        def fn() -> None:
            w, c = calls[clock["i"] % len(calls)]
            clock["i"] += 1
            clock["wall"] += w / 1e3
            clock["cpu"] += c / 1e3

        monkeypatch.setattr(time, "perf_counter", lambda: clock["wall"])
        monkeypatch.setattr(time, "thread_time", lambda: clock["cpu"])
        out = fn_module_time_calls(fn, 50, 10, 0.02, True)  # type: ignore[operator]
        monkeypatch.undo()
        return out if isinstance(out, dict) else out.as_dict()

    ours = run(runtimes.time_calls)
    theirs = run(kit_runner.time_calls)
    assert ours == pytest.approx(theirs)
    assert ours["median_ms"] < 0.35  # the preempted runs were dropped


# -- extrapolating tables ---------------------------------------------------------------------------
def _note10() -> dict[int, LatencyTable]:
    from latency_models.ofa import load_ofa_yaml, vendored

    return {r: load_ofa_yaml(vendored(f"note10_{r}_lookup_table.yaml")) for r in (160, 176, 192, 208, 224)}


def test_leave_one_resolution_out_prices_subnets_within_10_percent() -> None:
    tables = _note10()
    space = get_space("ofa-mbv3", {})
    rng = random.Random(0)
    archs = [space.random(rng) for _ in range(40)]
    for left in (160, 224):  # the two ends: extrapolation, not interpolation
        model = fit_block_model(merge_tables(t.entries for r, t in tables.items() if r != left))
        task = TaskShape((left, left, 3), 1000)
        errors = [
            abs(
                sum(model.price(b) for b in space.blocks(a, task)) / tables[left].price(space.blocks(a, task))
                - 1
            )
            for a in archs
        ]
        assert np.mean(np.asarray(errors) <= 0.10) >= 0.9, (left, np.median(errors))


def test_table_predictor_keeps_entries_exact_prices_the_rest_and_strict_refuses() -> None:
    table = _note10()[224]
    space = get_space("ofa-mbv3", {})
    arch = space.random(random.Random(1))
    task = TaskShape((224, 224, 3), 1000)
    blocks = space.blocks(arch, task)
    dropped = blocks[3]
    partial = LatencyTable(table.meta, {b: e for b, e in table.entries.items() if b != dropped})
    p = TablePredictor(space="ofa-mbv3", device="note10", table=partial, task=task)
    full = TablePredictor(space="ofa-mbv3", device="note10", table=table, task=task)
    assert p.extrapolated([arch]) == [1] and full.extrapolated([arch]) == [0]
    assert p.block_model.price(blocks[0]) == table.entries[blocks[0]].mean_ms  # held: exact
    estimate = p.block_model.price(dropped)
    assert estimate == pytest.approx(table.entries[dropped].mean_ms, rel=0.25)
    assert float(p.predict([arch])[0]) == pytest.approx(float(full.predict([arch])[0]), rel=0.05)
    strict = TablePredictor(space="ofa-mbv3", device="note10", table=partial, task=task, strict=True)
    with pytest.raises(MissingEntryError, match="no entry for block"):
        strict.predict([arch])
    # the flag survives the predictor file
    from latency_models.predictor import PREDICTORS

    doc = json.loads(strict.to_json())
    assert doc["strict"] is True and PREDICTORS["table"]._from_payload(doc, "p.json").strict


def test_predict_cli_reports_extrapolated_blocks_and_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """OFA's 224 table and the width-1.0 supernet: every block of another width is extrapolated."""
    from latency_models.ofa import vendored

    table = tmp_path / "note10.json"
    assert (
        main(
            [
                "latency",
                "import",
                str(vendored("note10_224_lookup_table.yaml")),
                "--format",
                "ofa-yaml",
                "--out",
                str(table),
            ]
        )
        == 0
    )
    space = get_space("ofa-mbv3", {"width_mult": 1.0})
    archs = tmp_path / "a.csv"
    archs.write_text("arch\n" + "\n".join(str(space.random(random.Random(i))) for i in range(3)) + "\n")
    out = tmp_path / "p.csv"
    common = [
        "latency",
        "predict",
        "--table",
        str(table),
        "--space",
        "ofa-mbv3",
        "--space-options",
        '{"width_mult": 1.0}',
    ]
    assert main([*common, "--archs", str(archs), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "arch,latency_ms,extrapolated_blocks" and all(
        int(r.split(",")[2]) > 0 for r in rows[1:]
    )
    assert "3 with blocks the table lacks" in capsys.readouterr().out
    assert main([*common, "--strict", "--archs", str(archs), "--out", str(tmp_path / "q.csv")]) == 2
    assert "no entry for block" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()


# -- a real kit: build, measure with the runner, import ------------------------------------------------
@pytest.fixture(scope="module")
def tiny_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kit = tmp_path_factory.mktemp("kit") / "kit"
    archs = kit.parent / "archs.csv"
    space = get_space("mbconv", TINY)
    archs.write_text(f"arch\n{space.random(random.Random(5))}\n{space.random(random.Random(6))}\n")
    args = ["latency", "kit", "--space", "mbconv", "--space-options", json.dumps(TINY), "--archs", str(archs)]
    assert main([*args, "--input-shape", "12,12,1", "--calibration-models", "2", "--out", str(kit)]) == 0
    return kit


@pytest.fixture(scope="module")
def tiny_results(tiny_kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("device") / "results.json"
    done = subprocess.run(
        [sys.executable, str(tiny_kit / "measure.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out


def test_kit_holds_every_block_with_hashes_and_imports_to_a_pricing_table(
    tiny_kit: Path, tiny_results: Path, tmp_path: Path
) -> None:
    manifest = json.loads((tiny_kit / "manifest.json").read_text())
    space = get_space("mbconv", TINY)
    task = TaskShape((12, 12, 1), 10)
    assert {f["key"] for f in manifest["files"] if f["role"] == "block"} == {
        b.key for b in space.all_blocks(task)
    }
    assert sum(f["role"] == "calibration" for f in manifest["files"]) == 2
    assert (tiny_kit / "measure.py").read_text() == (ROOT / "latency_models" / "kit_runner.py").read_text()
    results = json.loads(tiny_results.read_text())
    assert results["device"]["interpreter"] == "ai-edge-litert" and results["device"]["cpu"]
    table_path = tmp_path / "dev.json"
    assert (
        main(["latency", "import", str(tiny_results), "--kit", str(tiny_kit), "--out", str(table_path)]) == 0
    )
    table = LatencyTable.load(table_path)
    assert len(table) == manifest["blocks_total"]
    assert len(table.meta.extra["calibration"]) == 2 and table.meta.extra["invoke_overhead_ms"] >= 0
    measured = (tmp_path / "dev.archs.csv").read_text().splitlines()
    assert measured[0] == "arch,latency_ms" and len(measured) == 3
    assert sum(f["role"] == "arch" for f in manifest["files"]) == 2
    fit = [
        "latency",
        "fit",
        "--space",
        "mbconv",
        "--table",
        str(table_path),
        "--measurements",
        str(tmp_path / "dev.archs.csv"),
    ]
    assert main([*fit, "--out", str(tmp_path / "p.json")]) == 0
    p = TablePredictor(space="mbconv", device="d", table=table, task=task, space_options=TINY)
    archs = [space.parse(c["arch"]) for c in table.meta.extra["calibration"]]
    fitted = p.with_correction(archs, [c["latency_ms"] for c in table.meta.extra["calibration"]])
    assert fitted.correction.n_measurements == 2 and np.all(fitted.predict(archs) > 0)


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("other_kit", "measured with another kit"),
        ("missing_block", "blocks not measured (e.g. b0"),
        ("changed_file", "sha256 differs from the kit's manifest"),
        ("short_repeats", "repeats; run measure.py again"),
        ("bad_value", "expected a finite number of ms > 0"),
    ],
)
def test_import_refuses_results_that_do_not_match_the_kit(
    tiny_kit: Path,
    tiny_results: Path,
    tmp_path: Path,
    damage: str,
    expect: str,
    capsys: pytest.CaptureFixture,
) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(tiny_kit, kit)
    doc = json.loads(tiny_results.read_text())
    if damage == "other_kit":
        doc["kit"] = "0" * 64
    elif damage == "missing_block":
        doc["blocks"].pop(sorted(doc["blocks"])[1])
    elif damage == "changed_file":
        (kit / "b0001.tflite").write_bytes((kit / "b0001.tflite").read_bytes() + b"\0")
    elif damage == "short_repeats":
        doc["models"]["cal000.tflite"]["repeats_ms"] = doc["models"]["cal000.tflite"]["repeats_ms"][:1]
    else:
        doc["blocks"]["b0000.tflite"]["median_ms"] = float("nan")
    results = tmp_path / "results.json"
    results.write_text(json.dumps(doc))
    out = tmp_path / "t.json"
    assert main(["latency", "import", str(results), "--kit", str(kit), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err and not out.exists()


def test_run_with_an_imported_table_fits_the_overhead_correction(
    tiny_kit: Path, tiny_results: Path, tmp_path: Path
) -> None:
    from nas.config import LatencyConfig
    from nas.latency_model import _table_calibration

    table_path = tmp_path / "dev.json"
    assert (
        main(["latency", "import", str(tiny_results), "--kit", str(tiny_kit), "--out", str(table_path)]) == 0
    )
    table = LatencyTable.load(table_path)
    space = get_space("mbconv", TINY)
    said: list[str] = []
    records = _table_calibration(table, space, TaskShape((12, 12, 1), 10), str(table_path), said.append)
    assert len(records) == 2 and "fitted on its 2 calibration models" in said[0]
    assert _table_calibration(table, space, TaskShape((28, 28, 1), 10), "t", said.append) == []
    assert "not used" in said[-1]
    with pytest.raises(Exception, match="latency.strict"):
        LatencyConfig(device="d", table=str(table_path), strict="yes")  # type: ignore[arg-type]


def test_kit_refuses_an_existing_folder_and_bad_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "x").write_text("mine")
    base = ["latency", "kit", "--space", "mbconv", "--space-options", json.dumps(TINY)]
    assert main([*base, "--out", str(tmp_path / "k")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main([*base, "--fraction", "0", "--out", str(tmp_path / "k2")]) == 2
    assert "--fraction" in capsys.readouterr().err and not (tmp_path / "k2").exists()


def test_spanning_subset_covers_every_group_and_the_extremes() -> None:
    from latency_models.extrapolate import group_of
    from latency_models.kit import spanning_subset

    blocks = list(_note10()[224].entries)
    chosen = spanning_subset(blocks, 1 / 3)
    assert len(chosen) == int(np.ceil(len(blocks) / 3))
    assert {group_of(b) for b in chosen} == {group_of(b) for b in blocks}
    assert spanning_subset(blocks, 1 / 3) == chosen  # deterministic


def test_block_model_needs_entries() -> None:
    from search_spaces import InputError

    with pytest.raises(InputError, match="at least one entry"):
        fit_block_model({})
    m = fit_block_model({Block("conv", 8, 8, 3, 8, 3): Entry(0.1)})
    assert m.price(Block("dense", 1, 1, 8, 10)) is None  # no entry of its kind: nothing to fit on


# -- slow: the minimal venv as the device, stopped with kill -9 and restarted ------------------------
KIT_VENV = Path(os.environ.get("EDGE_NAS_KIT_VENV", "/tmp/kitvenv"))


@pytest.mark.slow
@pytest.mark.skipif(
    not (KIT_VENV / "bin" / "python").exists(), reason="no minimal venv (numpy + ai-edge-litert)"
)
def test_minimal_venv_runner_survives_kill_9_and_measures_only_what_was_missing(
    tiny_kit: Path, tmp_path: Path
) -> None:
    device = tmp_path / "device"
    shutil.copytree(tiny_kit, device / "kit")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = str(KIT_VENV / "bin" / "python")
    probe = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, env=env, cwd=device)
    assert probe.returncode != 0  # no TensorFlow: the kit's runner needs only numpy and LiteRT
    cmd = [python, "kit/measure.py", "--out", "results.json"]
    proc = subprocess.Popen(cmd, cwd=device, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = device / "results.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(results.read_text())["blocks"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the runner finished before it could be stopped"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(results.read_text())
    done = subprocess.run(cmd, cwd=device, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = json.loads(results.read_text())
    assert all(after["blocks"][k] == v for k, v in before["blocks"].items())
    n_blocks = json.loads((tiny_kit / "manifest.json").read_text())["blocks_total"]
    assert sum(v["session"] == 1 for v in after["blocks"].values()) == n_blocks - len(before["blocks"])
    assert "resuming" in done.stderr
    assert (
        main(["latency", "import", str(results), "--kit", str(tiny_kit), "--out", str(tmp_path / "t.json")])
        == 0
    )


def test_run_latency_model_from_a_kit_table_extrapolates_and_strict_refuses(
    tiny_kit: Path, tiny_results: Path, tmp_path: Path
) -> None:
    """``nas run``'s latency model on an imported table that lacks a block: the correction is
    fitted on the kit's calibration networks, the missing block is counted, strict refuses."""
    from nas.config import parse_config
    from nas.data import load_task
    from nas.latency_model import build_latency_model

    table_path = tmp_path / "dev.json"
    assert (
        main(["latency", "import", str(tiny_results), "--kit", str(tiny_kit), "--out", str(table_path)]) == 0
    )
    table = LatencyTable.load(table_path)
    dropped = sorted(table.entries, key=lambda b: b.key)[2]
    LatencyTable(table.meta, {b: e for b, e in table.entries.items() if b != dropped}).save(table_path)
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.random((60, 12, 12, 1)).astype("float32"), y=np.arange(60) % 10)
    doc = {
        "task": {"data": str(npz)},
        "space": {"name": "mbconv", "options": TINY},
        "latency": {"device": "kit", "table": str(table_path)},
    }
    config = parse_config(doc)
    said: list[str] = []
    model = build_latency_model(config, get_space("mbconv", TINY), load_task(config.task), said.append)
    assert "(1 of 6 blocks of the space extrapolated)" in model.description
    assert model.predictor.correction.n_measurements == 2 and len(model.calibration) == 2
    assert any("fitted on its 2 calibration models" in s for s in said)
    strict = parse_config({**doc, "latency": {**doc["latency"], "strict": True}})
    with pytest.raises(MissingEntryError, match=f"no entry for block {dropped.key}"):
        build_latency_model(strict, get_space("mbconv", TINY), load_task(strict.task))


def test_runner_refuses_a_damaged_kit_and_results_of_another_kit(tmp_path: Path) -> None:
    kit = _fake_kit(tmp_path / "kit")
    run = [sys.executable, str(kit / "measure.py"), "--adb", "--benchmark-model", "/x/bm"]
    (kit / "b0001.tflite").write_bytes(b"changed")
    done = subprocess.run(
        [*run, "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "b0001.tflite: sha256 differs" in done.stderr
    manifest = json.loads((kit / "manifest.json").read_text())
    del manifest["timing"]
    (kit / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [*run, "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "timing: expected" in done.stderr and "Traceback" not in done.stderr
    other = _fake_kit(tmp_path / "other")
    (tmp_path / "r.json").write_text(json.dumps({"format": kit_runner.RESULTS_FORMAT, "kit": "0" * 64}))
    done = subprocess.run(
        [sys.executable, str(other / "measure.py"), "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "measured with another kit" in done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["kit"] == "0" * 64  # left as it was


def test_runner_is_standalone_python_3_9() -> None:
    """``measure.py`` parses as Python 3.9 and imports nothing of this project (nor TensorFlow at
    module level): a device needs only numpy and a TFLite interpreter."""
    import ast

    source = (ROOT / "latency_models" / "kit_runner.py").read_text()
    tree = ast.parse(source, feature_version=(3, 9))
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    assert not imported & {"latency_models", "nas", "search_spaces", "compress", "tensorflow"}
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert "numpy" not in top  # imported where used: --help and bad arguments need no numpy


def test_runner_times_a_shipped_file_with_the_kit_protocol(tiny_kit: Path, tmp_path: Path) -> None:
    """``measure.py --model FILE``: any .tflite (a run's model.tflite) timed on the device the way
    the kit's whole models are; a missing or broken file is one line, exit 2."""
    model = tmp_path / "model.tflite"
    shutil.copy(tiny_kit / "arc000.tflite", model)
    runner = [sys.executable, str(tiny_kit / "measure.py"), "--model"]
    done = subprocess.run([*runner, str(model)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    repeats = json.loads((tiny_kit / "manifest.json").read_text())["timing"]["repeats"]
    line = done.stdout.strip()
    assert line.startswith(f"{model}: ") and f"median of {repeats} interleaved repeats" in line
    assert float(line.split(": ")[1].split(" ms")[0]) > 0
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    for args, says in (([str(broken)], "cannot run it"), ([str(tmp_path / "none.tflite")], "no such file")):
        done = subprocess.run([*runner, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert says in done.stderr.strip().splitlines()[-1]
