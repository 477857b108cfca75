"""Real data and a real trained tiny model shared by the compress tests (imported by them)."""

from __future__ import annotations

import numpy as np
import pytest

from compress import CompressData


@pytest.fixture(scope="module")
def cdata() -> CompressData:
    """A small slice of the real mnist5k task (fast to train on, still real digits)."""
    from nas.data import load_task

    task = load_task("mnist5k")
    return CompressData(
        task.x_train[:1200],
        task.y_train[:1200],
        task.x_val[:200],
        task.y_val[:200],
        task.x_test[:400],
        task.y_test[:400],
    )


@pytest.fixture(scope="module")
def tiny(cdata: CompressData):
    """A tiny mbconv net (relu6, no SE: every stage including QAT applies) trained for 6 epochs."""
    from compress import Trainer
    from search_spaces import TaskShape, get_space

    space = get_space("mbconv", {"strides": [1, 2], "widths": [[8], [16]], "stem_width": 8, "head_width": 32})
    model = space.build(
        space.parse("d1-k3-e1-w8-se0-relu6+d1-k3-e4-w16-se0-relu6"), TaskShape((28, 28, 1), 10)
    )
    Trainer(learning_rate=1e-2, batch_size=32, seed=0).fit(model, cdata, 6, "train")
    acc = float(np.mean(np.argmax(model.predict(cdata.x_test, verbose=0), 1) == cdata.y_test))
    assert acc > 0.6, f"the fixture model did not learn (accuracy {acc:.3f})"
    return model


def test_fixture_model_learns(tiny, cdata) -> None:
    """The shared model is well above chance in inference mode (BatchNorm statistics are sane)."""
    acc = float(np.mean(np.argmax(tiny.predict(cdata.x_test, verbose=0), 1) == cdata.y_test))
    assert acc > 0.6
