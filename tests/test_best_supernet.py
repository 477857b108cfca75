"""``nas best`` answering from a trained supernet: a real supernet (digits, the retrieval tests'
space) beside a real run's study, priced with a real device table; subnets are searched for the
device and listed beside trained trials, ``--export`` specializes the winner; and
``nas specialize --predictor``. Bad input is one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from search_spaces import InputError
from tests.conftest import assert_one_line_error
from tests.test_retrieve import OPTIONS, _config, build_table_runs

ROOT = Path(__file__).resolve().parent.parent
SUPERNET = {"epochs": 1, "max_train_samples": 320, "calibration_samples": 200}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``runs/`` holding a real run searched for board-a (its study.db) and a supernet of the same
    space and task trained one short epoch (``runs/supernet``)."""
    from nas.config import parse_config
    from nas.supernet import train_supernet

    shared = tmp_path_factory.getbasetemp() / "edge-nas-table-runs"
    table_runs = build_table_runs(shared)
    runs = tmp_path_factory.mktemp("best-supernet") / "runs"
    shutil.copytree(table_runs / "board-a", runs / "board-a")
    doc = json.loads(_config("board-a", shared / "tables" / "board-a.json", seed=0))
    doc["supernet"] = SUPERNET
    train_supernet(parse_config(doc), runs / "supernet")
    return runs


def _table(runs: Path) -> Path:
    return runs.parent.parent / "edge-nas-table-runs" / "tables" / "board-a.json"


def _space_and_shape():
    from search_spaces import TaskShape, get_space

    return get_space("mbconv", OPTIONS), TaskShape((8, 8, 1), 10)


def _table_latency(table_path: Path, arch: str) -> float:
    """The arch's latency as the sum of the table's blocks (an independent pricing)."""
    from latency_models.table import LatencyTable

    space, shape = _space_and_shape()
    table = LatencyTable.load(table_path)
    return sum(table.lookup(b).mean_ms for b in space.blocks(space.parse(arch), shape))


def test_best_lists_supernet_subnets_beside_trained_trials(mixed: Path) -> None:
    import nas
    from nas.cli.best import _table as render
    from nas.supernet import evaluate_subnet, load_supernet

    table = _table(mixed)
    answer = nas.best(mixed, device=str(table), max_size_kb=60, top=50, evaluations=3)
    doc = json.loads(json.dumps(answer.as_dict(), default=str))
    trained = [c for c in doc["candidates"] if c["source"] == "trained"]
    subnets = [c for c in doc["candidates"] if c["source"] == "supernet"]
    report = json.loads((mixed / "board-a" / "report.json").read_text())
    assert len(trained) == len([t for t in report["trials"] if t["state"] == "complete"]) > 0
    assert len(subnets) == 3 and len({c["arch"] for c in subnets}) == 3
    assert doc["supernets"] == 1 and doc["studies"] == 1 and doc["considered"] == len(trained) + 3
    accuracies = [c["accuracy"] for c in doc["candidates"]]
    assert accuracies == sorted(accuracies, reverse=True)
    loaded = load_supernet(mixed / "supernet")
    for c in subnets:
        assert c["study"] == str(mixed / "supernet") and c["searched_for"] == "board-a"
        assert c["size_bytes"] <= 60 * 1024
        assert c["latency_ms"] == pytest.approx(_table_latency(table, c["arch"]), rel=1e-6)
    best = max(subnets, key=lambda c: c["accuracy"])
    accuracy, _ = evaluate_subnet(loaded.net, loaded.net.space.parse(best["arch"]), loaded.data, 200)
    assert best["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    text = render(answer)
    assert "supernet subnet" in text and "trained trial" in text and "1 supernets" in text
    assert not any(p.name == "study.db" for p in (mixed / "supernet").iterdir())  # nothing written


def test_best_on_a_predictor_and_the_task_filter(mixed: Path, tmp_path: Path) -> None:
    """A predictor file as --device prices the subnets; --task keeps the supernet of that task."""
    import nas

    predictor = _save_predictor(mixed, tmp_path / "board-a-predictor.json")
    answer = nas.best(mixed / "supernet", device=str(predictor), task="digits", top=50, evaluations=2)
    assert answer.supernets == 1 and answer.studies == 0 and len(answer.candidates) == 2
    for c in answer.candidates:
        assert c.source == "supernet" and c.searched_for == "board-a-fit"
        assert c.latency_ms == pytest.approx(_table_latency(_table(mixed), c.arch), rel=1e-6)
    with pytest.raises(InputError, match="--task: no study or supernet"):
        nas.best(mixed / "supernet", device=str(predictor), task="mnist5k", evaluations=1)


@pytest.mark.slow  # a real specialization: verification, int8 export and measurement
def test_export_specializes_the_supernet_winner(mixed: Path, run_nas, tmp_path: Path) -> None:
    space, shape = _space_and_shape()
    rng = random.Random(0)
    latencies = sorted(_table_latency(_table(mixed), str(space.random(rng))) for _ in range(100))
    budget = latencies[len(latencies) // 2]
    out = tmp_path / "exported"
    proc = run_nas(
        "best", "--runs", str(mixed / "supernet"), "--device", str(_table(mixed)),
        "--max-latency-ms", f"{budget:.6g}", "--max-size-kb", "60", "--evaluations", "3",
        "--export", str(out), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "supernet subnet" in proc.stdout and "exported" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    retrieval = json.loads((out / "retrieval.json").read_text())
    winner = retrieval["candidates"][0]
    assert winner["source"] == "supernet" and report["supernet"]["folder"] == str(mixed / "supernet")
    assert report["supernet"]["evaluations"] == 3
    # The same search (the same subnets and inherited accuracies), then nas specialize's
    # verification, which ranks by the int8 files' accuracy: the shipped one is one of them.
    searched = {t["arch"]: t["accuracy"] for t in report["trials"] if t["state"] == "complete"}
    listed = {c["arch"]: c["accuracy"] for c in retrieval["candidates"]}
    assert searched == pytest.approx(listed) and winner["arch"] in searched
    assert report["best"]["arch"] in searched
    assert report["best"]["predicted_latency_ms"] <= budget
    assert (out / "model.tflite").stat().st_size == report["best"]["size_bytes"] <= 60 * 1024


def _save_predictor(mixed: Path, path: Path) -> Path:
    """board-a's table as a predictor file (``nas latency fit``'s format) for the space."""
    from latency_models.table import LatencyTable
    from nas.latency_model import predictor_from_table

    _, shape = _space_and_shape()
    table = LatencyTable.load(_table(mixed))
    predictor_from_table(table, "mbconv", shape, OPTIONS, device="board-a-fit").save(path)
    return path


@pytest.mark.slow  # a real specialization: verification, int8 export and measurement
def test_specialize_with_a_predictor(mixed: Path, run_nas, tmp_path: Path) -> None:
    predictor = _save_predictor(mixed, tmp_path / "board-a-predictor.json")
    out = tmp_path / "run"
    proc = run_nas(
        "specialize", "--quiet", "--supernet", str(mixed / "supernet"), "--predictor", str(predictor),
        "--max-latency-ms", "1", "--max-size-kb", "60", "--evaluations", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["latency"]["predictor"] == str(predictor.resolve())
    assert report["config"]["latency"]["device"] == "board-a-fit"
    best = report["best"]
    assert best["predicted_latency_ms"] == pytest.approx(
        _table_latency(_table(mixed), best["arch"]), rel=1e-6
    )
    assert (out / "model.tflite").stat().st_size == best["size_bytes"] <= 60 * 1024


def test_bad_supernet_input_is_one_line_and_writes_nothing(mixed: Path, run_nas, tmp_path: Path) -> None:
    from latency_models.table import LatencyTable

    table = _table(mixed)
    out = tmp_path / "out"
    # --quiet: without it, --export prints progress lines on stderr
    base = ("best", "--quiet", "--runs", str(mixed / "supernet"), "--evaluations", "1", "--export", str(out))
    # budgets no subnet meets, named with the smallest achievable
    proc = run_nas(*base, "--device", str(table), "--max-latency-ms", "1e-6", "--max-size-kb", "60")
    assert_one_line_error(proc, "--max-latency-ms", "smallest achievable")
    assert not out.exists()
    # a table lacking a block of the supernet's space
    full = LatencyTable.load(table)
    dropped = sorted(full.entries)[0]
    partial = tmp_path / "partial.json"
    LatencyTable(full.meta, {b: e for b, e in full.entries.items() if b != dropped}).save(partial)
    proc = run_nas(*base, "--device", str(partial), "--max-latency-ms", "1", "--max-size-kb", "60")
    assert_one_line_error(proc, f"--device {partial}", "expected an entry for every block", dropped.key)
    assert not out.exists()
    # a truncated weight file
    broken = tmp_path / "runs" / "supernet"
    shutil.copytree(mixed / "supernet", broken)
    weights = next(broken.glob("weights-e*.npz"))
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = run_nas(
        "best", "--quiet", "--runs", str(broken.parent), "--device", str(table), "--max-size-kb", "60",
        "--export", str(out),
    )  # fmt: skip
    assert_one_line_error(proc, str(weights), "truncated")
    assert not out.exists()


def test_specialize_predictor_flag_bad_input(mixed: Path, run_nas, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = (
        "specialize",
        "--quiet",
        "--supernet",
        str(mixed / "supernet"),
        "--max-latency-ms",
        "1",
        "--max-size-kb",
        "60",
    )
    nb201 = ROOT / "examples" / "rpi4" / "raspi4_nb201.json"
    proc = run_nas(*argv, "--predictor", str(nb201), "--out", str(out))
    assert_one_line_error(proc, f"--predictor {nb201}", "space", "nb201")
    assert not out.exists()
    proc = run_nas(*argv, "--predictor", str(_table(mixed)), "--out", str(out))  # a table, not a predictor
    assert_one_line_error(proc, f"--predictor {_table(mixed)}", "expected a latency predictor file")
    assert not out.exists()
    proc = run_nas(*argv, "--predictor", str(nb201), "--table", str(_table(mixed)), "--out", str(out))
    assert_one_line_error(proc, "--table", "--predictor")
    assert not out.exists()


def test_a_supernet_that_cannot_answer_is_skipped_beside_trained_candidates(
    mixed: Path, tmp_path: Path
) -> None:
    """A table lacking a block only the supernet's space uses (no trial of the run does): the
    trained answer, with a note naming the supernet and the missing block, instead of an error."""
    import optuna

    import nas
    from latency_models.table import LatencyTable

    space, shape = _space_and_shape()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    used = set()
    for name in optuna.get_all_study_names(f"sqlite:///{mixed / 'board-a' / 'study.db'}"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{mixed / 'board-a' / 'study.db'}")
        for t in study.get_trials(deepcopy=False):
            if "arch" in t.user_attrs:
                used.update(space.blocks(space.parse(t.user_attrs["arch"]), shape))
    full = LatencyTable.load(_table(mixed))
    unused = sorted(b for b in full.entries if b not in used)
    assert unused, "every block of the table is used by a trial"
    partial = tmp_path / "partial.json"
    LatencyTable(full.meta, {b: e for b, e in full.entries.items() if b != unused[0]}).save(partial)
    answer = nas.best(mixed, device=str(partial), max_size_kb=60, evaluations=2)
    notes = [n for n in answer.notes if n.startswith("skipped supernet")]
    assert answer.found and all(c.source != "supernet" for c in answer.candidates)
    assert len(notes) == 1 and "expected an entry for every block" in notes[0] and unused[0].key in notes[0]
