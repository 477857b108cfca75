"""The run's report: ``report.json`` (every trial and the exported winner's measured numbers)
and ``pareto.png`` (accuracy against predicted latency, the front and the budget)."""

from __future__ import annotations

import io
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .pareto import non_dominated
from .trial_record import FORMAT_VERSION, REPORT_FORMAT, STATES, State, TrialKey, TrialRecord

__all__ = ["REPORT_FORMAT", "trial_records", "pareto_front", "write_report", "library_versions"]

LIBRARIES = (
    "edge-nas",
    "tensorflow",
    "tf-keras",
    "tensorflow-model-optimization",
    "optuna",
    "keras-tuner",
    "ai-edge-litert",
    "onnxruntime",
    "tf2onnx",
    "openvino",
    "tflite-micro",
    "ray",
    "numpy",
    "scikit-learn",
)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One plain record per trial, in trial order (``accuracy`` is null when not trained)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.from_attrs(t.user_attrs)
        # a trial the search never gave a state: failed before it was priced, or still running
        fallback = State.FAILED if t.state.name == "FAIL" else State.RUNNING
        state = r.state if TrialKey.STATE in t.user_attrs else fallback
        trained = state in (State.COMPLETE, State.DUPLICATE) and t.values is not None
        rows.append(
            {
                "number": t.number,
                "arch": r.arch,
                "state": state,
                "predicted_latency_ms": r.predicted_latency_ms,
                "size_bytes": r.size_bytes,
                "size_exact": r.exact_size_bytes is not None,
                "predicted_memory_bytes": r.predicted_memory_bytes,
                "accuracy": float(t.values[0]) if trained else None,
                "violations": r.violations,
                "error": r.error,
                "fidelity_epochs": r.fidelity_epochs,
                "worker": {"host": r.host, "pid": r.pid} if r.pid else None,
                "queued_s": r.queued_s,
                "attempts": r.attempts,
                "retried_after": r.retried_after,
                "duplicate_of": r.duplicate_of,
                "run_s": r.run_s,
            }
        )
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[int]:
    """Trial numbers on the (accuracy up, predicted latency down) front of trained trials."""
    done = [r for r in rows if r["state"] == State.COMPLETE]
    front = non_dominated(done, cost=lambda r: r["predicted_latency_ms"], value=lambda r: r["accuracy"])
    return [r["number"] for r in front]


def _plot(
    rows: list[dict[str, Any]], front: list[int], constraints: dict[str, float], winner: int | None
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [r for r in rows if r["state"] == State.COMPLETE]
    ax.scatter(
        [r["predicted_latency_ms"] for r in done],
        [100 * r["accuracy"] for r in done],
        s=22,
        color="#4c72b0",
        label=f"trained ({len(done)})",
        zorder=3,
    )
    infeasible = [r for r in rows if r["state"] == State.INFEASIBLE]
    if infeasible:
        lo = min([100 * r["accuracy"] for r in done], default=0.0)
        ax.scatter(
            [r["predicted_latency_ms"] for r in infeasible],
            [lo] * len(infeasible),
            marker="x",
            s=18,
            color="#c44e52",
            alpha=0.6,
            label=f"screened out, never trained ({len(infeasible)})",
            zorder=2,
        )
    by_number = {r["number"]: r for r in rows}
    fpts = [by_number[n] for n in front]
    if fpts:
        ax.step(
            [r["predicted_latency_ms"] for r in fpts],
            [100 * r["accuracy"] for r in fpts],
            where="post",
            color="#55a868",
            lw=1.5,
            label="Pareto front",
            zorder=4,
        )
    if winner is not None and winner in by_number:
        w = by_number[winner]
        ax.scatter(
            [w["predicted_latency_ms"]],
            [100 * w["accuracy"]],
            s=140,
            marker="*",
            color="#dd8452",
            edgecolor="black",
            label="winner",
            zorder=5,
        )
    if "max_latency_ms" in constraints:
        ax.axvline(
            constraints["max_latency_ms"],
            color="#c44e52",
            ls="--",
            lw=1,
            label=f"latency budget {constraints['max_latency_ms']:g} ms",
        )
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy against predicted latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(
    out: Path,
    *,
    config: Any,
    study: Any,
    space: Any,
    screen: Any,
    latency_model: Any,
    best_trial: Any,
    exported: dict[str, Any] | None,
    timings: dict[str, float],
    screening: dict[str, Any] | None = None,
    budgets: Any = None,
    verification: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.html`` and ``pareto.png``. ``best_trial``/``exported`` are
    None when nothing was shipped (no verified file met the budgets): ``best`` is then null and
    ``verification`` says why."""
    from latency_models.table import write_atomic

    rows = trial_records(study)
    front = pareto_front(rows)
    constraints = screen.constraints.as_dict()
    best = None
    if best_trial is not None and exported is not None:
        exported = {k: v for k, v in exported.items() if not k.startswith("_")}
        best = _best(best_trial, exported, space, screen, constraints)
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    correction = getattr(latency_model.predictor, "correction", None)
    shipped = exported or {}  # nothing shipped: no export to describe
    report = {
        "format": REPORT_FORMAT,
        "version": FORMAT_VERSION,
        "task": {
            "name": config.task.name,
            "input_shape": list(screen.task.input_shape),
            "num_classes": screen.task.num_classes,
            "split_seed": config.task.seed,
            "class_names": shipped.get("class_names") or None,
            "labels_file": "labels.txt" if shipped.get("class_names") else None,
            "skipped_images": shipped.get("skipped_images", 0),
        },
        "space": {"name": space.name, "options": dict(config.space.options)},
        "device": config.latency.device,
        "machine": _machine(),
        "latency_model": {
            "description": latency_model.description,
            "correction": None if correction is None else dict(correction.__dict__),
            "size_model": latency_model.size.as_dict(),
            "calibration": latency_model.calibration,
            "drift": getattr(latency_model, "drift", None),
        },
        "constraints": constraints,
        "budgets": dict(budgets) if budgets is not None else {"resolved": constraints},
        "strategy": config.search.strategy,
        "best": best,
        "verification": verification or [],
        "compression": shipped.get("compression"),
        "counts": {"trials": len(rows), **counts},
        "screening": screening,
        "pareto_front": front,
        "trials": rows,
        "timings": timings,
        "versions": library_versions(),
        "config": config.as_dict(),
        **(extra or {}),
    }
    write_atomic(
        out / "pareto.png",
        _plot(rows, front, constraints, best_trial.number if best_trial is not None else None),
    )
    write_atomic(out / "report.json", json.dumps(report, indent=1, default=_plain) + "\n")
    from .html_report import write_html_report

    write_html_report(out, json.loads(json.dumps(report, default=_plain)))
    return report


def _best(
    best_trial: Any, exported: dict[str, Any], space: Any, screen: Any, constraints: dict[str, float]
) -> dict[str, Any]:
    """The shipped model: its search record, the prediction made when the search priced it
    (not re-fitted afterwards on its own measurement), and what its file measured."""
    winner_arch = space.parse(best_trial.user_attrs[TrialKey.ARCH])
    pred = screen([winner_arch])[0]
    predicted_latency = float(exported.get("predicted_latency_ms", pred.latency_ms))
    measured = exported.get("measured_latency_ms")
    size = exported["size_bytes"]
    budget = constraints.get("max_latency_ms")
    checks = {
        "latency_by_prediction": budget is None or predicted_latency <= budget,
        "latency_measured": budget is None or (measured is not None and measured <= budget),
        "size_by_prediction": constraints.get("max_size_kb") is None
        or pred.size_bytes <= constraints["max_size_kb"] * 1024,
        "size_measured": constraints.get("max_size_kb") is None or size <= constraints["max_size_kb"] * 1024,
    }
    if measured is None:
        checks.pop("latency_measured")
    return {
        "arch": str(winner_arch),
        "trial": best_trial.number,
        "accuracy": exported["accuracy"],
        "accuracy_split": f"test ({exported['test_samples']} samples), measured on {exported['file']} with {exported['runtime']}",
        "val_accuracy_search": float(best_trial.values[0]),
        "size_bytes": size,
        "predicted_size_bytes": pred.size_bytes,
        "predicted_latency_ms": predicted_latency,
        "measured_latency_ms": measured,
        "latency_error": None if measured is None else (measured - predicted_latency) / predicted_latency,
        "latency_spread_ms": exported.get("latency_spread_ms"),
        "latency_repeats_ms": exported.get("latency_repeats_ms"),
        "latency_runtime": exported.get("latency_runtime"),
        "file": exported["file"],
        "format": exported["format"],
        "params": exported.get("params"),
        "meets_budgets": checks,
    }


def _machine() -> dict[str, str]:
    from latency_models.profile import machine_fingerprint

    return machine_fingerprint()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
