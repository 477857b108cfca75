"""Every bad input the issue lists: exit code 2, one line naming the field or file, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.config import load_config, parse_config
from search_spaces import InputError

from .conftest import assert_one_line_error


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, needles",
    [
        ("searchh:\n  trainings: 3\n", ["searchh: unknown key; did you mean 'search'?"]),
        ("search:\n  trainigs: 3\n", ["search.trainigs: unknown key; did you mean 'trainings'?"]),
        ("search:\n  trainings: three\n", ["search.trainings: expected an integer", "'three'"]),
        ("constraints:\n  max_latency_ms: -1\n", ["constraints.max_latency_ms: expected a number > 0", "-1"]),
        ("constraints:\n  max_size_kb: 0\n", ["constraints.max_size_kb: expected a number > 0"]),
        ("constraints:\n  max_latency_ms: fast\n", ["constraints.max_latency_ms: expected a number"]),
        ("task:\n  data: nowhere.npz\n", ["nowhere.npz", "not found"]),
        ("space:\n  name: resnet\n", ["unknown space 'resnet'", "valid spaces"]),
        ("space:\n  name: mbconv\n  options:\n    kernels: [4]\n", ["kernels"]),
        ("latency:\n  device: pixel\n", ["latency", "needs a latency model"]),
        (
            "latency:\n  table: pi4.json\n",
            ["latency.device: expected the name of the device", "pi4.json", "'host'"],
        ),
        ("training:\n  epochs: 0\n", ["training.epochs: expected an int > 0"]),
        ("search:\n  fidelity:\n    eta: 1\n", ["search.fidelity.eta: expected an int >= 2", "got 1"]),
        (
            "search:\n  fidelity:\n    min_epochs: 3\n",
            ["search.fidelity.min_epochs: expected an int < training.epochs (3)", "got 3"],
        ),
        ("- just\n- a list\n", ["expected a mapping"]),
        ("search: [1\n", ["not valid YAML"]),
    ],
)
def test_bad_configs_exit_2_with_one_line(run_nas, tmp_path: Path, text: str, needles: list[str]) -> None:
    cfg = write(tmp_path, text)
    out = tmp_path / "out"
    proc = run_nas("run", str(cfg), "--out", str(out), timeout=120)
    assert_one_line_error(proc, "cfg.yaml", *needles)
    assert not out.exists() or not any(out.iterdir())


def test_npz_with_mismatched_lengths(run_nas, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((40, 8, 8, 1), np.float32), y=np.zeros(39, np.int64))
    cfg = write(tmp_path, "task:\n  data: bad.npz\nsearch:\n  trainings: 1\n")
    proc = run_nas("run", str(cfg), "--out", str(tmp_path / "out"), timeout=120)
    assert_one_line_error(proc, "bad.npz", "same length", "40", "39")
    assert not (tmp_path / "out" / "report.json").exists()


def test_npz_missing_array(run_nas, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((40, 8, 8, 1), np.float32))
    proc = run_nas(
        "run",
        str(write(tmp_path, "task:\n  data: bad.npz\nsearch:\n  trainings: 1\n")),
        "--out",
        str(tmp_path / "o"),
        timeout=120,
    )
    assert_one_line_error(proc, "bad.npz", "missing array(s) ['y']")


def test_missing_config_file(run_nas, tmp_path: Path) -> None:
    assert_one_line_error(
        run_nas("run", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")), "none.yaml", "not found"
    )


def test_config_relative_paths_and_defaults(tmp_path: Path) -> None:
    np.savez(tmp_path / "mine.npz", x=np.zeros((40, 8, 8, 1), np.float32), y=np.arange(40) % 2)
    cfg = load_config(write(tmp_path, "task:\n  data: mine.npz\nconstraints:\n  max_latency_ms: 2\n"))
    assert cfg.task.data == str(tmp_path / "mine.npz")
    assert cfg.constraints.as_dict() == {"max_latency_ms": 2.0}
    assert cfg.search.strategy == "default"
    with pytest.raises(InputError, match="export.formats"):
        parse_config({"export": {"formats": []}})


def test_data_export_writes_exact_split(run_nas, tmp_path: Path) -> None:
    from nas.data import load_task

    proc = run_nas(
        "data", "export", "digits", "--split", "test", "--out", str(tmp_path / "t.npz"), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "t.npz") as f:
        data = load_task("digits")
        assert np.array_equal(f["x"], data.x_test) and np.array_equal(f["y"], data.y_test)
    bad = run_nas("data", "export", "digits", "--split", "test", "--out", str(tmp_path / "t.txt"))
    assert_one_line_error(bad, "--out", ".npz")


@pytest.mark.parametrize(
    "fidelity, needle",
    [
        ({"min_epochs": 0}, "search.fidelity.min_epochs: expected an int > 0, got 0."),
        ({"min_epochs": 1.5}, "search.fidelity.min_epochs: expected an integer, got 1.5."),
        ({"eta": "two"}, "search.fidelity.eta: expected an integer, got 'two'."),
        ({"max_epochs": 9}, "search.fidelity.max_epochs: unknown key; did you mean 'min_epochs'?"),
        (3, "search.fidelity: expected a mapping of settings, got 3."),
        ({"min_epochs": 4}, "search.fidelity.min_epochs: expected an int < training.epochs (4), got 4."),
    ],
)
def test_bad_fidelity_settings(fidelity: object, needle: str) -> None:
    doc = {"search": {"fidelity": fidelity}, "training": {"epochs": 4}}
    with pytest.raises(InputError) as e:
        parse_config(doc)
    assert str(e.value) == needle


def test_fidelity_rungs_and_the_default_single_fidelity() -> None:
    assert parse_config({}).search.fidelity is None
    config = parse_config({"search": {"fidelity": {"min_epochs": 1, "eta": 3}}, "training": {"epochs": 12}})
    assert config.search.fidelity.rungs(config.training.epochs) == (1, 3, 9, 12)
    assert parse_config({"search": {"fidelity": {}}}).search.fidelity.rungs(3) == (1, 3)
    assert config.as_dict()["search"]["fidelity"] == {"min_epochs": 1, "eta": 3}


def test_an_input_error_is_always_one_short_line() -> None:
    """The floor under every message: whatever it quotes, one line, long words cut, paths and
    ordinary architecture strings kept whole."""
    from search_spaces import InputError

    path = "/tmp/" + "deep/" * 30 + "input.yaml"
    arch = "d1-k3-e1-w16-se0-relu6+d2-k5-e3-w16-se1-relu6+d1-k5-e1-w40-se1-relu6"
    huge = InputError(f"{path}: space: unknown space 'mbco{'9' * 500}'\nvalid: [a, b].")
    assert "\n" not in str(huge) and path in str(huge)
    assert len(str(huge).replace(path, "FILE")) < 120
    plain = f"arch {arch}: stage 0 kernel: expected one of [3, 5, 7], got 9."
    assert str(InputError(plain)) == plain
