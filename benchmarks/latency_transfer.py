"""Few-shot latency predictor floors on real device data (NB201 and FBNet, 27 device settings),
scored by the project's leave-one-device-out tool ``score_latency.py`` through the real CLI.

Runs: nb201 and fbnet at K=10 and K=100 with reference devices (seeds 0 and 1) and K=100 without
reference devices (seed 0), plus an in-process pricing rate and, for scale, what the no-reference
model reaches fitted on 100 to 3,000 of each device's own measurements (``OWN_SIZES``). Results go to
``benchmarks/results/latency_transfer.{json,md}`` (partial runs are kept per job under
``benchmarks/results/latency_transfer/`` so spaces can run in parallel and be merged).

Run (from the project root):
    .venv/bin/python benchmarks/latency_transfer.py [--data ../shared/data] [--score-tool ../shared/tools/score_latency.py]
    .venv/bin/python benchmarks/latency_transfer.py --spaces nb201      # one space, then
    .venv/bin/python benchmarks/latency_transfer.py --merge-only        # merge into the table

The data are third-party measurements (see the provenance README beside the vendored copies);
users without ``../shared`` pass ``--data`` to a folder with ``nb201/`` and ``fbnet/`` CSVs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latency_models.table import write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTS = RESULTS / "latency_transfer"
FLOORS = {
    ("nb201", 10, True): {"spearman": 0.95, "within10": 0.75},
    ("nb201", 100, True): {"spearman": 0.975, "within10": 0.87},
    ("fbnet", 10, True): {"spearman": 0.90, "within10": 0.88},
    ("fbnet", 100, True): {"spearman": 0.96, "within10": 0.94},
    ("nb201", 100, False): {"spearman": 0.96},
    ("fbnet", 100, False): {"spearman": 0.96},
}
# Own-measurement counts of the no-reference learning curve (the largest is the "ceiling").
OWN_SIZES = (100, 200, 400, 1000, 3000)


def _tool(path: Path, data: Path) -> Any:
    """The scoring tool as a module, pointed at ``data`` (its scoring code runs unchanged)."""
    spec = importlib.util.spec_from_file_location("score_latency", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"latency_transfer: cannot load the scoring tool {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.FILES = {
        "nb201": data / "nb201" / "latency_ms_27dev.csv.gz",
        "fbnet": data / "fbnet" / "latency_ms_27dev.csv.gz",
    }
    for f in mod.FILES.values():
        if not f.is_file():
            raise SystemExit(f"latency_transfer: {f} not found (pass --data)")
    return mod


def _run_job(tool: Any, space: str, ks: list[int], seed: int, reference: bool) -> list[dict[str, Any]]:
    name = f"{space}_{'ref' if reference else 'noref'}_seed{seed}"
    out = PARTS / f"{name}.json"
    argv = ["score_latency.py", "--space", space, "--seed", str(seed), "--json", str(out)]
    argv += [a for k in ks for a in ("--k", str(k))]
    if not reference:
        argv.append("--no-reference")
    old = sys.argv
    sys.argv = argv
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            code = tool.main()
    finally:
        sys.argv = old
    print(log.getvalue().strip().splitlines()[-1] if log.getvalue().strip() else name, flush=True)
    if code not in (0, None):
        raise SystemExit(f"latency_transfer: {name} failed (exit {code})")
    rows = json.loads(out.read_text())
    for r in rows:
        r.update({"space": space, "seed": seed, "reference": reference})
    write_atomic(out, json.dumps(rows, indent=1))
    print(f"{name}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def load_device_data(data: Path, space_name: str) -> tuple[Any, list[str], list[Any], list[str], np.ndarray]:
    """The space, arch strings, parsed archs, device names and latency matrix (archs x devices,
    ms) of ``data/SPACE/latency_ms_27dev.csv.gz``."""
    import csv
    import gzip

    from search_spaces import get_space

    with gzip.open(data / space_name / "latency_ms_27dev.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    devices = [c for c in rows[0] if c not in ("arch_idx", "arch_str", "sample_id", "op_idx_list")]
    space = get_space(space_name)
    texts = [r["arch_str"] for r in rows]
    archs = [space.parse(t) for t in texts]
    lat = np.array([[float(r[d]) for d in devices] for r in rows])
    return space, texts, archs, devices, lat


def _pricing_rate(space_name: str, data: Path) -> dict[str, float]:
    """Archs/s of parse + encode + predict in process, median of 5 passes over every arch."""
    from latency_models.measurements import Measurements
    from latency_models.transfer import fit_learned

    space, texts, archs, devices, lat_all = load_device_data(data, space_name)
    lat = lat_all[:, devices.index("titan_rtx_32")]
    pred = fit_learned(space, Measurements("bench", tuple(texts[:100]), tuple(archs[:100]), lat[:100]))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        parsed = [space.parse(t) for t in texts]
        pred.predict(parsed)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n_archs": len(texts), "median_s": med, "archs_per_s": len(texts) / med}


def _ceiling(space_name: str, data: Path, sizes: tuple[int, ...] = (3000,)) -> dict[int, dict[str, Any]]:
    """What the data allow: per device, our learned model fitted on ``n`` of that device's own
    measurements (no reference), scored on the archs none of the sizes trained on, for each ``n``
    in ``sizes`` (nested training sets, seed 0). Not a floor: a sense of the noise, and of how
    many own measurements the no-reference model needs for a given accuracy."""
    from latency_models.measurements import Measurements
    from latency_models.metrics import latency_metrics
    from latency_models.transfer import fit_learned, one_blas_thread

    space, texts, archs, devices, lat = load_device_data(data, space_name)
    order = np.random.default_rng(0).permutation(len(texts))
    test = order[max(sizes) :]
    out: dict[int, dict[str, Any]] = {}
    with one_blas_thread():
        for n in sizes:
            train = order[:n]
            per_dev = {}
            for j, d in enumerate(devices):
                m = Measurements(
                    "ceiling", tuple(texts[i] for i in train), tuple(archs[i] for i in train), lat[train, j]
                )
                pred = fit_learned(space, m).predict([archs[i] for i in test])
                met = latency_metrics(pred, lat[test, j])
                per_dev[d] = {"spearman": met.spearman, "within10": met.within10}
            out[n] = {
                "n_train": n,
                "mean_spearman": float(np.mean([v["spearman"] for v in per_dev.values()])),
                "mean_within10": float(np.mean([v["within10"] for v in per_dev.values()])),
                "per_device": per_dev,
            }
    return out


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["space"], r["k"], r["reference"]) for r in rows}, key=lambda t: (t[0], not t[2], t[1]))
    for space, k, ref in keys:
        sel = [r for r in rows if (r["space"], r["k"], r["reference"]) == (space, k, ref)]
        seeds = sorted({r["seed"] for r in sel})
        # per device: mean over seeds; the floors are on the mean over devices
        devices = sorted({r["device"] for r in sel})
        per_dev = {
            d: {
                m: float(np.mean([r[m] for r in sel if r["device"] == d]))
                for m in ("spearman", "within10", "within5", "mape", "kendall")
            }
            for d in devices
        }
        worst = min(devices, key=lambda d: per_dev[d]["spearman"])
        worst10 = min(devices, key=lambda d: per_dev[d]["within10"])
        n_test = sum(r["n_test"] for r in sel)
        predict_s = sum(r["predict_s"] for r in sel)
        summary = {
            "space": space,
            "k": k,
            "reference": ref,
            "seeds": seeds,
            "n_devices": len(devices),
            "mean_spearman": float(np.mean([v["spearman"] for v in per_dev.values()])),
            "mean_within10": float(np.mean([v["within10"] for v in per_dev.values()])),
            "mean_within5": float(np.mean([v["within5"] for v in per_dev.values()])),
            "mean_kendall": float(np.mean([v["kendall"] for v in per_dev.values()])),
            "per_seed_mean_spearman": [
                float(np.mean([r["spearman"] for r in sel if r["seed"] == s])) for s in seeds
            ],
            "per_seed_mean_within10": [
                float(np.mean([r["within10"] for r in sel if r["seed"] == s])) for s in seeds
            ],
            "worst_device": worst,
            "worst_spearman": per_dev[worst]["spearman"],
            "worst_within10_device": worst10,
            "worst_within10": per_dev[worst10]["within10"],
            "median_fit_s": float(np.median([r["fit_s"] for r in sel])),
            "median_predict_s": float(np.median([r["predict_s"] for r in sel])),
            "predict_archs_per_s_whole_command": n_test / max(predict_s, 1e-9),
            "floor": FLOORS.get((space, k, ref), {}),
            "per_device": per_dev,
        }
        floor = summary["floor"]
        summary["meets_floor"] = all(summary[f"mean_{m}"] >= v for m, v in floor.items()) if floor else None
        out.append(summary)
    return out


def _markdown(
    summaries: list[dict[str, Any]],
    rates: dict[str, Any],
    ceilings: dict[str, Any],
    own_curve: dict[str, Any] | None = None,
) -> str:
    lines = [
        "# Few-shot latency predictors on real device data (leave one device out)",
        "",
        "`benchmarks/latency_transfer.py` via `../shared/tools/score_latency.py` (the CLI `nas latency fit` /",
        "`predict` per device). Means over the 27 device settings (each device: mean over seeds).",
        "",
        "| space | K | reference | seeds | mean Spearman | mean within 10% | mean within 5% | worst device (Spearman) | worst within 10% | floor | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        floor = ", ".join(f"{m} >= {v}" for m, v in s["floor"].items()) or "-"
        met = {True: "yes", False: "**no**", None: "-"}[s["meets_floor"]]
        lines.append(
            f"| {s['space']} | {s['k']} | {'yes' if s['reference'] else 'no'} | {','.join(map(str, s['seeds']))} | "
            f"{s['mean_spearman']:.4f} | {s['mean_within10']:.3f} | {s['mean_within5']:.3f} | "
            f"{s['worst_device']} ({s['worst_spearman']:.3f}) | {s['worst_within10_device']} ({s['worst_within10']:.3f}) | "
            f"{floor} | {met} |"
        )
    lines += [
        "",
        "Per seed (mean over devices): Spearman / within 10%. The floors are on the mean over seeds; a",
        "seed's own mean can land on either side of a floor that the mean meets by a thin margin.",
        "",
    ]
    for s in summaries:
        per_seed = zip(s["seeds"], s["per_seed_mean_spearman"], s["per_seed_mean_within10"], strict=True)
        lines.append(
            f"- {s['space']} K={s['k']} reference={'yes' if s['reference'] else 'no'}: "
            + ", ".join(f"seed {seed} {sp:.4f} / {w:.3f}" for seed, sp, w in per_seed)
        )
    lines += [
        "",
        "Pricing rate (parse + encode + predict, in process, median of 5 passes over every arch):",
        "",
    ]
    for space, r in rates.items():
        lines.append(
            f"- {space}: {r['archs_per_s']:,.0f} archs/s ({r['n_archs']} archs in {r['median_s']:.3f} s)"
        )
    lines += ["", "Whole `nas latency predict` command (process start, CSV in and out) and fit times:", ""]
    for s in summaries:
        lines.append(
            f"- {s['space']} K={s['k']} reference={'yes' if s['reference'] else 'no'}: "
            f"{s['predict_archs_per_s_whole_command']:,.0f} archs/s, median fit {s['median_fit_s']:.1f} s, "
            f"median predict {s['median_predict_s']:.1f} s"
        )
    if ceilings:
        lines += [
            "",
            "What the data allow (not a floor): per device, the learned model fitted on 3,000 of that",
            "device's own measurements, scored on the rest (seed 0):",
            "",
        ]
        for space, c in ceilings.items():
            lines.append(
                f"- {space}: mean Spearman {c['mean_spearman']:.4f}, mean within 10% {c['mean_within10']:.3f}; "
                + ", ".join(
                    f"{d} {v['spearman']:.3f}"
                    for d, v in sorted(c["per_device"].items(), key=lambda kv: kv[1]["spearman"])[:5]
                )
                + " (lowest five)"
            )
        lines += [
            "",
            "The same no-reference model by number of the device's own measurements (mean over the",
            "27 devices of Spearman / within 10%, one nested split, seed 0, scored on the archs none",
            "of them trained on):",
            "",
        ]
        for space, curve in (own_curve or {}).items():
            lines.append(
                f"- {space}: "
                + ", ".join(
                    f"{n}: {v['mean_spearman']:.4f} / {v['mean_within10']:.3f}" for n, v in curve.items()
                )
            )
    lines += ["", "## Per device (mean over seeds): Spearman / within 10%", ""]
    cols = [s for s in summaries]
    header = (
        "| device | "
        + " | ".join(f"{s['space']} K={s['k']}{'' if s['reference'] else ' noref'}" for s in cols)
        + " |"
    )
    lines += [header, "|---" * (len(cols) + 1) + "|"]
    devices = sorted({d for s in cols for d in s["per_device"]})
    for d in devices:
        cells = []
        for s in cols:
            v = s["per_device"].get(d)
            cells.append(f"{v['spearman']:.3f} / {v['within10']:.2f}" if v else "-")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with nb201/ and fbnet/"
    )
    ap.add_argument(
        "--score-tool",
        type=Path,
        default=ROOT.parent / "shared" / "tools" / "score_latency.py",
        help="score_latency.py",
    )
    ap.add_argument("--spaces", default="nb201,fbnet")
    ap.add_argument(
        "--seeds", default="0,1", help="seeds of the reference runs (the no-reference run uses the first)"
    )
    ap.add_argument("--merge-only", action="store_true", help="only merge the partial results into the table")
    ap.add_argument(
        "--no-ceiling", action="store_true", help="skip the 3,000-measurement per-device reference"
    )
    args = ap.parse_args()
    PARTS.mkdir(parents=True, exist_ok=True)
    if not args.merge_only:
        tool = _tool(args.score_tool, args.data)
        seeds = [int(s) for s in args.seeds.split(",")]
        for space in args.spaces.split(","):
            for seed in seeds:
                _run_job(tool, space, [10, 100], seed, reference=True)
            _run_job(tool, space, [100], seeds[0], reference=False)
    rows: list[dict[str, Any]] = []
    for part in sorted(PARTS.glob("*.json")):
        rows += json.loads(part.read_text())
    if not rows:
        raise SystemExit("latency_transfer: no results yet")
    rates = {s: _pricing_rate(s, args.data) for s in sorted({r["space"] for r in rows})}
    curves = (
        {}
        if args.no_ceiling
        else {s: _ceiling(s, args.data, OWN_SIZES) for s in sorted({r["space"] for r in rows})}
    )
    ceilings = {s: c[max(OWN_SIZES)] for s, c in curves.items()}
    own_curve = {
        s: {str(n): {k: v[k] for k in ("mean_spearman", "mean_within10")} for n, v in c.items()}
        for s, c in curves.items()
    }
    summaries = _summarise(rows)
    doc = {
        "summaries": summaries,
        "pricing_rate": rates,
        "ceiling_3000_own": ceilings,
        "own_measurements_curve": own_curve,
        "rows": rows,
    }
    write_atomic(RESULTS / "latency_transfer.json", json.dumps(doc, indent=1))
    write_atomic(RESULTS / "latency_transfer.md", _markdown(summaries, rates, ceilings, own_curve))
    for s in summaries:
        print(
            f"{s['space']} K={s['k']} ref={s['reference']}: spearman {s['mean_spearman']:.4f} within10 "
            f"{s['mean_within10']:.3f} worst {s['worst_device']} {s['worst_spearman']:.3f} floor met: {s['meets_floor']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
