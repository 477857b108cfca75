"""Subnet evaluations of ``nas specialize`` on ``nas run``'s executors: local worker processes
and a real Ray cluster on 127.0.0.1 give the inline evaluation's accuracies and BN statistics,
and a worker killed mid-evaluation is handled as a lost training is (retried once).
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

from nas.cli import main
from nas.executors import JobResult, TrainJob
from tests.test_budgets import QUICKSTART, quickstart_screen

SAMPLES = 400


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A quickstart-space supernet trained one short epoch, loaded in this (the driver) process."""
    from nas.config import parse_config
    from nas.supernet import load_supernet, train_supernet

    folder = tmp_path_factory.mktemp("sndist") / "supernet"
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["supernet"] = {"epochs": 1, "max_train_samples": 320, "calibration_samples": SAMPLES}
    train_supernet(parse_config(doc, base_dir=QUICKSTART.parent), folder)
    return load_supernet(folder)


def _archs(loaded: Any, n: int) -> list[str]:
    rng = random.Random(3)
    return [str(loaded.net.space.random(rng)) for _ in range(n)]


def _evaluate_all(executor: Any, archs: list[str]) -> dict[str, JobResult]:
    for number, arch in enumerate(archs):
        executor.submit(TrainJob(number, arch, 0, 1))
    results: list[JobResult] = []
    try:
        while len(results) < len(archs):
            results += executor.poll(timeout=None)
    finally:
        executor.shutdown()
    return {r.arch: r for r in results}


def _assert_same_evaluations(inline: dict[str, Any], other: dict[str, Any]) -> None:
    """Same accuracy and BN statistics per subnet (calibration is deterministic; only the
    threads' summation order differs between processes)."""
    assert sorted(inline) == sorted(other)
    for arch, (accuracy, stats) in inline.items():
        assert other[arch][0] == pytest.approx(accuracy, abs=1e-6), arch
        assert sorted(other[arch][1]) == sorted(stats)
        for name, (mean, var) in stats.items():
            np.testing.assert_allclose(other[arch][1][name][0], mean, atol=1e-5)
            np.testing.assert_allclose(other[arch][1][name][1], var, atol=1e-5)


@pytest.fixture(scope="module")
def inline(loaded: Any) -> dict[str, Any]:
    """The reference: every test subnet evaluated in this process."""
    from nas.specialize import subnet_executor

    executor = subnet_executor(loaded)
    results = _evaluate_all(executor, _archs(loaded, 4))
    assert all(r.ok and r.pid == os.getpid() for r in results.values())
    return executor.evaluated


@pytest.mark.slow
def test_worker_processes_evaluate_as_the_driver_does(loaded: Any, inline: dict[str, Any]) -> None:
    from nas.distributed import ExecutorChoice
    from nas.specialize import subnet_executor

    executor = subnet_executor(loaded, ExecutorChoice(workers=2))
    assert executor.capacity == 2
    results = _evaluate_all(executor, _archs(loaded, 4))
    assert all(r.ok for r in results.values()), results
    pids = {r.pid for r in results.values()}
    assert os.getpid() not in pids and len(pids) <= 2
    # The study gets the usual attributes; the BN statistics stay with the driver.
    assert all("payload" not in r.as_attrs() for r in results.values())
    _assert_same_evaluations(inline, executor.evaluated)


@pytest.mark.slow
def test_worker_killed_mid_evaluation_is_retried(loaded: Any, inline: dict[str, Any]) -> None:
    from nas.distributed import ExecutorChoice
    from nas.specialize import subnet_executor

    said: list[str] = []
    executor = subnet_executor(loaded, ExecutorChoice(workers=1), said.append)
    first, second = _archs(loaded, 2)
    try:
        executor.submit(TrainJob(0, first, 0, 1))
        (warm,) = executor.poll(timeout=None)  # the worker has loaded the supernet
        assert warm.ok
        executor.submit(TrainJob(1, second, 0, 1))
        (pid,) = executor.inner.worker_pids()
        os.kill(pid, signal.SIGKILL)
        (retried,) = executor.poll(timeout=None)
    finally:
        executor.shutdown()
    assert retried.ok and retried.attempts == 2 and "killed by SIGKILL" in retried.retried_after
    assert retried.pid != pid and any("retrying it on another worker" in s for s in said)
    _assert_same_evaluations(
        {a: inline[a] for a in (first, second)}, {a: executor.evaluated[a] for a in (first, second)}
    )


@pytest.mark.slow
def test_ray_cluster_evaluates_as_the_driver_does(loaded: Any, inline: dict[str, Any]) -> None:
    from nas.distributed import ExecutorChoice
    from nas.distributed.cluster import LocalRayCluster
    from nas.specialize import subnet_executor

    with LocalRayCluster(num_cpus=2) as cluster:
        choice = ExecutorChoice(ray_address=cluster.address)
        choice.connect()
        executor = subnet_executor(loaded, choice)
        results = _evaluate_all(executor, _archs(loaded, 4))
    assert all(r.ok for r in results.values()), results
    assert os.getpid() not in {r.pid for r in results.values()}
    _assert_same_evaluations(inline, executor.evaluated)


@pytest.mark.slow
def test_specialize_on_worker_processes_values_trials_by_inherited_accuracy(
    loaded: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end with ``--workers 2``: every evaluated trial's value is the subnet's inherited
    accuracy as the driver computes it."""
    from nas.supernet import evaluate_subnet

    space, screen, _ = quickstart_screen()
    table = tmp_path / "device.json"
    screen.latency.table.save(table)
    latencies = sorted(p.latency_ms for p in screen([space.random(random.Random(1)) for _ in range(200)]))
    out = tmp_path / "run"
    code = main(
        [
            "specialize", "--quiet", "--supernet", str(loaded.folder), "--table", str(table),
            "--max-latency-ms", f"{latencies[len(latencies) // 2]:.6g}", "--max-size-kb", "60",
            "--evaluations", "4", "--workers", "2", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["counts"]["complete"] == 4
    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("state") == "complete"]
    assert len(done) == 4 and os.getpid() not in {t.user_attrs["pid"] for t in done}
    for trial in done:
        arch = space.parse(trial.user_attrs["arch"])
        expected = evaluate_subnet(loaded.net, arch, loaded.data, SAMPLES)[0]
        assert trial.values[0] == pytest.approx(expected, abs=1e-6)


def test_bad_executor_flags_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["specialize", "--supernet", str(tmp_path), "--max-latency-ms", "1", "--max-size-kb", "9"]
    for flags, needle in (
        (["--workers", "0"], "--workers: expected an int >= 1, got 0."),
        (["--ray-address", "nowhere"], "--ray-address: expected HOST:PORT"),
    ):
        code = main([*argv, *flags, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "run").exists()
