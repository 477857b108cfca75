"""How far the no-reference fbnet predictor is from the K=100 floor, and why (issue #3).

Leave-one-device-out like ``score_latency.py`` (the same split: ``default_rng([seed, device])``,
the first K archs measured, the rest scored), in process, fbnet, K=100, no reference devices.
For every device and seed:

- ``chosen``: ``fit_learned`` as shipped (design x target x penalty chosen by leave-one-out);
- ``oracle``: the best of the same candidates by Spearman on the held-out archs, a choice no user
  can make: an upper bound on what a better choice among them could give;
- ``lowrank r/lam``: ``chosen`` plus a rank-r layer x block correction (22 x r and 9 x r
  factors, alternating weighted ridge with penalty lam) fitted to its relative residuals: can
  the per-layer costs the physics prior misses be learned from 100 measurements?

Results: ``benchmarks/results/latency_noref_bounds.{json,md}``.

Run (from the project root):
    .venv/bin/python benchmarks/latency_noref_bounds.py [--data ../shared/data] [--seeds 0,2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from latency_transfer import load_device_data  # noqa: E402

from latency_models.table import write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K = 100
LOWRANK = tuple((rank, lam) for rank in (1, 2) for lam in (0.1, 0.3, 1.0, 3.0, 10.0))
_ALS_ITERS = 15


def _als(codes: np.ndarray, r: np.ndarray, w: np.ndarray, n_values: int, rank: int, lam: float) -> np.ndarray:
    """Weighted ridge fit of ``r ~ sum_l (U V^T)[l, codes[:, l]]`` by alternating least squares;
    returns U V^T (layers x values)."""
    n, layers = codes.shape
    v = np.random.default_rng(0).normal(size=(n_values, rank)) * 0.1
    u = np.zeros((layers, rank))
    rows = np.arange(n)
    for _ in range(_ALS_ITERS):
        xu = v[codes].reshape(n, layers * rank)
        u = np.linalg.solve(xu.T @ (w[:, None] * xu) + lam * np.eye(layers * rank), xu.T @ (w * r))
        u = u.reshape(layers, rank)
        xv = np.zeros((n, n_values * rank))
        for layer in range(layers):
            for k in range(rank):
                np.add.at(xv, (rows, codes[:, layer] * rank + k), u[layer, k])
        v = np.linalg.solve(xv.T @ (w[:, None] * xv) + lam * np.eye(n_values * rank), xv.T @ (w * r))
        v = v.reshape(n_values, rank)
    return u @ v.T


def _costs(c: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return c[np.arange(codes.shape[1])[None, :], codes].sum(axis=1)


def _spearman(pred: np.ndarray, truth: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pred, truth)[0])


def run(data: Path, seeds: list[int]) -> dict[str, Any]:
    from latency_models import transfer as t
    from latency_models.measurements import Measurements

    space, texts, archs, devices, lat = load_device_data(data, "fbnet")
    encoder = t.ArchEncoder.for_space(space, None)
    codes = encoder.codes(archs, space).astype(np.int64)
    x_all = encoder.features(codes)
    designs = t._designs(encoder, physics=True)
    n_values = len(encoder.values[0])
    per: dict[str, dict[str, list[float]]] = {}
    with t.one_blas_thread():
        for j, device in enumerate(devices):
            scores: dict[str, list[float]] = {}
            for seed in seeds:
                order = np.random.default_rng([seed, j]).permutation(len(archs))
                train, test = order[:K], order[K:]
                y = lat[train, j]
                m = Measurements("m", tuple(texts[i] for i in train), tuple(archs[i] for i in train), y)
                pred = np.asarray(t.fit_learned(space, m).predict(archs), dtype=float)

                truth = lat[test, j]
                scores.setdefault("chosen", []).append(_spearman(pred[test], truth))
                best = -1.0
                matrices = [design.matrix(x_all[train]) for design in designs]
                for target in t.TARGETS:
                    yt, w = t._to_target(y, target)
                    for design, xd in zip(designs, matrices, strict=True):
                        for _, _, b0, sub in t._ridge_path(xd, yt, w, t._LAMBDAS):
                            coef = design.collapse(sub, encoder.n_features)
                            best = max(best, _spearman(x_all[test] @ coef + b0, truth))
                scores.setdefault("oracle", []).append(best)
                # In units of the device's median latency, so one penalty means the same everywhere.
                unit = float(np.median(y))
                resid, w = (y - pred[train]) / unit, (unit / y) ** 2
                for rank, lam in LOWRANK:
                    c = unit * _als(codes[train], resid, w, n_values, rank, lam)
                    corrected = pred[test] + _costs(c, codes[test])
                    scores.setdefault(f"lowrank {rank}/{lam:g}", []).append(_spearman(corrected, truth))
            per[device] = scores
            print(device, " ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()), flush=True)
    names = list(next(iter(per.values())))
    return {
        "space": "fbnet",
        "k": K,
        "reference": False,
        "seeds": seeds,
        "mean_spearman": {n: float(np.mean([np.mean(per[d][n]) for d in devices])) for n in names},
        "per_device": {d: {n: float(np.mean(v)) for n, v in s.items()} for d, s in per.items()},
    }


def _markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# fbnet without references, K=100: how far from the floor, and why",
        "",
        f"Leave-one-device-out as `score_latency.py`, in process, seeds {doc['seeds']}; mean Spearman over 27 devices (floor 0.96).",
        "",
        "| model | mean Spearman |",
        "|---|---|",
    ]
    lines += [f"| {n} | {v:.4f} |" for n, v in doc["mean_spearman"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with fbnet/")
    ap.add_argument("--seeds", default="0,2")
    args = ap.parse_args()
    doc = run(args.data, [int(s) for s in args.seeds.split(",")])
    write_atomic(RESULTS / "latency_noref_bounds.json", json.dumps(doc, indent=1))
    write_atomic(RESULTS / "latency_noref_bounds.md", _markdown(doc))
    print(_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
