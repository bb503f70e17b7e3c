"""RingKVCache: fixed capacity, eviction order, relative times, independent copies."""

import numpy as np
import pytest

from engine.cache import RingKVCache

L, B, H, N, DH = 2, 1, 2, 3, 4


def _kv(frames: list[int]) -> np.ndarray:
    """Keys for these frames whose every value is the frame index: (L,B,H,k*N,dh)."""
    return np.concatenate([np.full((L, B, H, N, DH), f, np.float32) for f in frames], axis=3)


def _slot_values(c: RingKVCache) -> list[float]:
    return [float(c.k[0, 0, 0, s * N, 0]) for s in range(c.slots)]


def test_ring_keeps_the_last_frames_at_fixed_size():
    c = RingKVCache.empty(L, B, H, 4, N, DH)
    shape, nbytes = c.k.shape, c.k.nbytes
    for f in range(11):  # wraps almost three times
        c.write(_kv([f]), _kv([f]) * 2, f)
    assert c.k.shape == shape and c.k.nbytes == nbytes and c.v.shape == shape
    assert sorted(c.frame[0].tolist()) == [7, 8, 9, 10]
    # each slot's keys/values belong to the frame index stored for that slot
    assert _slot_values(c) == [float(f) for f in c.frame[0]]
    assert np.all(c.v[:, :, :, :, :] == 2 * np.repeat(c.frame[0], N)[None, None, None, :, None])


def test_chunk_write_and_relative_times():
    c = RingKVCache.empty(L, B, H, 3, N, DH)
    past_t, valid = c.inputs(0)
    assert valid.sum() == 0  # empty: every slot masked
    c.write(_kv([0, 1]), _kv([0, 1]), 0)
    c.write(_kv([2, 3]), _kv([2, 3]), 2)  # evicts frame 0 only
    assert sorted(c.frame[0].tolist()) == [1, 2, 3]
    past_t, valid = c.inputs(4)
    assert valid.tolist() == [[1.0, 1.0, 1.0]]
    assert sorted(past_t[0].tolist()) == [-3.0, -2.0, -1.0]
    assert past_t.dtype == np.float32 and valid.dtype == np.float32


def test_chunk_larger_than_capacity_keeps_its_last_frames():
    c = RingKVCache.empty(L, B, H, 2, N, DH)
    c.write(_kv([0, 1, 2, 3, 4]), _kv([0, 1, 2, 3, 4]), 0)
    assert sorted(c.frame[0].tolist()) == [3, 4]
    assert _slot_values(c) == [float(f) for f in c.frame[0]]


def test_copy_is_independent():
    c = RingKVCache.empty(L, B, H, 2, N, DH)
    c.write(_kv([0]), _kv([0]), 0)
    d = c.copy()
    c.write(_kv([1, 2]), _kv([1, 2]), 1)
    assert d.frame[0].tolist() == [0, -1] and d.next_slot == 1
    assert float(d.k.max()) == 0.0


def test_empty_cache_needs_a_slot():
    with pytest.raises(ValueError, match="at least one slot"):
        RingKVCache.empty(L, B, H, 0, N, DH)
