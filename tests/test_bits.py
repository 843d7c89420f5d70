"""Bit packing: the documented layout by hand, round trips for any length, corrupt input refused."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedprune.pruning.bits import flatten_masks, pack, packed_length, unflatten_masks, unpack
from fedprune.validation import ConfigError

bit_lists = st.lists(st.booleans(), min_size=0, max_size=300)
shape_lists = st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)


def test_layout_is_little_bit_order_with_zero_padding():
    # bit i goes to byte i // 8, position i % 8.
    assert pack(np.array([0, 1], dtype=bool)).tolist() == [2]
    assert pack(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)).tolist() == [129, 1]
    assert pack(np.ones(10, dtype=bool)).tolist() == [255, 3]
    assert pack(torch.tensor([True, True, False, True])).tolist() == [11]
    assert pack(np.zeros(0, dtype=bool)).dtype == np.uint8


def test_packed_length():
    assert [packed_length(n) for n in (0, 1, 7, 8, 9, 16, 17)] == [0, 1, 1, 1, 2, 2, 3]
    assert packed_length(np.int64(9)) == 2
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="bit length"):
            packed_length(bad)


@settings(max_examples=200, deadline=None)
@given(bit_lists)
def test_pack_unpack_round_trip_any_length(bits):
    array = np.array(bits, dtype=bool)
    packed = pack(array)
    assert packed.dtype == np.uint8 and packed.size == packed_length(len(bits)) == (len(bits) + 7) // 8
    out = unpack(packed, len(bits))
    assert out.dtype == np.bool_
    assert np.array_equal(out, array)
    assert np.array_equal(pack(torch.from_numpy(array)), packed)  # tensors pack the same


@settings(max_examples=100, deadline=None)
@given(bit_lists.filter(lambda b: len(b) % 8), st.integers(0, 7))
def test_unpack_rejects_nonzero_padding(bits, which):
    packed = pack(np.array(bits, dtype=bool))
    padding = 8 - len(bits) % 8
    corrupt = packed.copy()
    corrupt[-1] |= np.uint8(1 << (7 - which % padding))  # one of the padding positions
    with pytest.raises(ConfigError, match="padding bits"):
        unpack(corrupt, len(bits))


def test_unpack_rejects_wrong_length_and_dtype():
    packed = pack(np.ones(12, dtype=bool))
    with pytest.raises(ConfigError, match="12 bits pack into 2 bytes"):
        unpack(packed[:1], 12)
    with pytest.raises(ConfigError, match="17 bits pack into 3 bytes, got 2"):
        unpack(packed, 17)
    with pytest.raises(ConfigError, match="uint8"):
        unpack(packed.astype(np.int64), 12)
    with pytest.raises(ConfigError, match="uint8"):
        unpack(packed.astype(bool), 12)
    with pytest.raises(ConfigError, match="1-D"):
        unpack(packed.reshape(1, 2), 12)
    with pytest.raises(ConfigError, match="bit length"):
        unpack(packed, -1)
    # The same bytes, read at a shorter length, would hold set padding bits.
    with pytest.raises(ConfigError, match="padding"):
        unpack(packed, 10)


def test_pack_rejects_non_bool_and_non_flat():
    with pytest.raises(ConfigError, match="bool"):
        pack(np.array([0, 1, 1], dtype=np.uint8))
    with pytest.raises(ConfigError, match="bool"):
        pack(torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="1-D"):
        pack(np.ones((2, 3), dtype=bool))


@settings(max_examples=100, deadline=None)
@given(shape_lists, st.integers(0, 2**32 - 1))
def test_flatten_unflatten_round_trip(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    masks = {f"layer{i}.weight": torch.rand(shape, generator=g) < 0.5 for i, shape in enumerate(shapes)}
    flat = flatten_masks(masks)
    assert flat.dtype == np.bool_ and flat.shape == (sum(m.numel() for m in masks.values()),)
    shape_map = {name: tuple(m.shape) for name, m in masks.items()}
    back = unflatten_masks(unpack(pack(flat), flat.size), shape_map)
    assert list(back) == list(masks)
    for name, mask in masks.items():
        assert back[name].dtype == torch.bool and torch.equal(back[name], mask)


def test_flatten_order_is_dict_order_then_row_major():
    masks = {"b": torch.tensor([[True, False], [False, True]]), "a": torch.tensor([False, True, True])}
    assert flatten_masks(masks).tolist() == [True, False, False, True, False, True, True]
    assert flatten_masks({}).shape == (0,)
    # A non-contiguous view flattens in its logical (row-major) order.
    assert flatten_masks({"t": masks["b"].t()}).tolist() == [True, False, False, True]
    assert flatten_masks({"t": torch.tensor([[True, True], [False, False]]).t()}).tolist() == [True, False, True, False]


def test_unflatten_rejects_mismatches():
    with pytest.raises(ConfigError, match="hold 5 bits but the shapes need 6"):
        unflatten_masks(np.ones(5, dtype=bool), {"w": (2, 3)})
    with pytest.raises(ConfigError, match="1-D bool"):
        unflatten_masks(np.ones(6, dtype=np.uint8), {"w": (2, 3)})
    with pytest.raises(ConfigError, match="bool tensor"):
        flatten_masks({"w": torch.ones(3)})


def test_unflatten_does_not_alias_its_input():
    flat = np.zeros(4, dtype=bool)
    masks = unflatten_masks(flat, {"w": (2, 2)})
    flat[0] = True
    assert not bool(masks["w"].any())
