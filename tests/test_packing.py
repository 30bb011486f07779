"""Trits <-> bytes: round trips, the byte layout, density, speed and every error."""

import time

import numpy as np
import pytest
import torch

from tilelli.model.packing import pack_trits, packed_size, unpack_trits


def _random_trits(shape, seed=0):
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


@pytest.mark.parametrize("shape", [(1,), (4,), (5,), (6,), (7,), (1001,), (1, 13), (3, 4, 7), (2, 5, 5)])
def test_round_trip_awkward_shapes(shape):
    codes = _random_trits(shape, seed=sum(shape))
    packed = pack_trits(codes)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    assert packed.size == packed_size(codes.size) == -(-codes.size // 5)
    out = unpack_trits(packed, codes.size)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out.reshape(shape), codes)


def test_round_trip_torch_and_other_dtypes():
    t = torch.randint(-1, 2, (17, 3), dtype=torch.int8)
    np.testing.assert_array_equal(unpack_trits(pack_trits(t), t.numel()), t.numpy().reshape(-1))
    f = t.float()  # float codes as ternarize produces them
    np.testing.assert_array_equal(pack_trits(f), pack_trits(t))
    np.testing.assert_array_equal(pack_trits(t.numpy().astype(np.int64)), pack_trits(t))
    # a non-contiguous view is flattened in its logical (C) order
    np.testing.assert_array_equal(unpack_trits(pack_trits(t.T), t.numel()), t.T.reshape(-1).numpy())


def test_golden_bytes():
    # digits d = code + 1, first code least significant: [2,1,0,2,0] -> 2 + 3 + 0 + 54 + 0 = 59;
    # the lone last code 1 is padded with zero trits (digit 1): 2 + 3 + 9 + 27 + 81 = 122.
    codes = np.array([1, 0, -1, 1, -1, 1], dtype=np.int8)
    assert pack_trits(codes).tolist() == [59, 122]
    assert pack_trits(np.full(5, -1)).tolist() == [0]
    assert pack_trits(np.full(5, 1)).tolist() == [242]
    assert unpack_trits(np.array([59, 122], dtype=np.uint8), 6).tolist() == codes.tolist()


def test_all_byte_values_decode_and_reencode():
    every = np.arange(243, dtype=np.uint8)
    np.testing.assert_array_equal(pack_trits(unpack_trits(every, 243 * 5)), every)


def test_density_is_1_6_bits_per_trit():
    n = 1_000_000
    assert pack_trits(_random_trits(n)).nbytes * 8 / n == 8 / 5


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_trits(np.zeros(0, dtype=np.int8))
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_trits(torch.zeros(3, 0))


@pytest.mark.parametrize("bad, shown", [([0, 1, 2], "2"), ([-2], "-2"), ([0.5, 0.0], "0.5"),
                                        ([float("nan")], "nan"), ([7, 1], "7")])
def test_values_outside_trits_are_named(bad, shown):
    with pytest.raises(ValueError, match=rf"got {shown}\b"):
        pack_trits(np.array(bad))


def test_corrupt_buffers():
    packed = pack_trits(_random_trits(12))  # 3 bytes
    with pytest.raises(ValueError, match="corrupt.*at most 10 trits"):
        unpack_trits(packed[:2], 12)
    bad = packed.copy()
    bad[1] = 250
    with pytest.raises(ValueError, match="corrupt.*byte 1 is 250"):
        unpack_trits(bad, 12)
    with pytest.raises(ValueError, match="padding"):  # 12 trits read back as 11: trit 12 is not 0
        unpack_trits(pack_trits(np.ones(12, dtype=np.int8)), 11)
    with pytest.raises(ValueError, match="uint8"):
        unpack_trits(packed.astype(np.int16), 12)


def test_ten_million_trits_are_fast():
    codes = _random_trits(10_000_000)
    t0 = time.perf_counter()
    packed = pack_trits(codes)
    out = unpack_trits(packed, codes.size)
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(out, codes)
    assert elapsed < 1.0, f"pack + unpack of 10 M trits took {elapsed:.2f} s"
