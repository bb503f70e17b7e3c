"""Many players on one machine: step several sessions of one world in ONE network call per denoising
step, per commit and per decode (the batch dimension is sessions).

Each session keeps its own state and RNG and draws its noise in the same order as ``Session.step``, so a
batched tick gives the frames each session would have produced alone (up to float rounding of the
batched kernels). With int8 DiT graphs (the `fast` preset on onnxruntime) a call quantizes its activations with
one scale over the whole batch, so a session's frames in a batch are within a level or so of its frames alone
rather than equal; float32 worlds (`precision="fp32"`) batch exactly. Sessions may be at different frame
indices: cache times are per batch row.

    batch = SessionBatch([s1, s2, s3])
    frames = batch.step(["move_left", "do", "noop"])   # -> [uint8 (H,W,3)] * 3
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from worldsim.actions import action_index


def _parse_actions(actions: Sequence, n: int, chunk: int) -> tuple[np.ndarray, bool]:
    """-> (int64 (n,k) action indices, whether each entry was a single action)."""
    if len(actions) != n:
        raise ValueError(f"{n} sessions need {n} actions (one per session), got {len(actions)}")
    single = [isinstance(a, (str, int, np.integer)) and not isinstance(a, bool) for a in actions]
    if all(single):
        return np.array([[action_index(int(a) if isinstance(a, np.integer) else a)] for a in actions], np.int64), True
    if any(single):
        raise ValueError("give every session either one action or a list of actions, not a mix")
    lists = [list(a) for a in actions]
    k = len(lists[0])
    if k < 1 or any(len(a) != k for a in lists):
        raise ValueError(f"every session needs the same number of actions (>= 1), got {[len(a) for a in lists]}")
    if k > chunk:
        raise ValueError(f"{k} actions per session is more than the preset's chunk of {chunk}; step them in chunks")
    return np.array([[action_index(x) for x in a] for a in lists], np.int64), False


class SessionBatch:
    """A fixed group of sessions of one world, stepped together. Keeps their stacked KV cache between
    ticks and re-reads a session's cache only when it changed outside the batch (restore, a lone step)."""

    def __init__(self, sessions: Sequence):
        sessions = list(sessions)
        if not sessions:
            raise ValueError("SessionBatch needs at least one session")
        if len({id(s) for s in sessions}) != len(sessions):
            raise ValueError("a session appears twice in the batch")
        world = sessions[0].world
        if any(s.world is not world for s in sessions):
            raise ValueError("all sessions of a batch must belong to the same World object (same weights, backend and preset)")
        if world.preset.memory > 0:
            # batched stepping reads no memory slots: refuse rather than silently drop what the sessions remember
            # (the fill alone, preset.memory_fill, needs no slots: each session's bank fills and observes as alone)
            raise ValueError(f"SessionBatch does not support memory slots (preset {world.preset_name!r} reads {world.preset.memory} "
                             "memory frames); step memory sessions one at a time")
        self.sessions = sessions
        self.world = world
        st = sessions[0]._state
        self._k = np.zeros((st.cache.k.shape[0], len(sessions), *st.cache.k.shape[2:]), np.float32)  # (L,S,H,P*N,dh)
        self._v = np.zeros_like(self._k)
        self._seen: list[tuple[object, np.ndarray] | None] = [None] * len(sessions)
        self.timings: dict[str, float] = {}

    def _sync(self) -> None:
        """Copy into the stacked cache every session whose cache changed since the batch last wrote it."""
        sync = getattr(self.world.backend, "sync_session", None)
        for i, s in enumerate(self.sessions):
            if sync is not None:  # a device-resident cache (tensorrt) is copied back to the host first
                sync(s)
            c = s._state.cache
            if c.k.shape[1] != 1 or c.k.shape[3] != self._k.shape[3]:
                raise ValueError(f"session {i} has a cache of shape {c.k.shape}; the batch expects (L,1,H,{self._k.shape[3]},dh)")
            seen = self._seen[i]
            if seen is None or seen[0] is not c or not np.array_equal(seen[1], c.frame):
                self._k[:, i] = c.k[:, 0]
                self._v[:, i] = c.v[:, 0]
                self._seen[i] = (c, c.frame.copy())

    def _write(self, i: int, st, kk: np.ndarray, vv: np.ndarray, first: int) -> None:
        """Write frames' keys/values (L,1,H,k*N,dh) into session i's cache and the same slots of the stacked cache."""
        first_slot = st.cache.next_slot
        st.cache.write(kk, vv, first)
        n = st.cache.tokens_per_frame
        for j in range(kk.shape[3] // n):  # mirror RingKVCache.write into the stacked cache: the same slots in the same order
            slot = (first_slot + j) % st.cache.slots
            self._k[:, i, :, slot * n:(slot + 1) * n] = kk[:, 0, :, j * n:(j + 1) * n]
            self._v[:, i, :, slot * n:(slot + 1) * n] = vv[:, 0, :, j * n:(j + 1) * n]
        self._seen[i] = (st.cache, st.cache.frame.copy())

    def step(self, actions: Sequence) -> list[np.ndarray]:
        """One tick for every session: actions[i] (one action -> uint8 (H,W,3), or k <= chunk actions ->
        uint8 (k,H,W,3)) for sessions[i]; -> their frames, in order."""
        w = self.world
        d, be, sampler = w.dit_cfg, w.backend, w.sampler
        S = len(self.sessions)
        a, single = _parse_actions(actions, S, w.preset.chunk)
        a = np.array([s._game_actions(a[i].tolist()) for i, s in enumerate(self.sessions)], a.dtype)
        k = a.shape[1]
        states = [s._state for s in self.sessions]
        # fused commits (RuntimePreset.fuse_commit): every session's pending frames ride in the first pass, or none do
        fuse = w.fuses_commit and all(st.pending is not None and st.pending[1].shape[1] == k for st in states)
        if not fuse:
            for s in self.sessions:
                s._flush_pending()
        self._sync()
        firsts = [st.frame_index + 1 for st in states]
        t0 = time.perf_counter()
        shape = (1, k, d.latent_channels, d.grid, d.grid)
        # every session draws from its own RNG in Session._step_chunk's order: start noise, step noise, commit noise
        x = np.concatenate([s._rng.standard_normal(shape, dtype=np.float32) for s in self.sessions])  # (S,k,C,g,g)
        level = np.ones(S, np.float32)  # (S,): each session's schedule is scaled by the level it starts at
        for i, s in enumerate(self.sessions):  # Session._generate's start (the warm start, or the noise)
            x[i:i + 1], level[i] = s._warm_start(x[i:i + 1], a[i].tolist())
        inputs = [st.cache.inputs(f) for st, f in zip(states, firsts)]
        past_t = np.concatenate([p[0] for p in inputs])  # (S,P)
        past_valid = np.concatenate([p[1] for p in inputs])
        shift = np.zeros((S, past_t.shape[1], 2), np.float32)
        ts = sampler.timesteps()
        c = w.preset.ctx_noise
        for t, t_next in zip(ts[:-1], ts[1:]):
            if fuse:  # Session._fused_first_pass for the whole batch
                fuse = False
                pend = [st.pending for st in states]
                pin = [st.cache.inputs(p[2]) for st, p in zip(states, pend)]
                kp = pend[0][1].shape[1]
                sig = np.concatenate([np.full((S, kp), c, np.float32), np.repeat((t * level)[:, None], k, 1).astype(np.float32)], 1)
                x0, kk, vv = be.dit(np.concatenate([np.concatenate([p[0] for p in pend]), x], 1), sig,
                                    np.concatenate([np.concatenate([p[1] for p in pend]), a], 1), self._k, self._v,
                                    np.concatenate([p[0] for p in pin]), np.concatenate([p[1] for p in pin]), shift)
                n = kp * states[0].cache.tokens_per_frame
                for i, (st, p) in enumerate(zip(states, pend)):
                    st.pending = None
                    self._write(i, st, kk[:, i:i + 1, :, :n], vv[:, i:i + 1, :, :n], p[2])
                x0 = x0[:, kp:]
                inputs = [st.cache.inputs(f) for st, f in zip(states, firsts)]
                past_t, past_valid = np.concatenate([p[0] for p in inputs]), np.concatenate([p[1] for p in inputs])
            else:
                x0, _, _ = be.dit(x, np.repeat((t * level)[:, None], k, 1), a, self._k, self._v, past_t, past_valid, shift)
            noise = None
            if sampler.stochastic and t_next > 0:
                noise = np.concatenate([s._rng.standard_normal(shape, dtype=np.float32) for s in self.sessions])
            x = np.concatenate([sampler.step(x[i:i + 1], x0[i:i + 1], float(t * level[i]), float(t_next * level[i]),
                                             None if noise is None else noise[i:i + 1]) for i in range(S)])
        x0 = np.asarray(x, np.float32)
        t1 = time.perf_counter()
        # decode + the game's rules, per session exactly as Session._step_chunk does (so a batch == its sessions)
        found: list[dict] = [{} for _ in self.sessions]
        done = [s._finish(x0[i:i + 1], a[i].tolist(), found[i]) for i, s in enumerate(self.sessions)]
        x0 = np.concatenate([z for z, _ in done])
        frames = np.stack([f for _, f in done])  # (S,k,H,W,3)
        t_dec = time.perf_counter()
        xc = np.concatenate([((1 - c) * x0[i:i + 1] + c * s._rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
                             for i, s in enumerate(self.sessions)])
        if w.fuses_commit:  # Session._commit with pending frames: they enter the cache in the next tick's first pass
            for i, (st, f) in enumerate(zip(states, firsts)):
                st.pending = (xc[i:i + 1].copy(), a[i:i + 1].copy(), f)
        else:
            _, kk, vv = be.dit(xc, np.full((S, k), c, np.float32), a, self._k, self._v, past_t, past_valid, shift)
            for i, (st, f) in enumerate(zip(states, firsts)):
                self._write(i, st, kk[:, i:i + 1], vv[:, i:i + 1], f)
        t2 = time.perf_counter()
        self.timings = {"denoise_ms": (t1 - t0) * 1e3, "commit_ms": (t2 - t_dec) * 1e3, "decode_ms": (t_dec - t1) * 1e3,
                        "total_ms": (t2 - t0) * 1e3, "sessions": S}
        out = []
        for i, (s, st) in enumerate(zip(self.sessions, states)):
            st.frame_index += k
            st.frame = frames[i, -1].copy()
            st.latent = x0[i, -1].copy()
            if st.memory is not None:  # the fill's bank sees the new frames, as Session._step_chunk_memory does
                for j in range(k):
                    st.memory.observe(x0[i, j], firsts[i] + j, found[i]["poses"][j], float(found[i]["lights"][j]))
            s.timings = dict(self.timings)
            out.append(frames[i, 0].copy() if single else frames[i].copy())
        return out


def step_sessions(sessions: Sequence, actions: Sequence) -> list[np.ndarray]:
    """Step several sessions of one world together (one network call per denoising step); -> their frames.

    For a long-lived group, keep a SessionBatch instead: it keeps the stacked cache between ticks.
    """
    return SessionBatch(sessions).step(actions)
