"""``nas supernet train``: real sandwich-rule training on mnist5k, checkpoints that a killed
process (SIGKILL) resumes from, and bad folders refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nas.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_config(
    folder: Path, name: str = "sn.yaml", data: str = "mnist5k", epochs: int = 1, space: dict | None = None
) -> Path:
    """The quickstart config with both activations (or ``space`` instead of its space) and a
    short supernet training."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["task"]["data"] = data
    doc["space"]["options"]["acts"] = ["relu6", "hswish"]
    if space is not None:
        doc["space"] = space
    doc["supernet"] = {"epochs": epochs, "max_train_samples": 320, "calibration_samples": 400}
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A supernet trained for one epoch through the Python API (what the CLI calls)."""
    from nas.config import load_config
    from nas.supernet import train_supernet

    folder = tmp_path_factory.mktemp("supernet")
    lines: list[str] = []
    manifest = train_supernet(load_config(write_config(folder)), folder / "out", say=lines.append)
    return folder, manifest, lines


def test_training_writes_a_checked_checkpoint_and_progress(trained) -> None:
    from nas.supernet import MANIFEST, data_fingerprint, load_supernet

    folder, manifest, lines = trained
    out = folder / "out"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "weights-e0001.npz"]
    assert manifest["epoch"] == 1 and manifest["step"] == 5  # 320 samples, batches of 64
    assert manifest["space"]["name"] == "mbconv" and manifest["task"]["num_classes"] == 10
    assert lines[-1].startswith("epoch 1/1: loss ") and "largest" in lines[-1] and "smallest" in lines[-1]
    record = manifest["history"][0]
    assert np.isfinite(record["loss"]) and 0.0 <= record["smallest_accuracy"] <= 1.0
    with np.load(out / "weights-e0001.npz", allow_pickle=False) as arrays:
        assert "classifier/kernel" in arrays.files and any(n.startswith("optimizer/") for n in arrays.files)
    loaded = load_supernet(out)
    assert manifest["task"]["data_sha256"] == data_fingerprint(loaded.data)
    # The largest subnet's validation accuracy as recorded, recomputed from the checkpoint.
    from nas.supernet import evaluate_subnet

    space = loaded.net.space
    accuracy, _ = evaluate_subnet(loaded.net, space.largest(), loaded.data, 400)
    assert accuracy == pytest.approx(record["largest_accuracy"], abs=1e-6)
    # One epoch of 5 steps already moved the largest subnet well above chance (0.1).
    assert record["largest_accuracy"] > 0.2


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime) for p in folder.iterdir()}


def test_bad_folders_exit_2_in_one_line_and_change_nothing(trained, tmp_path, capsys) -> None:
    import shutil

    folder, _, _ = trained
    out = tmp_path / "copy"
    shutil.copytree(folder / "out", out)
    before = _snapshot(out)
    config = write_config(tmp_path)
    err = _fails(["supernet", "train", str(config), "--out", str(out)], capsys)
    assert "already holds a supernet; rerun with --resume" in err
    other_task = write_config(tmp_path, "digits.yaml", data="digits")
    err = _fails(["supernet", "train", str(other_task), "--out", str(out), "--resume"], capsys)
    assert "expected a supernet of task 'digits'" in err
    other_space = tmp_path / "space.yaml"
    other_space.write_text(config.read_text().replace("- 40", "- 48"))
    err = _fails(["supernet", "train", str(other_space), "--out", str(out), "--resume"], capsys)
    assert "expected a supernet of space" in err
    nb201 = tmp_path / "nb201.yaml"
    nb201.write_text("task: {data: mnist5k}\nspace: {name: nb201}\n")
    err = _fails(["supernet", "train", str(nb201), "--out", str(tmp_path / "new")], capsys)
    assert "space.name: expected a space with a supernet ['mbconv', 'ofa-mbv3'], got 'nb201'" in err
    assert not (tmp_path / "new").exists()
    assert _snapshot(out) == before
    # A changed byte (same size), then a truncated file: the sha256 in the manifest catches both.
    weights = out / "weights-e0001.npz"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    err = _fails(["supernet", "train", str(config), "--out", str(out), "--resume"], capsys)
    assert "a truncated or changed checkpoint" in err
    weights.write_bytes(bytes(raw[: len(raw) // 3]))
    err = _fails(["supernet", "train", str(config), "--out", str(out), "--resume"], capsys)
    assert "a truncated or changed checkpoint" in err
    (out / "supernet.json").write_text('{"format": "edge-nas-supernet", "vers')
    err = _fails(["supernet", "train", str(config), "--out", str(out), "--resume"], capsys)
    assert "expected a JSON manifest" in err
    assert sorted(p.name for p in out.iterdir()) == ["supernet.json", "weights-e0001.npz"]


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_last_checkpoint(tmp_path) -> None:
    """A real process killed with SIGKILL after its first checkpoint; --resume trains the
    remaining epochs from it (history and optimizer step carried over), not from scratch."""
    config = write_config(tmp_path, epochs=3)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "nas", "supernet", "train", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = out / "supernet.json"
    deadline = time.time() + 300
    while not manifest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    first = json.loads(manifest.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(manifest.read_text())
    assert done["epoch"] < 3  # killed before the end
    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} after epoch {done['epoch']}" in resumed.stderr
    final = json.loads(manifest.read_text())
    assert final["epoch"] == 3 and [h["epoch"] for h in final["history"]] == [1, 2, 3]
    assert final["history"][0] == first["history"][0]  # epoch 1 was not trained again
    assert final["step"] == 3 * final["steps_per_epoch"]
    assert sorted(p.name for p in out.iterdir()) == ["supernet.json", "weights-e0003.npz"]


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"epochs": 0}, "supernet.epochs: expected an int > 0, got 0."),
        ({"random_subnets": -1}, "supernet.random_subnets: expected an int >= 0, got -1."),
        ({"learning_rate": "fast"}, "supernet.learning_rate: expected a number, got 'fast'."),
        ({"batch": 64}, "supernet.batch: unknown key; did you mean 'batch_size'?"),
    ],
)
def test_the_supernet_section_is_validated_with_field_paths(section: dict, needle: str) -> None:
    from nas.config import parse_config
    from search_spaces import InputError

    with pytest.raises(InputError) as info:
        parse_config({"space": {"name": "mbconv"}, "supernet": section})
    assert needle in str(info.value)
