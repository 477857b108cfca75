"""Compression floors on real MNIST (mnist5k): int8 size and accuracy, 50% pruning + int8 gzip
size, structured pruning MACs vs measured LiteRT latency, distillation over 3 seeds, and the int8
vs fp32 LiteRT speedup, for a quickstart-sized model and a larger mbconv model (>= 200k params).

Run: ``.venv/bin/python benchmarks/compression.py`` -> ``benchmarks/results/compression.{json,md}``.
Every number comes from files exported by ``compress.compress_and_export`` and re-measured.
"""

from __future__ import annotations

import json
import statistics
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
LARGE = {
    "options": {"widths": [[16, 24], [32, 48], [64, 96]], "head_width": 128},
    "arch": "d1-k3-e1-w24-se0-relu6+d2-k3-e4-w48-se0-relu6+d3-k3-e6-w96-se0-relu6",
}
QUICK = {
    "options": {
        "strides": [1, 2, 2],
        "widths": [[8, 16], [16, 24], [24, 40]],
        "kernels": [3, 5],
        "expands": [1, 3, 6],
    },
    "arch": "d1-k3-e1-w16-se0-relu6+d2-k3-e6-w24-se0-relu6+d2-k5-e6-w40-se0-relu6",
}
# MobileNetV2-style larger variants (wider later stages, 1x1 head conv before pooling), built
# only to measure how the int8/fp32 file size ratio depends on the shape: file sizes do not depend
# on the weight values, so these are not trained.
SURVEY = {
    "mbv2-head1280": {
        "options": {"widths": [[24], [48], [96]], "head_width": 1280},
        "arch": LARGE["arch"],
    },
    "mbv2-4stage-w160-head640": {
        "options": {"strides": [1, 2, 2, 1], "widths": [[24], [48], [96], [160]], "head_width": 640},
        "arch": "d1-k3-e1-w24-se0-relu6+d2-k3-e4-w48-se0-relu6+d2-k3-e6-w96-se0-relu6+d1-k3-e6-w160-se0-relu6",
    },
    "mbv2-4stage-e4-head1280": {
        "options": {"strides": [1, 2, 2, 1], "widths": [[24], [40], [80], [160]], "head_width": 1280},
        "arch": "d1-k3-e1-w24-se0-relu6+d2-k3-e4-w40-se0-relu6+d2-k3-e4-w80-se0-relu6+d1-k3-e4-w160-se0-relu6",
    },
}
# int8 (per-channel, the converter default) with strings kept, then stripped (the int8 default),
# then int8 with one weight scale per tensor (stripped): one row each, each its own exported file.
INT8_STEPS = "strip:keep,int8:300,strip,int8:300:per_channel=0"
EPOCHS = 8
STUDENT_EPOCHS = 4
SEEDS = (0, 1, 2)


def say(message: str) -> None:
    print(f"[bench compression] {message}", file=sys.stderr, flush=True)


def build(spec: dict[str, Any], seed: int) -> Any:
    from search_spaces.backend import set_seed

    set_seed(seed)
    space = get_space("mbconv", spec["options"])
    return space.build(space.parse(spec["arch"]), TaskShape((28, 28, 1), 10))


def run(model: Any, data: CompressData, pipeline: str, out: Path, **kw: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    report = compress_and_export(model, data, pipeline, ["tflite"], out, **kw)
    say(f"{pipeline}: {time.perf_counter() - t0:.0f} s")
    return report.to_dict()


def row(report: dict[str, Any], index: int = -1) -> dict[str, Any]:
    return report["rows"][index]


def paired_latency(a: bytes, b: bytes, rounds: int = 7) -> tuple[float, float]:
    """Median-of-medians LiteRT 1-thread latency of two files timed alternately (shared, noisy
    cores: interleaving keeps both under the same load)."""
    from latency_models.runtimes.litert import LiteRTSession

    sa, sb = LiteRTSession(a, 1), LiteRTSession(b, 1)
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(sa.time(None, runs=100, warmup=10, min_total_s=0.3).median_ms)
        tb.append(sb.time(None, runs=100, warmup=10, min_total_s=0.3).median_ms)
    return statistics.median(ta), statistics.median(tb)


def fp32_file(model: Any) -> bytes:
    from latency_models.runtimes.litert import convert_tflite

    return convert_tflite(model, "fp32")


def export_formats(large: Any, data: CompressData, tmp: Path) -> dict[str, Any]:
    """The larger model, int8, exported to every format and re-measured with each runtime."""
    t0 = time.perf_counter()
    report = compress_and_export(
        large, data, "int8:300", ["tflite", "tflm", "onnx", "openvino"], tmp / "large-all"
    )
    say(f"all formats: {time.perf_counter() - t0:.0f} s")
    return {e.format: e.as_dict() for e in report.exports}


def size_survey(data: CompressData) -> dict[str, Any]:
    """int8/fp32 .tflite size ratios of the survey shapes (untrained: sizes do not depend on the
    weight values), per-channel, stripped, and per-tensor + stripped."""
    from compress.quantization import convert_int8_per_tensor
    from compress.strip import strip_tflite
    from latency_models.runtimes.litert import convert_tflite

    out = {}
    calibration = data.calibration(300)
    for name, spec in SURVEY.items():
        model = build(spec, 0)
        fp32 = len(fp32_file(model))
        per_channel = convert_tflite(model, "int8", calibration)
        per_tensor = strip_tflite(convert_int8_per_tensor(model, calibration))
        out[name] = {
            **spec,
            "params": model.count_params(),
            "fp32_bytes": fp32,
            "int8_bytes": len(per_channel),
            "int8_stripped_bytes": len(strip_tflite(per_channel)),
            "int8_per_tensor_stripped_bytes": len(per_tensor),
        }
        say(f"survey {name}: {model.count_params():,} params, int8 {len(per_channel) / fp32:.3f} of fp32")
    return out


def main() -> int:
    from nas.data import load_task

    if sys.argv[1:] == ["--only", "exports"]:
        return only_exports()
    if sys.argv[1:] == ["--only", "markdown"]:
        results = json.loads((RESULTS / "compression.json").read_text())
        write_atomic(RESULTS / "compression.md", markdown(results))
        return 0

    start = time.perf_counter()
    data = load_task("mnist5k").compress_data()
    tmp = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    results: dict[str, Any] = {"epochs": EPOCHS, "student_epochs": STUDENT_EPOCHS, "seeds": list(SEEDS)}
    trainer = Trainer(learning_rate=5e-3, batch_size=64, seed=0)
    results["survey"] = size_survey(data)

    models = {}
    for name, spec in (("large", LARGE), ("quickstart", QUICK)):
        model = build(spec, 0)
        t0 = time.perf_counter()
        trainer.fit(model, data, EPOCHS, "train")
        models[name] = model
        say(f"trained {name} ({model.count_params():,} params) in {time.perf_counter() - t0:.0f} s")

    for name, model in models.items():
        entry: dict[str, Any] = {
            "arch": (LARGE if name == "large" else QUICK)["arch"],
            "params": model.count_params(),
        }
        int8 = run(model, data, INT8_STEPS, tmp / f"{name}-int8")
        fp32, q = row(int8, 0), row(int8, 2)
        fp32_bytes = fp32_file(model)
        from compress.strip import strip_tflite
        from latency_models.runtimes.litert import convert_tflite

        int8_bytes = strip_tflite(convert_tflite(model, "int8", data.calibration(300)))
        lat_fp32, lat_int8 = paired_latency(fp32_bytes, int8_bytes)
        entry["original"] = fp32
        entry["int8"] = q
        entry["int8_size_ratio"] = q["size_bytes"] / fp32["size_bytes"]
        entry["int8_accuracy_drop_points"] = q["accuracy_drop"]
        for key, index in (("int8_stripped", 3), ("int8_per_tensor", 4)):
            entry[key] = row(int8, index)
            entry[f"{key}_size_ratio"] = row(int8, index)["size_bytes"] / fp32["size_bytes"]
            entry[f"{key}_accuracy_drop_points"] = row(int8, index)["accuracy_drop"]
        entry["latency_fp32_ms"], entry["latency_int8_ms"] = lat_fp32, lat_int8
        entry["int8_speedup"] = lat_fp32 / lat_int8
        results[name] = entry

    large = models["large"]
    results["exports"] = export_formats(large, data, tmp)
    entry = results["large"]
    pruned = run(large, data, f"prune:0.5:epochs=3,{INT8_STEPS}", tmp / "large-prune", trainer=trainer)
    entry["pruned"], entry["pruned_int8"] = row(pruned, 1), row(pruned, 3)
    entry["pruned_int8_gzip_ratio"] = row(pruned, 3)["gzip_bytes"] / row(pruned, 0)["gzip_bytes"]
    entry["pruned_int8_accuracy_drop_points"] = row(pruned, 3)["accuracy_drop"]
    for key, index in (("pruned_int8_stripped", 4), ("pruned_int8_per_tensor", 5)):
        entry[key] = row(pruned, index)
        entry[f"{key}_gzip_ratio"] = row(pruned, index)["gzip_bytes"] / row(pruned, 0)["gzip_bytes"]
        entry[f"{key}_accuracy_drop_points"] = row(pruned, index)["accuracy_drop"]

    structured = run(large, data, "structured:0.5:epochs=3", tmp / "large-structured", trainer=trainer)
    s = row(structured)
    entry["structured"] = s
    entry["structured_macs_cut"] = 1 - s["macs"] / row(structured, 0)["macs"]
    a, b = paired_latency(fp32_file(large), (tmp / "large-structured" / "model_fp32.tflite").read_bytes())
    entry["structured_latency_ms"] = {"original": a, "structured": b}
    entry["structured_latency_cut"] = 1 - b / a
    entry["structured_accuracy_drop_points"] = s["accuracy_drop"]

    # Distillation: the quickstart-sized student from scratch, with the large model as teacher
    # versus alone, same epochs and learning rate, three seeds.
    distill: dict[str, list[float]] = {"with_teacher": [], "alone": []}
    distill_int8 = None
    for seed in SEEDS:
        seed_trainer = Trainer(learning_rate=5e-3, batch_size=64, seed=seed)
        taught = run(
            build(QUICK, seed),
            data,
            f"distill:{STUDENT_EPOCHS}:learning_rate=0.005:alpha=0.3:temperature=4,int8:300",
            tmp / f"distill-{seed}",
            teacher=large,
            trainer=seed_trainer,
        )
        alone = run(
            build(QUICK, seed),
            data,
            f"finetune:{STUDENT_EPOCHS}:learning_rate=0.005",
            tmp / f"alone-{seed}",
            trainer=seed_trainer,
        )
        distill["with_teacher"].append(row(taught, 1)["accuracy"])
        distill["alone"].append(row(alone, 1)["accuracy"])
        if seed == SEEDS[0]:
            distill_int8 = row(taught, 2)
    results["distillation"] = {
        **distill,
        "mean_with_teacher": float(np.mean(distill["with_teacher"])),
        "mean_alone": float(np.mean(distill["alone"])),
    }
    entry["distilled_int8"] = distill_int8

    q, lg = results["quickstart"], results["large"]
    results["floors"] = {
        "large int8 size <= 30% of fp32": lg["int8_size_ratio"] <= 0.30,
        "large int8 drop <= 1.0 point": lg["int8_accuracy_drop_points"] <= 1.0,
        "large int8 stripped (default) size <= 30% of fp32": lg["int8_stripped_size_ratio"] <= 0.30,
        "large int8 per-tensor + strip size <= 30% of fp32": lg["int8_per_tensor_size_ratio"] <= 0.30,
        "large int8 per-tensor + strip drop <= 1.0 point": lg["int8_per_tensor_accuracy_drop_points"] <= 1.0,
        "quickstart int8 size <= 30% of fp32": q["int8_size_ratio"] <= 0.30,
        "quickstart int8 drop <= 1.0 point": q["int8_accuracy_drop_points"] <= 1.0,
        "50% pruning + int8 gzip <= 20% of fp32 gzip": lg["pruned_int8_gzip_ratio"] <= 0.20,
        "50% pruning + int8 drop <= 1.5 points": lg["pruned_int8_accuracy_drop_points"] <= 1.5,
        "50% pruning + int8 per-tensor + strip gzip <= 20% of fp32 gzip": lg[
            "pruned_int8_per_tensor_gzip_ratio"
        ]
        <= 0.20,
        "50% pruning + int8 per-tensor + strip drop <= 1.5 points": lg[
            "pruned_int8_per_tensor_accuracy_drop_points"
        ]
        <= 1.5,
        "structured MACs cut >= 30%": lg["structured_macs_cut"] >= 0.30,
        "structured latency cut >= 20%": lg["structured_latency_cut"] >= 0.20,
        "structured drop <= 1.5 points": lg["structured_accuracy_drop_points"] <= 1.5,
        "distilled student beats student alone (mean of 3 seeds)": results["distillation"][
            "mean_with_teacher"
        ]
        > results["distillation"]["mean_alone"],
    }
    results["seconds"] = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "compression.json", json.dumps(results, indent=2, default=float) + "\n")
    write_atomic(RESULTS / "compression.md", markdown(results))
    print(markdown(results))
    return 0 if all(results["floors"].values()) else 1


def only_exports() -> int:
    """Re-run only the export-format section (same seed and training) into the existing results."""
    from nas.data import load_task

    data = load_task("mnist5k").compress_data()
    results = json.loads((RESULTS / "compression.json").read_text())
    large = build(LARGE, 0)
    Trainer(learning_rate=5e-3, batch_size=64, seed=0).fit(large, data, EPOCHS, "train")
    results["exports"] = export_formats(large, data, Path(tempfile.mkdtemp(prefix="bench-compress-")))
    write_atomic(RESULTS / "compression.json", json.dumps(results, indent=2, default=float) + "\n")
    write_atomic(RESULTS / "compression.md", markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lg, q, d = r["large"], r["quickstart"], r["distillation"]

    def line(name: str, x: dict[str, Any], latency: float | None = None) -> str:
        lat = x["latency_ms"] if latency is None else latency
        return (
            f"| {name} | {x['size_bytes'] / 1024:.1f} KB | {x['gzip_bytes'] / 1024:.1f} KB | {100 * x['accuracy']:.1f}% "
            f"| {lat:.3f} ms | {x['macs']:,} | {x['sparsity']:.2f} |"
        )

    out = [
        f"# Compression benchmark (mnist5k, test split {1000} digits; LiteRT 1 thread on this host)",
        "",
        f"Larger model: `mbconv` {lg['arch']} ({lg['params']:,} params), trained {r['epochs']} epochs.",
        "",
        "| technique | size | gzip | accuracy | latency | MACs | sparsity |",
        "|---|---|---|---|---|---|---|",
        line("original (fp32)", lg["original"], lg["latency_fp32_ms"]),
        line("pruned 50% (fp32)", lg["pruned"]),
        line("structured 50% channels (fp32)", lg["structured"], lg["structured_latency_ms"]["structured"]),
        line("int8 (per-channel, strings kept: `strip:keep`)", lg["int8"]),
        line("int8 (per-channel, stripped: the int8 default)", lg["int8_stripped"], lg["latency_int8_ms"]),
        line("int8 per-tensor, stripped (`int8:per_channel=0`)", lg["int8_per_tensor"]),
        line("int8 + pruned 50%, strings kept", lg["pruned_int8"]),
        line("int8 + pruned 50%, stripped", lg["pruned_int8_stripped"]),
        line("int8 per-tensor + pruned 50%, stripped", lg["pruned_int8_per_tensor"]),
        line("distilled + int8 (quickstart-sized student)", lg["distilled_int8"]),
        "",
        "| floor | measured | pass |",
        "|---|---|---|",
        f"| large int8 (strings kept) size / fp32 size <= 30% | {100 * lg['int8_size_ratio']:.1f}% | {lg['int8_size_ratio'] <= 0.3} |",
        f"| large int8 accuracy drop <= 1.0 pt | {lg['int8_accuracy_drop_points']:.2f} | {lg['int8_accuracy_drop_points'] <= 1.0} |",
        f"| large int8 stripped (default) size / fp32 size <= 30% | {100 * lg['int8_stripped_size_ratio']:.1f}% | {lg['int8_stripped_size_ratio'] <= 0.3} |",
        f"| large int8 per-tensor + stripped size / fp32 size <= 30% | {100 * lg['int8_per_tensor_size_ratio']:.1f}% | {lg['int8_per_tensor_size_ratio'] <= 0.3} |",
        f"| large int8 per-tensor + stripped accuracy drop <= 1.0 pt | {lg['int8_per_tensor_accuracy_drop_points']:.2f} | {lg['int8_per_tensor_accuracy_drop_points'] <= 1.0} |",
        f"| quickstart int8 size / fp32 size | {100 * q['int8_size_ratio']:.1f}% | {q['int8_size_ratio'] <= 0.3} |",
        f"| quickstart int8 accuracy drop | {q['int8_accuracy_drop_points']:.2f} | {q['int8_accuracy_drop_points'] <= 1.0} |",
        f"| quickstart int8 per-tensor + stripped size / fp32 size | {100 * q['int8_per_tensor_size_ratio']:.1f}% (drop {q['int8_per_tensor_accuracy_drop_points']:.2f} pt) | {q['int8_per_tensor_size_ratio'] <= 0.3} |",
        f"| 50% prune + int8 gzip / fp32 gzip <= 20% | {100 * lg['pruned_int8_gzip_ratio']:.1f}% | {lg['pruned_int8_gzip_ratio'] <= 0.2} |",
        f"| 50% prune + int8 drop <= 1.5 pt | {lg['pruned_int8_accuracy_drop_points']:.2f} | {lg['pruned_int8_accuracy_drop_points'] <= 1.5} |",
        f"| 50% prune + int8 stripped (default) gzip / fp32 gzip <= 20% | {100 * lg['pruned_int8_stripped_gzip_ratio']:.1f}% | {lg['pruned_int8_stripped_gzip_ratio'] <= 0.2} |",
        f"| 50% prune + int8 per-tensor + stripped gzip / fp32 gzip <= 20% | {100 * lg['pruned_int8_per_tensor_gzip_ratio']:.1f}% | {lg['pruned_int8_per_tensor_gzip_ratio'] <= 0.2} |",
        f"| 50% prune + int8 per-tensor + stripped drop <= 1.5 pt | {lg['pruned_int8_per_tensor_accuracy_drop_points']:.2f} | {lg['pruned_int8_per_tensor_accuracy_drop_points'] <= 1.5} |",
        f"| structured: MACs cut >= 30% | {100 * lg['structured_macs_cut']:.1f}% | {lg['structured_macs_cut'] >= 0.3} |",
        f"| structured: LiteRT latency cut >= 20% | {100 * lg['structured_latency_cut']:.1f}% | {lg['structured_latency_cut'] >= 0.2} |",
        f"| structured: accuracy drop <= 1.5 pt | {lg['structured_accuracy_drop_points']:.2f} | {lg['structured_accuracy_drop_points'] <= 1.5} |",
        f"| distillation: with teacher vs alone (mean of {len(r['seeds'])} seeds) | {100 * d['mean_with_teacher']:.2f}% vs {100 * d['mean_alone']:.2f}% | {d['mean_with_teacher'] > d['mean_alone']} |",
        f"| int8 vs fp32 LiteRT speedup, large | {lg['int8_speedup']:.2f}x ({lg['latency_fp32_ms']:.3f} -> {lg['latency_int8_ms']:.3f} ms) | reported |",
        f"| int8 vs fp32 LiteRT speedup, quickstart | {q['int8_speedup']:.2f}x ({q['latency_fp32_ms']:.3f} -> {q['latency_int8_ms']:.3f} ms) | reported |",
        "",
        f"Distillation accuracies per seed: with teacher {[round(100 * a, 1) for a in d['with_teacher']]}, alone {[round(100 * a, 1) for a in d['alone']]}.",
        f"Total time {r['seconds']:.0f} s.",
        "",
    ]
    if "survey" in r:
        out += [
            "Other larger shapes considered (MobileNetV2-style: wider later stages, 1x1 head conv before pooling); "
            "file sizes only, untrained weights (a file's size does not depend on the weight values):",
            "",
            "| shape | params | fp32 | int8 | int8 stripped | int8 per-tensor stripped |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in r["survey"].items():
            fp = v["fp32_bytes"]
            out.append(
                f"| {name} (`{v['arch']}`, head {v['options'].get('head_width', 0)}) | {v['params']:,} | {fp / 1024:.1f} KB "
                + " | ".join(
                    f"{v[k] / 1024:.1f} KB ({100 * v[k] / fp:.1f}%)"
                    for k in ("int8_bytes", "int8_stripped_bytes", "int8_per_tensor_stripped_bytes")
                ).join(["| ", " |"])
            )
        out.append("")
    if "exports" in r:
        out += [
            "Larger model, int8 pipeline, every format re-loaded from its file and measured with its own runtime:",
            "",
            "| format | files | accuracy | size | gzip | latency | runtime | agreement with fp32 .tflite | arena |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in r["exports"].values():
            agree = "" if e["agreement"] is None else f"{100 * e['agreement']:.1f}%"
            arena = "" if e["arena_bytes"] is None else f"{e['arena_bytes']:,} B"
            out.append(
                f"| {e['format']} ({e['dtype']}) | {', '.join(e['files'])} | {100 * e['accuracy']:.1f}% "
                f"| {e['size_bytes'] / 1024:.1f} KB | {e['gzip_bytes'] / 1024:.1f} KB | {e['latency_ms']:.3f} ms "
                f"| {e['runtime']} | {agree} | {arena} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
