"""Learned and few-shot latency predictors on small real slices of the NB201 / FBNet device data
(tests/data, HELP + HW-NAS-Bench measurements): accuracy on unseen archs, self-contained JSON files."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from latency_models.measurements import Measurements, Reference
from latency_models.metrics import latency_metrics
from latency_models.predictor import load_predictor
from latency_models.transfer import ArchEncoder, FewShotPredictor, LearnedPredictor, fit_learned, fit_transfer
from search_spaces import InputError, get_space
from search_spaces.nb201 import live_edges

DATA = Path(__file__).resolve().parent / "data"


def family(device: str) -> str:
    return re.sub(r"_(1|32|64|256)$", "", device)


def _load(space_name: str) -> tuple[list[str], list[str], np.ndarray]:
    with gzip.open(DATA / f"{space_name}_lat_sample.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    devices = [c for c in rows[0] if c not in ("arch_idx", "arch_str", "sample_id", "op_idx_list")]
    return [r["arch_str"] for r in rows], devices, np.array([[float(r[d]) for d in devices] for r in rows])


@pytest.fixture(scope="module", params=["nb201", "fbnet"])
def data(request: pytest.FixtureRequest) -> tuple:
    space = get_space(request.param)
    texts, devices, lat = _load(request.param)
    return space, texts, tuple(space.parse(t) for t in texts), devices, lat


def _split(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return idx[:k], idx[k:]


def _measure(texts, archs, lat: np.ndarray, idx: np.ndarray, j: int) -> Measurements:
    return Measurements("m.csv", tuple(texts[i] for i in idx), tuple(archs[i] for i in idx), lat[idx, j])


def _reference(texts, archs, devices, lat, rows: np.ndarray, target: str) -> Reference:
    cols = [i for i, d in enumerate(devices) if family(d) != family(target)]
    return Reference(
        "r.csv",
        tuple(devices[i] for i in cols),
        tuple(texts[i] for i in rows),
        tuple(archs[i] for i in rows),
        lat[np.ix_(rows, cols)],
    )


def test_gather_prediction_equals_the_feature_matrix(data: tuple) -> None:
    space, _, archs, _, _ = data
    enc = ArchEncoder.for_space(space)
    codes = enc.codes(archs[:100], space)
    coef = np.random.default_rng(0).normal(size=enc.n_features)
    np.testing.assert_allclose(enc.dot(codes, coef), enc.features(codes) @ coef, rtol=1e-12, atol=1e-9)


def test_vectorised_nb201_liveness_matches_the_space() -> None:
    space = get_space("nb201")
    enc = ArchEncoder.for_space(space)
    assert enc.extras == ("nb201-live",)  # the name saved latency models carry
    rng = random.Random(1)
    archs = [space.random(rng) for _ in range(500)]
    live = space.live_choices(enc.codes(archs, space), enc.values)
    assert live.tolist() == [list(live_edges(a)) for a in archs]


@pytest.mark.parametrize("k", [10, 60])
def test_few_shot_transfer_ranks_unseen_archs(data: tuple, k: int) -> None:
    space, texts, archs, devices, lat = data
    n = len(archs)
    # A 300-400 arch slice smooths the references far less than the full data (see the benchmark);
    # fbnet latencies span a narrow range, so ranking them is the harder part.
    floors = {
        ("nb201", 10): (0.93, 0.8),
        ("nb201", 60): (0.93, 0.8),
        ("fbnet", 10): (0.75, 0.4),
        ("fbnet", 60): (0.85, 0.6),
    }[(space.name, k)]
    for target in ("gold_6226", "titan_rtx_1", "silver_4210r"):
        j = devices.index(target)
        train, test = _split(n, k, seed=j)
        p = fit_transfer(
            space,
            _measure(texts, archs, lat, train, j),
            _reference(texts, archs, devices, lat, np.arange(n), target),
        )
        assert isinstance(p, FewShotPredictor)
        m = latency_metrics(p.predict([archs[i] for i in test]), lat[test, j])
        assert m.spearman >= floors[0], (target, m)
        assert m.within10 >= floors[1], (target, m)


def _fit_on_half(space, texts, archs, devices, lat, device: str, k: int):  # noqa: ANN001, ANN202
    """Few-shot fit for ``device`` on K archs of a random half, the half as the reference; returns
    the predictor and the other half's indices (archs the reference never saw)."""
    half, other = _split(len(archs), len(archs) // 2, seed=3)
    j = devices.index(device)
    p = fit_transfer(
        space,
        _measure(texts, archs, lat, half[:k], j),
        _reference(texts, archs, devices, lat, half, device),
    )
    return p, other


def test_transfer_prices_archs_the_reference_never_saw(data: tuple) -> None:
    """The file is self-contained: the reference holds half of the archs, we price the other half."""
    space, texts, archs, devices, lat = data
    p, other = _fit_on_half(space, texts, archs, devices, lat, "silver_4114", 20)
    pred = p.predict([archs[i] for i in other])
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)
    assert spearmanr(pred, lat[other, devices.index("silver_4114")]).statistic > (
        0.85 if space.name == "nb201" else 0.7
    )


def test_learned_without_reference(data: tuple) -> None:
    space, texts, archs, devices, lat = data
    j = devices.index("titan_rtx_32")
    train, test = _split(len(archs), 100, seed=0)
    p = fit_learned(space, _measure(texts, archs, lat, train, j))
    assert isinstance(p, LearnedPredictor)
    m = latency_metrics(p.predict([archs[i] for i in test]), lat[test, j])
    assert m.spearman > 0.9, m


def test_files_round_trip_as_plain_json(data: tuple, tmp_path: Path) -> None:
    space, texts, archs, devices, lat = data
    j = devices.index("raspi4")
    train, test = _split(len(archs), 30, seed=1)
    for p in (
        fit_learned(space, _measure(texts, archs, lat, train, j), device="raspi4"),
        fit_transfer(
            space,
            _measure(texts, archs, lat, train, j),
            _reference(texts, archs, devices, lat, np.arange(len(archs)), "raspi4"),
            device="raspi4",
        ),
    ):
        path = tmp_path / f"{p.kind}.json"
        p.save(path)
        doc = json.loads(path.read_text())
        assert doc["format"] == "edge-nas-latency-predictor" and doc["version"] == 1
        assert doc["kind"] == p.kind and doc["space"] == space.name and doc["device"] == "raspi4"
        assert doc["provenance"]["measurements"]["n_archs"] == 30
        assert path.stat().st_size < 5_000_000
        q = load_predictor(path)
        sample = [archs[i] for i in test[:50]]
        np.testing.assert_allclose(q.predict(sample), p.predict(sample), rtol=1e-6)


def test_tiny_k_falls_back_and_too_few_fail(data: tuple) -> None:
    space, texts, archs, devices, lat = data
    j = devices.index("fpga")
    one = np.array([5])
    p = fit_transfer(
        space,
        _measure(texts, archs, lat, one, j),
        _reference(texts, archs, devices, lat, np.arange(len(archs)), "fpga"),
    )
    assert p.fit is not None and p.fit.method == "mean-device"
    pred = p.predict(list(archs))
    assert np.isclose(pred[5], lat[5, j], rtol=0.05)  # shifted through its one measurement
    assert spearmanr(pred, lat[:, j]).statistic > 0.5  # the mean device still ranks
    with pytest.raises(InputError, match="at least 2 measurements"):
        fit_learned(space, _measure(texts, archs, lat, one, j))


def test_malformed_predictor_files_are_named(tmp_path: Path) -> None:
    space = get_space("nb201")
    texts, devices, lat = _load("nb201")
    archs = tuple(space.parse(t) for t in texts)
    p = fit_learned(space, _measure(texts, archs, lat, np.arange(20), 0))
    doc = json.loads(p.to_json())
    doc["model"]["coef"] = doc["model"]["coef"][:-3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"bad.json: coef: expected \d+ coefficients"):
        load_predictor(bad)
    doc["model"] = {"target": "log"}
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="bad.json: malformed learned predictor"):
        load_predictor(bad)


def test_nonneg_mix_keeps_signs_and_its_leave_one_out_is_a_refit() -> None:
    from scipy.optimize import nnls

    from latency_models.transfer import _nonneg_mix

    rng = np.random.default_rng(3)
    z = rng.normal(size=(25, 4))
    # device 2 runs the opposite way: a free mix would give it a negative weight
    y = 1.5 + z @ np.array([0.8, 0.3, -0.5, 0.0]) + 0.05 * rng.normal(size=25)
    w = rng.uniform(0.5, 2.0, size=25)
    b0, wz, loo = _nonneg_mix(z, y, w)
    assert np.all(wz >= 0) and wz[2] == 0 and wz[0] > 0.5
    i = 7
    keep = np.arange(25) != i
    sw = np.sqrt(w[keep])
    a = np.hstack([z[keep], np.ones((24, 1)), -np.ones((24, 1))]) * sw[:, None]
    c, _ = nnls(a, y[keep] * sw)
    assert loo[i] == pytest.approx(y[i] - (z[i] @ c[:-2] + c[-2] - c[-1]))
    fitted = b0 + z @ wz
    assert np.sqrt(np.mean((fitted - y) ** 2)) < np.sqrt(np.mean(loo**2))


def test_raw_share_names() -> None:
    from latency_models.transfer import _RAW_SHARES, _raw_share

    assert _raw_share("smooth") == 0.0 and _raw_share("raw") == 1.0 and _raw_share("raw0.5") == 0.5
    assert 1.0 in _RAW_SHARES


def test_physics_basis_sums_each_layers_terms_from_the_space_blocks() -> None:
    """``features @ basis`` is, up to a scale per term, the sum of the blocks' own cost terms
    (so every position, including skips that need a projection, is aligned with its block)."""
    from latency_models.physics_prior import (
        PHYSICS_TERMS,
        PHYSICS_WIDTH_MULT,
        _block_terms,
        physics_basis,
    )
    from search_spaces.fbnet import REFERENCE_TASK

    space = get_space("fbnet")
    enc = ArchEncoder.for_space(space)
    rng = random.Random(4)
    archs = [space.random(rng) for _ in range(200)]
    assert physics_basis(ArchEncoder.for_space(get_space("nb201"))) is None
    task = REFERENCE_TASK  # the task fbnet's layers are priced on (``layer_blocks``)
    # By default the terms describe full-width nets; None keeps the space's own width (0.25).
    for width, terms_space in (
        (PHYSICS_WIDTH_MULT, get_space("fbnet", {"width_mult": PHYSICS_WIDTH_MULT})),
        (None, space),
    ):
        basis = physics_basis(enc, width)
        assert basis is not None
        got = enc.features(enc.codes(archs, space)) @ basis
        direct = np.array(
            [
                [
                    sum(_block_terms(b).get(t, 0.0) for b in terms_space.blocks(a, task)[1:-2])
                    for t in PHYSICS_TERMS
                ]
                for a in archs
            ]
        )
        direct = direct[:, direct.std(axis=0) > 0]  # terms no fbnet block has (7x7 depthwise)
        assert direct.shape[1] >= 14
        ratio = got[:, : direct.shape[1]] / direct
        np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1], ratio.shape), rtol=1e-9)


def test_physics_prior_helps_learned_fbnet(monkeypatch: pytest.MonkeyPatch) -> None:
    import latency_models.ridge as ridge  # where the fits' designs look the physics basis up

    space = get_space("fbnet")
    texts, devices, lat = _load("fbnet")
    archs = tuple(space.parse(t) for t in texts)
    train, test = _split(len(archs), 60, seed=5)

    def mean_spearman() -> float:
        rhos = []
        for target in ("raspi4", "gold_6226", "titan_rtx_32", "eyeriss", "samsung_a50"):
            j = devices.index(target)
            p = fit_learned(space, _measure(texts, archs, lat, train, j))
            rhos.append(spearmanr(p.predict([archs[i] for i in test]), lat[test, j]).statistic)
        return float(np.mean(rhos))

    with_physics = mean_spearman()
    monkeypatch.setattr(ridge, "physics_basis", lambda encoder, width_mult=None: None)
    assert with_physics > mean_spearman() + 0.01


def test_reference_free_physics_models_compete_next_to_the_references() -> None:
    """Accelerators and a phone that physics describes better than the other devices do: with
    K=100 the learned physics fit wins the leave-one-out, and ranks unseen archs near perfectly
    (the references alone reach about 0.991 on fpga)."""
    space = get_space("fbnet")
    texts, devices, lat = _load("fbnet")
    archs = tuple(space.parse(t) for t in texts)
    train, test = _split(len(archs), 100, seed=5)
    for target in ("fpga", "eyeriss", "pixel3"):
        j = devices.index(target)
        ref = _reference(texts, archs, devices, lat, np.arange(len(archs)), target)
        p = fit_transfer(space, _measure(texts, archs, lat, train, j), ref)
        assert p.fit is not None and p.fit.method.startswith("learned-physics")
        assert spearmanr(p.predict([archs[i] for i in test]), lat[test, j]).statistic >= 0.999


def test_learned_physics_width_is_an_option_and_recorded() -> None:
    space = get_space("fbnet")
    texts, devices, lat = _load("fbnet")
    archs = tuple(space.parse(t) for t in texts)
    train, _ = _split(len(archs), 40, seed=2)
    m = _measure(texts, archs, lat, train, devices.index("raspi4"))
    full = fit_learned(space, m)
    own = fit_learned(space, m, physics_width_mult=None)
    assert full.fit is not None and own.fit is not None
    assert full.fit.params["physics_width_mult"] == 1.0 and own.fit.params["physics_width_mult"] is None
    assert full.fit.params["n_ensemble"] >= 1
    assert not np.allclose(full.predict(archs[:20]), own.predict(archs[:20]))


def _drifting_deviations(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per device, a slow function of a hidden time ``t`` plus noise (as the HELP devices' drift)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    freq, phase, amp = rng.uniform(0.5, 2, d), rng.uniform(0, 1, d), rng.uniform(0.5, 2, d)
    dev = amp * np.sin(2 * np.pi * (t[:, None] * freq + phase)) + 0.5 * rng.normal(size=(n, d))
    return t, dev


def test_kernel_correction_finds_what_the_references_deviations_share_with_the_target() -> None:
    from latency_models.transfer import _kernel_correction

    t, dev = _drifting_deviations(2000, 12, seed=4)
    signal = 0.1 * np.sin(2 * np.pi * 1.3 * t)
    rng = np.random.default_rng(5)
    rows = rng.choice(len(t), 100, replace=False)
    g, share = _kernel_correction(dev, rows, signal[rows] + 0.03 * rng.normal(size=100))
    other = np.setdiff1d(np.arange(len(t)), rows)
    assert share >= 0.9
    assert np.corrcoef(g[other], signal[other])[0, 1] >= 0.9
    assert np.sqrt(np.mean((g[other] - signal[other]) ** 2)) < 0.5 * signal.std()


def test_kernel_correction_of_pure_noise_stays_small() -> None:
    """Residuals unrelated to the deviations: leave-one-out over a few bandwidths and penalties
    can still prefer a kernel fit by chance, but what it adds stays well below the noise."""
    from latency_models.transfer import _kernel_correction

    _, dev = _drifting_deviations(2000, 12, seed=4)
    sizes = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        rows = rng.choice(2000, 100, replace=False)
        noise = 0.03 * rng.normal(size=100)
        noise[:3] += 0.5  # a few outlying measurements buy nothing (winsorised)
        g, _ = _kernel_correction(dev, rows, noise)
        sizes.append(np.sqrt(np.mean(g**2)))
    assert max(sizes) < 0.5 * 0.03 and np.mean(sizes) < 0.2 * 0.03


def test_kernel_correction_is_stored_for_reference_archs_only() -> None:
    """From K=30 the correction is priced through the per-arch offsets: archs outside the
    reference get the linear model alone, and the fit records the kernel's share."""
    space = get_space("fbnet")
    texts, devices, lat = _load("fbnet")
    archs = tuple(space.parse(t) for t in texts)
    p, other = _fit_on_half(space, texts, archs, devices, lat, "essential_ph_1", 60)
    assert p.fit is not None and 0.0 <= p.fit.params["kernel_share"] <= 1.0
    assert p.model is not None and len(p.model.known) == len(archs) - len(other)
    assert np.all(np.isfinite(p.predict([archs[i] for i in other])))
