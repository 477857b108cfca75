"""Labels as users store them in an ``.npz``: integers, one-hot rows (``keras.utils.to_categorical``)
or class names (strings, kept as ``labels.txt`` and in the report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.data import load_task
from search_spaces import InputError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target


def test_one_hot_and_named_labels_load_as_integer_labels(digits, tmp_path: Path) -> None:
    x, y = digits
    np.savez(tmp_path / "ints.npz", x=x, y=y)
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    np.savez(tmp_path / "named.npz", x=x, y=names[y])
    ints = load_task(str(tmp_path / "ints.npz"))
    onehot = load_task(str(tmp_path / "onehot.npz"))
    named = load_task(str(tmp_path / "named.npz"))
    assert np.array_equal(onehot.y_test, ints.y_test) and onehot.num_classes == 10 and not onehot.class_names
    assert named.class_names == tuple(sorted(names)) and named.num_classes == 10
    # the same split, labels numbered in sorted-name order
    assert [named.class_names[i] for i in named.y_test] == list(names[ints.y_test])


def test_labels_that_are_neither_are_one_line(digits, tmp_path: Path) -> None:
    x, y = digits
    two_hot = np.eye(10)[y] + np.eye(10)[(y + 1) % 10]
    np.savez(tmp_path / "twohot.npz", x=x, y=two_hot)
    with pytest.raises(InputError, match=r"twohot.npz: 'y' of shape \(1797, 10\): expected one-hot rows"):
        load_task(str(tmp_path / "twohot.npz"))
    np.savez(tmp_path / "floats.npz", x=x, y=y.astype(np.float64) + 0.5)
    with pytest.raises(InputError, match="1-D non-negative integer labels, one-hot rows or class names"):
        load_task(str(tmp_path / "floats.npz"))
