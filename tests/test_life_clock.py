"""Crafter's hidden energy counter run by the engine (engine.rules' life clock, preset.life_clock)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import World
from engine.rules import ENERGY_MAX, advance_life, draw_energy, fit_life, read_energy, sleeping_view
from engine.testing import exact_codec, make_tiny_world
from worldsim.actions import ACTION_NAMES, action_index
from worldsim.memory import frame_lighting

NOOP, SLEEP = action_index("noop"), action_index("sleep")


@pytest.fixture(scope="module")
def sleeper() -> dict[str, np.ndarray]:
    """A real game (held-out seed): the player waits until its energy drops twice, sleeps, and is woken by the
    game when its energy is full again. Frames, actions taken on them, energy and sleeping flags."""
    from worldsim.crafter_env import CrafterEnv

    env = CrafterEnv(seed=1_000_003, size=72)
    frame, info = env.reset()
    frames, acts, energy, asleep = [frame], [], [int(env.inventory[3])], [env.sleeping]
    for t in range(200):
        a = SLEEP if t == 70 else NOOP
        if t > 75 and not asleep[-1]:
            break
        frame, _ = env.step(a)
        acts.append(a)
        frames.append(frame)
        energy.append(int(env.inventory[3]))
        asleep.append(env.sleeping)
    acts.append(NOOP)
    return {"frames": np.stack(frames), "actions": np.array(acts), "energy": np.array(energy), "asleep": np.array(asleep)}


def test_the_counter_follows_the_game_s_energy_and_wake(sleeper):
    """From the frames alone (energy read from the inventory, sleep from the player tile) the counter is found
    at the first energy change and from there predicts every later energy count of the real game, awake and
    asleep, and the step on which the game wakes the player (the step after its energy is full)."""
    e, s = sleeper["energy"], sleeper["asleep"]
    assert e[0] == ENERGY_MAX and e.min() <= ENERGY_MAX - 2 and s.any() and not s[-1], "the game did not sleep and wake"
    read = read_energy(sleeper["frames"])
    np.testing.assert_array_equal(read, e)  # the inventory is read exactly
    lit = [frame_lighting(f) for f in sleeper["frames"]]
    np.testing.assert_array_equal([x[1] for x in lit], s)
    first = int(np.flatnonzero(np.diff(e))[0]) + 1  # the first energy drop: the counter is known from here
    energy, fatigue = fit_life(read[:first + 1], s[:first + 1])
    assert (energy, fatigue) == (e[first], 0)
    fell = int(np.flatnonzero(s)[0])
    for t in range(first + 1, len(e)):
        if s[t - 1] and energy >= ENERGY_MAX:  # the engine wakes the sleeper here: so must the game
            assert not s[t] and t > fell
        energy, fatigue = advance_life(energy, fatigue, bool(s[t]))
        assert energy == e[t], f"step {t}: counter {energy}, game {e[t]}"
    # the engine draws an energy count as the game does (its slot's pixels), and reads it back
    from engine.rules import energy_slot

    _, _, _, ys, xs = energy_slot(72)
    for t in (int(np.argmin(e)), first):
        drawn = draw_energy(sleeper["frames"][0], e[t])
        np.testing.assert_array_equal(drawn[ys, xs], sleeper["frames"][t][ys, xs])
        assert read_energy(drawn[None])[0] == e[t]
    # without a change in the context the counter starts at its prior
    assert fit_life(np.full(5, 9), np.zeros(5, bool)) == (9, 22)
    assert fit_life(np.full(5, 6), np.ones(5, bool)) == (6, -5)


def _world(tmp_path, life: bool, frames: np.ndarray, **options) -> tuple[World, list]:
    """A tiny world whose decoder gives back exactly the frames it encoded and whose DiT always proposes the
    latent of ``frames[-1]`` (a sleeper's view); -> (world, the actions the DiT was given)."""
    w = World.load(make_tiny_world(tmp_path / f"tiny{life}"), backend="onnxruntime", threads=1, block_rule=False,
                   day_clock=False, life_clock=life, **options)
    exact_codec(w.backend)
    z = w.backend.encode(frames[-1:])[None]
    real_dit = w.backend.dit
    seen: list = []

    def dit(x, t, a, *rest):
        seen.append(np.array(a))
        return (np.repeat(z, x.shape[1], 1), *real_dit(x, t, a, *rest)[1:])  # every frame of the call (fused commits: 2)

    w.backend.dit = dit
    return w, seen


def test_session_wakes_a_sleeper_when_the_game_would(tmp_path, sleeper):
    """A model that never wakes: with the life clock the session gives back the last awake frame on the
    step the game wakes the player, and keeps it awake; without it the player sleeps on. The counter and the
    awake frame survive save/load. Asleep, the frames are the game's drawing of the last awake view."""
    f, a, e, s = sleeper["frames"], sleeper["actions"], sleeper["energy"], sleeper["asleep"]
    fell = int(np.flatnonzero(s)[0])
    woke = int(np.flatnonzero(s[fell:] == 0)[0]) + fell
    ctx = slice(fell - 40, fell + 4)  # holds the second energy drop and the fall: the counter is known
    got = {}
    for life in (True, False):
        w, _ = _world(tmp_path, life, f[ctx])
        sess = w.new_session(f[ctx], [int(x) for x in a[ctx][:-1]] + [None], seed=0)
        if life:
            assert sess._state.extra["life"][0] == e[ctx.stop - 1]
            sess.save(tmp_path / "s.npz")
            again = w.load_session(tmp_path / "s.npz")
            assert again._state.extra["life"] == sess._state.extra["life"]
            np.testing.assert_array_equal(again._state.awake, sess._state.awake)
        got[life] = [sess.step(ACTION_NAMES[int(x)]) for x in a[ctx.stop - 1:woke + 5]]
    lit = np.array([frame_lighting(x)[1] for x in got[True]])
    first_awake = int(np.flatnonzero(~lit)[0]) + ctx.stop
    assert first_awake == woke and not lit[woke - ctx.stop:].any()
    # the last awake frame (same light: no clock), showing the game's energy, as every frame does
    np.testing.assert_array_equal(got[True][woke - ctx.stop], draw_energy(f[fell - 1], e[woke]))
    np.testing.assert_array_equal(read_energy(np.stack(got[True]))[:len(e) - ctx.stop], e[ctx.stop:])
    assert all(frame_lighting(x)[1] for x in got[False])
    # until then the sleeper sees its last awake view, drawn as the game draws a sleeper's (sleep_view), not
    # the model's frame (which sleep_view=False keeps)
    light = frame_lighting(f[fell - 1])[0]
    for t, x in enumerate(got[True][:woke - ctx.stop], ctx.stop):
        np.testing.assert_array_equal(x, draw_energy(sleeping_view(f[fell - 1], light, light), e[t]))
    w, _ = _world(tmp_path, True, f[ctx], sleep_view=False)
    sess = w.new_session(f[ctx], [int(x) for x in a[ctx][:-1]] + [None], seed=0)
    np.testing.assert_array_equal(sess.step("noop"), draw_energy(f[ctx.stop - 1], e[ctx.stop]))


def test_a_sleep_action_at_full_energy_is_a_noop(tmp_path, sleeper):
    """The game ignores sleep at full energy: the model is given noop instead (and sleep once energy is low)."""
    f = sleeper["frames"]
    w, seen = _world(tmp_path, True, f[:8])
    sess = w.new_session(f[:8], [NOOP] * 7 + [None], seed=0)
    assert sess._state.extra["life"][0] == ENERGY_MAX
    seen.clear()  # the context's commit
    sess.step("sleep")
    assert seen and all(int(x[0, -1]) == NOOP for x in seen)  # the new frame's action (a fused pass: last)
    assert sess._state.extra["life"][2] == 0  # the game ignored it: awake
    sess._state.extra["life"][0] = ENERGY_MAX - 1
    seen.clear()
    sess.step("sleep")
    assert int(seen[0][0, -1]) == SLEEP
    w2, seen2 = _world(tmp_path, False, f[:8])
    s2 = w2.new_session(f[:8], [NOOP] * 7 + [None], seed=0)
    seen2.clear()
    s2.step("sleep")
    assert int(seen2[0][0, -1]) == SLEEP


def test_a_batch_of_sessions_applies_the_life_clock_as_each_session_does(tmp_path, sleeper):
    """SessionBatch gives every session the game's actions too: a batch == its sessions stepped alone."""
    from engine.batch import SessionBatch

    f = sleeper["frames"]
    w = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1)
    ctx, acts = f[:8], [NOOP] * 7 + [None]
    solo = [w.new_session(ctx, acts, seed=i) for i in range(2)]
    batch = SessionBatch([w.new_session(ctx, acts, seed=i) for i in range(2)])
    for step in (["sleep", "noop"], ["noop", "sleep"]):
        for s_, g, act in zip(solo, batch.step(step), step):
            np.testing.assert_array_equal(s_.step(act), g)
    # the rewrite matters: without it the same inputs give other frames
    off = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1, life_clock=False)
    other = off.new_session(ctx, acts, seed=0)
    assert not np.array_equal(other.step("sleep"), w.new_session(ctx, acts, seed=0).step("sleep"))


def test_sleeping_view_is_the_game_s_view_of_a_sleeper():
    """The game draws a sleeper's view as sleeping_view() of what it saw awake: exact by day (sprite included),
    whatever the daylight the awake frame was lit at; close at night (the game's night noise is random)."""
    from worldsim.crafter_env import CrafterEnv

    env = CrafterEnv(seed=1_000_003, size=72)
    env.reset(seed=1_000_003)
    player, world = env._env._player, env._env._world

    def render(daylight: float, asleep: bool) -> np.ndarray:
        player.sleeping, world.daylight = asleep, daylight
        return env._env.render()

    for d_from, d_to in ((1.0, 1.0), (0.7, 1.0), (1.0, 0.6), (0.8, 0.55)):
        awake, real = render(d_from, False), render(d_to, True)
        got = sleeping_view(awake, d_from, d_to)
        err = np.abs(got.astype(int) - real.astype(int))
        assert err.max() <= 1, (d_from, d_to, err.max())
        assert np.abs(awake.astype(int) - real.astype(int))[:56].mean() > 20  # sleep changes the view
        lit = frame_lighting(got)
        assert lit[1] and abs(lit[0] - d_to) <= 0.05
    night = sleeping_view(render(1.0, False), 1.0, 0.2)
    real = render(0.2, True)
    assert np.abs(night.astype(int) - real.astype(int))[:56].mean() < 12
    assert frame_lighting(night)[1]


def test_a_context_that_only_sleeps_wakes_to_its_tiles_drawn_awake(tmp_path):
    """Without an awake frame in the context the wake view is the sleeper's tiles and inventory drawn awake
    (rendered_awake_view): the real game's awake view, read back tile for tile, at the asked daylight."""
    from engine.rules import rendered_awake_view
    from worldsim.crafter_env import CrafterEnv
    from worldsim.eval.tiles import classify_tiles, read_inventory

    env = CrafterEnv(seed=1_000_005, size=72)
    env.reset(seed=1_000_005)
    env._env._world.daylight = 1.0
    env._env._player.sleeping = True
    asleep = env._env.render()
    env._env._player.sleeping = False
    awake = env._env.render()
    for d in (1.0, 0.6):
        view = rendered_awake_view(asleep, d)
        assert not frame_lighting(view)[1] and abs(frame_lighting(view)[0] - d) <= 0.05
        assert (classify_tiles(view, d, False) == classify_tiles(awake)).mean() >= 62 / 63
        np.testing.assert_array_equal(read_inventory(view), read_inventory(awake))
    np.testing.assert_array_equal(rendered_awake_view(asleep, 1.0)[:56], awake[:56])  # by day: the game's own pixels


def test_the_game_not_the_model_says_when_the_player_sleeps(tmp_path, sleeper):
    """A model that never sleeps: after a sleep action with energy to spare the session draws the sleeper's
    view until the step the game wakes it, then the model's frames again; with the life clock off the player
    never sleeps."""
    f, a, s, e = sleeper["frames"], sleeper["actions"], sleeper["asleep"], sleeper["energy"]
    fell = int(np.flatnonzero(s)[0])
    woke = int(np.flatnonzero(s[fell:] == 0)[0]) + fell
    ctx = slice(fell - 40, fell)  # ends on the last awake frame, before the sleep action
    assert a[fell - 1] == SLEEP
    for life in (True, False):
        w, _ = _world(tmp_path, life, f[ctx])
        sess = w.new_session(f[ctx], [int(x) for x in a[ctx][:-1]] + [None], seed=0)
        got = np.stack([sess.step(ACTION_NAMES[int(x)]) for x in list(a[fell - 1:woke]) + [NOOP] * 3])  # frames fell .. woke+3
        asleep = np.array([frame_lighting(x)[1] for x in got])
        if life:
            np.testing.assert_array_equal(asleep[:woke + 1 - fell], s[fell:woke + 1])
            assert not asleep[woke - fell:].any()
            light = frame_lighting(f[fell - 1])[0]
            np.testing.assert_array_equal(got[0], draw_energy(sleeping_view(f[fell - 1], light, light), e[fell]))
            np.testing.assert_array_equal(got[woke - fell], draw_energy(f[fell - 1], e[woke]))
            np.testing.assert_array_equal(read_energy(got)[:woke + 1 - fell], e[fell:woke + 1])
        else:
            assert not asleep.any()
