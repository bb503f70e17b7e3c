"""The KV cache: a fixed-capacity ring of frame slots (static buffers, explicit positions).

Each slot holds one frame's keys/values for every layer plus that frame's absolute index. Reading turns
absolute indices into relative times for the model, so frame indices can grow for hours while the
buffers and the model's inputs stay the same size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RingKVCache:
    """k, v: (L,B,H,P*N,dh) float32; frame: (B,P) int64 absolute frame index per slot (-1 = empty)."""

    k: np.ndarray
    v: np.ndarray
    frame: np.ndarray
    next_slot: int
    tokens_per_frame: int

    @classmethod
    def empty(cls, layers: int, batch: int, heads: int, slots: int, tokens_per_frame: int, head_dim: int) -> "RingKVCache":
        """An empty cache with `slots` frame slots."""
        if slots < 1:
            raise ValueError(f"the cache needs at least one slot, got {slots}")
        shape = (layers, batch, heads, slots * tokens_per_frame, head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.full((batch, slots), -1, np.int64), 0, tokens_per_frame)

    @property
    def slots(self) -> int:
        """Capacity in frames."""
        return self.frame.shape[1]

    def write(self, k: np.ndarray, v: np.ndarray, first_frame: int) -> None:
        """Write a chunk's keys/values (L,B,H,k*N,dh) for frames first_frame.. into the next slots, evicting the oldest."""
        N = self.tokens_per_frame
        n_frames = k.shape[3] // N
        for i in range(n_frames):
            s = self.next_slot
            self.k[:, :, :, s * N:(s + 1) * N] = k[:, :, :, i * N:(i + 1) * N]
            self.v[:, :, :, s * N:(s + 1) * N] = v[:, :, :, i * N:(i + 1) * N]
            self.frame[:, s] = first_frame + i
            self.next_slot = (s + 1) % self.slots

    def inputs(self, chunk_first_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (past_t (B,P) relative to the chunk's first frame, past_valid (B,P)) as float32."""
        valid = self.frame >= 0
        past_t = np.where(valid, self.frame - chunk_first_frame, 0).astype(np.float32)
        return past_t, valid.astype(np.float32)

    def copy(self) -> "RingKVCache":
        """A deep copy (for snapshots)."""
        return RingKVCache(self.k.copy(), self.v.copy(), self.frame.copy(), self.next_slot, self.tokens_per_frame)
