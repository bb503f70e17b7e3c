"""Crafter's blocked-move rule applied by the engine (engine.rules) and through a session (preset.block_rule)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import World
from engine.rules import enforce_blocked_move
from engine.testing import exact_codec, make_tiny_world
from worldsim.memory import PLAYER_COL, PLAYER_ROW, VIEW_COLS, VIEW_ROWS, move_delta, target_walkable


@pytest.fixture(scope="module")
def episode() -> dict[str, np.ndarray]:
    """A real recorded explorer episode (held-out seed) with blocked and successful moves."""
    from worldsim.data.record import record_episode

    return record_episode(1_000_007, 240, size=72)  # steps 0-239: day, dusk and the start of the night


def _moved_view(frame: np.ndarray, d: tuple[int, int]) -> np.ndarray:
    """``frame`` with its world view moved as if the player stepped by d = (dx, dy) (edge tiles repeated)."""
    t = frame.shape[0] // 9
    tiles = frame[:VIEW_ROWS * t].reshape(VIEW_ROWS, t, VIEW_COLS, t, 3)
    r = np.clip(np.arange(VIEW_ROWS) + d[1], 0, VIEW_ROWS - 1)
    c = np.clip(np.arange(VIEW_COLS) + d[0], 0, VIEW_COLS - 1)
    out = frame.copy()
    out[:VIEW_ROWS * t] = tiles[r][:, :, c].reshape(VIEW_ROWS * t, VIEW_COLS * t, 3)
    return out


def test_rule_reads_real_blocked_and_free_moves(episode):
    """On real frames the rule says blocked exactly where the game blocked the move, and free where it moved."""
    f, a, pos = episode["frames"], episode["actions"], episode["pos"]
    seen = {True: 0, False: 0}
    for t in range(len(a) - 1):
        if move_delta(int(a[t])) == (0, 0):
            continue
        moved = bool((pos[t + 1] != pos[t]).any())
        assert target_walkable(f[t], int(a[t]), f[t + 1]) is moved, t
        seen[moved] += 1
    assert seen[True] > 50 and seen[False] > 5  # the episode really has both


def test_a_model_that_walks_through_a_blocked_move_is_corrected(episode):
    f, a, pos = episode["frames"], episode["actions"], episode["pos"]
    rng = np.random.default_rng(0)
    fixed = kept = 0
    for t in range(len(a) - 1):
        d = move_delta(int(a[t]))
        if d == (0, 0):
            continue
        prev_z, z = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
        if (pos[t + 1] == pos[t]).all():  # blocked in the game; the model moved the view anyway
            out, did = enforce_blocked_move(f[t], prev_z, z, _moved_view(f[t], d), int(a[t]))
            assert did, t
            expect = prev_z.copy()
            expect[:, PLAYER_ROW, PLAYER_COL] = z[:, PLAYER_ROW, PLAYER_COL]  # the player turned, nothing else changed
            np.testing.assert_array_equal(out, expect)
            # a model that kept the view still (the real next frame) is left alone
            out, did = enforce_blocked_move(f[t], prev_z, z, f[t + 1], int(a[t]))
            assert not did and out is z
            fixed += 1
        else:  # a free move is never forced, whatever the model drew
            for frame in (f[t + 1], f[t]):
                out, did = enforce_blocked_move(f[t], prev_z, z, frame, int(a[t]))
                assert not did and out is z
            kept += 1
    assert fixed > 5 and kept > 50
    # a non-move is never touched
    out, did = enforce_blocked_move(f[0], prev_z, z, _moved_view(f[0], (1, 0)), 0)
    assert not did and out is z


def test_session_applies_the_rule_and_it_can_be_turned_off(tmp_path, episode):
    """A session in front of an obstacle whose model walks through it (its output is forced to the moved view):
    with the rule the new frame is the old view with the model's player tile; with block_rule=false it is
    what the model drew."""
    from worldsim.actions import ACTION_NAMES

    f, a, pos = episode["frames"], episode["actions"], episode["pos"]
    t = next(t for t in range(16, len(a) - 1) if move_delta(int(a[t])) != (0, 0) and (pos[t + 1] == pos[t]).all())
    path = make_tiny_world(tmp_path / "tiny")
    out = {}
    for rule in (True, False):
        w = World.load(path, backend="onnxruntime", threads=1, block_rule=rule, day_clock=False, tile_hold=False)
        assert w.preset.block_rule is rule
        moved = w.backend.encode(_moved_view(f[t], move_delta(int(a[t])))[None])[None]  # (1,1,C,g,g)
        real_dit = w.backend.dit
        w.backend.dit = lambda x, *rest: (np.repeat(moved, x.shape[1], 1), *real_dit(x, *rest)[1:])  # a model that walks through (every frame of the call)
        s = w.new_session(f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None], seed=3)
        prev_z = s._state.latent.copy()
        frame = s.step(ACTION_NAMES[int(a[t])])
        out[rule] = (frame, s._state.latent.copy(), s.timings["rule_fixes"], prev_z, moved[0, 0], w)
    frame, z, fixes, prev_z, moved_z, w = out[True]
    assert fixes == 1
    expect = prev_z.copy()
    expect[:, PLAYER_ROW, PLAYER_COL] = moved_z[:, PLAYER_ROW, PLAYER_COL]
    np.testing.assert_array_equal(z, expect)
    np.testing.assert_array_equal(frame, w.backend.decode(expect[None])[0])
    frame, z, fixes, _, moved_z, w = out[False]
    assert fixes == 0
    np.testing.assert_array_equal(z, moved_z)
    np.testing.assert_array_equal(frame, w.backend.decode(moved_z[None])[0])


def test_session_batch_applies_the_rule_like_a_session(tmp_path, episode):
    """Several sessions stepped in one call get the same correction as each alone."""
    from engine.batch import SessionBatch
    from worldsim.actions import ACTION_NAMES

    f, a, pos = episode["frames"], episode["actions"], episode["pos"]
    t = next(t for t in range(16, len(a) - 1) if move_delta(int(a[t])) != (0, 0) and (pos[t + 1] == pos[t]).all())
    w = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1, day_clock=False, tile_hold=False)
    moved = w.backend.encode(_moved_view(f[t], move_delta(int(a[t])))[None])[None]  # (1,1,C,g,g)
    real_dit = w.backend.dit
    w.backend.dit = lambda x, *rest: (np.repeat(np.repeat(moved, len(x), 0), x.shape[1], 1), *real_dit(x, *rest)[1:])  # walks through, every session and frame
    ctx, acts = f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None]
    sessions = [w.new_session(ctx, acts, seed=i) for i in range(2)]
    prev = [s._state.latent.copy() for s in sessions]
    frames = SessionBatch(sessions).step([ACTION_NAMES[int(a[t])]] * 2)
    for s, p, fr in zip(sessions, prev, frames):
        expect = p.copy()
        expect[:, PLAYER_ROW, PLAYER_COL] = moved[0, 0][:, PLAYER_ROW, PLAYER_COL]
        np.testing.assert_array_equal(s._state.latent, expect)
        np.testing.assert_array_equal(fr, w.backend.decode(expect[None])[0])


# ---------------------------------------------------------------------------------------------------
# the day clock


def _render_at(env, daylight: float) -> np.ndarray:
    env._env._world.daylight = daylight
    return env._env.render()


def test_relight_matches_the_game_s_own_lighting():
    """Crafter lights the same world at another daylight exactly as relight() says (up to rounding by day;
    at night the game's random noise enters only through its mean)."""
    from engine.rules import relight
    from worldsim.crafter_env import CrafterEnv

    env = CrafterEnv(seed=1_000_003, size=72)
    env.reset(seed=1_000_003)
    for d1, d2 in ((1.0, 0.6), (0.6, 1.0), (0.8, 0.5), (0.55, 0.95)):
        f1, f2 = _render_at(env, d1), _render_at(env, d2)
        err = np.abs(relight(f1, d1, d2).astype(int) - f2.astype(int))
        assert err.max() <= 1, (d1, d2)
        assert np.abs(f1.astype(int) - f2.astype(int))[:56].mean() > 10  # the light really changed
    for d1, d2 in ((1.0, 0.3), (0.3, 0.9)):
        f1, f2 = _render_at(env, d1), _render_at(env, d2)
        err = np.abs(relight(f1, d1, d2).astype(int) - f2.astype(int))[:56].mean()
        assert err < 0.15 * np.abs(f1.astype(int) - f2.astype(int))[:56].mean(), (d1, d2)
    f = _render_at(env, 0.7)
    assert np.array_equal(relight(f, 0.7, 0.2)[56:], f[56:])  # the inventory is not lit


def test_fit_clock_reads_the_time_of_day_from_a_few_frames(episode):
    """From 8 consecutive real frames (their daylight read off the player tile) the step count mod 300."""
    from engine.rules import fit_clock
    from worldsim.memory import frame_lighting

    d = np.array([np.nan if (lit := frame_lighting(f)) is None or lit[1] else lit[0] for f in episode["frames"]])
    errs = []
    for t in range(7, len(d), 5):
        s = fit_clock(d[t - 7:t + 1])
        diff = (s - int(episode["step"][t])) % 300
        errs.append(min(diff, 300 - diff))
    assert np.median(errs) <= 2 and np.percentile(errs, 90) <= 8 and max(errs) <= 40, errs
    assert fit_clock(np.full(4, np.nan)) is None


def test_session_keeps_the_game_s_clock(tmp_path, episode):
    """A model that draws every frame at night while the clock says day: the session relights it (its
    frames read back at the clock's daylight), not with day_clock=false; the clock survives save/load."""
    from engine.rules import relight
    from worldsim.actions import ACTION_NAMES
    from worldsim.eval.tiles import daylight_at
    from worldsim.memory import frame_lighting

    f, a = episode["frames"], episode["actions"]
    t = 20  # a daytime context
    path = make_tiny_world(tmp_path / "tiny")
    got = {}
    for clock in (True, False):
        w = World.load(path, backend="onnxruntime", threads=1, block_rule=False, day_clock=clock)
        exact_codec(w.backend)  # the random tiny autoencoder would scramble the light
        dark = w.backend.encode(relight(f[t], frame_lighting(f[t])[0], 0.2)[None])[None]  # the context frame, at night
        real_dit = w.backend.dit
        w.backend.dit = lambda x, *rest: (np.repeat(dark, x.shape[1], 1), *real_dit(x, *rest)[1:])  # every frame of the call
        s = w.new_session(f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None], seed=0)
        frames = [s.step(ACTION_NAMES[int(x)]) for x in a[t:t + 3]]
        got[clock] = (frames, s)
    frames, s = got[True]
    offset = s._state.extra["day_offset"]
    assert abs((s.frame_index + offset - int(episode["step"][t + 3]) + 150) % 300 - 150) <= 8
    for i, fr in enumerate(frames):
        want = float(daylight_at(8 + i + offset))  # the context's last frame has index 7
        assert abs(frame_lighting(fr)[0] - want) <= 0.05
    assert s.timings["relit"] == 1
    assert all(frame_lighting(fr)[0] < 0.3 for fr in got[False][0])  # without the clock the night stays
    s.save(tmp_path / "s.npz")
    assert s.world.load_session(tmp_path / "s.npz")._state.extra["day_offset"] == offset


def _tile_means(frame: np.ndarray) -> np.ndarray:
    """A stand-in latent (3,9,9): each tile's mean colour (one token per tile, as the autoencoder's)."""
    t = frame.shape[0] // 9
    return frame[:9 * t, :9 * t].reshape(9, t, 9, t, 3).mean((1, 3)).transpose(2, 0, 1).astype(np.float32)


def test_warm_start_moves_the_previous_view_as_the_game_does(episode):
    """On real frames the start of a free move is the next frame's view (where the game shows no change), a
    blocked move or another action starts from the view as it was, sleep starts from noise."""
    from worldsim.actions import ACTION_NAMES, action_index

    f, a, pos = episode["frames"], episode["actions"], episode["pos"]
    from engine.rules import warm_start
    from worldsim.memory import frame_lighting

    hits = total = blocked = 0
    for t in range(len(a) - 1):
        lit = frame_lighting(f[t])
        if lit is None or lit[1]:
            continue
        z, nz = _tile_means(f[t]), _tile_means(f[t + 1])
        start = warm_start(z, f[t], int(a[t]))
        d = move_delta(int(a[t]))
        if d == (0, 0) or (pos[t + 1] == pos[t]).all():
            np.testing.assert_array_equal(start, z)  # nothing moved: the view as it was
            blocked += d != (0, 0)
            continue
        # a free move: the view shifted; compare the tiles both frames show (not the uncovered edge, not the player)
        dx, dy = d
        r0, r1, c0, c1 = max(0, -dy), VIEW_ROWS - max(0, dy), max(0, -dx), VIEW_COLS - max(0, dx)
        same = np.abs(start - nz).max(0)[r0:r1, c0:c1] < 8  # creatures that moved may differ
        same[PLAYER_ROW - r0, PLAYER_COL - c0] = True
        hits += int(same.sum())
        total += same.size
        np.testing.assert_array_equal(start[:, VIEW_ROWS:], z[:, VIEW_ROWS:])  # the inventory does not move
    assert total > 1000 and hits / total > 0.97 and blocked > 5
    assert warm_start(_tile_means(f[0]), f[0], action_index("sleep")) is None
    assert ACTION_NAMES[action_index("sleep")] == "sleep"


def test_session_warm_start_denoises_from_the_moved_previous_frame(tmp_path, episode):
    """preset.warm: the first denoising call sees the start level and the previous latent mixed with the noise;
    a batch of sessions does exactly what the sessions do alone; the level is checked."""
    from engine.batch import SessionBatch

    f, a = episode["frames"], episode["actions"]
    path = make_tiny_world(tmp_path / "tiny")
    # float32: the batch below must equal the sessions alone bit for bit (int8 quantizes activations per batch)
    w = World.load(path, backend="onnxruntime", threads=1, day_clock=False, life_clock=False, warm=0.6, precision="fp32")
    seen = []
    real_dit = w.backend.dit
    w.backend.dit = lambda x, sigma, *rest: (seen.append((x.copy(), sigma.copy())), real_dit(x, sigma, *rest))[1]
    ctx, acts = f[8:16], [int(x) for x in a[8:15]] + [None]
    s = w.new_session(ctx, acts, seed=5)
    prev = s._state.latent.copy()
    seen.clear()  # the context's commits
    s.step("noop")
    x, sigma = seen[0]  # the new frame is the call's last (a fused pass carries the pending frame first)
    assert sigma[0, -1] == pytest.approx(0.6)
    # the start is 0.6 * noise + 0.4 * the previous latent: removing the latter leaves unit-variance noise
    assert np.std(x[0, -1] - 0.4 * prev) / 0.6 == pytest.approx(1.0, abs=0.15)
    seen.clear()
    s.step("sleep")  # pure noise
    assert seen[0][1][0, -1] == pytest.approx(1.0)
    # batch == sessions, with one warm-starting session next to one that sleeps (pure noise)
    w.backend.dit = real_dit
    solo = [w.new_session(ctx, acts, seed=i) for i in range(2)]
    grouped = [w.new_session(ctx, acts, seed=i) for i in range(2)]
    batch = SessionBatch(grouped)
    for step in (["noop", "sleep"], ["move_left", "noop"], ["do", "move_right"]):
        got = batch.step(step)
        for s_, g, act in zip(solo, got, step):
            np.testing.assert_array_equal(s_.step(act), g)
    with pytest.raises(ValueError, match="warm"):
        World.load(path, backend="onnxruntime", threads=1, warm=1.0)
