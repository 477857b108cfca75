"""Every export format side by side on real MNIST (mnist5k): tflite int8, tflite fp32, onnx,
openvino, tvm and executorch (fp32 and int8), each file written by ``compress_and_export``,
re-loaded from disk in its own runtime and measured (test accuracy, size, latency), for the
quickstart winner and the 333k-parameter model of ``benchmarks/compression.py``.

Latency: every file of one model is timed in the same interleaved rounds (``time_interleaved``,
1 thread), so a change of machine load hits all alike; medians and ratios come from one run.
Also times how long converting blocks for ``nas latency profile --runtime tvm|executorch`` takes.

Run: ``.venv/bin/python benchmarks/runtimes.py`` -> ``benchmarks/results/runtimes.{json,md}``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import CompressData, Trainer, compress_and_export  # noqa: E402
from latency_models.table import write_atomic  # noqa: E402
from search_spaces import TaskShape, get_space  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUICKSTART_OPTIONS = {
    "strides": [1, 2, 2],
    "widths": [[8, 16], [16, 24], [24, 40]],
    "depths": [1, 2],
    "kernels": [3, 5],
    "expands": [1, 3, 6],
    "se": [False, True],
    "acts": ["relu6"],
}
MODELS = {
    # The winner of the first `nas run examples/quickstart.yaml` in benchmarks/results/quickstart.json.
    "quickstart winner": {
        "options": QUICKSTART_OPTIONS,
        "arch": "d1-k3-e1-w16-se0-relu6+d2-k5-e3-w16-se1-relu6+d1-k5-e1-w40-se1-relu6",
    },
    # LARGE of benchmarks/compression.py (333,898 parameters).
    "compression model (333k)": {
        "options": {"widths": [[16, 24], [32, 48], [64, 96]], "head_width": 128},
        "arch": "d1-k3-e1-w24-se0-relu6+d2-k3-e4-w48-se0-relu6+d3-k3-e6-w96-se0-relu6",
    },
}
EPOCHS = 8
FP32_FLOOR_POINTS = 0.5
INT8_FLOOR_POINTS = 1.5
FP32_FORMATS = ["tflite", "onnx", "openvino", "tvm", "executorch"]
INT8_FORMATS = ["tflite", "executorch"]
PROFILE_BLOCKS = 8


def say(message: str) -> None:
    print(f"[bench runtimes] {message}", file=sys.stderr, flush=True)


def build(spec: dict[str, Any]) -> Any:
    from search_spaces.backend import set_seed

    set_seed(0)
    space = get_space("mbconv", spec["options"])
    return space.build(space.parse(spec["arch"]), TaskShape((28, 28, 1), 10))


def session_for(fmt: str, path: Path) -> Any:
    """The file on disk loaded in its own runtime (what is timed)."""
    from latency_models.runtimes import executorch, onnxruntime, openvino, tvm
    from latency_models.runtimes.litert import LiteRTSession

    if fmt == "tflite":
        return LiteRTSession(path.read_bytes(), 1)
    loader = {
        "onnx": onnxruntime.load_file,
        "openvino": openvino.load_file,
        "tvm": tvm.load_file,
        "executorch": executorch.load_file,
    }[fmt]
    return loader(path, threads=1)


def export_all(name: str, model: Any, data: CompressData, tmp: Path) -> dict[str, Any]:
    keras_acc = float(np.mean(np.argmax(model.predict(data.x_test, verbose=0), 1) == data.y_test))
    rows: list[dict[str, Any]] = []
    sessions: list[tuple[Any, np.ndarray]] = []
    for pipeline, formats in (([], FP32_FORMATS), (["int8:300"], INT8_FORMATS)):
        out = tmp / f"{name.split()[0]}-{'int8' if pipeline else 'fp32'}"
        t0 = time.perf_counter()
        report = compress_and_export(model, data, pipeline, formats, out, progress=say)
        say(f"{name} {pipeline or 'fp32'}: exported {formats} in {time.perf_counter() - t0:.0f} s")
        for e in report.exports:
            row = e.as_dict()
            row["label"] = f"{e.format} {e.dtype}"
            row["accuracy_points_vs_fp32_model"] = round(100 * (e.accuracy - keras_acc), 3)
            rows.append(row)
            sessions.append((session_for(e.format, out / e.files[0]), data.x_test[0]))
    from latency_models.profile import time_interleaved

    say(f"{name}: timing {len(sessions)} files in interleaved repeats")
    timings = time_interleaved(sessions, repeats=7)
    for row, t in zip(rows, timings, strict=True):
        row["interleaved"] = t.as_dict()
    return {"keras_fp32_test_accuracy": keras_acc, "params": int(model.count_params()), "exports": rows}


def profile_cost() -> dict[str, Any]:
    """Seconds to convert blocks of the quickstart space for each runtime (what a first
    ``nas latency profile`` pays before timing), in this process, one block after another."""
    import random

    from latency_models.runtimes import get_runtime

    space = get_space("mbconv", QUICKSTART_OPTIONS)
    task = TaskShape((28, 28, 1), 10)
    rng = random.Random(0)
    blocks: list[Any] = []
    while len(blocks) < PROFILE_BLOCKS:
        for b in space.blocks(space.random(rng), task):
            if b not in blocks and len(blocks) < PROFILE_BLOCKS:
                blocks.append(b)
    all_blocks = {b for _ in range(200) for b in space.blocks(space.random(rng), task)}
    out: dict[str, Any] = {
        "blocks_timed": len(blocks),
        "distinct_blocks_in_200_random_archs": len(all_blocks),
    }
    for runtime, dtype in (("litert", "int8"), ("litert", "fp32"), ("tvm", "fp32"), ("executorch", "fp32")):
        rt = get_runtime(runtime)
        from latency_models.profile import random_representative

        seconds = []
        for b in blocks:
            model = space.block_model(b)
            samples = random_representative(tuple(int(d) for d in model.inputs[0].shape[1:]))
            t0 = time.perf_counter()
            rt.convert(model, dtype, samples if dtype == "int8" else None)
            seconds.append(time.perf_counter() - t0)
        out[f"{runtime} {dtype}"] = {
            "median_s_per_block": float(np.median(seconds)),
            "total_s": float(sum(seconds)),
        }
        say(f"profile cost {runtime} {dtype}: {np.median(seconds):.2f} s per block")
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Every export format side by side (mnist5k, test split of 1000 digits, 1 thread)",
        "",
        f"Measured {r['date']} on {r['machine']['cpu']} ({r['machine']['cpu_count']} cores), load average "
        f"{r['load_average_before'][0]:.1f} before / {r['load_average_after'][0]:.1f} after: the machine was "
        "shared with other engineers' jobs, so absolute latencies are noisy; every file of a model was timed "
        "in the same interleaved rounds (7 repeats), so ratios within a table are the fairer figure. "
        f"Models trained {EPOCHS} epochs here (seed 0). Accuracy is each file re-loaded from disk in its "
        "own runtime; Δ is points against the fp32 Keras model's test accuracy.",
        "",
        f"Command: `{r['command']}`",
        "",
    ]
    for name, m in r["models"].items():
        lines += [
            f"## {name}: `{MODELS[name]['arch']}` ({m['params']:,} params, fp32 Keras test accuracy "
            f"{100 * m['keras_fp32_test_accuracy']:.1f}%)",
            "",
            "| format | files | size | accuracy | Δ points | latency median (ms) | spread ± | vs tflite fp32 | runtime |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        base = next(e for e in m["exports"] if e["label"] == "tflite fp32")["interleaved"]["median_ms"]
        for e in m["exports"]:
            t = e["interleaved"]
            lines.append(
                f"| {e['label']} | {', '.join(e['files'])} | {e['size_bytes'] / 1024:.1f} KB | "
                f"{100 * e['accuracy']:.1f}% | {e['accuracy_points_vs_fp32_model']:+.1f} | {t['median_ms']:.3f} | "
                f"{t['spread_ms']:.3f} | {t['median_ms'] / base:.2f}x | {e['runtime']} |"
            )
        lines.append("")
    lines += ["## Floors", "", "| model | format | Δ points | floor | pass |", "|---|---|---|---|---|"]
    for f in r["floors"]:
        lines.append(f"| {f['model']} | {f['label']} | {f['points']:+.2f} | >= -{f['floor']} | {f['pass']} |")
    cost = r["profile_cost"]
    lines += [
        "",
        "## Converting blocks for a latency table (`nas latency profile --runtime ...`)",
        "",
        f"Seconds to convert one block of the quickstart space ({cost['blocks_timed']} blocks, one after "
        "another in one process; a profile then times each block). 200 random architectures of the "
        f"space hold {cost['distinct_blocks_in_200_random_archs']} distinct blocks.",
        "",
        "| runtime | median s per block | blocks converted | total s |",
        "|---|---|---|---|",
    ]
    for key, v in cost.items():
        if isinstance(v, dict):
            lines.append(
                f"| {key} | {v['median_s_per_block']:.2f} | {cost['blocks_timed']} | {v['total_s']:.1f} |"
            )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(lines)


def main() -> int:
    from importlib.metadata import version

    from latency_models.profile import machine_fingerprint
    from nas.data import load_task

    if sys.argv[1:] == ["--only", "markdown"]:
        results = json.loads((RESULTS / "runtimes.json").read_text())
        write_atomic(RESULTS / "runtimes.md", markdown(results))
        return 0
    start = time.perf_counter()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "nice -n 10 .venv/bin/python benchmarks/runtimes.py",
        "machine": machine_fingerprint(),
        "python": platform.python_version(),
        "load_average_before": list(os.getloadavg()),
        "versions": {
            p: version(p)
            for p in (
                "tensorflow",
                "ai-edge-litert",
                "onnxruntime",
                "openvino",
                "apache-tvm",
                "executorch",
                "torch",
            )
        },
        "epochs": EPOCHS,
        "models": {},
    }
    results["profile_cost"] = profile_cost()
    data = load_task("mnist5k").compress_data()
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    trainer = Trainer(learning_rate=5e-3, batch_size=64, seed=0)
    for name, spec in MODELS.items():
        model = build(spec)
        t0 = time.perf_counter()
        trainer.fit(model, data, EPOCHS, "train")
        say(f"trained {name} ({model.count_params():,} params) in {time.perf_counter() - t0:.0f} s")
        results["models"][name] = export_all(name, model, data, tmp)
    floors = []
    for name, m in results["models"].items():
        for e in m["exports"]:
            if e["format"] not in ("tvm", "executorch"):
                continue
            floor = FP32_FLOOR_POINTS if e["dtype"] == "fp32" else INT8_FLOOR_POINTS
            points = e["accuracy_points_vs_fp32_model"]
            floors.append(
                {
                    "model": name,
                    "label": e["label"],
                    "points": points,
                    "floor": floor,
                    "pass": points >= -floor,
                }
            )
    results["floors"] = floors
    results["load_average_after"] = list(os.getloadavg())
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["notes"] = [
        "tvm int8 is not exported: TVM 0.27 has no QNN path (Relay and its QNN dialect were removed); the Relax "
        "ONNX frontend reads a QDQ model but lowers QuantizeLinear/DequantizeLinear to float arithmetic, so the "
        "library would compute in fp32.",
        "executorch goes ONNX -> PyTorch with edge-nas's own mapping (latency_models/runtimes/onnx_torch.py): "
        "onnx2tf's PyTorch output (2.x) needs Python >= 3.12 (this venv is 3.11) and onnx2torch imports "
        "torchvision, whose PyPI wheels need a CUDA build of torch.",
        "executorch int8 (PT2E XNNPACK quantizer) fails on hard-swish blocks: 'step lower to ExecuTorch/XNNPACK: "
        "RuntimeError: Weight and Input should both be quantized'; both models here use relu6.",
        "The tvm library is compiled with TVM's default pipeline for llvm (no auto-tuning); tuning with "
        "MetaSchedule would change its latency.",
    ]
    write_atomic(RESULTS / "runtimes.json", json.dumps(results, indent=2) + "\n")
    write_atomic(RESULTS / "runtimes.md", markdown(results))
    say(f"done in {results['seconds']:.0f} s")
    return 0 if all(f["pass"] for f in floors) else 1


if __name__ == "__main__":
    sys.exit(main())
