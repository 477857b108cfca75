"""Ranking floor of issue 20 (small scale): does a supernet's inherited-weight accuracy rank
subnets as training them stand-alone does?

Trains the quickstart space's supernet on mnist5k (``nas.supernet.train_supernet``), takes
``--subnets`` random distinct subnets, measures each one's inherited validation accuracy (own
BN calibration) and its validation accuracy when trained stand-alone as ``nas run`` trains a
candidate (``training.epochs`` epochs), and reports Kendall's tau between the two. The
stand-alone noise is measured by training the first ``--repeats`` subnets again with another
seed (tau between the two stand-alone runs, and their mean absolute difference). Also records
the CPU and wall time of the supernet training and of one subnet evaluation.
Results: ``benchmarks/results/supernet.{json,md}``.

The quality and cost floors (3 device latency models x 3 seeds against ``nas run``) are not
measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Fewer subnets than this give a tau that says nothing (3 subnets: only -1, -1/3, 1/3 or 1).
MIN_TAU_SUBNETS = 10


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties in either list count as neither concordant nor discordant)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="supernet epochs")
    parser.add_argument("--subnets", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="subnets trained stand-alone twice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "supernet"))
    parser.add_argument(
        "--noise-of",
        metavar="JSON",
        help="instead: train every subnet of this results file stand-alone again (seed + 1) and report "
        "the tau between the two stand-alone runs (the ceiling a supernet's ranking can reach)",
    )
    parser.add_argument(
        "--finetune-check",
        nargs=2,
        metavar=("SUPERNET", "ARCH"),
        help="instead: fine-tune ARCH extracted from the SUPERNET folder for 3 epochs at 0.1x, 0.3x "
        "and 1x the training's learning rate and print each model's test accuracy (Keras, float)",
    )
    args = parser.parse_args()
    if args.finetune_check:
        return finetune_check(*args.finetune_check)
    if args.noise_of:
        return noise(Path(args.noise_of), args.seed, Path(args.out))

    import yaml

    from latency_models.profile import machine_fingerprint
    from nas.config import parse_config
    from nas.supernet import evaluate_subnet, load_supernet, train_supernet
    from nas.train import train_candidate

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["supernet"] = {"epochs": args.epochs}
    doc["search"]["seed"] = args.seed
    config = parse_config(doc, base_dir=ROOT / "examples")
    lines: list[str] = []

    def say(message: str) -> None:
        lines.append(message)
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.time(), time.process_time()
        train_supernet(config, Path(tmp) / "supernet", say=say)
        train_wall, train_cpu = time.time() - wall, time.process_time() - cpu
        loaded = load_supernet(Path(tmp) / "supernet")
    net, data, space = loaded.net, loaded.data, loaded.net.space
    rng = random.Random(args.seed + 100)
    archs: list = []
    while len(archs) < args.subnets:
        arch = space.random(rng)
        if arch not in archs:
            archs.append(arch)
    rows = []
    for i, arch in enumerate(archs):
        start = time.time()
        inherited, _ = evaluate_subnet(net, arch, data, config.supernet.calibration_samples)
        evaluation_s = time.time() - start
        result, _ = train_candidate(space, arch, data, config.training, args.seed)
        row = {
            "arch": str(arch),
            "inherited": inherited,
            "standalone": result.accuracy,
            "evaluation_s": evaluation_s,
        }
        if i < args.repeats:
            again, _ = train_candidate(space, arch, data, config.training, args.seed + 1)
            row["standalone_again"] = again.accuracy
        rows.append(row)
        say(f"{i + 1}/{len(archs)} {arch}: inherited {inherited:.4f}, stand-alone {result.accuracy:.4f}")
    repeated = [r for r in rows if "standalone_again" in r]
    tau = kendall_tau([r["inherited"] for r in rows], [r["standalone"] for r in rows])
    noise_tau = kendall_tau([r["standalone"] for r in repeated], [r["standalone_again"] for r in repeated])
    noise_abs = sum(abs(r["standalone"] - r["standalone_again"]) for r in repeated) / max(1, len(repeated))
    evaluations = sorted(r["evaluation_s"] for r in rows[1:])  # the first one traces the functions
    result = {
        "benchmark": "supernet ranking (issue 20)",
        "command": " ".join(["python", "benchmarks/supernet.py", *sys.argv[1:]]),
        "machine": machine_fingerprint(),
        "space_options": doc["space"]["options"],
        "supernet_epochs": args.epochs,
        "standalone_epochs": config.training.epochs,
        "supernet_training": {
            "wall_s": train_wall,
            "cpu_s": train_cpu,
            "history": loaded.manifest["history"],
        },
        "subnet_evaluation_median_s": evaluations[len(evaluations) // 2] if evaluations else None,
        "kendall_tau": tau,
        "standalone_noise": {"subnets": len(repeated), "kendall_tau": noise_tau, "mean_abs_diff": noise_abs},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    last = loaded.manifest["history"][-1]
    md = [
        "# Supernet ranking (issue 20, small scale)",
        "",
        f"`{result['command']}` on {result['machine'].get('cpu', 'this machine')}.",
        "",
        f"- Supernet: quickstart space, mnist5k, {args.epochs} epochs, sandwich rule (largest, smallest, 2 random), "
        f"in-place distillation: {train_wall:.0f} s wall, {train_cpu:.0f} s CPU; last epoch's validation accuracy "
        f"largest {last['largest_accuracy']:.4f}, smallest {last['smallest_accuracy']:.4f}.",
        f"- One subnet evaluation (BN calibration on {config.supernet.calibration_samples} samples + validation): "
        f"median {result['subnet_evaluation_median_s']:.2f} s.",
        f"- **Kendall tau, inherited vs stand-alone ({config.training.epochs} epochs) accuracy over {len(rows)} "
        f"subnets: {tau:.3f}.**",
        f"- Stand-alone noise ({len(repeated)} subnets trained twice, seeds {args.seed} and {args.seed + 1}): "
        f"mean |difference| {noise_abs:.4f}, "
        + (
            f"tau between the two runs {noise_tau:.3f}."
            if len(repeated) >= MIN_TAU_SUBNETS
            else "too few subnets for a tau (`--noise-of` trains every subnet again)."
        ),
        "",
        "| subnet | inherited | stand-alone | again |",
        "|---|---|---|---|",
        *(
            f"| `{r['arch']}` | {r['inherited']:.4f} | {r['standalone']:.4f} | {r['standalone_again']:.4f} |"
            if "standalone_again" in r
            else f"| `{r['arch']}` | {r['inherited']:.4f} | {r['standalone']:.4f} | |"
            for r in rows
        ),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"kendall tau {tau:.3f} over {len(rows)} subnets; results in {out}.json/.md")
    return 0


def finetune_check(folder: str, arch_text: str, epochs: int = 3) -> int:
    """The fine-tune rate of ``nas specialize``: one extracted subnet tuned at three rates."""
    from dataclasses import replace

    import numpy as np

    from nas.supernet import evaluate_subnet, load_supernet
    from nas.train import train_model
    from search_spaces.backend import keras

    loaded = load_supernet(folder)
    net, data, training = loaded.net, loaded.data, loaded.config.training
    arch = net.space.parse(arch_text)
    accuracy, stats = evaluate_subnet(net, arch, data, loaded.config.supernet.calibration_samples)
    print(f"{arch}: inherited validation accuracy {accuracy:.4f}", flush=True)
    both = replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_val]),
        y_train=np.concatenate([data.y_train, data.y_val]),
    )
    for factor in (0.1, 0.3, 1.0):
        keras().backend.clear_session()
        model = net.extract(arch, stats)
        train_model(model, both, replace(training, learning_rate=training.learning_rate * factor), epochs, 0)
        test = float(
            np.mean(np.argmax(model.predict(data.inputs(data.x_test), verbose=0), axis=1) == data.y_test)
        )
        print(f"{epochs} epochs at {factor:g}x the rate: test accuracy {test:.4f}", flush=True)
    return 0


def noise(results: Path, seed: int, out: Path) -> int:
    """Stand-alone accuracy of every subnet of ``results`` trained again with ``seed + 1``;
    written after each subnet, so a stopped run keeps what it measured."""
    import yaml

    from nas.config import parse_config
    from nas.data import load_task
    from nas.train import train_candidate
    from search_spaces import get_space

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    config = parse_config(doc, base_dir=ROOT / "examples")
    space = get_space(config.space.name, config.space.options)
    data = load_task(config.task)
    rows = json.loads(results.read_text())["rows"]
    done = []
    for row in rows:
        again, _ = train_candidate(space, space.parse(row["arch"]), data, config.training, seed + 1)
        done.append({**row, "standalone_again": again.accuracy})
        first = [r["standalone"] for r in done]
        second = [r["standalone_again"] for r in done]
        summary = {
            "benchmark": "stand-alone noise of the supernet ranking (issue 20)",
            "command": " ".join(["python", "benchmarks/supernet.py", *sys.argv[1:]]),
            "subnets": len(done),
            "kendall_tau_standalone_vs_standalone": kendall_tau(first, second),
            "kendall_tau_inherited_vs_standalone_again": kendall_tau([r["inherited"] for r in done], second),
            "mean_abs_diff": sum(abs(a - b) for a, b in zip(first, second, strict=True)) / len(done),
            "rows": done,
        }
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
        print(
            f"{len(done)}/{len(rows)} {row['arch']}: {row['standalone']:.4f} then {again.accuracy:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
