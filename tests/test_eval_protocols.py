"""Protocols and report end to end on a short held-out episode: the real game scores 1, copy-last scores
what an independent computation gives, the report has its schema, and the CLI runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from worldsim.eval import metrics as M
from worldsim.eval import protocols as P
from worldsim.eval.reference import CopyLastWorld, RealGameWorld
from worldsim.eval.report import REQUIRED_KEYS, check_report, make_report, write_report
from worldsim.eval.tiles import classify_tiles

# One 320-frame held-out episode holds a whole revisit (placed ~84, back in view ~199).
CFG = P.EvalConfig(name="test", episodes=1, episode_len=320, context=8, one_step=24, rollouts=2, rollout_len=32,
                   horizons=(8, 32), revisits=2, look_max=10, long_runs=1, long_run_len=120, long_run_window=40)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def episodes(cache):
    eps = P.load_episodes(cache, CFG, progress=False, log=lambda m: None)
    assert len(eps) == 1 and eps[0].seed == P.EVAL_SEEDS_START and len(eps[0]) == CFG.episode_len
    assert len(eps[0].revisit_events) >= 1, "the explorer policy should complete a revisit in 320 frames"
    return eps


@pytest.fixture(scope="module")
def results(episodes):
    return P.evaluate(RealGameWorld(episodes), episodes, CFG, progress=False, log=lambda m: None)


def test_real_game_scores_perfect(results):
    res, _ = results
    one = res["one_step"]["model"]
    assert one["samples"] == CFG.one_step
    for k in ("tile_all", "tile_non_grass", "tile_persistent", "ssim", "action_following", "inventory_exact",
              "lighting_match", "follow_moved"):
        assert one[k] == 1.0, k
    assert one["psnr"] == M.PSNR_CAP and one["unexplained"] == 0.0
    for h in CFG.horizons:
        r = res["rollouts"]["model"]["horizons"][str(h)]
        assert r["tile_all"] == 1.0 and r["psnr"] == M.PSNR_CAP and r["ssim"] == pytest.approx(1.0)
    rv = res["revisits"]["model"]
    assert rv["events"] >= 1 and rv["revisit_block_kept_n"] > 0
    assert rv["revisit_block_kept"] == 1.0 and rv["revisit_area"] == 1.0
    # the perfect-memory reference (cells as last seen by departure, re-projected with the real positions)
    # keeps the block and the static area around it; it cannot know cells first seen after departure
    pm = rv["perfect_memory"]
    assert pm["revisit_block_kept"] == 1.0 and pm["revisit_block_kept_n"] == rv["revisit_block_kept_n"]
    assert pm["revisit_area"] >= 0.95 and pm["revisit_view_all"] < 1.0
    assert "perfect_memory" not in res["revisits"]["copy_last"]  # computed once, with the model
    lr = res["long_run"]["model"]
    assert lr["open_loop_following"] == 1.0
    assert all(w["tile_all"] == 1.0 and w["unexplained"] == 0.0 for w in lr["windows"])
    assert res["classifier"]["accuracy_day"] == 1.0


def test_revisits_in_the_worlds_own_walk(results):
    """Followed in its own walk (the walk estimated from its frames), the real game comes back to A with the block
    there and the area as it showed it before leaving, and the walk estimate is right; copy-last never leaves A."""
    res, _ = results
    own = res["revisits_own"]["model"]
    assert own["events"] >= 1 and own["returned"] >= 1 and own["frames_back"] > 0
    assert own["gap_frames_mean"] > CFG.context
    assert own["block_kept"] == 1.0 and own["area"] >= 0.95 and own["view_n"] > own["area_n"] > 0
    assert own["pose_steps_right"] >= 0.98 and own["pose_steps_right_n"] > 50
    assert own["block_kept_readable_n"] + own["block_kept_deep_night_n"] == own["frames_back"]
    ev = own["per_event"]
    assert len(ev) == own["returned"] and sum(e["frames"] for e in ev) == own["frames_back"]
    assert all(e["kept"] == e["frames"] and e["read_instead"] is None and e["gap"] > CFG.context for e in ev)
    base = res["revisits_own"]["copy_last"]
    assert base["returned"] == 0 and base["frames_back"] == 0 and "pose_steps_right" not in base


def test_mined_cells_in_the_worlds_own_walk(cache):
    """Cells the player mined (stone -> path) and came back to: the real game keeps the path in every frame;
    copy-last never leaves."""
    cfg = dataclasses.replace(CFG, seed=P.EVAL_SEEDS_START + 2, episode_len=1000, revisits=3)
    eps = P.load_episodes(cache, cfg, progress=False, log=lambda m: None)
    found = P.mined_events(eps[0], cfg.context, cfg.look_max)
    assert len(found) >= 3 and all(lab == 4 and t < t_end for t, t_end, _, _, lab in found)
    for t, _, x, y, _ in found:      # the frame t shows path where the cell is
        r, c = 3 + y - int(eps[0].pos[t][1]), 4 + x - int(eps[0].pos[t][0])
        assert eps[0].semantic[t][r, c] == 4 and eps[0].semantic[t - 1][r, c] in P.MINED_FROM
    res, _ = P.evaluate(RealGameWorld(eps), eps, cfg, protocols=("revisits_own",), progress=False, log=lambda m: None)
    own = res["revisits_own"]["model"]
    assert own["mined_events"] == 3 and own["mined_returned"] >= 2 and own["mined_frames_back"] > 0
    assert own["mined_kept"] == 1.0 and own["mined_area"] >= 0.95
    kinds = [e["kind"] for e in own["per_event"]]
    assert kinds.count("mined") == own["mined_returned"] and kinds.count("block") == own["returned"]
    assert res["revisits_own"]["copy_last"]["mined_returned"] == 0


def test_return_after_gap():
    on = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 1], bool)
    assert P._return_after_gap(on, 2) == (4, 8)
    assert P._return_after_gap(on, 1) == (1, 4)
    assert P._return_after_gap(on, 3) is None
    assert P._return_after_gap(np.zeros(5, bool), 0) is None


def test_rollout_tiles_split_into_awake_by_day_and_the_rest(results):
    """The day/night split partitions the persistent tiles: the parts' counts add up, their hits make the whole."""
    res, _ = results
    for who in ("model", "copy_last"):
        for h, r in res["rollouts"][who]["horizons"].items():
            for key in ("tile_persistent", "tile_non_grass"):
                n_day, n_night = r[key + "_day_n"], r[key + "_night_n"]
                assert n_day + n_night == r[key + "_n"], (who, h, key)
                hits = sum((r[f"{key}_{p}"] or 0.0) * r[f"{key}_{p}_n"] for p in ("day", "night"))
                assert hits == pytest.approx(r[key] * r[key + "_n"]), (who, h, key)
                assert r[key + "_asleep_n"] <= n_night, (who, h, key)  # asleep is part of "night or asleep"
    # the real game scores perfectly in both parts
    r = res["rollouts"]["model"]["horizons"][str(CFG.rollout_len)]
    assert r["tile_persistent_day_n"] > 0 and r["tile_persistent_day"] == 1.0


def test_copy_last_matches_an_independent_computation(results, episodes):
    res, _ = results
    ep = episodes[0]
    one = res["one_step"]["copy_last"]
    t = np.array([p[1] for p in one["points"]])
    assert one["psnr"] == pytest.approx(M.psnr(ep.frames[t], ep.frames[t + 1]).mean())
    independent = (classify_tiles(ep.frames[t]) == classify_tiles(ep.frames[t + 1])).mean()
    assert one["tile_all"] == pytest.approx(independent, abs=0.01)
    assert one["follow_moved"] == 0.0 and one["follow_still"] == 1.0
    rol = res["rollouts"]["copy_last"]
    s = np.array([p[1] for p in rol["starts"]])
    for h in (1, 8, 32):
        expect = M.psnr(ep.frames[s], ep.frames[s + h]).mean()
        assert rol["curves"]["psnr"][h - 1] == pytest.approx(expect)
    # the copy-last frame is a real frame: always explained, never a plausible-world failure
    assert all(w["unexplained"] == 0.0 for w in res["long_run"]["copy_last"]["windows"])
    assert res["revisits"]["copy_last"]["revisit_block_kept"] < 1.0


def test_report_schema(results, tmp_path):
    res, samples = results
    report = make_report(res, {"name": "real game (oracle)", "path": None}, CFG.name, seconds=1.0)
    paths = write_report(tmp_path, report, samples)
    data = json.loads((tmp_path / "report.json").read_text())
    check_report(data)
    assert set(REQUIRED_KEYS) <= set(data)
    assert set(data["results"]) >= {"classifier", "one_step", "rollouts", "revisits", "long_run", "config"}
    for name in ("one_step", "rollouts", "revisits", "long_run"):
        assert set(data["results"][name]) >= {"model", "copy_last"}
    assert set(data["results"]["rollouts"]["model"]["horizons"]) == {str(h) for h in CFG.horizons}
    assert len(data["results"]["rollouts"]["model"]["curves"]["psnr"]) == CFG.rollout_len
    from PIL import Image

    assert set(data["plots"]) == {"horizon.png", "rollout_samples.png", "one_step.png", "revisit.png", "long_run.png"}
    for name in data["plots"]:
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    md = (tmp_path / "report.md").read_text()
    assert "| metric | model | copy-last |" in md and "![revisit example](revisit.png)" in md
    assert len(paths) == 2 + len(data["plots"])
    del data["results"]["one_step"]["copy_last"]
    with pytest.raises(ValueError, match="copy_last"):
        check_report(data)


def test_sessions_follow_the_duck_typed_api(episodes):
    ep = episodes[0]
    frames, acts = ep.context(50, 8)
    assert len(frames) == 8 and acts[-1] is None and len(acts) == 8
    for world in (CopyLastWorld(ep.frames.shape[1:]), RealGameWorld(episodes)):
        s = world.new_session(context=frames, actions=acts)
        snap = s.snapshot()
        a = [s.step(n) for n in ("move_left", "do", 3)]
        s.restore(snap)
        b = [s.step(n) for n in ("move_left", "do", 3)]
        assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == ep.frames.shape[1:]
        with pytest.raises(ValueError, match="valid actions"):
            s.step("jump")
    real = RealGameWorld(episodes).new_session(context=frames, actions=acts)
    np.testing.assert_array_equal(real.step(int(ep.actions[50])), ep.frames[51])
    with pytest.raises(ValueError, match="not a frame"):
        RealGameWorld(episodes).new_session(context=np.zeros((1, 72, 72, 3), np.uint8))


def test_each_world_is_read_with_its_own_reader(episodes):
    """The model's frames with the world's reader (here one that reads everything as lava), copy-last's with
    the texture model."""
    from worldsim.eval.reader import ReaderConfig, TileReader
    from worldsim.eval.tiles import LAVA, NUM_CLASSES

    cfg = ReaderConfig(hidden=2, depth=1)
    b = np.zeros(NUM_CLASSES, np.float32)
    b[LAVA] = 50
    world = RealGameWorld(episodes)
    world.reader = TileReader(cfg, [(np.zeros((cfg.inputs, 2), np.float32), np.zeros(2, np.float32)),
                                    (np.zeros((2, NUM_CLASSES), np.float32), b)])
    res, _ = P.evaluate(world, episodes, CFG, protocols=("one_step",), progress=False, log=lambda m: None)
    assert res["one_step"]["model"]["tile_all"] < 0.05
    assert res["one_step"]["copy_last"]["tile_all"] > 0.5
    assert "reader" not in res          # a world with no backend to round-trip frames through: nothing to validate


def test_held_out_seeds_only():
    with pytest.raises(ValueError, match="1000000"):
        dataclasses.replace(CFG, seed=5)


def test_cli_reference_and_engine_worlds(cache, episodes, tmp_path, monkeypatch):
    from worldsim.cli import main

    monkeypatch.setitem(P.EVAL_PRESETS, "quick", CFG)
    out = tmp_path / "copy"
    rc = main(["eval", "--world", "copy-last", "--quick", "--out", str(out), "--cache", str(cache), "--no-progress",
               "--protocols", "one_step,rollouts"])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert data["world"]["name"] == "copy-last" and set(data["results"]) >= {"one_step", "rollouts"}
    assert "revisits" not in data["results"]
    # an engine world (tiny, random weights) through the same command
    from engine.testing import add_random_reader, make_tiny_world

    wdir = make_tiny_world(tmp_path / "tiny")
    add_random_reader(wdir)
    out2 = tmp_path / "tiny-report"
    rc = main(["eval", "--world", str(wdir), "--quick", "--out", str(out2), "--cache", str(cache), "--no-progress",
               "--protocols", "one_step", "--window", "2", "--steps", "2"])
    assert rc == 0
    data = json.loads((out2 / "report.json").read_text())
    assert data["world"]["kind"] == "engine"
    assert (data["world"]["window"], data["world"]["steps"]) == (2, 2)  # the preset overrides reached the world
    assert data["results"]["one_step"]["model"]["psnr"] < data["results"]["one_step"]["copy_last"]["psnr"]
    # the world's tile reader, measured against the texture model on the world's round trips of real frames
    r = data["results"]["reader"]
    assert r["frames"] == CFG.episode_len and 0 <= r["reader"]["all"] <= 1 and 0 <= r["texture_model"]["all"] <= 1
    assert "tile reader" in (out2 / "report.md").read_text()
    # bad input: clear errors, exit code 2
    assert main(["eval", "--world", "copy-last", "--out", str(tmp_path / "x"), "--seed", "12", "--cache", str(cache)]) == 2
    assert main(["eval", "--world", "copy-last", "--out", str(tmp_path / "x"), "--protocols", "dance",
                 "--cache", str(cache)]) == 2


def test_protocols_do_not_import_the_engine():
    code = ("import sys, worldsim.eval.protocols, worldsim.eval.report, worldsim.eval.reference; "
            "sys.exit(1 if any(m == 'engine' or m.startswith('engine.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


class _SleeperWorld:
    """The real game drawn as a sleeping player sees it (Crafter's LocalView._sleep: the lit view in grey,
    tinted): a world whose player fell asleep and never wakes."""

    def __init__(self, real):
        self.real = real
        self.action_names = real.action_names
        self.frame_shape = real.frame_shape

    def new_session(self, context, actions, seed=0):
        inner = self.real.new_session(context=context, actions=actions, seed=seed)

        class Session:
            def step(_, action):
                f = inner.step(action).astype(np.float64)
                grey = np.rint(f[:56] @ np.array([0.299, 0.587, 0.114]))[..., None]
                out = f.copy()
                out[:56] = np.floor(0.5 * grey + np.array([0.0, 0.0, 8.0]))
                return out.astype(np.uint8)

        return Session()


def test_long_run_reports_a_player_that_sleeps_while_the_real_one_is_awake(episodes):
    """The long-run windows give the share of frames whose player sleeps next to the real game's: all of them
    for a world stuck asleep, none for the real game (the first 128 frames of this episode are awake)."""
    cfg = dataclasses.replace(CFG, one_step=0, rollouts=0, revisits=0)
    real, _ = P.long_run(RealGameWorld(episodes), episodes, cfg, progress=False)
    stuck, _ = P.long_run(_SleeperWorld(RealGameWorld(episodes)), episodes, cfg, progress=False)
    for wr, ws in zip(real["windows"], stuck["windows"]):
        assert wr["asleep"] == wr["real_asleep"] == 0.0
        assert ws["asleep"] > 0.95 and ws["real_asleep"] == 0.0


def test_the_game_with_other_luck_starts_the_same_and_draws_its_own_future(episodes):
    """RealGameWorld(reseed=True): resumed at the very context frame, the same actions then play the same world
    with other luck (creatures, night noise): reproducible for a seed, different for another, and the recording
    is left at some step."""
    ep = episodes[0]
    start = 150  # dusk: creatures about, night noise coming
    frames, acts = ep.context(start, 8)
    world = RealGameWorld(episodes, reseed=True)
    runs = {}
    for seed in (0, 0, 1):
        s = world.new_session(context=frames, actions=acts, seed=seed)
        np.testing.assert_array_equal(s.frame, ep.frames[start])
        runs.setdefault(seed, []).append(np.stack([s.step(int(a)) for a in ep.actions[start:start + 100]]))
    np.testing.assert_array_equal(runs[0][0], runs[0][1])
    assert not np.array_equal(runs[0][0], runs[1][0])
    assert not np.array_equal(runs[0][0], ep.frames[start + 1:start + 101])
    same = RealGameWorld(episodes).new_session(context=frames, actions=acts)
    np.testing.assert_array_equal(np.stack([same.step(int(a)) for a in ep.actions[start:start + 100]]), ep.frames[start + 1:start + 101])


def test_the_autoencoder_ceiling_is_the_game_through_the_shipped_autoencoder(episodes):
    """`--world real-ae`: the real game, every frame it returns passed through the shipped world's autoencoder
    and read with its reader when it has one; it scores near but not at the oracle's 1 (what the latents lose)."""
    from worldsim.eval.cli import _reference_world
    from worldsim.eval.reader import round_trip
    from worldsim.package import shipped_world_dir

    world, desc = _reference_world("real-ae", episodes)
    assert desc["kind"] == "reference"
    assert (world.reader is not None) == ("reader" in json.loads((shipped_world_dir() / "world.json").read_text()))
    ep = episodes[0]
    start = 150
    frames, acts = ep.context(start, 8)
    s = world.new_session(context=frames, actions=acts)
    got = np.stack([s.step(int(a)) for a in ep.actions[start:start + 6]])
    np.testing.assert_array_equal(got, round_trip(world.autoencoder, ep.frames[start + 1:start + 7]))
    assert not np.array_equal(got, ep.frames[start + 1:start + 7])
    cfg = dataclasses.replace(CFG, rollouts=1)
    res, _ = P.evaluate(world, episodes, cfg, protocols=("rollouts",), progress=False, log=lambda m: None)
    r = res["rollouts"]["model"]["horizons"]["32"]
    assert 0.9 < r["tile_all"] < 1.0 or r["tile_all"] == 1.0 and r["psnr"] < M.PSNR_CAP


class _LateStarter:
    """The real game whose player stands still (noop) for the first 8 steps of every session, then plays the
    actions it is given: a perfect world on another walk."""

    def __init__(self, world):
        self.world, self.frame_shape = world, world.frame_shape
        self.action_names = world.action_names

    def new_session(self, context=None, actions=None, seed=0):
        session, n = self.world.new_session(context=context, actions=actions, seed=seed), [0]

        class S:
            def step(self, action):
                n[0] += 1
                return session.step("noop" if n[0] <= 8 else action)
        return S()


def test_persistent_tiles_in_the_worlds_own_walk(episodes):
    """Rollouts also score persistent tiles where the world's own walk (read from its frames) puts them: the real
    game scores ~1 either way; the real game on another walk (its player idles first) loses most of the plain
    persistent score but keeps its scene in its own walk."""
    cfg = dataclasses.replace(CFG, horizons=(32,))
    real, _ = P.rollouts(RealGameWorld(episodes), episodes, cfg, progress=False)
    late, _ = P.rollouts(_LateStarter(RealGameWorld(episodes)), episodes, cfg, progress=False)
    r, o = real["horizons"]["32"], late["horizons"]["32"]
    assert r["walk_aligned"] == 1.0 and r["tile_persistent"] == 1.0 and r["tile_persistent_own"] > 0.995
    assert r["tile_persistent_own_n"] > 1000 and r["tile_persistent_own_non_grass_n"] > 0
    assert o["walk_aligned"] < 0.9  # the idle start left the real walk
    assert o["tile_persistent_own"] > 0.99 and o["tile_persistent"] < o["tile_persistent_own"] - 0.05
