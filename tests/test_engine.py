"""The engine on a random-weight tiny world: the World/Session contract, determinism, snapshot/save
exactness, backend parity, the cache invariant (cached stepping == a full causal pass without a cache),
the ring buffer past capacity, error messages, and a `worldsim bench --tiny` smoke run."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import BackendUnavailable, World
from engine.graphs import static_dit_name
from engine.testing import make_tiny_world
from engine.world import MODEL_ONLY
from worldsim.actions import ACTION_NAMES
from worldsim.checkpoint import CheckpointError

ACTS = ["move_left", "do", "noop", "move_up", "place_stone", "move_right", "move_down", "sleep"]


def _actions(n: int) -> list[str]:
    return [ACTS[i % len(ACTS)] for i in range(n)]


# torch's intra-op pool is process-wide, and 2 OpenMP threads on a busy 2-core machine measured ~40x slower
# than 1 for the tiny world: the torch worlds here use 1 thread (conftest restores the setting per module).
T1 = {"threads": 1}


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """The tiny world, built once; its ONNX graphs are built on the first onnxruntime load."""
    path = make_tiny_world(tmp_path_factory.mktemp("engine") / "tiny")
    World.load(path)  # export the graphs once, here, so later loads only validate the cache
    return path


@pytest.fixture(scope="session")
def ort_world(world_dir) -> World:
    return World.load(world_dir, backend="onnxruntime")


@pytest.fixture(scope="session")
def torch_world(world_dir) -> World:
    return World.load(world_dir, backend="torch", **T1)


@pytest.fixture
def world_copy(world_dir, tmp_path) -> Path:
    """A private copy of the tiny world (with its ONNX cache) that a test may damage."""
    return Path(shutil.copytree(world_dir, tmp_path / "w"))


def _rollout(world: World, n: int, seed: int = 0, acts: list | None = None) -> np.ndarray:
    s = world.new_session(seed=seed)
    return np.stack([s.step(a) for a in (acts or _actions(n))])


class _Recorder:
    """Wraps a backend's dit() and keeps copies of every call's inputs and outputs."""

    def __init__(self, backend):
        self.inner = backend.dit
        self.calls: list[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = []

    def __call__(self, *args):
        out = self.inner(*args)
        self.calls.append((tuple(np.array(a, copy=True) for a in args), tuple(np.array(o, copy=True) for o in out)))
        return out


# -- the API contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_api_contract(backend, ort_world, torch_world):
    world = ort_world if backend == "onnxruntime" else torch_world
    assert world.backend_name == backend
    assert world.action_names == list(ACTION_NAMES) and len(world.action_names) == 17
    assert world.frame_shape == (72, 72, 3)
    s = world.new_session(seed=0)
    start = s.frame_index
    f = s.step("move_left")
    assert f.shape == world.frame_shape and f.dtype == np.uint8
    assert np.array_equal(s.frame, f) and s.frame_index == start + 1
    f = s.step(5)  # an index is accepted too
    assert f.shape == world.frame_shape
    fs = s.step(["move_left", "do", "noop"])
    assert fs.shape == (3, *world.frame_shape) and fs.dtype == np.uint8
    assert s.frame_index == start + 5 and np.array_equal(s.frame, fs[-1])
    assert set(s.timings) >= {"denoise_ms", "commit_ms", "decode_ms", "total_ms"}


def test_chunked_stepping_returns_k_frames(world_dir):
    world = World.load(world_dir, preset="fast", chunk=2)
    s = world.new_session(seed=0)
    out = s.step(["move_left", "do", "noop"])  # a chunk of 2, then one of 1
    assert out.shape == (3, 72, 72, 3) and out.dtype == np.uint8
    assert s.step("noop").shape == (72, 72, 3)


def test_session_from_context_frames(ort_world):
    rng = np.random.default_rng(1)
    ctx = rng.integers(0, 256, (10, 72, 72, 3), dtype=np.uint8)  # longer than the window
    acts = _actions(9) + [None]
    s = ort_world.new_session(context=ctx, actions=acts, seed=0)
    assert s.frame_index == 9 and np.array_equal(s.frame, ctx[-1])
    assert s.step("noop").shape == (72, 72, 3)
    # T-1 actions are accepted too, and the context and its actions change what comes next
    s2 = ort_world.new_session(context=ctx, actions=acts[:-1], seed=0)
    s3 = ort_world.new_session(context=ctx[::-1].copy(), actions=acts[:-1], seed=0)
    a, b, c = (x.step("noop") for x in (ort_world.new_session(context=ctx, actions=acts, seed=0), s2, s3))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# -- determinism --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fast", "quality"])
def test_deterministic_for_a_seed(world_dir, preset):
    world = World.load(world_dir, preset=preset)
    a, b = _rollout(world, 12, seed=3), _rollout(world, 12, seed=3)
    assert np.array_equal(a, b)
    c = _rollout(world, 12, seed=4)
    assert not np.array_equal(a, c)


def test_actions_change_the_frames(ort_world):
    a = _rollout(ort_world, 3, acts=["noop", "noop", "noop"])
    b = _rollout(ort_world, 3, acts=["noop", "noop", "move_left"])
    assert np.array_equal(a[:2], b[:2]) and not np.array_equal(a[2], b[2])


# -- snapshot / restore and save / load -----------------------------------------------------------


def test_snapshot_restore_exact_after_the_ring_wrapped(ort_world):
    s = ort_world.new_session(seed=7)
    s.step(_actions(3 * ort_world.preset.window))  # past capacity: the ring has wrapped
    snap = s.snapshot()
    idx = s.frame_index
    first = np.stack([s.step(a) for a in _actions(10)])
    s.restore(snap)
    assert s.frame_index == idx
    again = np.stack([s.step(a) for a in _actions(10)])
    assert np.array_equal(first, again)
    s.restore(snap)  # the snapshot itself was not changed by stepping after a restore
    assert np.array_equal(np.stack([s.step(a) for a in _actions(10)]), first)
    with pytest.raises(TypeError, match="SessionState"):
        s.restore({"frame_index": 0})


def test_save_load_exact_after_the_ring_wrapped(ort_world, torch_world, world_copy, tmp_path):
    s = ort_world.new_session(seed=11)
    s.step(_actions(3 * ort_world.preset.window + 1))
    path = tmp_path / "game.npz"
    s.save(path)
    cont = np.stack([s.step(a) for a in _actions(10)])
    loaded = ort_world.load_session(path)
    assert loaded.frame_index == s.frame_index - 10 and loaded.seed == 11
    assert np.array_equal(np.stack([loaded.step(a) for a in _actions(10)]), cont)
    # the same file on the other backend continues the same game (up to float rounding)
    other = torch_world.load_session(path)
    diff = np.abs(np.stack([other.step(a) for a in _actions(10)]).astype(int) - cont.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.999
    # a session saved from other weights is refused
    make_tiny_world(world_copy, seed=1)
    with pytest.raises(ValueError, match="saved from world"):
        World.load(world_copy).load_session(path)


def test_load_session_errors(ort_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ort_world.load_session(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="bad.npz"):
        ort_world.load_session(bad)
    # a valid npz without a session in it
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz"):
        ort_world.load_session(tmp_path / "other.npz")
    # a session file with an array missing
    s = ort_world.new_session(seed=0)
    s.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "latent"}
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match="cut.npz.*latent"):
        ort_world.load_session(tmp_path / "cut.npz")


# -- backend parity ---------------------------------------------------------------------------------


def test_backend_parity_over_32_frames(world_dir):
    """torch vs onnxruntime: per-call max differences of x0/k/v on the same inputs, and free rollouts."""
    tw = World.load(world_dir, backend="torch", preset="quality", **T1)
    ow = World.load(world_dir, backend="onnxruntime", preset="quality")
    rec = _Recorder(tw.backend)
    tw.backend.dit = rec
    try:
        frames_t = _rollout(tw, 32, seed=5)
    finally:
        del tw.backend.dit  # back to the class method
    frames_o = _rollout(ow, 32, seed=5)
    # the context's commit, then per frame the denoising passes (the first also commits the last frame: fused) 
    assert tw.fuses_commit and len(rec.calls) == 1 + 32 * tw.preset.steps
    worst = {"x0": 0.0, "k": 0.0, "v": 0.0}
    for args, outs in rec.calls:
        for name, a, b in zip(worst, outs, ow.backend.dit(*args)):
            worst[name] = max(worst[name], float(np.abs(a - b).max()))
    lat = np.stack([args[0][0, 0] for args, _ in rec.calls[1:]])  # latents seen along the rollout
    dec = np.abs(tw.backend.decode(lat).astype(int) - ow.backend.decode(lat).astype(int))
    roll = np.abs(frames_t.astype(int) - frames_o.astype(int))
    report = (f"max |torch - onnxruntime|: x0 {worst['x0']:.2e}, k {worst['k']:.2e}, v {worst['v']:.2e}, "
              f"decoded frames {dec.max()} levels; 32-frame rollouts: {100 * (roll == 0).mean():.4f}% pixels equal, max {roll.max()}")
    print(report)
    assert max(worst.values()) < 1e-4, report
    assert dec.max() <= 1 and (dec == 0).mean() >= 0.999, report
    assert (roll == 0).mean() >= 0.999 and roll.max() <= 2, report


# -- the key invariant: cached stepping == one full causal pass without a cache -------------------


@pytest.mark.parametrize("chunk", [1, 2])
def test_cached_stepping_equals_full_causal_forward(world_dir, chunk):
    """Session stepping writes the same K/V as one block-causal pass over all committed frames, and
    predicts the same x0 as the training pass (forward_teacher) on the same noisy inputs."""
    # no eviction in 8 frames; one commit pass per chunk (fuse_commit=False), as test_fused_commit_gives_the_same_frames
    # checks the fused passes against
    world = World.load(world_dir, backend="torch", preset="quality", window=8, chunk=chunk, fuse_commit=False, **T1)
    dit = world.backend.dit_module
    rec = _Recorder(world.backend)
    world.backend.dit = rec
    s = world.new_session(seed=2)
    t0 = s.frame_index + 1  # frames before t0 come from the opening context
    s.step(_actions(8 - t0))
    steps = world.preset.steps
    start, rest = rec.calls[0], rec.calls[1:]
    per_chunk = steps + 1
    assert len(rest) == per_chunk * -(-(8 - t0) // chunk)
    commits = [start] + rest[steps::per_chunk]
    x_ctx = np.concatenate([c[0][0] for c in commits], 1)  # (1,8,C,g,g) the committed (lightly noised) latents
    sig_ctx = np.concatenate([c[0][1] for c in commits], 1)
    acts = np.concatenate([c[0][2] for c in commits], 1)
    T = x_ctx.shape[1]
    assert T == 8
    with torch.inference_mode():
        # 1) keys/values: the ring holds exactly what one block-causal pass over all 8 frames computes
        L, H, dh, N = dit.cfg.n_layers, dit.cfg.n_heads, dit.cfg.head_dim, dit.cfg.tokens_per_frame
        empty = torch.zeros(L, 1, H, 0, dh)
        _, k_full, v_full = dit(torch.from_numpy(x_ctx), torch.from_numpy(sig_ctx), torch.from_numpy(acts), empty, empty,
                                torch.zeros(1, 0), torch.zeros(1, 0), torch.zeros(1, 0, 2))
        cache = s.snapshot().cache
        for slot, f in enumerate(cache.frame[0]):
            sl, fl = slice(slot * N, (slot + 1) * N), slice(f * N, (f + 1) * N)
            np.testing.assert_allclose(cache.k[:, :, :, sl], k_full[:, :, :, fl].numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(cache.v[:, :, :, sl], v_full[:, :, :, fl].numpy(), atol=1e-4, rtol=0)
        # 2) x0 of every denoising step == the teacher pass (target i sees context < i and itself)
        for j in range(steps):
            den = rest[j::per_chunk]
            x_tgt, sig_tgt = x_ctx.copy(), sig_ctx.copy()
            x_tgt[:, t0:] = np.concatenate([c[0][0] for c in den], 1)
            sig_tgt[:, t0:] = np.concatenate([c[0][1] for c in den], 1)
            teacher = dit.forward_teacher(*(torch.from_numpy(a) for a in (x_ctx, sig_ctx, x_tgt, sig_tgt, acts))).numpy()
            cached = np.concatenate([c[1][0] for c in den], 1)  # (1,8-t0,C,g,g)
            # within a chunk, frame i>0 is denoised next to the chunk's *noisy* earlier frames (block-causal),
            # which the teacher never does; the first frame of each chunk must match exactly
            firsts = list(range(0, 8 - t0, chunk))
            np.testing.assert_allclose(cached[:, firsts], teacher[:, [t0 + i for i in firsts]], atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2])
def test_fused_commit_gives_the_same_frames(world_dir, chunk):
    """Committing each chunk in the next chunk's first pass (fuse_commit) is the same computation as its own commit
    pass, with one pass fewer per chunk: the same first prediction (to float rounding), the same frames and cached
    keys/values while the window is not full (to the rounding a random tiny model amplifies over the rollout), and a
    snapshot/restore with frames pending replays exactly."""
    kw = dict(backend="torch", preset="quality", window=12, chunk=chunk, **MODEL_ONLY, **T1)
    fused, plain = World.load(world_dir, **kw), World.load(world_dir, fuse_commit=False, **kw)
    assert fused.fuses_commit and not plain.fuses_commit
    calls, outs = {}, {}
    n = (12 - len(fused.opening_frames) - chunk) // chunk * chunk  # the ring (window - chunk slots) never fills
    assert n >= 2 * chunk
    for name, w in (("fused", fused), ("plain", plain)):
        rec = _Recorder(w.backend)
        w.backend.dit = rec
        try:
            s = w.new_session(seed=3)
            outs[name] = (s.step(_actions(n)), s)
            calls[name] = rec.calls
        finally:
            del w.backend.dit
    F, P = calls["fused"], calls["plain"]
    assert len(P) - len(F) == n // chunk  # one commit pass saved per chunk
    # the first denoising pass: [the context's last chunk, pending; the new chunk] in one call vs two calls
    assert F[1][0][0].shape[1] == 2 * chunk and P[1][0][0].shape[1] == chunk
    np.testing.assert_array_equal(F[1][0][0][:, chunk:], P[1][0][0])  # the same noise: the RNG runs the same
    np.testing.assert_allclose(F[1][1][0][:, chunk:], P[1][1][0], atol=1e-5, rtol=0)
    d = np.abs(outs["fused"][0].astype(int) - outs["plain"][0].astype(int))
    assert d.max() <= 2 and (d == 0).mean() >= 0.95
    sf, sp = outs["fused"][1], outs["plain"][1]
    assert sf._state.pending is not None and sf._state.pending[2] == sf.frame_index - chunk + 1
    cf, cp = sf.snapshot().cache, sp.snapshot().cache
    N = cf.tokens_per_frame
    # the ring holds what the plain session's does, but the pending chunk
    assert set(cf.frame[0][cf.frame[0] >= 0]) == set(cp.frame[0][cp.frame[0] >= 0]) - set(range(sf.frame_index + 1 - chunk, sf.frame_index + 1))
    for slot, f in enumerate(cf.frame[0]):
        if f >= 0:
            other = int(np.flatnonzero(cp.frame[0] == f)[0])
            np.testing.assert_allclose(cf.k[:, :, :, slot * N:(slot + 1) * N], cp.k[:, :, :, other * N:(other + 1) * N], atol=0.05, rtol=0)
    # snapshot with frames pending, step on, restore, step again: the same frames
    snap = sf.snapshot()
    a = sf.step(_actions(2 * chunk))
    sf.restore(snap)
    np.testing.assert_array_equal(sf.step(_actions(2 * chunk)), a)


def test_naive_loop_matches_the_cached_session(world_dir):
    """The bench's naive loop (recompute the window at every step, no cache) gives the cached session's
    frames while the window is not full: the same weights, noise and context."""
    from engine.bench import NaiveStepper

    # the model alone: the naive loop applies none of the game's rules (the life clock draws the energy into every
    # frame) and no fill
    world = World.load(world_dir, backend="torch", preset="quality", window=8, life_clock=False, memory_fill=False, tile_hold=False, **T1)
    n = 8 - len(world.opening_frames)
    cached = _rollout(world, n, seed=4)
    naive = NaiveStepper(world, seed=4)
    frames = np.stack([naive.step(a) for a in _actions(n)])
    d = np.abs(frames.astype(int) - cached.astype(int))
    assert d.max() <= 1 and (d == 0).mean() >= 0.999


# -- the ring buffer past capacity: constant memory, constant time -------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def test_ring_buffer_thousands_of_steps(ort_world):
    s = ort_world.new_session(seed=0)
    acts = _actions(64)
    for i in range(200):  # warm-up: allocator arenas settle
        s.step(acts[i % 64])
    before = s.snapshot().cache
    rss0 = _rss_bytes()
    early = []
    for i in range(200):
        t = time.perf_counter()
        s.step(acts[i % 64])
        early.append(time.perf_counter() - t)
    for i in range(2000):
        s.step(acts[i % 64])
    late = []
    for i in range(200):
        t = time.perf_counter()
        s.step(acts[i % 64])
        late.append(time.perf_counter() - t)
    rss1 = _rss_bytes()
    after = s.snapshot().cache
    assert s.frame_index == len(ort_world.opening_frames) - 1 + 2600
    for name in ("k", "v", "frame"):
        assert getattr(after, name).shape == getattr(before, name).shape
        assert getattr(after, name).nbytes == getattr(before, name).nbytes
    # the ring holds the newest frames but the chunk still pending (fused commits: it enters with the next pass)
    pend = 0 if s._state.pending is None else s._state.pending[1].shape[1]
    assert pend == (ort_world.preset.chunk if ort_world.fuses_commit else 0)
    assert sorted(after.frame[0].tolist()) == list(range(s.frame_index - pend - after.slots + 1, s.frame_index - pend + 1))
    if rss0 is not None:
        assert rss1 - rss0 < 16 << 20, f"process memory grew by {(rss1 - rss0) / 2**20:.1f} MiB over 2400 steps"
    # no slowdown: a session 2600 frames in vs a fresh one, interleaved so machine load hits both alike
    fresh = ort_world.new_session(seed=1)
    fresh.step(acts[:8])
    old_t, new_t = [], []
    for i in range(150):
        for sess, out in ((s, old_t), (fresh, new_t)):
            t = time.perf_counter()
            sess.step(acts[i % 64])
            out.append(time.perf_counter() - t)
    e, l_ = statistics.median(early), statistics.median(late)
    o, n = statistics.median(old_t), statistics.median(new_t)
    print(f"median ms/frame: early {1e3 * e:.2f}, late {1e3 * l_:.2f}; interleaved old {1e3 * o:.2f} vs fresh {1e3 * n:.2f}")
    assert o < 1.5 * n + 1e-3, f"a long-running session is slower per frame: {1e3 * o:.2f} vs {1e3 * n:.2f} ms"
    assert l_ < 3 * e + 2e-3, f"late frames slower than early ones: {1e3 * l_:.2f} vs {1e3 * e:.2f} ms"


# -- errors -------------------------------------------------------------------------------------------


def test_unknown_action_lists_the_valid_ones(ort_world):
    s = ort_world.new_session(seed=0)
    for bad in ("jump", ["noop", "jump"], 99, -1, True, None, 1.5):
        with pytest.raises(ValueError) as e:
            s.step(bad)
        assert "move_left" in str(e.value) and "place_table" in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="at least one"):
        s.step([])
    with pytest.raises(ValueError, match="valid actions"):
        ort_world.new_session(context=np.zeros((2, 72, 72, 3), np.uint8), actions=["noop", "fly"])


def test_bad_context_says_what_was_expected(ort_world):
    ok = np.zeros((3, 72, 72, 3), np.uint8)
    cases = [
        (ok.astype(np.float32), "uint8"),
        (ok.tolist(), "numpy uint8 array"),
        (np.zeros((3, 64, 64, 3), np.uint8), r"\(T,72,72,3\)"),
        (np.zeros((3, 72, 72), np.uint8), r"\(T,72,72,3\)"),
        (np.zeros((0, 72, 72, 3), np.uint8), "T >= 1"),
    ]
    for ctx, msg in cases:
        with pytest.raises((TypeError, ValueError), match=msg):
            ort_world.new_session(context=ctx)
    with pytest.raises(ValueError, match="3 context frames need 3 actions"):
        ort_world.new_session(context=ok, actions=["noop"])
    with pytest.raises(ValueError, match="without context"):
        ort_world.new_session(actions=["noop"])


def test_missing_or_corrupt_weights(world_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        World.load(tmp_path / "nowhere")
    (world_copy / "dit.safetensors").rename(world_copy / "dit.bak")
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(FileNotFoundError, match="dit.safetensors"):
            World.load(world_copy, backend=backend, **T1)
    (world_copy / "dit.safetensors").write_bytes(b"\x00garbage" * 100)
    for backend in ("onnxruntime", "torch"):
        with pytest.raises(CheckpointError, match="dit.safetensors"):
            World.load(world_copy, backend=backend, **T1)
    good = (world_copy / "dit.bak").read_bytes()
    (world_copy / "dit.safetensors").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="dit.safetensors"):
        World.load(world_copy)
    # weights that parse but do not fit their config: a clear error, and no half-built ONNX cache entry
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(world_copy / "dit.bak"), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(world_copy / "dit.bak"))
    tensors["pos"] = tensors["pos"][:, :8]
    save_file(tensors, str(world_copy / "dit.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="pos"):
        World.load(world_copy)
    assert all((d / "done.json").is_file() for d in (world_copy / ".cache").iterdir())
    (world_copy / "dit.safetensors").write_bytes(good)
    (world_copy / "world.json").write_text("{not json")
    with pytest.raises(ValueError, match="world.json"):
        World.load(world_copy)


def test_bad_load_options(world_dir):
    with pytest.raises(ValueError, match="onnxruntime"):
        World.load(world_dir, backend="cuda")
    with pytest.raises(ValueError, match="fast"):
        World.load(world_dir, preset="turbo")
    with pytest.raises(ValueError, match="steps"):
        World.load(world_dir, stpes=2)
    with pytest.raises(ValueError, match=">= 1"):
        World.load(world_dir, steps=0)


def test_preset_options_from_the_command_line(world_dir, capsys):
    """`--option KEY=VALUE` (eval, bench): typed like the preset's fields; a bad key or value is a clear error."""
    from engine.world import parse_preset_options

    opts = parse_preset_options(["block_rule=false", "day_clock=OFF", "window=4", "ctx_noise=0.05", "precision=fp32"])
    assert opts == {"block_rule": False, "day_clock": False, "window": 4, "ctx_noise": 0.05, "precision": "fp32"}
    w = World.load(world_dir, backend="onnxruntime", threads=1, **opts)
    assert (w.preset.block_rule, w.preset.day_clock, w.preset.window) == (False, False, 4)
    for bad, says in (("blok_rule=false", "KEY one of"), ("window", "KEY=VALUE"), ("window=four", "not a valid int"),
                      ("day_clock=maybe", "not a valid bool")):
        with pytest.raises(ValueError, match=says):
            parse_preset_options([bad])
    from engine.bench import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--world", str(world_dir), "--option", "window=x"])) == 2
    assert "window" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "swapped"])
def test_corrupt_onnx_cache_is_rebuilt(world_copy, damage):
    world = World.load(world_copy)
    expected = _rollout(world, 4, seed=0)
    graph_dir = world.backend.graph_dir
    dit_onnx = graph_dir / "dit.onnx"
    data = dit_onnx.read_bytes()
    if damage == "garbage":
        dit_onnx.write_bytes(b"\x08\x07garbage" * 1000)
    elif damage == "truncated":
        dit_onnx.write_bytes(data[: len(data) // 2])
    elif damage == "missing":
        dit_onnx.unlink()
    else:  # a valid graph, but the wrong one
        shutil.copy(graph_dir / "decoder.onnx", dit_onnx)
    again = World.load(world_copy)
    assert np.array_equal(_rollout(again, 4, seed=0), expected)
    assert (again.backend.graph_dir / "dit.onnx").read_bytes() != b"" and (again.backend.graph_dir / "done.json").is_file()


def test_fixed_shape_graph_serves_the_preset_and_matches_the_dynamic_one(world_copy):
    """onnxruntime steps a session through a DiT graph fixed to the preset's shapes (B=1, the pending chunk and the
    new one against the ring: fused commits), exported into the cache on load; it agrees with the dynamic-shape
    graph, and other shapes use that one."""
    world = World.load(world_copy, backend="onnxruntime", threads=1)
    be, p = world.backend, world.preset
    assert world.fuses_commit and p.ring_slots == p.window - p.chunk
    key = (2 * p.chunk, p.ring_slots)
    assert key in be.static and (be.graph_dir / static_dit_name(*key, world.precision)).is_file()
    rec = _Recorder(be)
    be.dit = rec
    fixed = be.static[key]
    used = []
    be.static[key] = type("Counted", (), {"run": lambda self, *a: used.append(1) or fixed.run(*a)})()
    s = world.new_session(seed=0)
    for a in _actions(p.window + 2):  # past the ring's capacity: every slot filled
        s.step(a)
    steady = [c for c in rec.calls if c[0][0].shape[:2] == (1, key[0]) and c[0][5].shape[1] == key[1]]
    assert len(used) == len(steady) > 0  # each per-frame call of that shape ran the fixed graph, the context commit did not
    names = [i.name for i in be.sessions["dit"].get_inputs()]
    for args, out in steady[-3:]:
        dyn = be.sessions["dit"].run(None, dict(zip(names, args)))
        for o, d in zip(out, dyn):
            np.testing.assert_allclose(o, d, atol=1e-4)
    # a batch of two sessions (B=2) goes through the dynamic graph
    args = [np.concatenate([x, x], 1 if i in (3, 4) else 0) for i, x in enumerate(steady[-1][0])]
    assert be.dit(*args)[0].shape[0] == 2


@pytest.mark.parametrize("damage", ["garbage", "swapped"])
def test_corrupt_fixed_shape_graph_is_rebuilt(world_copy, damage):
    world = World.load(world_copy)
    expected = _rollout(world, 4, seed=0)
    p = world.preset
    key = (2 * p.chunk, p.ring_slots)  # the per-frame pass: fused commit + denoise
    static = world.backend.graph_dir / static_dit_name(*key, world.precision)
    if damage == "garbage":
        static.write_bytes(b"\x08\x07garbage" * 1000)
    else:  # a valid graph with the wrong inputs: onnxruntime's check refuses it and the cache is rebuilt
        shutil.copy(world.backend.graph_dir / "decoder.onnx", static)
    again = World.load(world_copy)
    assert key in again.backend.static
    assert np.array_equal(_rollout(again, 4, seed=0), expected)


def _dit_feed(world: World, key: tuple[int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one DiT call of shape key = (k chunk frames, P cache slots), drawn like a session's."""
    rng = np.random.default_rng(seed)
    d, (k, P) = world.dit_cfg, key
    L, heads, hd, n = d.n_layers, d.n_heads, d.head_dim, d.tokens_per_frame
    return {"x": rng.standard_normal((1, k, d.latent_channels, d.grid, d.grid), np.float32),
            "sigma": rng.uniform(0, 1, (1, k)).astype(np.float32), "actions": rng.integers(0, len(ACTION_NAMES), (1, k)),
            "past_k": rng.standard_normal((L, 1, heads, P * n, hd), np.float32),
            "past_v": rng.standard_normal((L, 1, heads, P * n, hd), np.float32),
            "past_t": -np.arange(P, 0, -1, dtype=np.float32)[None], "past_valid": np.ones((1, P), np.float32),
            "past_shift": np.zeros((1, P, 2), np.float32)}


def test_int8_precision_runs_quantized_graphs_close_to_fp32(world_copy):
    """precision="int8": the onnxruntime DiT graphs (dynamic and fixed-shape) are int8-quantized copies built into
    the cache on load; the same call agrees with fp32 to a few percent of its range without being the same graph,
    and a session is deterministic."""
    import onnx

    fp32 = World.load(world_copy, backend="onnxruntime", threads=1, precision="fp32")
    int8 = World.load(world_copy, backend="onnxruntime", threads=1)  # `fast` runs int8 by default
    assert (fp32.precision, int8.precision, World.load(world_copy, preset="quality").precision) == ("fp32", "int8", "fp32")
    p = int8.preset
    key = (2 * p.chunk, p.ring_slots)
    gd = int8.backend.graph_dir
    assert key in int8.backend.static and (gd / f"dit-b1-k{key[0]}-p{key[1]}-int8.onnx").is_file() and (gd / "dit-int8.onnx").is_file()
    ops = {n.op_type for n in onnx.load(str(gd / f"dit-b1-k{key[0]}-p{key[1]}-int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops  # really int8 matmuls
    feed = _dit_feed(int8, key)
    a, b = fp32.backend.static[key].run(None, feed), int8.backend.static[key].run(None, feed)
    for name, x, y in zip(("x0", "k", "v"), a, b):
        err = float(np.abs(x - y).max())
        assert 0 < err <= 0.05 * float(np.abs(x).max()), (name, err)
    assert np.array_equal(_rollout(int8, 6, seed=3), _rollout(int8, 6, seed=3))
    # the naive bench's shape and other shapes go through the int8 graphs too
    int8.prepare_shapes([(p.window + 1, 0)])
    assert (p.window + 1, 0) in int8.backend.static and (gd / f"dit-b1-k{p.window + 1}-p0-int8.onnx").is_file()


@pytest.mark.parametrize("B,k,P", [(1, 2, 3), (2, 1, 4), (1, 3, 0)])
def test_onnx_dit_reads_rotated_keys_like_torch(world_dir, B, k, P):
    """The onnxruntime DiT graphs rotate the cached keys with one fused RotaryEmbedding node per layer
    (engine.graphs.fused_past_rotation): the same outputs as torch for batches, an empty cache, memory-like
    shifted slots and uneven times, in the dynamic and the fixed-shape graphs."""
    import onnx

    from worldsim.train import load_dit

    world = World.load(world_dir, backend="onnxruntime", threads=1, precision="fp32")
    dit = load_dit(Path(world_dir) / "dit.safetensors")
    gd = world.backend.graph_dir
    assert sum(n.op_type == "RotaryEmbedding" for n in onnx.load(str(gd / "dit.onnx")).graph.node) == dit.cfg.n_layers
    feed = _dit_feed(world, (k, P), seed=B)
    if B > 1:
        feed = {n: np.concatenate([v] * B, 1 if n in ("past_k", "past_v") else 0) for n, v in feed.items()}
    rng = np.random.default_rng(7)
    feed["past_t"] = (feed["past_t"] - rng.integers(0, 3, (B, 1))).astype(np.float32)  # rows at different times
    feed["past_shift"] = rng.integers(-2, 3, (B, P, 2)).astype(np.float32)  # as memory slots read from another pose
    with torch.no_grad():
        ref = dit(*[torch.from_numpy(np.asarray(feed[n])) for n in ("x", "sigma", "actions", "past_k", "past_v", "past_t", "past_valid", "past_shift")])
    graphs = [world.backend.sessions["dit"]]
    if B == 1:
        world.prepare_shapes([(k, P)])
        graphs.append(world.backend.static[(k, P)])
    for g in graphs:
        out = g.run(None, {i.name: feed[i.name] for i in g.get_inputs()})
        for o, r in zip(out, ref):
            np.testing.assert_allclose(o, r.numpy(), atol=2e-5)


def test_int8_precision_errors_and_cache_repair(world_copy):
    """An unknown precision is a clear error; a corrupt int8 graph is quantized again (it is only a cache); the
    torch backend runs fp32 and says so."""
    with pytest.raises(ValueError, match="precision 'fp16' is not one of fp32, int8"):
        World.load(world_copy, precision="fp16")
    world = World.load(world_copy, precision="int8")
    expected = _rollout(world, 4, seed=0)
    p = world.preset
    bad = world.backend.graph_dir / f"dit-b1-k{2 * p.chunk}-p{p.ring_slots}-int8.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 1000)
    (world.backend.graph_dir / "dit-int8.onnx").unlink()
    again = World.load(world_copy, precision="int8")
    assert np.array_equal(_rollout(again, 4, seed=0), expected)
    assert World.load(world_copy, backend="torch", precision="int8").precision == "fp32"


def test_onnx_cache_key_follows_the_model_code(world_copy, monkeypatch):
    """Graphs exported from other model code are never reused: the key hashes the graph modules' source."""
    import engine.backends

    first = World.load(world_copy).backend.graph_dir
    monkeypatch.setattr(engine.backends, "_graph_source_digest", lambda: "edited-model-code")
    second = World.load(world_copy).backend.graph_dir
    assert second != first and (second / "done.json").is_file()


def test_tensorrt_without_a_gpu_is_unavailable_with_the_reason(world_dir):
    from engine.backends import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt is available here")
    with pytest.raises(BackendUnavailable, match="tensorrt") as e:
        World.load(world_dir, backend="tensorrt")
    assert reason in str(e.value)


# -- worldsim bench -----------------------------------------------------------------------------------


def test_flop_count_includes_attention(world_dir):
    """The bench counts FLOPs with torch's counter plus a formula for CPU attention: the count grows by
    at least the attention's QK^T + AV work for every cached frame, and adds up per frame."""
    from engine.bench import decoder_flops, dit_flops, frame_gflops
    from worldsim.dit import dit_preset

    for name in ("tiny", "small"):
        cfg = dit_preset(name)
        f0, f3, f6 = (dit_flops(cfg, 1, P) for P in (0, 3, 6))
        N, d, L = cfg.tokens_per_frame, cfg.d_model, cfg.n_layers
        per_frame = (f6 - f3) / 3
        assert per_frame == pytest.approx((f3 - f0) / 3)  # linear in the cached frames
        assert per_frame >= 4 * L * N * N * d  # QK^T and AV against N more keys in every layer
        assert dit_flops(cfg, 2, 0) > 2 * f0  # a 2-frame chunk: twice the tokens, and they attend to each other
    plain = World.load(world_dir, preset="quality", fuse_commit=False)
    g = frame_gflops(plain)
    p = plain.preset
    assert g["denoise"] == pytest.approx(p.steps * dit_flops(plain.dit_cfg, 1, p.window) / 1e9)
    assert g["commit"] == pytest.approx(dit_flops(plain.dit_cfg, 1, p.window) / 1e9)
    assert g["decode"] == pytest.approx(decoder_flops(plain.ae_cfg) / 1e9) and g["decode"] > 0
    assert g["total"] == pytest.approx(g["denoise"] + g["commit"] + g["decode"])
    # fused commits: the first pass carries the commit (a 2-frame chunk against window - 1 slots), counted as denoise
    world = World.load(world_dir, preset="quality")
    gf = frame_gflops(world)
    R = world.preset.ring_slots
    assert world.fuses_commit and gf["commit"] == 0
    assert gf["denoise"] == pytest.approx((dit_flops(world.dit_cfg, 2, R) + (p.steps - 1) * dit_flops(world.dit_cfg, 1, R)) / 1e9)
    naive = frame_gflops(world, naive=True)
    assert naive["denoise"] == pytest.approx(p.steps * dit_flops(world.dit_cfg, p.window + 1, 0) / 1e9) and naive["commit"] == 0


def test_bench_tiny_smoke(tmp_path, capsys):
    from worldsim.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "--tiny", "--frames", "10", "--warmup", "8", "--repeats", "2", "--naive-frames", "4", "--threads", "1",
               "--window", "3", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["backend"], r["preset"]) for r in rows] == [("onnxruntime", "fast"), ("onnxruntime", "quality"),
                                                           ("torch", "fast"), ("torch", "quality")]
    for r in rows:
        c = r["cached"]
        assert c["fps"] > 0 and 0 < c["p50_ms"] <= c["p99_ms"] and c["frames"] == 10 and len(c["fps_repeats"]) == 2
        assert c["denoise_ms"] > 0 and c["commit_ms"] > 0 and c["decode_ms"] > 0
        assert r["gflop_per_frame"] > 0 and r["gflops"] > 0 and r["peak_gflops"] > 0
        assert r["naive"]["fps"] > 0 and r["speedup_vs_naive"] == pytest.approx(c["fps"] / r["naive"]["fps"])
        assert r["naive_gflop_per_frame"] > r["gflop_per_frame"]  # recomputing the window costs more
        assert f"{c['fps']:7.1f}" in printed
        assert r["preset_config"]["window"] == 3 and f"{r['preset']}/w3" in printed  # the window override is used and shown
    q = next(r for r in rows if r["preset"] == "quality")
    f = next(r for r in rows if r["preset"] == "fast")
    assert q["gflop_per_frame"] > f["gflop_per_frame"]  # more denoising steps
    assert report["matmul"]["1"]["peak_gflops"] > 0


def test_bench_without_a_shipped_world_says_what_to_do(tmp_path, monkeypatch, capsys):
    import engine.world
    from worldsim.cli import main

    monkeypatch.setattr(engine.world, "default_world_dir", lambda: tmp_path / "no-world")
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "--world" in err and "--tiny" in err
    assert main(["bench", "--tiny", "--presets", "turbo"]) == 2
    assert "turbo" in capsys.readouterr().err
