"""Verify before shipping: the best few candidates of a search are exported through the run's
compression pipeline and their files measured; only a file measured to fit is shipped.

A prediction is a model's guess and a shared machine's timer is noisy, so the check asks more of
a file than "median under the budget": the median of several interleaved repeats must sit under
the budget by at least three times the repeat-to-repeat spread (``fits``). The candidates are
ranked by the validation accuracy of their own compressed file, not the float model's.

Call sequence (``nas.run``): ``pick`` the trials after the search, ``verify_candidates`` trains
each at the search's fidelity, compresses, exports and measures them (files kept under
``verify/``), ``order`` ranks the ones that fit; the run then retrains the first, exports it as
the shipped model and checks that file the same way (``check``), falling back to the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress import StageError
from search_spaces import SearchSpace, TrialFailedError

from .config import Constraints
from .trial_record import State, TrialKey

__all__ = [
    "NEAR_BUDGET",
    "SPREAD_FACTOR",
    "Verified",
    "check",
    "closest",
    "latency_runtime_format",
    "measurements_for_correction",
    "order",
    "pick",
    "verify_candidates",
]

# A prediction within this fraction of a budget "sits near" it: such a candidate may well measure
# over, so one more candidate is verified for each.
NEAR_BUDGET = 0.15
# A file fits a latency budget when budget - median >= SPREAD_FACTOR * spread.
SPREAD_FACTOR = 3.0
# Which exported file a runtime executes.
_RUNTIME_FORMAT = {
    "litert": "tflite",
    "tflm": "tflite",
    "onnxruntime": "onnx",
    "tvm": "tvm",
    "executorch": "executorch",
}


@dataclass(frozen=True)
class Verified:
    """One candidate as verified: its search record, its compressed file's numbers, the verdict."""

    trial: int
    arch: str
    search_accuracy: float
    predicted_latency_ms: float
    predicted_size_bytes: float
    stage: str = "verify"  # "verify" (search fidelity) or "final" (the retrained, shipped file)
    accuracy: float | None = None  # of the compressed file, on the validation split (verify)
    measured_latency_ms: float | None = None
    latency_spread_ms: float | None = None
    latency_repeats_ms: tuple[float, ...] = ()
    size_bytes: int | None = None
    file: str | None = None
    fits: bool = False
    reasons: tuple[str, ...] = ()
    shipped: bool = False
    epochs: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latency_repeats_ms"] = list(self.latency_repeats_ms)
        out["reasons"] = list(self.reasons)
        return out


def latency_runtime_format(config: Any) -> tuple[str | None, str]:
    """(the export format whose file this run can time, why not when None). Latency is measured
    only when the device is this machine and the runtime's format is exported."""
    lat = config.latency
    if lat.device != "host":
        return None, f"device {lat.device!r} is not this machine: latency stays predicted"
    fmt = _RUNTIME_FORMAT.get(lat.runtime)
    if fmt is None:
        return None, f"runtime {lat.runtime!r}: its files are not timed here"
    if fmt not in config.export.formats:
        return None, f"export.formats lacks {fmt!r}, the file runtime {lat.runtime} runs"
    return fmt, ""


def pick(
    trials: Sequence[Any], budgets: Constraints, k: int = 3, limit: int = 8, near: float = NEAR_BUDGET
) -> list[Any]:
    """The trials to verify: the ``k`` most accurate complete ones at the top fidelity (ties:
    lower predicted latency), one more for each whose prediction sits within ``near`` of a
    budget, at most ``limit``. One trial per distinct network."""
    done = [t for t in trials if t.user_attrs.get(TrialKey.STATE) == State.COMPLETE and t.values is not None]
    if not done:
        return []
    top = max(int(t.user_attrs.get(TrialKey.FIDELITY_EPOCHS) or 0) for t in done)
    ranked = sorted(
        (t for t in done if int(t.user_attrs.get(TrialKey.FIDELITY_EPOCHS) or 0) == top),
        key=lambda t: (-t.values[0], t.user_attrs.get(TrialKey.PREDICTED_LATENCY_MS, 0.0)),
    )
    seen: set[str] = set()
    out: list[Any] = []
    want = k
    for t in ranked:
        canonical = t.user_attrs.get(TrialKey.CANONICAL, t.user_attrs.get(TrialKey.ARCH))
        if canonical in seen:
            continue
        seen.add(canonical)
        out.append(t)
        if _near(t, budgets, near):
            want += 1
        if len(out) >= min(want, limit):
            break
    return out


def _near(t: Any, budgets: Constraints, near: float) -> bool:
    a = t.user_attrs
    lat, size = budgets.max_latency_ms, budgets.max_size_kb
    # An exact size (the converted file's, checked during the search) cannot miss; a predicted one can.
    size_bytes = 0.0 if a.get(TrialKey.EXACT_SIZE_BYTES) else a.get(TrialKey.PREDICTED_SIZE_BYTES) or 0.0
    return bool(
        (lat is not None and a.get(TrialKey.PREDICTED_LATENCY_MS, 0.0) >= (1 - near) * lat)
        or (size is not None and size_bytes >= (1 - near) * size * 1024)
    )


def check(
    latency: Any | None, size_bytes: int | None, budgets: Constraints, predicted_memory: float | None = None
) -> tuple[bool, tuple[str, ...]]:
    """Whether a measured file fits ``budgets``, and one reason per budget. ``latency`` is a
    ``RepeatedTiming`` (None: not measurable here, the prediction stands and is said so)."""
    ok, reasons = True, []
    if budgets.max_latency_ms is not None:
        b = budgets.max_latency_ms
        if latency is None:
            reasons.append(f"latency not measured here; budget {b:.4g} ms judged by prediction")
        else:
            margin = b - latency.median_ms
            if latency.median_ms > b:
                ok = False
                reasons.append(
                    f"latency measured {latency.median_ms:.4g} ms (spread {latency.spread_ms:.2g}) > budget {b:.4g} ms"
                )
            elif margin < SPREAD_FACTOR * latency.spread_ms:
                ok = False
                reasons.append(
                    f"latency measured {latency.median_ms:.4g} ms is under the budget {b:.4g} ms by "
                    f"{margin:.2g} ms, less than {SPREAD_FACTOR:g}x its spread {latency.spread_ms:.2g} ms: too close to call"
                )
            else:
                reasons.append(
                    f"latency measured {latency.median_ms:.4g} ms (spread {latency.spread_ms:.2g}) <= budget {b:.4g} ms"
                )
    if budgets.max_size_kb is not None and size_bytes is not None:
        b = budgets.max_size_kb * 1024
        if size_bytes > b:
            ok = False
            reasons.append(f"file {size_bytes} bytes > budget {b:.0f} bytes")
        else:
            reasons.append(f"file {size_bytes} bytes <= budget {b:.0f} bytes")
    if budgets.max_memory_kb is not None:
        b = budgets.max_memory_kb * 1024
        if predicted_memory is not None and predicted_memory > b:
            ok = False
        reasons.append(f"memory {predicted_memory or 0:.0f} bytes (predicted) vs budget {b:.0f} bytes")
    return ok, tuple(reasons)


def verify_candidates(
    config: Any,
    space: SearchSpace,
    data: Any,
    trials: Sequence[Any],
    budgets: Constraints,
    folder: Path,
    say: Callable[[str], None],
    weights: Path | None = None,
) -> list[Verified]:
    """Take each trial's network as the search trained it (its weights from ``weights``, kept by
    the worker; retrained the same way, training split only, when they are missing), compress it
    through ``export.pipeline``, export the file the device runs into ``folder/trial-N/`` and
    measure it: the file's size, its validation accuracy, and (when this machine is the device)
    its latency, all files timed in interleaved repeats."""
    from latency_models.profile import time_interleaved
    from latency_models.runtimes import Artifact, ModelNotRunnable, get_runtime

    fmt, why_not = latency_runtime_format(config)
    formats = sorted({"tflite", *([fmt] if fmt else [])})
    vdata = _validation_as_test(data)
    made: list[tuple[Any, Any, Path, int]] = []  # (trial, exported, file path, epochs)
    unmade: list[Verified] = []
    for i, t in enumerate(trials):
        arch = space.parse(t.user_attrs[TrialKey.ARCH])
        epochs = int(t.user_attrs.get(TrialKey.FIDELITY_EPOCHS) or config.training.epochs)
        model, how = _trained(config, space, arch, data, t.number, epochs, weights)
        say(f"verifying candidate {i + 1}/{len(trials)}: {arch} ({how}, compressing)")
        target = folder / f"trial-{t.number}"
        try:
            exported = _export(config, model, vdata, target, formats)
        except (StageError, TrialFailedError) as e:  # e.g. a file the runtime refuses: skip it
            say(f"candidate {t.number} cannot ship: {e}")
            unmade.append(_record(t, epochs, reasons=(f"its file could not be made: {e}",)))
            continue
        main = next(e for e in exported.exports if e.format == (fmt or "tflite"))
        made.append((t, main, target / main.files[0], epochs))

    timings: list[Any] = [None] * len(made)
    refused: dict[int, str] = {}
    if fmt is not None and made:
        say(f"measuring {len(made)} exported files ({config.latency.runtime}, interleaved repeats)")
        rt = get_runtime(config.latency.runtime)
        sessions, runnable = [], []
        for i, (_, e, path, _) in enumerate(made):
            artifact = Artifact(rt.name, e.dtype, path.read_bytes())
            try:
                session = rt.load(artifact, threads=config.latency.threads)
            except ModelNotRunnable as error:  # this file cannot ship; the others are still timed
                refused[i] = str(error)
                continue
            sessions.append((session, data.inputs(data.x_val[:1])[0]))
            runnable.append(i)
        for i, timing in zip(
            runnable, time_interleaved(sessions, threads=config.latency.threads), strict=True
        ):
            timings[i] = timing
    out = []
    for i, ((t, e, path, epochs), timing) in enumerate(zip(made, timings, strict=True)):
        tflite = path if e.format == "tflite" else path.parent / _tflite_name(path.parent)
        size = tflite.stat().st_size
        fits, reasons = check(timing, size, budgets, t.user_attrs.get(TrialKey.PREDICTED_MEMORY_BYTES))
        if i in refused:
            kept = tuple(r for r in reasons if not r.startswith("latency not measured"))
            fits, reasons = False, (f"{config.latency.runtime} refused the file: {refused[i]}", *kept)
        elif timing is None and why_not:
            reasons = (*reasons, why_not)
        out.append(
            _record(
                t,
                epochs,
                accuracy=float(e.accuracy),
                measured_latency_ms=None if timing is None else timing.median_ms,
                latency_spread_ms=None if timing is None else timing.spread_ms,
                latency_repeats_ms=() if timing is None else timing.repeats_ms,
                size_bytes=size,
                file=str(tflite.relative_to(folder.parent)),
                fits=fits,
                reasons=reasons,
            )
        )
    return out + unmade


def _record(t: Any, epochs: int, **measured: Any) -> Verified:
    """A verification record of trial ``t`` with what was ``measured`` of its file."""
    return Verified(
        trial=t.number,
        arch=str(t.user_attrs[TrialKey.ARCH]),
        search_accuracy=float(t.values[0]),
        predicted_latency_ms=float(t.user_attrs.get(TrialKey.PREDICTED_LATENCY_MS, float("nan"))),
        predicted_size_bytes=float(
            t.user_attrs.get(TrialKey.EXACT_SIZE_BYTES)
            or t.user_attrs.get(TrialKey.PREDICTED_SIZE_BYTES)
            or 0.0
        ),
        stage="verify",
        epochs=epochs,
        **measured,
    )


def _trained(
    config: Any, space: SearchSpace, arch: Any, data: Any, trial: int, epochs: int, weights: Path | None
) -> tuple[Any, str]:
    """The network as the search trained it, and how it was obtained."""
    from search_spaces.backend import keras

    from .executors import weights_path
    from .train import train_candidate

    path = None if weights is None else Path(weights_path(weights, trial, epochs))
    if path is not None and path.is_file():
        keras().backend.clear_session()
        model = space.build(arch, data.shape)
        try:
            model.load_weights(str(path))
            return model, f"the search's {epochs}-epoch weights"
        except (OSError, ValueError):  # a damaged file: train again, as if it were missing
            pass
    _, model = train_candidate(space, arch, data, config.training, config.search.seed, epochs)
    return model, f"training {epochs} epochs"


def order(verified: Sequence[Verified]) -> list[Verified]:
    """The candidates that fit, most accurate compressed file first (ties: the search's order)."""
    fitting = [v for v in verified if v.fits]
    return sorted(fitting, key=lambda v: -(v.accuracy if v.accuracy is not None else v.search_accuracy))


def closest(verified: Sequence[Verified], budgets: Constraints) -> Verified | None:
    """The candidate nearest to fitting: the smallest worst measured value / budget ratio."""

    def worst(v: Verified) -> float:
        ratios = [0.0]
        if budgets.max_latency_ms is not None and v.measured_latency_ms is not None:
            ratios.append(v.measured_latency_ms / budgets.max_latency_ms)
        if budgets.max_size_kb is not None and v.size_bytes is not None:
            ratios.append(v.size_bytes / (budgets.max_size_kb * 1024))
        return max(ratios)

    return min(verified, key=worst, default=None)


def _tflite_name(folder: Path) -> str:
    return next(p.name for p in sorted(folder.glob("*.tflite")))


def _validation_as_test(data: Any) -> Any:
    """The task's arrays with the validation split in the test slot: the compression pipeline
    reports accuracy on "test", and a candidate must be judged without touching the real test."""
    from compress import CompressData

    full = data.compress_data()  # float inputs, as the model sees them
    return CompressData(full.x_train, full.y_train, full.x_val, full.y_val, full.x_val, full.y_val)


def _export(config: Any, model: Any, cdata: Any, target: Path, formats: list[str]) -> Any:
    from compress import compress_and_export

    return compress_and_export(
        model, cdata, config.export.stages(), formats, target, threads=config.latency.threads
    )


def measurements_for_correction(records: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """(arch, measured ms) of every verified file that was timed (a study's ``verified`` record)."""
    return [
        (str(r["arch"]), float(r["measured_latency_ms"]))
        for r in records
        if r.get("measured_latency_ms") is not None
    ]
