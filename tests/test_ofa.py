"""OFA / ProxylessNAS lookup tables: key parsing (property-based), import, and the ofa-mbv3 space
that the imported tables price (the published 30 ms Note10 subnet prices to 30 ms)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latency_models.ofa import OfaKey, block_for_key, load_ofa_yaml, parse_key, vendored
from search_spaces import InputError, TaskShape, get_space

RESOLUTIONS = (160, 176, 192, 208, 224)
sizes = st.integers(min_value=1, max_value=512)


@given(
    h=sizes, w=sizes, c=sizes, oh=sizes, ow=sizes, oc=sizes,
    expand=st.integers(1, 2000), kernel=st.sampled_from([3, 5, 7]), stride=st.sampled_from([1, 2]),
    idskip=st.integers(0, 1), se=st.integers(0, 1), hs=st.integers(0, 1),
)  # fmt: skip
def test_expanded_conv_keys_round_trip(h, w, c, oh, ow, oc, expand, kernel, stride, idskip, se, hs):
    text = (
        f"expanded_conv-input:{h}x{w}x{c}-output:{oh}x{ow}x{oc}-expand:{expand}-kernel:{kernel}"
        f"-stride:{stride}-idskip:{idskip}-se:{se}-hs:{hs}"
    )
    key = parse_key(text)
    assert str(key) == text
    block = block_for_key(key, "mbv3")
    assert (block.in_h, block.in_w, block.in_c, block.out_c) == (h, w, c, oc)
    assert (block.kernel, block.stride, block.se) == (kernel, stride, bool(se))
    assert block.expand == pytest.approx(expand / c)
    assert block.act == ("hswish" if hs else "relu") and block.extra == f"idskip:{idskip}"


@given(st.text(max_size=80))
def test_any_string_parses_or_raises_input_error(text):
    try:
        key = parse_key(text)
    except InputError as e:
        assert "key" in str(e)
    else:
        assert isinstance(key, OfaKey) and str(key) == text


@given(
    layer=st.sampled_from(["Conv", "Conv_1", "Conv_2", "AvgPool2D", "Logits"]),
    shape=st.tuples(sizes, sizes, sizes), out=st.tuples(sizes, sizes, sizes),
)  # fmt: skip
def test_other_layer_keys_map_to_blocks(layer, shape, out):
    key = parse_key(f"{layer}-input:{'x'.join(map(str, shape))}-output:{'x'.join(map(str, out))}")
    block = block_for_key(key, "mbv3")
    assert (block.in_h, block.in_w, block.in_c, block.out_c) == (*shape, out[-1])


@pytest.mark.parametrize(
    "text",
    [
        "expanded_conv-input:56x56x24-output:56x56x24-expand:72-kernel:3",  # missing stride/idskip
        "Bogus-input:7x7x3-output:7x7x3",
        "Conv-input:224x224-output:112x112x24",
        "Conv-input:0x224x3-output:112x112x24",
        "expanded_conv-input:5x5x8-output:5x5x8-expand:8-kernel:3-stride:1-idskip:1-kernel:5",
    ],
)
def test_bad_keys_are_named(text):
    with pytest.raises(InputError, match="key"):
        parse_key(text)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_note10_tables_price_every_ofa_arch(resolution):
    table = load_ofa_yaml(vendored(f"note10_{resolution}_lookup_table.yaml"))
    assert (
        table.meta.extra["input_shape"] == [resolution, resolution, 3]
        and table.meta.extra["space"] == "ofa-mbv3"
    )
    space, task = get_space("ofa-mbv3"), TaskShape((resolution, resolution, 3), 1000)
    assert set(space.all_blocks(task)) == set(table.entries)
    rng = random.Random(resolution)
    for _ in range(50):
        arch = space.random(rng)
        assert space.parse(str(arch)) == arch
        assert table.missing(space.blocks(arch, task)) == []
    # Extremes: the smallest and largest nets price in the order their sizes say.
    small = space.parse("+".join("_".join(["k3e3"] * 2) for _ in range(5)))
    large = space.parse("+".join("_".join(["k7e6"] * 4) for _ in range(5)))
    assert table.price(space.blocks(small, task)) < table.price(space.blocks(large, task))


def test_published_30ms_subnet_prices_to_30ms():
    table = load_ofa_yaml(vendored("note10_224_lookup_table.yaml"))
    space = get_space("ofa-mbv3")
    doc = json.loads(vendored("specialized/note10_lat-30ms_top1-78.4_finetune-75.net.config").read_text())
    arch = space.from_net_config(doc)
    assert str(arch) == "k3e3_k3e3+k5e4_k3e3_k3e4+k5e4_k5e4_k3e3+k3e6_k3e4_k3e4+k3e6_k3e6_k3e4_k3e3"
    assert table.price(space.blocks(arch, TaskShape((224, 224, 3), 1000))) == pytest.approx(30.0, rel=0.01)


def test_proxylessnas_table_imports_with_std_from_var():
    table = load_ofa_yaml(vendored("proxylessnas_mobile_trim.yaml"))
    assert table.meta.extra["family"] == "proxyless" and len(table) == 72
    stem = next(b for b in table.entries if b.kind == "conv" and b.kernel == 3)
    assert stem.act == "relu6" and table.entries[stem].std_ms == pytest.approx(0.2502372872758427**0.5)
    assert any(b.kind == "pool_dense" for b in table.entries)


def test_width_10_config_is_refused_by_the_width_12_space():
    doc = json.loads(vendored("specialized/note10_lat-8ms_top1-71.4_finetune-25.net.config").read_text())
    with pytest.raises(InputError, match="width_mult"):
        get_space("ofa-mbv3").from_net_config(doc)
    arch = get_space("ofa-mbv3", {"width_mult": 1.0}).from_net_config(doc)
    assert [len(s) for s in arch.stages] == [2, 2, 3, 2, 2]


@pytest.mark.parametrize(
    "body,match",
    [
        ("Conv-input:224x224x3-output:112x112x24:\n  mean: -1\n", "line 1.*mean_ms"),
        ("Conv-input:224x224x3-output:112x112x24:\n  std: 1\n", "line 1.*missing 'mean'"),
        (
            "AvgPool2D-input:7x7x8-output:1x1x8:\n  mean: 1\nWeird-input:1x1x1-output:1:\n  mean: 1\n",
            "line 3.*Weird",
        ),
        ("- just\n- a list\n", "mapping"),
        ("a: [unclosed\n", "not valid YAML"),
        ("Conv-input:224x224x3-output:112x112x24:\n  mean: .nan\n", "mean_ms"),
    ],
)
def test_bad_tables_name_file_and_line(tmp_path: Path, body, match):
    path = tmp_path / "t.yaml"
    path.write_text(body)
    with pytest.raises(InputError, match=match):
        load_ofa_yaml(path)


def test_ofa_space_builds_and_block_models_match_blocks():
    space, task = get_space("ofa-mbv3"), TaskShape((64, 64, 3), 10)
    arch = space.random(random.Random(0))
    model = space.build(arch, task)
    assert model.output_shape == (None, 10)
    for block in space.blocks(arch, task)[:3]:
        out = space.block_model(block).output_shape
        assert out[-1] == block.out_c


def test_size_terms_count_what_the_built_model_holds() -> None:
    """The closed form equals ``SearchSpace.size_terms``'s count on the built model (both widths,
    the smallest and the largest network and a random one, one and three channels)."""
    from search_spaces import SearchSpace

    for options, task in (({}, TaskShape((32, 32, 1), 10)), ({"width_mult": 1.0}, TaskShape((64, 64, 3), 7))):
        space = get_space("ofa-mbv3", options)
        for arch in (space.cheapest(), space.largest(), space.random(random.Random(4))):
            assert space.size_terms(arch, task) == SearchSpace.size_terms(space, arch, task), arch
