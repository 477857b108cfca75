"""``nas latency fit|predict|evaluate`` end to end on real device data (tests/data) and the real
Note10 OFA table, plus bad input: exit code 2, one line naming the file and problem, no output."""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
NOTE10 = ROOT / "latency_models" / "data" / "ofa" / "note10_224_lookup_table.yaml"


def family(device: str) -> str:
    return re.sub(r"_(1|32|64|256)$", "", device)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """M.csv (60 archs measured on gold_6226), R.csv (all 400 on other families), A.csv, truth."""
    d = tmp_path_factory.mktemp("latency_fit")
    with gzip.open(DATA / "nb201_lat_sample.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    devices = [c for c in rows[0] if c not in ("arch_idx", "arch_str")]
    target = "gold_6226"
    ref = [x for x in devices if family(x) != family(target)]
    order = np.random.default_rng(0).permutation(len(rows))
    train, test = order[:60], order[60:]
    paths = {n: d / f"{n}.csv" for n in ("m", "r", "a", "truth")}
    with open(paths["m"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms"])
        w.writerows([rows[i]["arch_str"], rows[i][target]] for i in train)
    with open(paths["r"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", *ref])
        w.writerows([r["arch_str"], *(r[x] for x in ref)] for r in rows)
    with open(paths["a"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch"])
        w.writerows([rows[i]["arch_str"]] for i in test)
    with open(paths["truth"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "latency_ms"])
        w.writerows([rows[i]["arch_str"], rows[i][target]] for i in test)
    paths["dir"] = d
    return paths


def _read(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("with_reference", [False, True])
def test_fit_predict_evaluate(
    files: dict[str, Path], with_reference: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    d = files["dir"]
    p, o = d / f"p{int(with_reference)}.json", d / f"o{int(with_reference)}.csv"
    fit = ["latency", "fit", "--space", "nb201", "--measurements", str(files["m"]), "--out", str(p)]
    if with_reference:
        fit += ["--reference", str(files["r"]), "--device", "gold_6226"]
    assert main(fit) == 0
    doc = json.loads(p.read_text())
    assert doc["kind"] == ("few-shot" if with_reference else "learned")
    assert doc["provenance"]["measurements"]["sha256"].startswith("sha256:")
    assert (
        main(["latency", "predict", "--predictor", str(p), "--archs", str(files["a"]), "--out", str(o)]) == 0
    )
    out = _read(o)
    assert [r["arch"] for r in out] == [r["arch"] for r in _read(files["a"])]
    capsys.readouterr()
    assert (
        main(["latency", "evaluate", "--predictor", str(p), "--measurements", str(files["truth"]), "--json"])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"n", "within5", "within10", "mape", "rmse_ms", "spearman", "kendall"}
    assert metrics["n"] == 340
    assert metrics["spearman"] > (0.95 if with_reference else 0.85), metrics
    assert main(["latency", "evaluate", "--predictor", str(p), "--measurements", str(files["truth"])]) == 0
    assert "Spearman" in capsys.readouterr().out


def test_table_predictor_and_correction(tmp_path: Path) -> None:
    """The real Note10 table prices ofa-mbv3 archs; end-to-end measurements fit the overhead."""
    table, archs, p, o = (tmp_path / n for n in ("t.json", "a.csv", "p.json", "o.csv"))
    assert main(["latency", "import", str(NOTE10), "--format", "ofa-yaml", "--out", str(table)]) == 0
    assert main(["space", "sample", "ofa-mbv3", "--n", "12", "--seed", "3", "--out", str(archs)]) == 0
    assert (
        main(
            [
                "latency",
                "predict",
                "--table",
                str(table),
                "--space",
                "ofa-mbv3",
                "--archs",
                str(archs),
                "--out",
                str(o),
            ]
        )
        == 0
    )
    raw = {r["arch"]: float(r["latency_ms"]) for r in _read(o)}
    assert all(10 < v < 100 for v in raw.values())
    # Whole models here cost 5% more plus 1.5 ms of fixed overhead than their blocks sum to.
    measured = tmp_path / "m.csv"
    measured.write_text("arch,latency_ms\n" + "".join(f"{a},{1.05 * v + 1.5!r}\n" for a, v in raw.items()))
    assert (
        main(
            [
                "latency",
                "fit",
                "--space",
                "ofa-mbv3",
                "--table",
                str(table),
                "--measurements",
                str(measured),
                "--out",
                str(p),
            ]
        )
        == 0
    )
    doc = json.loads(p.read_text())
    assert doc["kind"] == "table" and doc["correction"]["n_measurements"] == 12
    assert abs(doc["correction"]["scale"] - 1.05) < 1e-6 and abs(doc["correction"]["offset_ms"] - 1.5) < 1e-4
    assert main(["latency", "predict", "--predictor", str(p), "--archs", str(archs), "--out", str(o)]) == 0
    for row in _read(o):
        assert float(row["latency_ms"]) == pytest.approx(1.05 * raw[row["arch"]] + 1.5, rel=1e-6)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_bad_input_exits_2_with_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    bad_col = tmp_path / "bad_col.csv"
    bad_col.write_text("arch,ms\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,3\n")
    bad_arch = tmp_path / "bad_arch.csv"
    bad_arch.write_text(
        "arch\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|\n|conv~0|+|a~0|b~1|+|c~0|d~1|e~2|\n"
    )
    out = tmp_path / "p.json"
    cases = [
        (
            ["latency", "fit", "--space", "nb201", "--measurements", str(bad_col), "--out", str(out)],
            "bad_col.csv: line 1: expected a column 'latency_ms'",
        ),
        (
            ["latency", "fit", "--space", "nb201", "--reference", str(files["r"]), "--out", str(out)],
            "--reference: expected --measurements",
        ),
        (
            ["latency", "fit", "--space", "nope", "--measurements", str(files["m"]), "--out", str(out)],
            "unknown space 'nope'; valid spaces",
        ),
        (
            ["latency", "fit", "--space", "fbnet", "--measurements", str(files["m"]), "--out", str(out)],
            "m.csv: line 2: arch",
        ),
        (
            [
                "latency",
                "predict",
                "--predictor",
                str(tmp_path / "none.json"),
                "--archs",
                str(files["a"]),
                "--out",
                str(out),
            ],
            "predictor file not found",
        ),
    ]
    for args, message in cases:
        r = _run(args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, r.stderr)
        assert not out.exists()
    # A bad arch list leaves no output behind, even with a valid predictor.
    p = tmp_path / "good.json"
    assert (
        main(["latency", "fit", "--space", "nb201", "--measurements", str(files["m"]), "--out", str(p)]) == 0
    )
    o = tmp_path / "o.csv"
    r = _run(["latency", "predict", "--predictor", str(p), "--archs", str(bad_arch), "--out", str(o)])
    assert (
        r.returncode == 2
        and "bad_arch.csv: line 3: arch" in r.stderr
        and "unknown operation 'conv'" in r.stderr
    )
    assert len(r.stderr.strip().splitlines()) == 1
    assert not o.exists()


def test_predict_refuses_a_guessed_input_the_table_holds_nothing_of(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A table measured at 8x8 that does not record its input, priced without --input-shape: the
    space's usual 28x28 input holds none of its blocks, so every price would be a guess (exit 2,
    nothing written); with the table's own input it prices exactly, with another one it
    extrapolates as asked."""
    import random

    from latency_models.table import Entry, LatencyTable, TableMeta
    from search_spaces import TaskShape, get_space

    options = {"strides": [1, 2], "widths": [[8, 16], [16, 24]], "depths": [1], "kernels": [3]}
    space = get_space("mbconv", options)
    blocks = space.all_blocks(TaskShape((8, 8, 1), 10))
    meta = TableMeta(
        "phone", "litert", "2.3", "int8", 1, "test", {"space": "mbconv", "space_options": options}
    )
    table = tmp_path / "t.json"
    table.write_text(
        LatencyTable(meta, {b: Entry(0.01 + 0.001 * i, 0.0, 10) for i, b in enumerate(blocks)}).to_json()
    )
    archs = tmp_path / "a.csv"
    archs.write_text("arch\n" + "\n".join(str(space.random(random.Random(i))) for i in range(4)) + "\n")
    base = ["latency", "predict", "--table", str(table), "--archs", str(archs), "--out"]
    capsys.readouterr()
    assert main([*base, str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds none of the blocks" in err[0] and "--input-shape" in err[0]
    assert not (tmp_path / "p.csv").exists()
    assert main([*base, str(tmp_path / "q.csv"), "--input-shape", "8,8,1"]) == 0
    assert all(r["extrapolated_blocks"] == "0" for r in _read(tmp_path / "q.csv"))
    assert main([*base, str(tmp_path / "r.csv"), "--input-shape", "16,16,1"]) == 0
    assert all(int(r["extrapolated_blocks"]) > 0 for r in _read(tmp_path / "r.csv"))
