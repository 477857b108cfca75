"""``nas specialize``: a device's model from a trained supernet, without training a search.

The subnets of the supernet's space are searched under the device's budgets by the run's own
machinery: the device's latency model (``build_latency_model``), budgets and screening
(``prepare_budgets``), the strategy sampling an Optuna study through the search loop, with each
candidate's inherited, BN-recalibrated validation accuracy as its value instead of a training.
The winner is verified, extracted as a standalone model with its inherited weights, optionally
fine-tuned, then compressed, exported and re-measured like a ``nas run`` winner
(``nas.shipping``); the folder has a run's layout (``report.json``, ``model.tflite``,
``study.db``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import InputError

from .config import Constraints, LatencyConfig, RunConfig, file_device
from .executors import Executor, JobResult, TrainJob, weights_path
from .supernet import EvaluationCache, LoadedSupernet, evaluate_subnet, load_supernet
from .trial_record import State, StudyKey, TrialKey

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import ExecutorChoice

__all__ = [
    "CachedEvaluations",
    "SubnetExecutor",
    "SubnetSearch",
    "prepare_search",
    "search_subnets",
    "specialize",
    "subnet_executor",
]

# Subnets evaluated per specialization when the caller does not say.
DEFAULT_EVALUATIONS = 60
# A subnet's evaluation takes about a second, not a training's minute: the default strategy
# prices a quarter of its usual pool per proposal (``nas.strategies.default.POOL_SCALE_OPTION``).
POOL_SCALE = 0.25


@dataclass
class SubnetExecutor(Executor):
    """Subnet evaluations on any executor that runs a supernet ``WorkerSetup`` (in this
    process, local worker processes, Ray): jobs pass through, and ``evaluated`` keeps each
    evaluated subnet's (accuracy, BN statistics) from its result (a few KB) for its extraction
    later, so the winner is not evaluated again."""

    inner: Executor
    evaluated: dict[str, tuple[float, Any]] = field(default_factory=dict)

    @property  # type: ignore[override]
    def capacity(self) -> int:
        return self.inner.capacity

    def submit(self, job: TrainJob) -> None:
        self.inner.submit(job)

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        done = self.inner.poll(timeout)
        for result in done:
            if result.ok and result.accuracy is not None and result.payload is not None:
                self.evaluated[result.arch] = (result.accuracy, result.payload)
        return done

    def in_flight(self) -> int:
        return self.inner.in_flight()

    def shutdown(self) -> None:
        self.inner.shutdown()


def subnet_executor(
    loaded: LoadedSupernet,
    choice: ExecutorChoice | None = None,
    status: Callable[[str], None] | None = None,
) -> SubnetExecutor:
    """Where ``loaded``'s subnets are evaluated: in this process with its already loaded
    supernet (``choice`` None), or on ``nas run``'s executors (local worker processes or a Ray
    cluster), each worker process loading the supernet once for all its jobs."""
    from .executors import InlineExecutor, WorkerSetup
    from .runner import _task_dict, _train_dict

    config = loaded.config
    setup = WorkerSetup(
        config.space.name,
        dict(config.space.options),
        _task_dict(config),
        _train_dict(config),
        supernet=str(Path(loaded.folder).resolve()),
        supernet_sha256=str(loaded.manifest["weights"]["sha256"]),
        calibration_samples=config.supernet.calibration_samples,
    )
    if choice is None:
        return SubnetExecutor(InlineExecutor(setup, loaded))
    # Workers load the supernet themselves (Ray's object store carries nothing).
    return SubnetExecutor(choice.factory(status)(setup, None))


@dataclass
class CachedEvaluations(Executor):
    """``inner`` for the subnets ``cache`` does not know; the others are answered at once with
    their kept accuracy. Every accuracy ``inner`` returns is added to the cache."""

    inner: Executor
    cache: EvaluationCache
    _hits: list[JobResult] = field(default_factory=list)

    @property
    def capacity(self) -> int:  # type: ignore[override]
        return self.inner.capacity

    def submit(self, job: TrainJob) -> None:
        accuracy = self.cache.get(job.arch)
        if accuracy is None:
            self.inner.submit(job)
            return
        self._hits.append(
            JobResult(job.trial_number, job.arch, True, accuracy=accuracy, epochs=job.epochs, host="cache")
        )

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        new = self.inner.poll(0.0 if self._hits else timeout)
        for result in new:
            if result.ok and result.accuracy is not None:
                self.cache.add(result.arch, result.accuracy)
        hits, self._hits = self._hits, []
        return hits + new

    def in_flight(self) -> int:
        return self.inner.in_flight()

    def shutdown(self) -> None:
        self.inner.shutdown()


def _device_config(
    config: RunConfig, device: str | None, table: str | None, predictor: str | None = None
) -> LatencyConfig:
    """The supernet's latency settings for ``--device host``, ``--table T`` or ``--predictor P``."""
    given = {"device": device, "table": table, "predictor": predictor}
    if sum(v is not None for v in given.values()) != 1:
        got = ", ".join(f"{k} {v!r}" for k, v in given.items())
        raise InputError(f"--device/--table/--predictor: expected exactly one of them, got {got}.")
    if device is not None:
        if device != "host":
            raise InputError(
                f"--device: expected 'host' (or a file with --table or --predictor), got {device!r}."
            )
        return replace(config.latency, device="host", table=None, predictor=None)
    if predictor is not None:
        from latency_models.predictor import load_predictor

        path = Path(str(predictor)).resolve()
        try:
            loaded = load_predictor(path)
        except InputError as e:
            raise InputError(f"--predictor {predictor}: expected a latency predictor file; {e}") from None
        return replace(
            config.latency, device=file_device(loaded.device, path), table=None, predictor=str(path)
        )
    from latency_models.table import LatencyTable

    path = Path(str(table)).resolve()
    if not path.is_file():
        raise InputError(f"--table: expected a latency table file, got {str(table)!r} (not found).")
    meta = LatencyTable.load(path).meta
    return replace(
        config.latency,
        device=file_device(meta.device, path),
        table=str(path),
        predictor=None,
        runtime=meta.runtime if meta.runtime != "unknown" else config.latency.runtime,
        dtype=meta.dtype,
        threads=meta.threads,
        strict=True,  # every block of the supernet priced by the device's own measurements
    )


@dataclass(frozen=True)
class SubnetSearch:
    """A subnet search set up for a device and budgets (what ``nas specialize`` and ``nas best``
    share): the supernet's config with the device's latency settings and the budgets, the
    device's latency model, the screen with the resolved budgets and its latency guard."""

    loaded: LoadedSupernet
    config: RunConfig
    model: Any  # nas.latency_model.LatencyModel
    screen: Any  # nas.search.Screen, with the resolved budgets
    budgets: Any  # nas.budgets.ResolvedBudgets
    latency_guard: float

    @property
    def evaluations(self) -> int:
        return int(self.config.search.trainings)

    def budget_record(self) -> dict[str, Any]:
        return {**self.budgets.as_dict(), "latency_guard": self.latency_guard}


def prepare_search(
    loaded: LoadedSupernet,
    constraints: Constraints,
    *,
    device: str | None = "host",
    table: str | None = None,
    predictor: str | None = None,
    evaluations: int = DEFAULT_EVALUATIONS,
    say: Callable[[str], None] = lambda s: None,
    device_flag: str | None = None,
    run_config: RunConfig | None = None,
) -> SubnetSearch:
    """The device's latency model and the budgets for searching ``loaded``'s subnets; refuses
    (``InputError``, before anything is written) a device file that does not price every subnet
    and budgets no subnet meets. ``device_flag`` names the file's flag in those errors (default
    ``--table`` or ``--predictor``). ``run_config``: a ``nas run`` config of the supernet's space
    and task (``--config``) whose device, strategy, training and export settings replace those
    the supernet was trained with; its latency section is the device when no device is named."""
    from latency_models.table import MissingEntryError

    from .latency_model import build_latency_model
    from .runner import prepare_budgets

    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1:
        raise InputError(f"--evaluations: expected an int >= 1, got {evaluations!r}.")
    base = loaded.config if run_config is None else _with_run_config(loaded, run_config)
    named = device is not None or table is not None or predictor is not None
    config = replace(
        base,
        latency=_device_config(base, device, table, predictor)
        if named or run_config is None
        else base.latency,
        constraints=constraints,
        search=replace(base.search, trainings=evaluations, fidelity=None),
    )
    data, space = loaded.data, loaded.net.space
    flag = f"{device_flag or ('--table' if table is not None else '--predictor')} {table or predictor}"
    try:
        model = build_latency_model(config, space, data, say)
        if predictor is not None:  # a predictor of this space name may still not know its options
            model.predictor.predict([space.largest(), space.cheapest()])
    except MissingEntryError as e:
        raise InputError(f"{flag}: expected an entry for every block of the supernet's space; {e}") from None
    except InputError as e:
        if predictor is None:
            raise
        raise InputError(
            f"{flag}: expected a predictor of the supernet's space ({space.name}); {e}"
        ) from None
    except (KeyError, ValueError, TypeError) as e:
        if predictor is None:
            raise
        raise InputError(
            f"{flag}: expected a predictor of the supernet's space ({space.name}), "
            f"got one that cannot price it ({e.__class__.__name__}: {e})."
        ) from None
    try:
        model, screen, budgets, latency_guard = prepare_budgets(config, space, data, model, None, say)
    except InputError as e:  # the budgets are flags here, not config fields
        message = str(e)
        for name in ("max_latency_ms", "max_size_kb", "max_memory_kb"):
            message = message.replace(f"constraints.{name}", "--" + name.replace("_", "-"))
        raise InputError(message) from None
    return SubnetSearch(loaded, config, model, screen, budgets, latency_guard)


def _with_run_config(loaded: LoadedSupernet, run_config: RunConfig) -> RunConfig:
    """``run_config`` with the supernet's own ``supernet`` section, after checking that it names
    the supernet's space and task (the same data)."""
    from .data import load_task
    from .supernet import _check_same

    _check_same(loaded.manifest, run_config, load_task(run_config.task), "--config")
    return replace(run_config, supernet=loaded.config.supernet)


def budgets_with_flags(constraints: Constraints, **flags: float | None) -> Constraints:
    """``constraints`` with each budget given as a flag (``max_latency_ms=...``) set absolute,
    replacing that quantity's relative forms; the others as they were."""
    from .config import relative_key

    changes: dict[str, float | None] = {}
    for name, value in flags.items():
        if value is None:
            continue
        changes[name] = float(value)
        for form in ("quantile", "times_smallest"):
            changes[relative_key(name, form)] = None
    return replace(constraints, **changes)


def search_subnets(
    setup: SubnetSearch,
    open_study: Callable[[Any], Any],
    say: Callable[[str], None] = lambda s: None,
    execution: ExecutorChoice | None = None,
) -> tuple[Any, dict[str, tuple[float, Any]], int]:
    """Search ``setup``'s subnets with the config's strategy: ``open_study(sampler)`` gives the
    Optuna study (a run folder's or one in memory); each candidate's value is its inherited,
    BN-recalibrated validation accuracy, kept in the supernet folder for later searches
    (``EvaluationCache``). Returns the study, each subnet evaluated here (accuracy, BN
    statistics) and how many answers came from the folder's earlier evaluations."""
    from .search import SearchLoop
    from .strategies import SearchContext, make_strategy
    from .strategies.default import POOL_SCALE_OPTION

    config, loaded, space = setup.config, setup.loaded, setup.loaded.net.space
    limit = setup.budgets.constraints.max_latency_ms
    context = SearchContext(
        space=space,
        seed=config.search.seed,
        predict=setup.screen,
        max_latency_ms=None if limit is None else limit * (1 - setup.latency_guard),
        n_trials=setup.evaluations,
        options={POOL_SCALE_OPTION: POOL_SCALE},
    )
    study = open_study(make_strategy(config.search.strategy, context))
    study.set_user_attr(StudyKey.BUDGETS, setup.budget_record())
    epochs = int(loaded.manifest["epoch"])
    samples = config.supernet.calibration_samples
    evaluator = subnet_executor(loaded, execution, say)
    cache = EvaluationCache(loaded.folder, loaded.manifest, samples)
    executor = CachedEvaluations(evaluator, cache)
    say(
        f"searching {setup.evaluations} subnets of supernet {loaded.folder} (inherited weights, "
        f"strategy {config.search.strategy}, {_where(execution, executor.capacity)})"
    )
    # Each evaluation counts as the supernet's epochs, so the loop's budget is ``evaluations``.
    SearchLoop(study, space, setup.screen, executor, setup.evaluations, config.search.seed, epochs).run()
    if cache.hits:
        say(f"{cache.hits} of the subnets had been evaluated by earlier specializations ({cache.path})")
    return study, evaluator.evaluated, cache.hits


def specialize(
    supernet: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_latency_ms: float | None = None,
    max_size_kb: float | None = None,
    max_memory_kb: float | None = None,
    device: str | None = "host",
    table: str | None = None,
    predictor: str | None = None,
    finetune_epochs: int = 0,
    evaluations: int = DEFAULT_EVALUATIONS,
    say: Callable[[str], None] = lambda s: None,
    config: str | os.PathLike[str] | None = None,
    execution: ExecutorChoice | None = None,
) -> dict[str, Any]:
    """Search the supernet's subnets under the budgets on the device (``host``, a ``table`` or a
    ``predictor`` file), ship the best one into ``out`` and return the report (also
    ``out/report.json``). ``config``: a ``nas run`` config file of the supernet's space and task
    whose device (when none is named), budgets (those not given), strategy, training and export
    settings are used instead of the supernet's own. Subnets are evaluated in this process, or
    with ``execution`` on local worker processes or a Ray cluster."""
    from .config import _positive, load_config
    from .guard import RunGuard
    from .runner import NothingFitsError, _budget_text, _open_study, write_run_report
    from .search import budget_share
    from .shipping import WEIGHTS_DIR, _verify_and_ship

    _positive(max_latency_ms, "--max-latency-ms", allow_none=True)
    _positive(max_size_kb, "--max-size-kb", allow_none=True)
    _positive(max_memory_kb, "--max-memory-kb", allow_none=True)
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise InputError(f"--finetune-epochs: expected an int >= 0, got {finetune_epochs!r}.")
    started = time.time()
    with RunGuard(out, resume=False) as guard:
        run_config = None if config is None else load_config(config)
        loaded = load_supernet(supernet, say)
        constraints = budgets_with_flags(
            (run_config or loaded.config).constraints,
            max_latency_ms=max_latency_ms,
            max_size_kb=max_size_kb,
            max_memory_kb=max_memory_kb,
        )
        setup = prepare_search(
            loaded,
            constraints,
            device=device,
            table=table,
            predictor=predictor,
            evaluations=evaluations,
            say=say,
            run_config=run_config,
        )
        config, model, screen, budgets = setup.config, setup.model, setup.screen, setup.budgets
        data, space = loaded.data, loaded.net.space
        screening = budget_share(space, screen, seed=config.search.seed)
        out_dir = guard.make_folder()  # only now: bad input above leaves no folder behind
        study, evaluated, cached = search_subnets(
            setup, lambda sampler: _open_study(config, out_dir, None, False, sampler), say, execution
        )
        search_s = time.time() - started
        epochs = int(loaded.manifest["epoch"])
        _keep_weights(loaded, study, out_dir / WEIGHTS_DIR, epochs, evaluated)

        def finish(arch: Hashable) -> dict[str, Any]:
            return _finish(loaded, config, arch, finetune_epochs, out_dir, say, evaluated)

        shipped, verified, model = _verify_and_ship(
            config,
            space,
            data,
            study,
            screen,
            budgets.constraints,
            model,
            out_dir,
            say,
            finish,
            finetune_epochs,
        )
        shutil.rmtree(out_dir / WEIGHTS_DIR, ignore_errors=True)
        supernet_record = {
            "folder": str(Path(supernet).resolve()),
            "epoch": epochs,
            "weights_sha256": loaded.manifest["weights"]["sha256"],
            "evaluations": evaluations,
            "evaluations_from_cache": cached,
            "finetune_epochs": finetune_epochs,
        }
        report = write_run_report(
            out_dir, config, study, space, screen, model, shipped, verified, screening,
            setup.budget_record(),
            {"search_s": search_s, "total_s": time.time() - started},
            extra={"supernet": supernet_record},
        )  # fmt: skip
        if not shipped:
            raise NothingFitsError(
                f"no verified subnet's file meets the budgets ({_budget_text(budgets.constraints)}); "
                f"report in {out_dir / 'report.json'}"
            )
        return report


def _where(execution: ExecutorChoice | None, capacity: int) -> str:
    if execution is None:
        return "evaluated in this process"
    if execution.ray_address is not None:
        return f"evaluated on the Ray cluster at {execution.ray_address}"
    return f"evaluated by {capacity} worker processes"


def _keep_weights(
    loaded: LoadedSupernet, study: Any, folder: Path, epochs: int, evaluated: dict[str, tuple[float, Any]]
) -> None:
    """The standalone models of the most accurate evaluated subnets, where verification looks for
    a search's trained weights (``weights_path``): it verifies at most ``VERIFY_LIMIT``
    candidates, most accurate first, and would train a missing one from scratch."""
    from search_spaces.backend import keras

    from .shipping import VERIFY_LIMIT

    done = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(TrialKey.STATE) == State.COMPLETE and t.values
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for t in sorted(done, key=lambda t: -t.values[0])[: 2 * VERIFY_LIMIT]:
        key = t.user_attrs[TrialKey.ARCH]
        arch = loaded.net.space.parse(key)
        stats = _evaluation(loaded, arch, evaluated)[1]
        keras().backend.clear_session()
        final = weights_path(folder, t.number, epochs)
        tmp = final[: -len(".weights.h5")] + ".tmp.weights.h5"
        loaded.net.extract(arch, stats).save_weights(tmp)
        os.replace(tmp, final)


def _evaluation(
    loaded: LoadedSupernet, arch: Hashable, evaluated: dict[str, tuple[float, Any]]
) -> tuple[float, Any]:
    """``arch``'s (inherited accuracy, BN statistics): the search's evaluation (wherever it ran),
    or one made now (and kept) for a subnet the search did not evaluate. Calibration is
    deterministic (the first ``calibration_samples`` training samples), so both are the same."""
    key = str(arch)
    if key not in evaluated:
        samples = loaded.config.supernet.calibration_samples
        evaluated[key] = evaluate_subnet(loaded.net, arch, loaded.data, samples)
    return evaluated[key]


def _finish(
    loaded: LoadedSupernet,
    config: RunConfig,
    arch: Hashable,
    finetune_epochs: int,
    out: Path,
    say: Callable[[str], None],
    evaluated: dict[str, tuple[float, Any]],
) -> dict[str, Any]:
    """The shipped file of ``arch``: extracted with inherited weights and its own BN statistics,
    fine-tuned for ``finetune_epochs`` on the training and validation splits (as ``nas run``'s
    final training), then exported and measured by ``export_winner``."""
    from search_spaces.backend import keras

    from .shipping import export_winner
    from .train import train_model

    net, data = loaded.net, loaded.data
    accuracy, stats = _evaluation(loaded, arch, evaluated)
    keras().backend.clear_session()
    model = net.extract(arch, stats)
    if finetune_epochs:
        say(f"fine-tuning {arch} (inherited validation accuracy {accuracy:.4f}) for {finetune_epochs} epochs")
        both = replace(
            data,
            x_train=np.concatenate([data.x_train, data.x_val]),
            y_train=np.concatenate([data.y_train, data.y_val]),
        )
        # The training's own rate, decayed over the fine-tune's epochs: on the quickstart space a
        # tenth of it left the subnet 2-3 points short after 3 epochs (benchmarks/supernet.py
        # --finetune-check).
        train_model(model, both, config.training, finetune_epochs, config.search.seed)
    else:
        say(f"shipping {arch} with its inherited weights (validation accuracy {accuracy:.4f})")
    exported = export_winner(config, model, data, out, say)
    exported["params"] = int(model.count_params())
    exported["inherited_val_accuracy"] = accuracy
    return exported
