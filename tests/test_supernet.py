"""The elastic supernets (``search_spaces.mbconv_supernet``, ``search_spaces.ofa_supernet``):
every subnet extracted as a standalone ``space.build`` model computes what the supernet computes
with that subnet active, and one traced function serves every subnet."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from search_spaces import InputError, TaskShape, get_space

ROOT = Path(__file__).resolve().parent.parent
# The quickstart space with both activations (examples/quickstart.yaml has relu6 only): strides
# 1, 2, 2 so kernel cropping is checked at stride 2, expand 1 (no expand conv), residuals
# present and absent, squeeze-excite on and off.
OPTIONS = {
    **yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["space"]["options"],
    "acts": ["relu6", "hswish"],
}
TASK = TaskShape((28, 28, 1), 10)
# float32 through a dozen layers in two different op orders: probabilities agree to ~1e-6.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def space():
    return get_space("mbconv", OPTIONS)


@pytest.fixture(scope="module")
def supernet(space):
    from search_spaces.mbconv_supernet import MbconvSupernet

    return perturbed(MbconvSupernet(space, TASK, seed=3))


def perturbed(net):
    """``net`` with weights as a training leaves them (BN scales and shifts, biases away from 1
    and 0), so a wrongly sliced or misplaced parameter shows."""
    rng = np.random.default_rng(0)
    weights = net.get_weights()
    for name, value in weights.items():
        if value.ndim == 1:
            weights[name] = value + rng.normal(0.0, 0.3, value.shape).astype(np.float32)
    net.set_weights(weights)
    return net


def assert_extracted_subnets_match(space, net, calibration, x, random_subnets: int = 5) -> None:
    """The smallest, the largest and random subnets: the extracted standalone model's
    probabilities equal the supernet's within ``TOLERANCE``, and the supernet traced its
    inference and calibration functions once each for all of them."""
    rng = random.Random(0)
    archs = [space.cheapest(), space.largest(), *(space.random(rng) for _ in range(random_subnets))]
    assert len({str(a) for a in archs}) == len(archs)
    worst = 0.0
    for arch in archs:
        enc = net.encode(arch)
        stats = net.calibrate(enc, calibration)
        inside = net.predict(x, enc, stats)
        model = net.extract(arch, stats)
        alone = model.predict(x, batch_size=200, verbose=0)
        worst = max(worst, float(np.abs(inside - alone).max()))
        assert np.abs(inside - alone).max() < TOLERANCE, arch
        assert np.array_equal(inside.argmax(1), alone.argmax(1)), arch
    print(f"{space.name} {net.image_shape}: {len(archs)} subnets, largest difference {worst:.2e}")
    # One trace of the inference and one of the calibration function for every subnet.
    assert net.tracing_count() == 2


@pytest.fixture(scope="module")
def images():
    from nas.data import load_task

    data = load_task("mnist5k")
    return data.inputs(data.x_train[:400]), data.inputs(data.x_val[:200])


def test_every_extracted_subnet_matches_the_supernet(space, supernet, images) -> None:
    assert_extracted_subnets_match(space, supernet, *images)


def test_subnets_differ_and_share_weights(space, supernet, images) -> None:
    """Changing one decision changes the output (the masks reach the computation), and the
    cropped kernel is the centre of the largest one (what extraction copies)."""
    calibration, x = images
    base = space.parse("d2-k5-e3-w16-se1-relu6+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w40-se1-relu6")
    outputs = {}
    for text in (
        str(base),
        "d2-k3-e3-w16-se1-relu6+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w40-se1-relu6",
        "d1-k5-e3-w16-se1-relu6+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w40-se1-relu6",
        "d2-k5-e3-w16-se0-relu6+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w40-se1-relu6",
        "d2-k5-e3-w16-se1-hswish+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w40-se1-relu6",
        "d2-k5-e3-w16-se1-relu6+d2-k5-e3-w24-se0-hswish+d1-k3-e6-w24-se1-relu6",
    ):
        enc = supernet.encode(space.parse(text))
        outputs[text] = supernet.predict(x, enc, supernet.calibrate(enc, calibration))
    first = outputs.pop(str(base))
    for text, out in outputs.items():
        assert np.abs(out - first).max() > 1e-3, text
    small = space.parse("d1-k3-e1-w8-se0-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6")
    weights = supernet.subnet_weights(small, supernet.calibrate(supernet.encode(small), calibration))
    full = supernet.get_weights()["s1b0_dw/depthwise_kernel"]
    assert np.array_equal(weights["s1b0_dw"][0], full[1:4, 1:4, :8])


def test_bad_input_is_refused_in_one_line(space, supernet) -> None:
    with pytest.raises(InputError, match="expected an mbconv architecture"):
        supernet.encode("d1-k3")
    weights = supernet.get_weights()
    weights.pop("classifier/bias")
    with pytest.raises(InputError, match="1 missing"):
        supernet.set_weights(weights)
    weights = supernet.get_weights()
    weights["classifier/bias"] = np.zeros(3, np.float32)
    with pytest.raises(InputError, match=r"classifier/bias: expected shape \[10\], got \[3\]"):
        supernet.set_weights(weights)
    from search_spaces.mbconv_supernet import MbconvSupernet

    with pytest.raises(InputError, match="expected an mbconv space"):
        MbconvSupernet(get_space("nb201"), TASK)


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        # The whole space (width 1.2, every depth, kernel and expansion) at the smallest
        # resolution the space takes, one channel (39 s on the shared machine: slow).
        pytest.param({}, (32, 32, 1), marks=pytest.mark.slow),
        # Narrowed options at width 1.0 and a resolution whose feature maps have odd sizes
        # (40, 20, 10, 5, 3, 2: stride-2 kernel crops with both of TensorFlow's paddings).
        ({"width_mult": 1.0, "depths": [3, 4], "kernels": [3, 5], "expands": [4, 6]}, (40, 40, 3)),
    ],
)
def test_every_extracted_ofa_subnet_matches_the_supernet(options, shape) -> None:
    from search_spaces.ofa_supernet import OfaMbv3Supernet

    space, task = get_space("ofa-mbv3", options), TaskShape(shape, 10)
    net = perturbed(OfaMbv3Supernet(space, task, seed=5))
    rng = np.random.default_rng(1)
    calibration = rng.normal(0.5, 0.5, (400, *shape)).astype(np.float32)
    x = rng.normal(0.5, 0.5, (200, *shape)).astype(np.float32)
    assert_extracted_subnets_match(space, net, calibration, x)


def test_ofa_subnets_differ_and_bad_input_is_refused() -> None:
    """Each elastic decision (depth, kernel, expansion) reaches the computation; an arch or a
    space of another kind is refused in one line."""
    from search_spaces.ofa_supernet import OfaMbv3Supernet

    space = get_space("ofa-mbv3", {"width_mult": 1.0})
    net = perturbed(OfaMbv3Supernet(space, TaskShape((32, 32, 3), 10), seed=2))
    x = np.random.default_rng(3).normal(0.5, 0.5, (200, 32, 32, 3)).astype(np.float32)
    base = "k5e4_k5e4+k5e4_k5e4+k5e4_k5e4_k5e4+k5e4_k5e4+k5e4_k5e4"
    outputs = {}
    for text in (
        base,
        base.replace("+k5e4_k5e4_k5e4+", "+k5e4_k5e4+"),
        "k3" + base[2:],
        base[:-2] + "e6",
    ):
        enc = net.encode(space.parse(text))
        outputs[text] = net.predict(x, enc, net.calibrate(enc, x))
    first = outputs.pop(base)
    for text, out in outputs.items():
        assert np.abs(out - first).max() > 1e-3, text
    with pytest.raises(InputError, match="expected an ofa-mbv3 architecture"):
        net.encode(space.parse(base).stages)
    with pytest.raises(InputError, match="expected an ofa-mbv3 space"):
        OfaMbv3Supernet(get_space("mbconv"), TaskShape((32, 32, 3), 10))
    with pytest.raises(InputError, match="R >= 32"):
        OfaMbv3Supernet(space, TaskShape((28, 28, 1), 10))


def test_every_registered_supernet_is_its_spaces_and_others_are_refused() -> None:
    """``SUPERNETS`` names each space's supernet class; a space without one is one line naming
    those that have one."""
    from search_spaces import SUPERNETS, supernet_class

    for name in SUPERNETS:
        cls = supernet_class(name)
        assert cls.space_class.name == name
        for method in ("encode", "calibrate", "predict", "extract", "logits", "subnet_weights"):
            assert callable(getattr(cls, method)), (name, method)
    with pytest.raises(
        InputError, match=r"space.name: expected a space with a supernet \['mbconv', 'ofa-mbv3'\]"
    ):
        supernet_class("nb201")
