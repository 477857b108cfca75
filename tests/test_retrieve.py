"""``nas best`` over real studies: two real runs on digits (real training, real int8 export),
searched for two devices given as user latency tables; retrieval, re-pricing, bad input, export."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

OPTIONS = {
    "strides": [1, 2, 2],
    "widths": [[8, 32], [16, 64], [24, 96]],
    "depths": [1],
    "kernels": [3],
    "expands": [1, 6],
    "se": [False],
    "acts": ["relu6"],
    "stem_width": 8,
}
# (device, slowdown): board-b is three times slower than board-a, block for block
DEVICES = (("board-a", 1.0), ("board-b", 3.0))


def _config(device: str, table: Path, seed: int) -> str:
    return json.dumps(
        {
            "task": {"data": "digits"},
            "space": {"name": "mbconv", "options": OPTIONS},
            "latency": {"device": device, "table": str(table)},
            "constraints": {"max_size_kb": 60},
            "search": {"strategy": "random", "trainings": 3, "seed": seed},
            "training": {"epochs": 1, "final_epochs": 1, "batch_size": 16},
            "export": {"calibration_samples": 50},
        }
    )


def _write_table(path: Path, device: str, slowdown: float) -> None:
    """A user's device table for every block of the space: latency grows with the block's
    multiply-accumulates, memory with its activations (the shape a real table has)."""
    from latency_models.table import Entry, LatencyTable, TableMeta
    from search_spaces import TaskShape, get_space

    space = get_space("mbconv", OPTIONS)
    entries = {}
    for b in space.all_blocks(TaskShape((8, 8, 1), 10)):
        macs = b.in_h * b.in_w * b.in_c * b.out_c * b.kernel**2 * b.expand / max(b.stride, 1) ** 2
        entries[b] = Entry(
            mean_ms=slowdown * (0.002 + macs * 2e-7),
            memory_bytes=int(b.in_h * b.in_w * (b.in_c + b.out_c) * b.expand),
        )
    LatencyTable(TableMeta(device=device, runtime="litert", source="test table"), entries).save(path)


def build_table_runs(base: Path) -> Path:
    """``base/runs`` with one real run per device (built once per test session, shared by the
    retrieval, HTML report and progress tests)."""
    runs = base / "runs"
    if (runs / ".complete").exists():
        return runs
    shutil.rmtree(runs, ignore_errors=True)
    tables = base / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    import nas

    for i, (device, slowdown) in enumerate(DEVICES):
        table = tables / f"{device}.json"
        _write_table(table, device, slowdown)
        cfg = base / f"{device}.yaml"
        cfg.write_text(_config(device, table, seed=i))  # JSON is YAML
        # the Python API, in this process: one TensorFlow start-up for both runs
        nas.run(cfg, out=runs / device)
    (runs / ".complete").touch()
    return runs


@pytest.fixture(scope="session")
def table_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_table_runs(tmp_path_factory.getbasetemp() / "edge-nas-table-runs")


def _trained(run: Path) -> list[dict]:
    """The run's trained candidates as the report records them (an independent reader)."""
    report = json.loads((run / "report.json").read_text())
    return [t for t in report["trials"] if t["state"] == "complete"]


def _best_json(run_nas, *args: str) -> tuple[int, dict]:
    proc = run_nas("best", *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_lists_the_most_accurate_that_meet_the_budgets(run_nas, table_runs: Path) -> None:
    a = table_runs / "board-a"
    trained = _trained(a)
    sizes = sorted(t["size_bytes"] for t in trained)
    budget_kb = (sizes[0] + sizes[1]) / 2 / 1024  # lets the smallest candidate in, not the largest
    code, answer = _best_json(
        run_nas, "--runs", str(table_runs), "--device", "board-a", "--max-size-kb", f"{budget_kb}"
    )
    assert code == 0
    expected = sorted(
        (t for t in trained if t["size_bytes"] <= budget_kb * 1024),
        key=lambda t: (-t["accuracy"], t["predicted_latency_ms"], t["size_bytes"]),
    )
    got = [c for c in answer["candidates"] if c["study"] == str(a)]
    assert [c["arch"] for c in got] == [t["arch"] for t in expected]
    accs = [c["accuracy"] for c in answer["candidates"]]
    assert accs == sorted(accs, reverse=True)
    for c in answer["candidates"]:
        assert c["size_bytes"] <= budget_kb * 1024
        assert c["repriced"] == (c["searched_for"] != "board-a")
    assert answer["considered"] == len(trained) + len(_trained(table_runs / "board-b"))

    # the table for people: the winner first, its study named
    table = run_nas("best", "--runs", str(table_runs), "--device", "board-a", "--max-size-kb", f"{budget_kb}")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert answer["candidates"][0]["arch"] in lines[2] and "accuracy" in lines[1]


def test_reprices_studies_of_another_device_and_says_so(run_nas, table_runs: Path) -> None:
    from latency_models.predictor import TablePredictor
    from latency_models.table import LatencyTable
    from search_spaces import TaskShape, get_space

    table_b = table_runs.parent / "tables" / "board-b.json"
    code, answer = _best_json(run_nas, "--runs", str(table_runs), "--device", str(table_b), "--top", "20")
    assert code == 0
    space = get_space("mbconv", OPTIONS)
    predictor = TablePredictor(
        space="mbconv",
        device="board-b",
        table=LatencyTable.load(table_b),
        task=TaskShape((8, 8, 1), 10),
        space_options=OPTIONS,
    )
    from_a = [c for c in answer["candidates"] if c["searched_for"] == "board-a"]
    assert from_a and all(c["repriced"] for c in from_a)
    for c in from_a:
        assert c["latency_ms"] == pytest.approx(float(predictor.predict([space.parse(c["arch"])])[0]))
        # three times board-a's price: the study's own predictions were for the faster board
        own = next(t for t in _trained(table_runs / "board-a") if t["arch"] == c["arch"])
        assert c["latency_ms"] == pytest.approx(3 * own["predicted_latency_ms"], rel=1e-6)
    # board-b's own study was priced by this very table: its numbers are the study's
    from_b = [c for c in answer["candidates"] if c["searched_for"] == "board-b"]
    assert from_b and not any(c["repriced"] for c in from_b)
    assert any("re-priced" in n and "board-a" in n for n in answer["notes"])

    # the device given by name: board-b's table is known from its study's config
    code, by_name = _best_json(run_nas, "--runs", str(table_runs), "--device", "board-b", "--top", "20")
    assert [c["latency_ms"] for c in by_name["candidates"]] == [c["latency_ms"] for c in answer["candidates"]]


def test_memory_budget_uses_the_tables_memory(run_nas, table_runs: Path) -> None:
    code, answer = _best_json(run_nas, "--runs", str(table_runs), "--device", "board-a", "--top", "20")
    mems = sorted(c["memory_bytes"] for c in answer["candidates"])
    assert all(m is not None and m > 0 for m in mems)
    limit_kb = (mems[0] + mems[-1]) / 2 / 1024
    code, capped = _best_json(
        run_nas,
        "--runs",
        str(table_runs),
        "--device",
        "board-a",
        "--max-memory",
        f"{limit_kb}kb",
        "--top",
        "20",
    )
    assert code == 0
    assert capped["candidates"] and all(c["memory_bytes"] <= limit_kb * 1024 for c in capped["candidates"])
    assert len(capped["candidates"]) < len(answer["candidates"])


def test_nothing_meets_names_the_binding_budget_and_the_closest(run_nas, table_runs: Path) -> None:
    code, answer = _best_json(run_nas, "--runs", str(table_runs), "--device", "board-a", "--top", "20")
    fastest = min(answer["candidates"], key=lambda c: c["latency_ms"])
    budget = fastest["latency_ms"] * 0.8
    code, none = _best_json(
        run_nas,
        "--runs",
        str(table_runs),
        "--device",
        "board-a",
        "--max-latency-ms",
        f"{budget}",
        "--max-size-kb",
        "1000",
    )
    assert code == 1 and none["candidates"] == []
    assert none["binding"]["budget"] == "max_latency_ms"
    assert none["binding"]["exceeding"] == none["considered"]
    assert none["closest"]["arch"] == fastest["arch"]
    assert none["binding"]["ratio"] == pytest.approx(1 / 0.8)
    text = run_nas("best", "--runs", str(table_runs), "--device", "board-a", "--max-latency-ms", f"{budget}")
    assert text.returncode == 1
    assert "binding budget is max_latency_ms" in text.stdout and fastest["arch"] in text.stdout


def test_task_filter(run_nas, table_runs: Path) -> None:
    code, answer = _best_json(run_nas, "--runs", str(table_runs), "--device", "board-a", "--task", "digits")
    assert code == 0 and answer["candidates"]
    proc = run_nas("best", "--runs", str(table_runs), "--device", "board-a", "--task", "mnist5k")
    assert_one_line_error(proc, "--task", "mnist5k", "digits")


def test_bad_input_is_one_line(run_nas, table_runs: Path, tmp_path: Path) -> None:
    runs = str(table_runs)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_nas("best", "--runs", str(tmp_path / "empty")), "--runs", "study.db")
    assert_one_line_error(run_nas("best", "--runs", str(tmp_path / "nowhere")), "--runs", "nowhere")
    assert_one_line_error(run_nas("best", "--runs", runs, "--max-latency-ms", "-1"), "--max-latency-ms", "-1")
    assert_one_line_error(run_nas("best", "--runs", runs, "--max-size-kb", "0"), "--max-size-kb", "> 0")
    assert_one_line_error(run_nas("best", "--runs", runs, "--max-size", "40"), "--max-size", "unit")
    assert_one_line_error(run_nas("best", "--runs", runs, "--max-latency", "3 parsecs"), "--max-latency")
    assert_one_line_error(run_nas("best", "--runs", runs, "--max-size-kb", "lots"), "--max-size-kb", "lots")
    assert_one_line_error(run_nas("best", "--runs", runs, "--top", "0"), "--top")
    assert_one_line_error(
        run_nas("best", "--runs", runs, "--device", "pixel-9"), "--device", "pixel-9", "board-a", "board-b"
    )
    # host: this machine's cached table is looked for (in an empty cache) and named
    empty_cache = {"EDGE_NAS_CACHE": str(tmp_path / "empty-cache")}
    assert_one_line_error(
        run_nas("best", "--runs", runs, "--device", "host", env=empty_cache),
        "--device host",
        "host latency table",
    )

    # a study from an older format version
    old = tmp_path / "old" / "run"
    shutil.copytree(table_runs / "board-a", old)
    with sqlite3.connect(old / "study.db") as con:
        con.execute("UPDATE study_user_attributes SET value_json = '0' WHERE key = 'format_version'")
    assert_one_line_error(
        run_nas("best", "--runs", str(old.parent)), "study.db", "format version 0", "expected 1"
    )
    # nothing half-written: retrieval never writes into the studies
    assert not list((table_runs / "board-a").glob("*.db-journal"))


def test_python_api_matches_the_cli(run_nas, table_runs: Path) -> None:
    import nas

    code, cli = _best_json(run_nas, "--runs", str(table_runs), "--device", "board-a", "--max-size-kb", "40")
    answer = nas.best(runs=table_runs, device="board-a", max_size_kb=40)
    assert [c.arch for c in answer.candidates] == [c["arch"] for c in cli["candidates"]]
    assert answer.as_dict()["candidates"] == cli["candidates"]
    assert callable(nas.run)  # the API function; test_architecture checks `import nas.run`
    from search_spaces import InputError

    with pytest.raises(InputError, match="max-latency-ms"):
        nas.best(runs=table_runs, max_latency_ms=-1.0)


def test_python_run_validates_overrides_before_any_work(tmp_path: Path) -> None:
    import nas
    from search_spaces import InputError

    quickstart = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"
    out = tmp_path / "never"
    with pytest.raises(InputError, match="constraints.max_latency_ms"):
        nas.run(quickstart, out=out, constraints={"max_latency_ms": -1})
    with pytest.raises(InputError, match="searh: unknown key; did you mean 'search'"):
        nas.run(quickstart, out=out, searh={"trainings": 2})
    with pytest.raises(InputError, match="search: expected a mapping"):
        nas.run(quickstart, out=out, search=4)
    assert not out.exists()


@pytest.mark.slow  # a real retrain, int8 export and re-measure
def test_export_retrains_and_exports_the_winner(run_nas, table_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    proc = run_nas(
        "best",
        "--runs",
        str(table_runs),
        "--device",
        "board-b",
        "--max-size-kb",
        "40",
        "--export",
        str(out),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, answer = _best_json(
        run_nas, "--runs", str(table_runs), "--device", "board-b", "--max-size-kb", "40"
    )
    winner = answer["candidates"][0]
    report = json.loads((out / "report.json").read_text())
    assert report["best"]["arch"] == winner["arch"]
    assert report["device"] == "board-b" and report["constraints"] == {"max_size_kb": 40.0}
    assert report["best"]["size_bytes"] == (out / "model.tflite").stat().st_size
    assert report["best"]["predicted_latency_ms"] == pytest.approx(winner["latency_ms"])
    assert (out / "report.html").is_file() and (out / "retrieval.json").is_file()
    assert f"exported {winner['arch']}" in proc.stdout
    # a second export into the same folder is refused and leaves it alone
    before = (out / "report.json").read_bytes()
    again = run_nas("best", "--runs", str(table_runs), "--device", "board-b", "--export", str(out))
    assert_one_line_error(again, "--export", "not an empty folder")
    assert (out / "report.json").read_bytes() == before
