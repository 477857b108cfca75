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

from .config import Constraints, LatencyConfig, RunConfig
from .executors import Executor, JobResult, TrainJob, weights_path
from .supernet import LoadedSupernet, evaluate_subnet, load_supernet
from .trial_record import State, StudyKey, TrialKey

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import ExecutorChoice

__all__ = ["SubnetExecutor", "specialize", "subnet_executor"]

# Subnets evaluated per specialization when the caller does not say.
DEFAULT_EVALUATIONS = 60


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


def _device_config(config: RunConfig, device: str | None, table: str | None) -> LatencyConfig:
    """The supernet's latency settings for ``--device host`` or ``--table T``."""
    if (device is None) == (table is None):
        raise InputError(
            f"--device/--table: expected exactly one of them, got device {device!r} and table {table!r}."
        )
    if device is not None:
        if device != "host":
            raise InputError(f"--device: expected 'host' (or a table with --table), got {device!r}.")
        return replace(config.latency, device="host", table=None, predictor=None)
    from latency_models.table import LatencyTable

    path = Path(str(table)).resolve()
    if not path.is_file():
        raise InputError(f"--table: expected a latency table file, got {str(table)!r} (not found).")
    meta = LatencyTable.load(path).meta
    return replace(
        config.latency,
        device=meta.device,
        table=str(path),
        predictor=None,
        runtime=meta.runtime if meta.runtime != "unknown" else config.latency.runtime,
        dtype=meta.dtype,
        threads=meta.threads,
        strict=True,  # every block of the supernet priced by the device's own measurements
    )


def specialize(
    supernet: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_latency_ms: float,
    max_size_kb: float,
    device: str | None = "host",
    table: str | None = None,
    finetune_epochs: int = 0,
    evaluations: int = DEFAULT_EVALUATIONS,
    say: Callable[[str], None] = lambda s: None,
    execution: ExecutorChoice | None = None,
) -> dict[str, Any]:
    """Search the supernet's subnets under the budgets on the device, ship the best one into
    ``out`` and return the report (also ``out/report.json``). Subnets are evaluated in this
    process, or with ``execution`` on local worker processes or a Ray cluster."""
    from .config import _positive
    from .guard import RunGuard
    from .runner import NothingFitsError, _budget_text, _open_study, prepare_budgets, write_run_report
    from .search import SearchLoop, budget_share
    from .shipping import WEIGHTS_DIR, _verify_and_ship
    from .strategies import SearchContext, make_strategy

    _positive(max_latency_ms, "--max-latency-ms", allow_none=False)
    _positive(max_size_kb, "--max-size-kb", allow_none=False)
    for name, value, least in (("--finetune-epochs", finetune_epochs, 0), ("--evaluations", evaluations, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name}: expected an int >= {least}, got {value!r}.")
    started = time.time()
    with RunGuard(out, resume=False) as guard:
        loaded = load_supernet(supernet, say)
        base = loaded.config
        config = replace(
            base,
            latency=_device_config(base, device, table),
            constraints=Constraints(max_latency_ms=float(max_latency_ms), max_size_kb=float(max_size_kb)),
            search=replace(base.search, trainings=evaluations, fidelity=None),
        )
        data, space = loaded.data, loaded.net.space
        from latency_models.table import MissingEntryError

        from .latency_model import build_latency_model

        try:
            model = build_latency_model(config, space, data, say)
        except MissingEntryError as e:
            raise InputError(
                f"--table {table}: expected an entry for every block of the supernet's space; {e}"
            ) from None
        try:
            model, screen, budgets, latency_guard = prepare_budgets(config, space, data, model, None, say)
        except InputError as e:  # the budgets are flags here, not config fields
            message = str(e).replace("constraints.max_latency_ms", "--max-latency-ms")
            raise InputError(message.replace("constraints.max_size_kb", "--max-size-kb")) from None
        screening = budget_share(space, screen, seed=config.search.seed)
        out_dir = guard.make_folder()  # only now: bad input above leaves no folder behind
        context = SearchContext(
            space=space,
            seed=config.search.seed,
            predict=screen,
            max_latency_ms=budgets.constraints.max_latency_ms * (1 - latency_guard),
            n_trials=evaluations,
        )
        study = _open_study(config, out_dir, None, False, make_strategy(config.search.strategy, context))
        study.set_user_attr(StudyKey.BUDGETS, {**budgets.as_dict(), "latency_guard": latency_guard})
        epochs = int(loaded.manifest["epoch"])
        executor = subnet_executor(loaded, execution, say)
        say(
            f"searching {evaluations} subnets of supernet {supernet} (inherited weights, strategy "
            f"{config.search.strategy}, {_where(execution, executor.capacity)})"
        )
        # Each evaluation counts as the supernet's epochs, so the loop's budget is ``evaluations``.
        loop = SearchLoop(study, space, screen, executor, evaluations, config.search.seed, epochs)
        loop.run()
        search_s = time.time() - started
        _keep_weights(loaded, study, out_dir / WEIGHTS_DIR, epochs, executor.evaluated)

        def finish(arch: Hashable) -> dict[str, Any]:
            return _finish(loaded, config, arch, finetune_epochs, out_dir, say, executor.evaluated)

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
            "finetune_epochs": finetune_epochs,
        }
        report = write_run_report(
            out_dir, config, study, space, screen, model, shipped, verified, screening,
            {**budgets.as_dict(), "latency_guard": latency_guard},
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
        # A tenth of the training rate: the inherited weights are a trained start, not a random one.
        tune = replace(config.training, learning_rate=config.training.learning_rate * 0.1)
        train_model(model, both, tune, finetune_epochs, config.search.seed)
    else:
        say(f"shipping {arch} with its inherited weights (validation accuracy {accuracy:.4f})")
    exported = export_winner(config, model, data, out, say)
    exported["params"] = int(model.count_params())
    exported["inherited_val_accuracy"] = accuracy
    return exported
