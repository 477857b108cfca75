"""Every config in ``examples/`` runs to the end (with tiny trainings) so none of them rots.

The examples are found by listing the folder: adding one is all it takes to have it run here.
Each one keeps its task, space, latency model and budgets; only the training budget shrinks, and
latency budgets measured on this host are tripled: the examples' budgets are set for an idle
machine, and a loaded one (tests run beside other jobs) measures every network slower.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nas.data import BUNDLED

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIGS = sorted(p.name for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("_"))
# Examples whose space needs a long host profile or large networks: run with -m slow.
SLOW = {"quickstart.yaml", "image_folder.yaml", "rpi4.yaml", "ray_cluster.yaml"}


def _tiny(doc: dict[str, Any], digit_folder: Path) -> dict[str, Any]:
    """The example with a tiny training budget, its relative paths made absolute."""
    doc = json.loads(json.dumps(doc))
    task = doc.setdefault("task", {})
    if task.get("data") == "digit_pngs":
        task["data"] = str(digit_folder)
    elif task.get("data", "mnist5k") not in BUNDLED and not Path(task["data"]).is_absolute():
        task["data"] = str(EXAMPLES / task["data"])
    lat = doc.setdefault("latency", {})
    for key in ("table", "predictor"):
        if lat.get(key) and not Path(lat[key]).is_absolute():
            lat[key] = str(EXAMPLES / lat[key])
    if lat.get("device", "host") == "host":
        lat["calibration_models"] = 2
        budgets = doc.get("constraints") or {}
        if budgets.get("max_latency_ms"):
            budgets["max_latency_ms"] *= 3
    options = (doc.get("space") or {}).get("options") or {}
    build = options.get("build")
    if isinstance(build, str) and build.split(":")[0].endswith(".py"):
        options["build"] = f"{EXAMPLES / build.split(':')[0]}:{build.split(':')[1]}"
    doc.setdefault("search", {})["trainings"] = 2
    doc["search"].pop("workers", None)
    training = doc.setdefault("training", {})
    training.update(
        epochs=1, final_epochs=1, max_train_samples=min(training.get("max_train_samples", 300), 300)
    )
    doc.setdefault("export", {})["calibration_samples"] = 50
    return doc


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("make_digit_folder", EXAMPLES / "make_digit_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_digit_folder(tmp_path_factory.mktemp("digit_pngs"), per_class=40)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    from nas.distributed.cluster import LocalRayCluster

    cluster = LocalRayCluster(num_cpus=2).start()
    try:
        yield cluster.address
    finally:
        cluster.stop()


def test_every_example_says_what_it_is_for_and_what_it_costs() -> None:
    assert {
        "quickstart.yaml",
        "image_folder.yaml",
        "keras_tuner.yaml",
        "rpi4.yaml",
        "ray_cluster.yaml",
    } <= set(CONFIGS)
    for name in CONFIGS + [p.name for p in EXAMPLES.glob("*.py")]:
        head = (EXAMPLES / name).read_text().splitlines()[:8]
        assert head[0].startswith("#"), name
        if name == "quickstart.yaml":  # its costs are measured in the README's quickstart section
            continue
        assert any("cost" in line.lower() for line in head if line.startswith("#")), name


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CONFIGS]
)
def test_example_runs(
    name: str, run_nas, digit_folder: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    cfg = tmp_path / name
    cfg.write_text(yaml.safe_dump(_tiny(doc, digit_folder)))
    out = tmp_path / "run"
    extra = ("--ray-address", request.getfixturevalue("ray_address")) if "ray" in name else ()
    proc = run_nas("run", str(cfg), "--out", str(out), *extra, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert (out / "model.tflite").stat().st_size == report["best"]["size_bytes"]
    assert report["counts"]["complete"] >= 1
    if report["task"].get("class_names"):
        assert (out / "labels.txt").read_text().split() == report["task"]["class_names"]
    if doc["space"]["name"] == "keras-tuner":
        # the arch string holds the conditional hyperparameter whenever it is active
        for row in report["trials"]:
            if "num_layers=2" in row["arch"]:
                assert "units_1=" in row["arch"]
            elif "num_layers=1" in row["arch"]:
                assert "units_1=" not in row["arch"]
