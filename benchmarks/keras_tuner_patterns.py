"""keras-tuner's documented ``build(hp)`` patterns, each searched to the end by a real ``nas run``
that must ship a ``model.tflite`` (functions in examples/kt_mnist.py, on mnist5k, priced on this
machine):

* ``build_model``: keras-tuner's "Getting started" function as its guide writes it: Keras 3, an
  unbuilt ``Sequential`` (no input shape), 1-3 Dense layers of 32-512 units (``units_1`` and
  ``units_2`` exist only with 2 or 3 layers), a log-uniform learning rate, compiled: 245,760
  settings, so the host profile samples its blocks;
* ``build``: a small version of it (32 settings, every block profiled);
* ``build_scoped``: model selection with ``hp.conditional_scope``;
* ``build_functional``: a Keras 3 functional model (batch normalization, a residual add);
* ``build_tf_keras``: a tf_keras model (no translation).

Usage: .venv/bin/python benchmarks/keras_tuner_patterns.py
Writes benchmarks/results/keras_tuner_patterns.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NAS = str(Path(sys.executable).parent / "nas")
PATTERNS = {
    "build_model": ("units_1", "units_2"),
    "build": ("units_1",),
    "build_scoped": ("mlp_units", "cnn_filters"),
    "build_functional": (),
    "build_tf_keras": (),
}


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument(
        "--only", default=",".join(PATTERNS), help="patterns to (re)run; others kept from the results"
    )
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edge-nas-kt-bench-"))
    env = {**os.environ, "EDGE_NAS_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    previous = ROOT / "benchmarks" / "results" / "keras_tuner_patterns.json"
    rows = json.loads(previous.read_text()) if previous.exists() else {}
    for func, conditional in PATTERNS.items():
        if func not in args.only.split(","):
            continue
        doc = {
            "task": {"data": "mnist5k", "seed": 0},
            "space": {
                "name": "keras-tuner",
                "options": {"build": f"{ROOT / 'examples' / 'kt_mnist.py'}:{func}"},
            },
            "latency": {"device": "host", "calibration_models": 3},
            "search": {"trainings": 6, "seed": 0},
            "training": {"epochs": 2, "final_epochs": 4},
        }
        cfg = work / f"{func}.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        t = time.perf_counter()
        proc = subprocess.run(
            [NAS, "run", str(cfg), "--out", str(work / func)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        row = {"exit": proc.returncode, "wall_s": time.perf_counter() - t}
        if proc.returncode == 0:
            report = json.loads((work / func / "report.json").read_text())
            archs = [r["arch"] for r in report["trials"] if r["state"] == "complete"]
            row.update(
                shipped_tflite=(work / func / "model.tflite").is_file(),
                test_accuracy=report["best"]["accuracy"],
                winner=report["best"]["arch"],
                trained=len(archs),
                trained_with_conditional={c: sum(f"{c}=" in a for a in archs) for c in conditional},
                archs=archs,
                traceback_in_stderr="Traceback" in proc.stderr,
            )
        else:
            row["stderr"] = proc.stderr[-1500:]
        rows[func] = row
        print(func, json.dumps(row), file=sys.stderr, flush=True)
    results = ROOT / "benchmarks" / "results"
    (results / "keras_tuner_patterns.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# keras-tuner's documented build(hp) patterns (benchmarks/keras_tuner_patterns.py)",
        "",
        "`nas run` on mnist5k, host latency (LiteRT int8), 6 trainings of 2 epochs, winner retrained 4 epochs.",
        "",
        "| build(hp) | exit | model.tflite | test accuracy | trained | trained using conditional hps | winner | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for func in PATTERNS:
        r = rows.get(func)
        if r is None:
            continue
        if r["exit"] != 0:
            lines.append(f"| `{func}` | {r['exit']} | no | | | | | {r['wall_s']:.0f} |")
            continue
        cond = ", ".join(f"{k}: {v}" for k, v in r["trained_with_conditional"].items()) or "-"
        lines.append(
            f"| `{func}` | 0 | {'yes' if r['shipped_tflite'] else 'no'} | {r['test_accuracy']:.4f} | {r['trained']} | "
            f"{cond} | `{r['winner']}` | {r['wall_s']:.0f} |"
        )
    (results / "keras_tuner_patterns.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["exit"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
