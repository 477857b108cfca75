"""``nas specialize``: a trained supernet's subnets searched under a device table's budgets,
the winner shipped like a ``nas run`` winner; budgets no subnet meets refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from tests.test_budgets import QUICKSTART, quickstart_screen
from tests.test_supernet_train import write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A quickstart-space supernet trained one short epoch, and a device table for that space
    (latency proportional to MACs, as tests/test_budgets.py prices it)."""
    from nas.config import parse_config
    from nas.supernet import train_supernet

    folder = tmp_path_factory.mktemp("specialize")
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["supernet"] = {"epochs": 1, "max_train_samples": 320, "calibration_samples": 400}
    train_supernet(parse_config(doc, base_dir=QUICKSTART.parent), folder / "supernet")
    space, screen, _ = quickstart_screen()
    table = folder / "device.json"
    screen.latency.table.save(table)
    return folder, space, screen


def test_budgets_no_subnet_meets_exit_2_naming_the_smallest(setup, tmp_path, capsys) -> None:
    folder, space, screen = setup
    smallest = screen([space.cheapest()])[0].latency_ms
    out = tmp_path / "run"
    argv = [
        "specialize",
        "--quiet",
        "--supernet",
        str(folder / "supernet"),
        "--table",
        str(folder / "device.json"),
    ]
    code = main([*argv, "--max-latency-ms", f"{smallest / 2:.6g}", "--max-size-kb", "100", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--max-latency-ms" in err[0] and "cannot be met by any architecture" in err[0]
    assert f"smallest achievable is {smallest:.4g} ms" in err[0]
    assert not out.exists()
    code = main([*argv, "--max-latency-ms", "1", "--max-size-kb", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--max-size-kb" in err[0] and "smallest achievable" in err[0]
    assert not out.exists()
    code = main(
        [
            "specialize",
            "--supernet",
            str(tmp_path),
            "--max-latency-ms",
            "1",
            "--max-size-kb",
            "9",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "expected a supernet folder holding supernet.json" in err[0]


def test_a_table_missing_a_block_of_the_space_is_refused(setup, tmp_path, capsys) -> None:
    from latency_models.table import LatencyTable

    folder, space, screen = setup
    table = screen.latency.table
    dropped = sorted(table.entries)[0]
    partial = tmp_path / "partial.json"
    LatencyTable(table.meta, {b: e for b, e in table.entries.items() if b != dropped}).save(partial)
    out = tmp_path / "run"
    argv = ["specialize", "--quiet", "--supernet", str(folder / "supernet"), "--table", str(partial)]
    code = main([*argv, "--max-latency-ms", "1", "--max-size-kb", "60", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"--table {partial}: expected an entry for every block" in err[0] and dropped.key in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_specialize_ships_a_fine_tuned_subnet_chosen_by_inherited_accuracy(setup, tmp_path, capsys) -> None:
    from nas.supernet import evaluate_subnet, load_supernet

    folder, space, screen = setup
    # A budget half of the random subnets meet.
    import random

    rng = random.Random(1)
    latencies = sorted(p.latency_ms for p in screen([space.random(rng) for _ in range(200)]))
    budget = latencies[len(latencies) // 2]
    out = tmp_path / "run"
    code = main(
        [
            "specialize", "--supernet", str(folder / "supernet"), "--table", str(folder / "device.json"),
            "--max-latency-ms", f"{budget:.6g}", "--max-size-kb", "60", "--evaluations", "6",
            "--finetune-epochs", "1", "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    for name in ("report.json", "report.html", "model.tflite", "study.db"):
        assert (out / name).is_file(), name
    assert not (out / ".weights").exists()
    report = json.loads((out / "report.json").read_text())
    best = report["best"]
    assert report["supernet"]["evaluations"] == 6 and report["counts"]["complete"] == 6
    assert report["supernet"]["finetune_epochs"] == 1
    final = [v for v in report["verification"] if v["stage"] == "final" and v["shipped"]]
    assert len(final) == 1 and final[0]["epochs"] == 1 and final[0]["arch"] == report["best"]["arch"]
    assert best["predicted_latency_ms"] <= budget and best["size_bytes"] <= 60 * 1024
    assert Path(out / "model.tflite").stat().st_size == best["size_bytes"]
    # The search's value of the winner is its inherited accuracy, as the supernet gives it.
    loaded = load_supernet(folder / "supernet")
    accuracy, _ = evaluate_subnet(loaded.net, space.parse(best["arch"]), loaded.data, 400)
    assert best["val_accuracy_search"] == pytest.approx(accuracy, abs=1e-6)
    assert 0.0 <= best["accuracy"] <= 1.0 and best["accuracy_split"].startswith("test")


# A narrowed ofa-mbv3 space at width 1.0: every elastic decision kept (depth, kernel, expansion)
# with two values each, so the host profile has 46 blocks to measure.
OFA_SPACE = {
    "name": "ofa-mbv3",
    "options": {"width_mult": 1.0, "depths": [2, 3], "kernels": [3, 5], "expands": [3, 4]},
}


@pytest.mark.slow
def test_an_ofa_mbv3_supernet_trains_and_specializes_on_the_host(tmp_path, capsys) -> None:
    import numpy as np

    from nas.data import load_task
    from search_spaces import get_space

    # mnist padded to 32x32, the smallest resolution the ofa-mbv3 space takes.
    digits = load_task("mnist5k")
    x = np.pad(digits.x_train[:600], ((0, 0), (2, 2), (2, 2), (0, 0)))
    np.savez(tmp_path / "mnist32.npz", x=x, y=digits.y_train[:600])
    config = write_config(tmp_path, "ofa.yaml", data=str(tmp_path / "mnist32.npz"), space=OFA_SPACE)
    assert main(["supernet", "train", str(config), "--out", str(tmp_path / "supernet"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "supernet" / "supernet.json").read_text())
    assert manifest["space"]["name"] == "ofa-mbv3" and manifest["task"]["input_shape"] == [32, 32, 1]
    out = tmp_path / "run"
    code = main(
        [
            "specialize", "--quiet", "--supernet", str(tmp_path / "supernet"), "--device", "host",
            "--max-latency-ms", "1000", "--max-size-kb", "8000", "--evaluations", "3", "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads((out / "report.json").read_text())
    assert report["supernet"]["evaluations"] == 3 and report["counts"]["complete"] == 3
    assert (out / "model.tflite").stat().st_size == report["best"]["size_bytes"]
    get_space("ofa-mbv3", OFA_SPACE["options"]).parse(report["best"]["arch"])
    print(f"ofa-mbv3 supernet: epoch 1 {manifest['history'][0]}; specialized {report['best']['arch']}")
