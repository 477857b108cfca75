"""The ``nas space``, ``nas arch`` and ``nas latency import|profile|measure`` commands, end to end
through ``nas.cli.main`` with real files (small spaces so each runs in seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from latency_models.ofa import vendored
from latency_models.table import LatencyTable
from nas.cli import main
from search_spaces import get_space

SMALL = json.dumps({"widths": [[8], [8], [16]], "depths": [1], "kernels": [3], "expands": [1, 3]})
CONFIG_30MS = "specialized/note10_lat-30ms_top1-78.4_finetune-75.net.config"


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_sample_writes_distinct_valid_archs_reproducibly(tmp_path: Path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["space", "sample", "mbconv", "--n", "12", "--seed", "3", "--out", str(a)]) == 0
    assert main(["space", "sample", "mbconv", "--n", "12", "--seed", "3", "--out", str(b)]) == 0
    assert a.read_text() == b.read_text()
    archs = [r["arch"] for r in rows(a)]
    space = get_space("mbconv")
    assert len(set(archs)) == 12 and all(str(space.parse(x)) == x for x in archs)


def test_sample_refuses_more_archs_than_the_space_has(tmp_path: Path, capsys):
    out = tmp_path / "a.csv"
    code = main(["space", "sample", "mbconv", "--space-options", SMALL, "--n", "1000", "--out", str(out)])
    assert code == 2 and "distinct" in capsys.readouterr().err and not out.exists()


def test_build_writes_a_tflite_file_that_runs(tmp_path: Path):
    from ai_edge_litert.interpreter import Interpreter

    arch = "d1-k3-e1-w8-se0-relu6+d1-k3-e3-w8-se1-hswish+d1-k3-e1-w16-se0-relu6"
    out = tmp_path / "m.tflite"
    args = ["space", "build", "mbconv", "--space-options", SMALL, "--arch", arch, "--format", "tflite-int8"]
    assert main([*args, "--input-shape", "16,16,1", "--num-classes", "4", "--out", str(out)]) == 0
    interpreter = Interpreter(model_path=str(out))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 16, 16, 1] and inp["dtype"] == np.int8 and list(outp["shape"]) == [1, 4]


def test_build_rejects_an_arch_outside_the_space(tmp_path: Path, capsys):
    out = tmp_path / "m.tflite"
    code = main(
        [
            "space",
            "build",
            "mbconv",
            "--arch",
            "d9-k3-e1-w8-se0-relu6",
            "--format",
            "tflite-fp32",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "arch" in err and not out.exists()


def test_from_ofa_prints_the_arch_and_its_30ms_price(tmp_path: Path, capsys):
    table = tmp_path / "t.json"
    assert (
        main(
            [
                "latency",
                "import",
                str(vendored("note10_224_lookup_table.yaml")),
                "--format",
                "ofa-yaml",
                "--out",
                str(table),
            ]
        )
        == 0
    )
    assert len(LatencyTable.load(table)) == 96
    capsys.readouterr()
    assert main(["arch", "from-ofa", str(vendored(CONFIG_30MS)), "--table", str(table)]) == 0
    arch, price = capsys.readouterr().out.splitlines()
    assert arch == "k3e3_k3e3+k5e4_k3e3_k3e4+k5e4_k5e4_k3e3+k3e6_k3e4_k3e4+k3e6_k3e6_k3e4_k3e3"
    assert float(price.split()[0]) == pytest.approx(30.0, rel=0.01)


def test_import_names_a_bad_file_and_writes_nothing(tmp_path: Path, capsys):
    bad, out = tmp_path / "bad.yaml", tmp_path / "t.json"
    bad.write_text("Conv-input:224x224x3-output:112x112x24:\n  mean: 0\n")
    assert main(["latency", "import", str(bad), "--format", "ofa-yaml", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: line 1" in err and err.count("\n") == 1 and not out.exists()


def test_profile_and_measure_on_litert(tmp_path: Path):
    archs, table_path, measured = tmp_path / "a.csv", tmp_path / "t.json", tmp_path / "m.csv"
    base = ["--space", "mbconv", "--space-options", SMALL, "--input-shape", "16,16,1", "--num-classes", "4"]
    assert main(["space", "sample", "mbconv", "--space-options", SMALL, "--n", "2", "--out", str(archs)]) == 0
    assert (
        main(["latency", "profile", *base, "--archs", str(archs), "--no-cache", "--out", str(table_path)])
        == 0
    )
    table = LatencyTable.load(table_path)
    assert table.meta.device == "host" and table.meta.extra["space"] == "mbconv"
    assert table.meta.extra["input_shape"] == [16, 16, 1] and table.meta.extra["num_classes"] == 4
    assert table.meta.extra["space_options"] == json.loads(SMALL)
    assert main(["latency", "measure", *base, "--archs", str(archs), "--out", str(measured)]) == 0
    got = rows(measured)
    assert [r["arch"] for r in got] == [r["arch"] for r in rows(archs)]
    for r in got:
        assert 0 < float(r["p10_ms"]) <= float(r["latency_ms"]) <= float(r["p90_ms"]) and int(r["runs"]) >= 3


def test_measure_on_tflm_reports_arena_bytes(tmp_path: Path):
    archs, measured = tmp_path / "a.csv", tmp_path / "m.csv"
    archs.write_text("arch\nd1-k3-e1-w8-se0-relu6+d1-k3-e3-w8-se0-relu6+d1-k3-e1-w16-se0-relu6\n")
    base = ["--space", "mbconv", "--space-options", SMALL, "--input-shape", "16,16,1", "--num-classes", "4"]
    assert (
        main(
            ["latency", "measure", *base, "--runtime", "tflm", "--archs", str(archs), "--out", str(measured)]
        )
        == 0
    )
    (row,) = rows(measured)
    assert int(row["arena_bytes"]) > 16 * 16 * 1


def test_measure_names_the_bad_line(tmp_path: Path, capsys):
    archs = tmp_path / "a.csv"
    archs.write_text(
        "arch\nd1-k3-e1-w16-se0-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6\nnot-an-arch\n"
    )
    out = tmp_path / "m.csv"
    assert main(["latency", "measure", "--space", "mbconv", "--archs", str(archs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "a.csv: line 3" in err and not out.exists()
