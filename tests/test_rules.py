"""Crafter's blocked-move rule applied by the engine (engine.rules) and through a session (preset.block_rule)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import World
from engine.rules import enforce_blocked_move
from engine.testing import make_tiny_world
from worldsim.memory import PLAYER_COL, PLAYER_ROW, VIEW_COLS, VIEW_ROWS, move_delta, target_walkable


@pytest.fixture(scope="module")
def episode() -> dict[str, np.ndarray]:
    """A real recorded explorer episode (held-out seed) with blocked and successful moves."""
    from worldsim.data.record import record_episode

    return record_episode(1_000_007, 240, size=72)


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
        w = World.load(path, backend="onnxruntime", threads=1, block_rule=rule)
        assert w.preset.block_rule is rule
        moved = w.backend.encode(_moved_view(f[t], move_delta(int(a[t])))[None])[None]  # (1,1,C,g,g)
        real_dit = w.backend.dit
        w.backend.dit = lambda x, *rest: (moved.copy(), *real_dit(x, *rest)[1:])  # a model that walks through
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
    w = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1)
    moved = w.backend.encode(_moved_view(f[t], move_delta(int(a[t])))[None])[None]  # (1,1,C,g,g)
    real_dit = w.backend.dit
    w.backend.dit = lambda x, *rest: (np.repeat(moved, len(x), 0), *real_dit(x, *rest)[1:])  # walks through, every session
    ctx, acts = f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None]
    sessions = [w.new_session(ctx, acts, seed=i) for i in range(2)]
    prev = [s._state.latent.copy() for s in sessions]
    frames = SessionBatch(sessions).step([ACTION_NAMES[int(a[t])]] * 2)
    for s, p, fr in zip(sessions, prev, frames):
        expect = p.copy()
        expect[:, PLAYER_ROW, PLAYER_COL] = moved[0, 0][:, PLAYER_ROW, PLAYER_COL]
        np.testing.assert_array_equal(s._state.latent, expect)
        np.testing.assert_array_equal(fr, w.backend.decode(expect[None])[0])
