"""Action logs and `worldsim replay`: replayed frames equal the live ones on the same backend."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from controllers.actionlog import (
    ActionLogError,
    ActionLogWriter,
    LogHeader,
    Timeline,
    encode_context,
    read_log,
    replay_frames,
)
from controllers.input import ScriptedController
from engine.loop import RealtimeLoop

SCRIPT = ["move_left", "move_left", "do", "rewind", "move_up", "snapshot:a", "do", "noop", "restore:a",
          "move_right", "reset:5", "place_stone", "rewind", "rewind", "sleep", "make_wood_pickaxe"]


@pytest.fixture(scope="module")
def world_dir(tiny_world_dir):
    return tiny_world_dir  # tests/conftest.py


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


def play_live(world, log_path, script, seed=3, context=None):
    """Drive a session with a scripted controller through the real-time loop, recording; -> live frames."""
    session = world.new_session(seed=seed) if context is None else world.new_session(context=context[0], actions=context[1], seed=seed)
    tl = Timeline(session, lambda s: world.new_session(seed=s), rewind_capacity=10)
    header = LogHeader(world.id, world.backend_name, world.preset_name, 5.0, seed=seed, rewind_capacity=10,
                       context=None if context is None else encode_context(*context))
    log = ActionLogWriter(log_path, header)
    live = [session.frame.copy()]

    def tick(cmd):
        kind, _, arg = cmd.partition(":")
        if kind == "rewind":
            frame = tl.rewind(1)
            if frame is not None:
                log.rewind(1)
            return frame
        if kind == "snapshot":
            tl.snapshot(arg)
            log.snapshot(arg)
            return None
        if kind == "restore":
            log.restore(arg)
            return tl.restore(arg)
        if kind == "reset":
            log.reset(int(arg))
            return tl.reset(int(arg))
        log.step(cmd)
        return tl.step(cmd)

    extra = {c for c in script if c not in world.action_names}
    loop = RealtimeLoop(tick, ScriptedController(script, extra=extra), lambda f, t: live.append(f.copy()), tick_hz=1000)
    loop.start()
    assert loop.finished.wait(60)
    loop.stop()
    assert loop.error is None
    log.close()
    return live


def test_replay_reproduces_live_frames_exactly(world, tmp_path):
    live = play_live(world, tmp_path / "game.wslog", SCRIPT)
    log = read_log(tmp_path / "game.wslog")
    assert not log.truncated
    assert log.header.world_id == world.id and log.header.backend == "onnxruntime" and log.header.seed == 3
    kinds = [k for k, _ in log.events]
    # the second rewind after the reset is refused (a reset empties the ring): not logged, no frame
    assert kinds.count("rewind") == 2 and "snapshot" in kinds and "restore" in kinds and "reset" in kinds
    replayed = list(replay_frames(world, log))
    assert len(replayed) == len(live)
    for i, (a, b) in enumerate(zip(replayed, live)):
        assert np.array_equal(a, b), f"frame {i} differs"
    # and a fresh world object (a new process would be the same) gives the same again
    from engine import World

    again = list(replay_frames(World.load(world.path, backend="onnxruntime"), log))
    assert all(np.array_equal(a, b) for a, b in zip(again, live))


def test_replay_from_context_frames(world, tmp_path):
    rng = np.random.default_rng(1)
    ctx = (rng.integers(0, 256, (3, 72, 72, 3), dtype=np.uint8), ["noop", "move_left", None])
    live = play_live(world, tmp_path / "ctx.wslog", ["do", "move_down", "rewind", "noop"], context=ctx)
    log = read_log(tmp_path / "ctx.wslog")
    assert np.array_equal(live[0], ctx[0][-1])
    assert all(np.array_equal(a, b) for a, b in zip(replay_frames(world, log), live))


def test_replay_on_torch_matches_torch_live(world_dir, tmp_path):
    from engine import World

    torch_world = World.load(world_dir, backend="torch")
    live = play_live(torch_world, tmp_path / "t.wslog", ["move_left", "rewind", "do"])
    assert all(np.array_equal(a, b) for a, b in zip(replay_frames(torch_world, read_log(tmp_path / "t.wslog")), live))


def test_cli_renders_png_frames_gif_and_mp4(world, world_dir, tmp_path, capsys):
    from worldsim.cli import main

    live = play_live(world, tmp_path / "g.wslog", ["move_left", "do", "rewind", "move_up"])
    assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(world_dir), "--video", str(tmp_path / "frames") + "/", "--scale", "2"]) == 0
    from PIL import Image

    pngs = sorted((tmp_path / "frames").glob("*.png"))
    assert len(pngs) == len(live)
    for p, f in zip(pngs, live):
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape == (144, 144, 3) and np.array_equal(img[::2, ::2], f)  # lossless, nearest-neighbour
    assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(world_dir), "--video", str(tmp_path / "g.gif")]) == 0
    with Image.open(tmp_path / "g.gif") as im:
        assert im.n_frames == len(live) and im.size == (288, 288)
    from controllers.replay import mp4_available

    if mp4_available():
        import imageio_ffmpeg

        assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(world_dir), "--video", str(tmp_path / "g.mp4")]) == 0
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "g.mp4"))
        assert n == len(live)
    assert "wrote" in capsys.readouterr().out


def test_cli_refuses_a_log_from_another_world(world, tmp_path, capsys):
    from engine.testing import make_tiny_world
    from worldsim.cli import main

    play_live(world, tmp_path / "g.wslog", ["do"])
    other = make_tiny_world(tmp_path / "other", seed=1)
    assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(other), "--video", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "world id" in err and "--force" in err
    assert not (tmp_path / "x.gif").exists()
    assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(other), "--backend", "onnxruntime", "--video", str(tmp_path / "x.gif"), "--force"]) == 0
    assert main(["replay", str(tmp_path / "g.wslog"), "--world", str(other), "--video", str(tmp_path / "x.avi"), "--force"]) == 2
    assert ".gif, .mp4" in capsys.readouterr().err


def test_log_errors_name_the_file_and_the_problem(world, tmp_path):
    hdr = LogHeader(world.id, "onnxruntime", "fast", 5.0, seed=0)
    p = tmp_path / "a.wslog"
    with ActionLogWriter(p, hdr) as w:
        w.step("do")
        w.step("move_left")
    good = p.read_bytes()
    # a crash mid-write: the complete events survive, the log says it was truncated
    (tmp_path / "cut.wslog").write_bytes(good + msgpack.packb({"rewind": 1})[:-1])
    cut = read_log(tmp_path / "cut.wslog")
    assert cut.truncated and cut.actions == ["do", "move_left"]

    cases = {
        b"": "empty",
        b"\xc1\xc1": "not a msgpack",
        msgpack.packb({"hello": 1}): "not a worldsim action log",
        msgpack.packb({**hdr.to_msg(), "version": 9}): "version 9",
        msgpack.packb({**hdr.to_msg(), "tick_hz": "fast"}): "'tick_hz' must be",
        msgpack.packb({**hdr.to_msg(), "action_names": ["a"]}): "action_names",
        msgpack.packb(hdr.to_msg()) + msgpack.packb(99): "event #0: action index 99",
        msgpack.packb(hdr.to_msg()) + msgpack.packb(1) + msgpack.packb({"jump": 1}): "event #1",
    }
    for i, (data, needle) in enumerate(cases.items()):
        f = tmp_path / f"bad{i}.wslog"
        f.write_bytes(data)
        with pytest.raises(ActionLogError, match=needle) as e:
            read_log(f)
        assert str(f) in str(e.value)
    with pytest.raises(ActionLogError, match="not found"):
        read_log(tmp_path / "missing.wslog")
