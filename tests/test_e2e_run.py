"""One tiny real search end to end: real training, real int8 TFLite export, real LiteRT re-measure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna

TINY = """
task:
  data: digits
space:
  name: mbconv
  options:
    strides: [1, 2, 2]
    widths: [[8, 32], [16, 64], [24, 96]]
    depths: [1]
    kernels: [3]
    expands: [1, 6]
    se: [false]
    acts: [relu6]
    stem_width: 8
latency:
  device: host
  calibration_models: 4
constraints:
  max_size_kb: 24
search:
  strategy: random
  trainings: 3
  seed: 1
training:
  epochs: 2
  final_epochs: 4
export:
  calibration_samples: 100
"""


def test_tiny_search_end_to_end(run_nas, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    proc = run_nas("run", str(cfg), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    best = report["best"]

    # the exported file is full-integer int8 and its numbers are its own
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out / "model.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    assert best["size_bytes"] == (out / "model.tflite").stat().st_size
    assert best["size_bytes"] <= 24 * 1024
    assert best["accuracy"] > 0.5  # digits after a few epochs; chance is 0.1

    # the shipped file was verified: listed with the candidates, measured, within the budget
    verification = report["verification"]
    assert len(verification) >= 1
    shipped = [v for v in verification if v["shipped"]]
    assert len(shipped) == 1 and shipped[0]["stage"] == "final" and shipped[0]["fits"]
    assert shipped[0]["measured_latency_ms"] == best["measured_latency_ms"]
    assert all(v["size_bytes"] <= 24 * 1024 for v in verification if v["fits"])
    assert all((out / v["file"]).is_file() for v in verification if v["stage"] == "verify")
    # verification compressed the networks the search trained (their weights, not a retraining),
    # and those weights are gone once the run has shipped
    assert "the search's 2-epoch weights" in proc.stderr, proc.stderr[-3000:]
    assert not (out / ".weights").exists()
    assert best["measured_latency_ms"] > 0 and best["predicted_latency_ms"] > 0

    # the trial records: the size budget binds, screened candidates were never trained
    trials = report["trials"]
    states = {t["state"] for t in trials}
    assert "infeasible" in states and "complete" in states
    for t in trials:
        if t["state"] == "infeasible":
            assert t["accuracy"] is None and t["size_bytes"] > 24 * 1024
            assert t["fidelity_epochs"] is None
        if t["state"] == "complete":
            assert t["size_bytes"] <= 24 * 1024 and 0 <= t["accuracy"] <= 1
    assert sum(t["state"] == "complete" for t in trials) == 3
    assert report["constraints"] == {"max_size_kb": 24.0}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    # the study is Optuna's own storage
    study = optuna.load_study(
        study_name=optuna.get_all_study_names(f"sqlite:///{out / 'study.db'}")[0],
        storage=f"sqlite:///{out / 'study.db'}",
    )
    assert len(study.trials) == len(trials)

    # the exported accuracy is reproducible from the exported test split
    npz = tmp_path / "test.npz"
    assert run_nas("data", "export", "digits", "--split", "test", "--out", str(npz)).returncode == 0
    with np.load(npz) as f:
        x, y = f["x"], f["y"]
    interp.resize_tensor_input(0, [len(x), *x.shape[1:]])
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    interp.invoke()
    acc = float(np.mean(np.argmax(interp.get_tensor(outp["index"]), axis=1) == y))
    assert abs(acc - best["accuracy"]) < 1e-9

    # a second run reuses the host profile and the calibration: no profiling
    again = run_nas("run", str(cfg), "--out", str(tmp_path / "run2"), timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "profiling block" not in again.stderr
    # ... and re-times the cached calibration files, reporting their drift from the profile
    assert "re-timing 4 cached calibration models" in again.stderr
    drift = json.loads((tmp_path / "run2" / "report.json").read_text())["latency_model"]["drift"]
    assert drift["models"] == 4 and len(drift["per_model"]) == 4 and drift["threshold"] >= 0.05
    # ... and a few of the table's own blocks, re-timed as the profile timed them
    blocks = drift["blocks"]
    assert blocks["count"] == 4 and blocks["threshold"] >= 0.05
    assert all(-0.9 < r < 9 for r in blocks["per_block"])  # a real timing, not a copy of the table
    assert blocks["per_block"] != [0.0] * 4

    # the same folder without --resume is refused in one line, and nothing is overwritten
    before = (out / "report.json").read_bytes()
    refused = run_nas("run", str(cfg), "--out", str(out))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    assert (out / "report.json").read_bytes() == before


def test_a_run_whose_verified_files_all_miss_ships_nothing_and_reports_it(
    tmp_path: Path, monkeypatch
) -> None:
    """When no verified file meets the budgets as measured, nothing is shipped: the run stops
    with one line naming the closest candidate, and report.json/report.html still say why."""
    import pytest
    import yaml

    import nas.verify
    from nas.config import parse_config
    from nas.runner import NothingFitsError, run

    doc = yaml.safe_load(TINY)
    doc["search"]["trainings"] = 2
    doc["training"] = {"epochs": 1, "final_epochs": 1}
    doc["latency"]["calibration_models"] = 3
    monkeypatch.setattr(
        nas.verify, "check", lambda *a, **k: (False, ("file over the budget (forced by the test)",))
    )
    out = tmp_path / "run"
    with pytest.raises(NothingFitsError, match="no verified candidate's file meets the budgets") as stop:
        run(parse_config(doc, base_dir=tmp_path), out)
    assert "\n" not in str(stop.value) and "closest" in str(stop.value)
    report = json.loads((out / "report.json").read_text())
    assert report["best"] is None and report["task"]["labels_file"] is None
    assert report["verification"] and not any(v["fits"] or v["shipped"] for v in report["verification"])
    assert "forced by the test" in (out / "report.html").read_text()
    assert not (out / "model.tflite").exists() and list((out / "verify").glob("trial-*/*.tflite"))
