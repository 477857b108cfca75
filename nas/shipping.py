"""Verification and shipping: the best candidates' exported files are measured, then the most
accurate one that fits is retrained, compressed, exported and measured again, and shipped only
when that file itself meets the budgets."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import InputError, SearchSpace, TrialFailedError

from .trial_record import State, StudyKey, TrialKey

if TYPE_CHECKING:  # pragma: no cover
    from .config import Constraints, RunConfig
    from .data import TaskData
    from .latency_model import LatencyModel

__all__ = ["export_winner", "finish_winner"]


# At most this many candidates are verified (trained, compressed, exported and timed) per run.
VERIFY_LIMIT = 8
# Inside --out: the weights each training left, so verification compresses the very networks the
# search trained instead of training them again. Removed once the run has shipped (or not).
WEIGHTS_DIR = ".weights"


def _predicted_to_fit(trial: Any, space: SearchSpace, screen: Any, model: LatencyModel) -> bool:
    """Whether ``trial``'s network fits the budgets by ``model``'s (possibly re-fitted) latency."""
    if trial.user_attrs.get(TrialKey.STATE) != State.COMPLETE:
        return False
    budget = screen.constraints.max_latency_ms
    if budget is None:
        return True
    predicted = float(model.predictor.predict([space.parse(trial.user_attrs[TrialKey.ARCH])])[0])
    return predicted <= budget * (1.0 - screen.latency_guard)


def _verify_and_ship(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    study: Any,
    screen: Any,
    budgets: Constraints,
    model: LatencyModel,
    out: Path,
    say: Callable[[str], None],
    finish: Callable[[Hashable], dict[str, Any]] | None = None,
    final_epochs: int | None = None,
) -> tuple[tuple[Any, dict[str, Any]] | None, list[Any], LatencyModel]:
    """Verify the best candidates' exported files, then retrain, export and measure the most
    accurate one that fits, falling back to the next when the shipped file itself does not.
    Returns ((verified winner, exported record) or None, every verification, the refined model).

    ``finish(arch)`` makes, exports and measures the shipped file instead of ``finish_winner``'s
    retraining (``nas specialize``: the subnet with inherited weights, fine-tuned for
    ``final_epochs``)."""
    from compress import StageError

    from .verify import check, order, pick, verify_candidates

    trials = study.get_trials(deepcopy=False)
    verified: list[Any] = []
    # Rounds: when no verified file fits, the correction is re-fitted on what was measured, and
    # the next candidates still predicted to fit are verified, up to VERIFY_LIMIT in all.
    while len(verified) < VERIFY_LIMIT:
        done = {v.trial for v in verified}
        pool = [t for t in trials if t.number not in done and _predicted_to_fit(t, space, screen, model)]
        k = config.export.verify_candidates
        # Up to two more than asked for candidates near a budget, within the run's overall limit.
        chosen = pick(pool, budgets, k=k, limit=min(k + 2, VERIFY_LIMIT - len(verified)))
        if not chosen:
            break
        verified += verify_candidates(
            config, space, data, chosen, budgets, out / "verify", say, weights=out / WEIGHTS_DIR
        )
        timed = [(v.arch, v.measured_latency_ms) for v in verified if v.measured_latency_ms is not None]
        model = model.refined(timed, space)
        study.set_user_attr(StudyKey.VERIFIED, [v.as_dict() for v in verified])
        if any(v.fits for v in verified):
            break
        say("no verified file fits; re-fitted the latency correction on their measurements")
    finals: list[Any] = []
    for v in order(verified):
        epochs = config.training.final_epochs if final_epochs is None else final_epochs
        try:
            if finish is None:
                say(f"retraining {v.arch} (trial {v.trial}) for {epochs} epochs to ship it")
                exported = finish_winner(config, space, space.parse(v.arch), data, out, say)
            else:
                exported = finish(space.parse(v.arch))
        except (StageError, TrialFailedError) as e:  # e.g. a retrained file the runtime refuses
            finals.append(
                replace(v, stage="final", fits=False, reasons=(f"its file could not be made: {e}",))
            )
            study.set_user_attr(StudyKey.VERIFIED, [x.as_dict() for x in (*verified, *finals)])
            say(f"the retrained file of trial {v.trial} could not be made ({e}); trying the next candidate")
            _set_aside(out, v.trial)
            continue
        latency = exported.pop("_timing", None)
        exported["predicted_latency_ms"] = v.predicted_latency_ms  # as the search priced it
        fits, reasons = check(latency, exported["size_bytes"], budgets, None)
        final = replace(
            v,
            stage="final",
            accuracy=exported["accuracy"],
            measured_latency_ms=exported["measured_latency_ms"] if latency is not None else None,
            latency_spread_ms=None if latency is None else latency.spread_ms,
            latency_repeats_ms=() if latency is None else latency.repeats_ms,
            size_bytes=exported["size_bytes"],
            file="model.tflite",
            fits=fits,
            reasons=reasons,
            shipped=fits,
            epochs=epochs,
        )
        finals.append(final)
        study.set_user_attr(StudyKey.VERIFIED, [x.as_dict() for x in (*verified, *finals)])
        if fits:
            return (final, exported), [*verified, *finals], model
        say(
            f"the retrained file of trial {v.trial} does not fit ({'; '.join(reasons)}); trying the next candidate"
        )
        _set_aside(out, v.trial)
    return None, [*verified, *finals], model


def _set_aside(out: Path, trial: int) -> None:
    """Move a shipped-then-rejected model and its export under ``verify/trial-N/final/``."""
    import shutil

    target = out / "verify" / f"trial-{trial}" / "final"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "export"):
        if (out / name).exists():
            os.replace(out / name, target / name)


def finish_winner(
    config: RunConfig,
    space: SearchSpace,
    arch: Hashable,
    data: TaskData,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Retrain the winner, quantize and export it, and re-measure the exported file itself.

    The search held the validation split out to compare candidates; once the winner is chosen it
    has done its job, so the final model learns from training and validation samples together
    (1.33x the data for the 60/20/20 split). The test split stays untouched: every reported
    accuracy is measured on it."""
    from dataclasses import replace

    from .train import train_candidate

    final = replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_val]),
        y_train=np.concatenate([data.y_train, data.y_val]),
    )
    result, model = train_candidate(
        space, arch, final, config.training, config.search.seed, config.training.final_epochs
    )
    exported = export_winner(config, model, data, out, say)
    exported["final_train_samples"] = int(len(final.y_train))
    exported["params"] = result.params
    return exported


def export_winner(
    config: RunConfig, model: Any, data: TaskData, out: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Compress and export the winner through the same pipeline as ``nas compress`` (into
    ``out/export/``), then re-measure the delivered ``model.tflite`` itself with LiteRT."""
    import shutil

    from compress import compress_and_export
    from latency_models.profile import time_interleaved
    from latency_models.runtimes import Artifact, get_runtime

    from .verify import latency_runtime_format

    report = compress_and_export(
        model,
        data.compress_data(),
        config.export.stages(),
        list(config.export.formats),
        out / "export",
        threads=config.latency.threads,
        progress=say,
        tvm_target=config.export.tvm_target,
    )
    tflite = [e for e in report.exports if e.format == "tflite"]
    if not tflite:
        raise InputError(
            f"export.formats: must include 'tflite' for model.tflite, got {list(config.export.formats)}."
        )
    exported = tflite[0]
    source = out / "export" / exported.files[0]
    tmp = out / ".model.tflite.tmp"
    shutil.copyfile(source, tmp)
    tmp.replace(out / "model.tflite")
    data_bytes = (out / "model.tflite").read_bytes()
    rt = get_runtime("litert")
    session = rt.load(Artifact("litert", exported.dtype, data_bytes), threads=config.latency.threads)
    x_test = data.inputs(data.x_test)
    accuracy = float(np.mean(np.argmax(session.run(x_test), axis=1) == data.y_test))
    if data.class_names:  # labels.txt beside model.tflite: line i is class i
        from latency_models.table import write_atomic

        write_atomic(out / "labels.txt", "".join(f"{name}\n" for name in data.class_names).encode())
    fmt, _ = latency_runtime_format(config)
    timing = None
    if fmt is not None:
        # The shipped file is timed the way verification timed the candidates: in repeats, with
        # the runtime the budget is for (ONNX Runtime times the exported .onnx).
        lat = config.latency
        runtime = get_runtime(lat.runtime)
        file = out / "export" / next(e for e in report.exports if e.format == fmt).files[0]
        if fmt == "tflite":
            file = out / "model.tflite"
        timed = runtime.load(Artifact(runtime.name, exported.dtype, file.read_bytes()), threads=lat.threads)
        timing = time_interleaved([(timed, x_test[0])], threads=lat.threads)[0]
    return {
        "file": "model.tflite",
        "format": f"tflite-{exported.dtype}",
        "size_bytes": len(data_bytes),
        "accuracy": accuracy,
        "test_samples": int(len(data.y_test)),
        "measured_latency_ms": None if timing is None else timing.median_ms,
        "latency_spread_ms": None if timing is None else [min(timing.repeats_ms), max(timing.repeats_ms)],
        "latency_repeats_ms": None if timing is None else list(timing.repeats_ms),
        "latency_runtime": None if timing is None else config.latency.runtime,
        "runtime": f"litert {rt.version()}",
        "threads": config.latency.threads,
        "compression": report.to_dict(),
        "_timing": timing,
        "class_names": list(data.class_names),
        "skipped_images": data.skipped,
    }
