"""``nas run``: the whole job. Load the task, build the device's latency model, search under the
budgets, retrain the winner, compress and export it, re-measure the exported file, report.

Everything is written into the output folder; files appear only when complete (temp + rename),
and the study (``study.db``) is Optuna's own SQLite storage, so a killed run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces import FatalError, InputError, SearchSpace, get_space

from .calibration import _guard_leaving_candidates, _latency_guard, _near_budget_calibration
from .config import Constraints, RunConfig
from .data import TaskData, load_task
from .latency_model import LatencyModel, build_latency_model
from .shipping import WEIGHTS_DIR, _verify_and_ship, finish_winner
from .trial_record import FORMAT_VERSION, State, StudyKey, TrialKey

if TYPE_CHECKING:  # pragma: no cover
    from .guard import RunGuard

# LatencyModel, build_latency_model and finish_winner live in nas.latency_model and nas.shipping;
# they stay importable from here and from the nas.run module name, where their users found them.
__all__ = [
    "LatencyModel",
    "NothingFitsError",
    "build_latency_model",
    "finish_winner",
    "prepare_budgets",
    "run",
    "study_name",
]

log = logging.getLogger("nas")


def study_name(config: RunConfig) -> str:
    return f"nas-{config.space.name}-{config.task.name}"


def open_storage(url: str) -> Any:
    """Optuna storage for ``url``. SQLite files run in WAL mode with normal sync: every
    ask/tell is its own transaction, and this makes the driver's bookkeeping ~2.5x faster
    while a killed process still loses nothing committed."""
    import optuna

    if not url.startswith("sqlite:///"):
        return url
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with it
    return storage


def _open_study(config: RunConfig, out_dir: Path, storage: str | None, resume: bool, sampler: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or f"sqlite:///{out_dir / 'study.db'}"
    name = study_name(config)
    try:
        existing = optuna.study.get_all_study_names(url)
    except Exception as e:  # noqa: BLE001 - any storage failure is the user's URL
        from .guard import write_failure

        if storage is None and write_failure(e):
            raise  # our own study.db on a full or read-only disk: not a bad URL
        raise InputError(
            f"--storage: cannot open {url!r} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})."
        ) from None
    if name in existing and not resume:
        raise InputError(
            f"{url}: study {name!r} already exists; rerun with --resume to continue it, or choose a new --out."
        )
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        directions=["maximize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    import warnings

    with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5; it is what we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "latency_ms"])
    if not study.user_attrs.get(StudyKey.CONFIG):
        study.set_user_attr(StudyKey.CONFIG, config.as_dict())
        study.set_user_attr(StudyKey.FORMAT_VERSION, FORMAT_VERSION)
    return study


class ExactSizes:
    """Size of the exported file of ``arch``, by converting it with trained-looking weights (the
    size of a TFLite file does not depend on the weights' values, only on their layout). With the
    space's ``options``, sizes are kept on disk beside the host profile, so a later run of the
    same space and task converts none twice (a conversion takes a second or two). ``known``:
    every size converted so far (on disk and in this run)."""

    def __init__(
        self, space: SearchSpace, data: TaskData, dtype: str, options: dict[str, Any] | None = None
    ) -> None:
        import hashlib
        from importlib.metadata import version

        from latency_models.profile import cache_dir

        self.space, self.data, self.dtype = space, data, dtype
        self.path: Path | None = None
        self.known: dict[str, int] = {}
        if options is None:
            return
        self.key = json.dumps(
            [
                space.name,
                options,
                list(data.shape.input_shape),
                data.shape.num_classes,
                dtype,
                version("tensorflow"),
            ],
            sort_keys=True,
            default=str,
        )
        self.path = cache_dir() / "sizes" / f"{hashlib.sha256(self.key.encode()).hexdigest()[:16]}.json"
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("key") == self.key:
                self.known = {str(a): int(b) for a, b in doc["sizes"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.known = {}  # missing or damaged: ours to rebuild

    def __call__(self, arch: Hashable) -> int:
        from latency_models.runtimes import get_runtime
        from latency_models.table import write_atomic
        from search_spaces.backend import keras
        from search_spaces.weights import randomize_like_trained

        name = str(arch)
        if name not in self.known:
            keras().backend.clear_session()
            model = randomize_like_trained(self.space.build(arch, self.data.shape))
            rep = list(self.data.inputs(self.data.x_train[:32])) if self.dtype == "int8" else None
            self.known[name] = get_runtime("litert").convert(model, self.dtype, rep).size_bytes
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(self.path, json.dumps({"key": self.key, "sizes": self.known}))
                except OSError:
                    pass  # a read-only cache only costs time
        return self.known[name]


def exact_size_fn(
    space: SearchSpace, data: TaskData, dtype: str, options: dict[str, Any] | None = None
) -> ExactSizes:
    """``ExactSizes`` of ``space`` for ``data``'s task in ``dtype`` (kept on disk with ``options``)."""
    return ExactSizes(space, data, dtype, options)


# A size model is re-fitted on the exact sizes already known for a space and task once there are
# this many: fewer leave its error bound (and so the screen's exact-size margin) loose.
SHARPEN_MIN_SIZES = 30
# The screen converts candidates predicted within this many times the re-fitted model's worst
# relative error of the size budget (never under 2%, never over the default 15%).
SHARPEN_SAFETY = 3.0


def _sharpen_size(screen: Any, say: Callable[[str], None]) -> Any:
    """``screen`` with its size model re-fitted on the exact sizes known for this space and task
    and a verify margin from that model's worst error, when enough are known. The quickstart
    space's sizes fit within 1% (60 fitted, 78 held out), against a default margin of 15%, so
    most candidates near the size budget need no conversion of their own."""
    from latency_models.size import SizeModel

    exact = screen.exact_size
    known = getattr(exact, "known", None)
    if not known or len(known) < SHARPEN_MIN_SIZES:
        return screen
    archs, sizes = [], []
    for name, size in known.items():
        try:
            archs.append(screen.space.parse(name))
        except (InputError, ValueError):
            continue  # an entry another version of the space wrote
        sizes.append(size)
    if len(archs) < SHARPEN_MIN_SIZES:
        return screen
    terms = [screen.space.size_terms(a, screen.task) for a in archs]
    model = SizeModel.fit(terms, sizes, screen.size.dtype)
    error = max(abs(model.predict(t) - s) / s for t, s in zip(terms, sizes, strict=True))
    margin = min(screen.verify_margin, max(0.02, SHARPEN_SAFETY * error))
    if margin >= screen.verify_margin:
        return screen
    say(
        f"size model re-fitted on {len(sizes)} exact sizes (worst error {error:.1%}): "
        f"candidates within {margin:.1%} of the size budget are converted to check it"
    )
    return replace(screen, size=model, verify_margin=margin)


def select_best(study: Any) -> Any:
    """The most accurate trained, feasible trial at the most epochs trained (multi-fidelity
    search: the candidates promoted to full fidelity); ties: lower predicted latency."""
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(TrialKey.STATE) == State.COMPLETE]
    if not done:
        return None
    return max(
        done, key=lambda t: (t.user_attrs.get(TrialKey.FIDELITY_EPOCHS) or 0, t.values[0], -t.values[1])
    )


def _stored(config: RunConfig, out: Path, storage: str | None, resume: bool) -> dict[str, Any]:
    """What a study being resumed already fixed: its resolved budgets and verified files."""
    if not resume:
        return {}
    import optuna

    url = storage or f"sqlite:///{out / 'study.db'}"
    if storage is None and not (out / "study.db").is_file():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if study_name(config) not in optuna.study.get_all_study_names(url):
            return {}
        attrs = optuna.load_study(study_name=study_name(config), storage=url).user_attrs
    except Exception:  # noqa: BLE001 - _open_study names a storage that cannot be opened
        return {}
    return {"budgets": attrs.get(StudyKey.BUDGETS), "verified": attrs.get(StudyKey.VERIFIED) or []}


def prepare_budgets(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    model: LatencyModel,
    stored: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> tuple[LatencyModel, Any, Any, float]:
    """The budgets a run screens with, on ``model`` (what ``nas run`` does between building the
    latency model and searching): relative budgets resolved (or ``stored`` ones reused on
    resume), the model re-fitted on fresh measurements near the latency budget, and the guard
    band. Returns (model, screen, resolved budgets, latency guard)."""
    from .budgets import ResolvedBudgets, resolve
    from .search import Screen

    screen = Screen(
        space,
        data.shape,
        model.predictor,
        model.size,
        Constraints(),
        model.memory_table,
        exact_size=exact_size_fn(
            space,
            data,
            config.latency.dtype,
            dict(config.space.options) if space.defined_by_options else None,
        ),
    )
    if stored:
        budgets = ResolvedBudgets.from_dict(stored)
        say(f"budgets as resolved when the study started: {_budget_text(budgets.constraints)}")
    else:
        budgets = resolve(config.constraints, space, screen)
    if budgets.constraints.max_latency_ms is not None:
        model = _near_budget_calibration(config, space, data, model, budgets.constraints.max_latency_ms, say)
        screen = replace(screen, latency=model.predictor, size=model.size)
        if not stored and "max_latency_ms" in config.constraints.relative():
            budgets = resolve(config.constraints, space, screen)  # on the re-fitted model
    if config.constraints.relative() and not stored:
        say(f"budgets resolved on this device: {_budget_text(budgets.constraints)}")
    guard = _latency_guard(model) if budgets.constraints.max_latency_ms is not None else 0.0
    if guard:
        guard = _guard_leaving_candidates(space, screen, budgets.constraints, guard, say)
    if guard:
        say(
            f"screening latency at {1 - guard:.0%} of the budget: the latency model's error near it "
            "and the timing noise, so trained candidates can be shipped as measured"
        )
    screen = _sharpen_size(replace(screen, constraints=budgets.constraints, latency_guard=guard), say)
    return model, screen, budgets, guard


def run(
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    storage: str | None = None,
    executor_factory: Callable[..., Any] | None = None,
    status: Callable[[str], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole job and return the report (also written to ``out_dir/report.json``).

    Latency model, budgets (relative ones resolved on this device), search, verification of
    the best few candidates' exported files, then the shipped model: retrained, exported and
    measured, shipped only when that file meets the budgets. When no candidate's file fits,
    the report is still written and ``NothingFitsError`` names the closest one.

    ``out_dir`` is held by one driver at a time (see ``nas.guard.RunGuard``); ``--resume`` on a
    finished run raises ``RunFinished`` and changes nothing."""
    from .guard import RunGuard

    with RunGuard(out_dir, resume) as guard:
        return _run_in_folder(config, guard, resume, storage, executor_factory, status, on_event)


def _run_in_folder(
    config: RunConfig,
    guard: RunGuard,
    resume: bool,
    storage: str | None,
    executor_factory: Callable[..., Any] | None,
    status: Callable[[str], None] | None,
    on_event: Callable[[str, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from .executors import WorkerSetup
    from .guard import close_running_trials
    from .search import SearchLoop, budget_share
    from .strategies import make_strategy
    from .verify import measurements_for_correction

    say = status or (lambda s: log.info(s))
    out = guard.out
    if not resume and out.is_dir() and (out / "study.db").exists() and storage is None:
        raise InputError(
            f"--out: {out} already holds a study; rerun with --resume to continue it, or choose a new folder."
        )
    started = time.time()
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)
    stored = _stored(config, out, storage, resume)
    verified_before = measurements_for_correction(stored.get("verified") or [])

    model = build_latency_model(config, space, data, say, measured=verified_before)
    model, screen, budgets, latency_guard = prepare_budgets(
        config, space, data, model, stored.get("budgets"), say
    )
    screening = budget_share(space, screen, seed=config.search.seed)

    from .strategies import SearchContext

    guard.make_folder()  # only now: bad input above leaves no folder behind
    context = SearchContext(
        space=space,
        seed=config.search.seed,
        predict=screen,
        max_latency_ms=None
        if budgets.constraints.max_latency_ms is None
        else budgets.constraints.max_latency_ms * (1 - latency_guard),
        n_trials=config.search.trainings,
    )
    sampler = make_strategy(config.search.strategy, context)
    study = _open_study(config, out, storage, resume, sampler)
    if not study.user_attrs.get(StudyKey.BUDGETS):
        study.set_user_attr(StudyKey.BUDGETS, {**budgets.as_dict(), "latency_guard": latency_guard})
    if study.trials:
        # A seeded sampler would replay the proposals it made before the interruption.
        study.sampler = make_strategy(
            config.search.strategy, replace(context, seed=context.seed + len(study.trials))
        )
    setup = WorkerSetup(
        config.space.name,
        dict(config.space.options),
        _task_dict(config),
        _train_dict(config),
        weights_dir=str(out / WEIGHTS_DIR),
    )
    if executor_factory is None:  # as the CLI: local worker processes, one per core by default
        from .distributed import ExecutorChoice

        executor_factory = ExecutorChoice(
            workers=config.search.workers,
            cpus_per_trial=config.search.cpus_per_trial,
            gpus_per_trial=config.search.gpus_per_trial,
        ).factory(status)
    executor = executor_factory(setup, data)
    loop = SearchLoop(
        study=study,
        space=space,
        screen=screen,
        executor=executor,
        trainings=config.search.trainings,
        seed=config.search.seed,
        epochs=config.training.epochs,
        fidelity=config.search.fidelity,
        max_asks=config.search.max_asks,
        max_failures_in_row=config.search.max_failures_in_row,
        on_event=on_event,
    )
    say(f"searching: {config.search.trainings} trainings, strategy {config.search.strategy}")
    try:
        loop.run()
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: no trial stays RUNNING in the study
        close_running_trials(study)
        raise
    search_s = time.time() - started

    if select_best(study) is None:
        raise FatalError("no candidate was trained successfully; see the trials in the study for the reasons")
    shipped, verified, model = _verify_and_ship(
        config, space, data, study, screen, budgets.constraints, model, out, say
    )
    shutil.rmtree(out / WEIGHTS_DIR, ignore_errors=True)
    if shipped and hasattr(model.predictor, "extrapolated"):
        arch = space.parse(shipped[0].arch)
        n = model.predictor.extrapolated([arch])[0]
        if n:
            total = len(space.blocks(arch, data.shape))
            say(
                f"shipped {shipped[0].arch}: {n} of its {total} blocks priced by the per-kind model (not in the table)"
            )
    report = write_run_report(
        out, config, study, space, screen, model, shipped, verified, screening,
        {**budgets.as_dict(), "latency_guard": latency_guard},
        {"search_s": search_s, "total_s": time.time() - started},
    )  # fmt: skip
    if not shipped:
        from .verify import closest

        near = closest(verified, budgets.constraints)
        detail = (
            f"closest: {near.arch} (trial {near.trial}): {'; '.join(r for r in near.reasons if not r.startswith('file') or 'budget' in r)}"
            if near is not None
            else "no candidate could be verified"
        )
        raise NothingFitsError(
            f"no verified candidate's file meets the budgets ({_budget_text(budgets.constraints)}); {detail}; "
            f"files kept in {out / 'verify'}, report in {out / 'report.json'}"
        )
    return report


def write_run_report(
    out: Path,
    config: RunConfig,
    study: Any,
    space: SearchSpace,
    screen: Any,
    model: LatencyModel,
    shipped: tuple[Any, dict[str, Any]] | None,
    verified: list[Any],
    screening: dict[str, Any],
    budgets: dict[str, Any],
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``report.json`` (and its HTML) of a finished search, shipped or not: what ``nas run`` and
    ``nas specialize`` write (``_verify_and_ship``'s ``shipped`` and ``verified``)."""
    from .report import write_report

    winner = next(
        (t for t in study.get_trials(deepcopy=False) if shipped and t.number == shipped[0].trial), None
    )
    return write_report(
        out,
        config=config,
        study=study,
        space=space,
        screen=screen,
        latency_model=model,
        best_trial=winner,
        exported=shipped[1] if shipped else None,
        timings=timings,
        screening=screening,
        budgets=budgets,
        verification=[v.as_dict() for v in verified],
        extra=extra,
    )


class NothingFitsError(FatalError):
    """Every verified candidate's exported file broke a budget as measured: nothing was shipped."""


def _budget_text(c: Constraints) -> str:
    from .config import BUDGETS

    return ", ".join(f"{k} {v:.4g} {BUDGETS[k]}" for k, v in c.as_dict().items()) or "none"


def _task_dict(config: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config.task)


def _train_dict(config: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config.training)
