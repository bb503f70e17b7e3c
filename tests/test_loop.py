"""The real-time loop (engine/loop.py) and the input controllers (controllers/input.py).

Pacing is tested with a fake clock (no sleeps); threading with events set by the loop itself.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from controllers.input import HeldInput, ScriptedController, load_bindings, make_keymap
from engine.loop import LoopStopped, RealtimeLoop, resolve_tick_hz


class FakeClock:
    """A clock that only moves when told to: sleep() and generation advance it."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def frame_of(i: int) -> np.ndarray:
    return np.full((4, 4, 3), i % 256, np.uint8)


def make_paced(gen_times, tick_hz=10.0):
    """A loop on a fake clock whose k-th generation takes gen_times[k] seconds; records tick starts."""
    clock = FakeClock()
    starts, reads = [], []

    def read():
        reads.append(clock.now())
        return "noop"

    def tick(action):
        starts.append(clock.now())
        clock.t += gen_times[len(starts) - 1]
        return frame_of(len(starts))

    loop = RealtimeLoop(tick, read, tick_hz=tick_hz, clock=clock.now, sleep=clock.sleep)
    return loop, clock, starts, reads


def test_fast_generation_ticks_on_a_steady_schedule():
    loop, clock, starts, _ = make_paced([0.01] * 20, tick_hz=10.0)
    assert loop.run(max_ticks=20) == 20
    gaps = np.diff(starts)
    assert np.allclose(gaps, 0.1, atol=1e-9), gaps  # 10 Hz exactly, generation time absorbed
    assert loop.fps == pytest.approx(10.0)


def test_slow_generation_runs_flat_out_and_never_bursts_to_catch_up():
    # 5 slow ticks (0.35 s > 0.1 s period), then fast ones: no backlog of "missed" ticks afterwards.
    gen = [0.35] * 5 + [0.01] * 10
    loop, clock, starts, _ = make_paced(gen, tick_hz=10.0)
    loop.run(max_ticks=15)
    gaps = np.diff(starts)
    assert np.allclose(gaps[:5], 0.35, atol=1e-9), gaps  # back to back while slow
    assert (gaps >= 0.1 - 1e-9).all(), gaps  # never faster than the tick rate, even after the slow phase
    assert np.allclose(gaps[5:], 0.1, atol=1e-9), gaps


def test_input_is_read_just_before_each_generation_and_latest_wins():
    clock = FakeClock()
    held = HeldInput(clock=clock.now)
    seen = []

    def tick(action):
        seen.append(action)
        clock.t += 0.02
        return frame_of(len(seen))

    ticks = []
    loop = RealtimeLoop(tick, held.read, lambda f, t: ticks.append(t), clock=clock.now, sleep=clock.sleep, tick_hz=5)
    held.press("KeyA", seq=1)
    held.press("KeyD", seq=2)  # pressed later: wins while both are held
    loop.step_now()
    held.release("KeyD", seq=3)
    loop.step_now()
    held.release("KeyA", seq=4)
    loop.step_now()
    assert seen == ["move_right", "move_left", "noop"]
    assert [t.seq for t in ticks] == [2, 3, 4]
    assert all(t.latency_s == pytest.approx(0.02) for t in ticks)  # input read -> frame ready
    # many events between two ticks: one action (the latest), no queue of stale ones
    for i in range(10):
        held.press("KeyW", seq=10 + 2 * i)
        held.release("KeyW", seq=11 + 2 * i)
    held.press("Space", seq=40)
    held.release("Space", seq=41)
    loop.step_now()
    loop.step_now()
    assert seen[-2:] == ["do", "noop"]
    assert ticks[-2].seq == 41


def test_a_tap_between_two_ticks_counts_once():
    held = HeldInput()
    held.press("Space")
    held.release("Space")
    assert held.read().action == "do"
    assert held.read().action == "noop"
    held.press("KeyA")
    held.press("KeyD")
    held.release("KeyD")  # quick tap of D while A is held: D once, then A again
    assert [held.read().action for _ in range(3)] == ["move_right", "move_left", "move_left"]


def test_held_input_set_keys_set_action_and_unbound_keys():
    held = HeldInput()
    assert held.press("KeyZ") is False  # unbound: ignored
    held.set_keys(["KeyW", "KeyQ"], seq=5)
    inp = held.read()
    assert (inp.action, inp.seq) == ("move_up", 5)  # KeyQ is not an action key: ignored
    held.set_keys(["KeyW", "KeyA"], seq=6)
    assert held.read().action == "move_left"
    held.set_keys([], seq=7)
    assert held.read().action == "noop"
    held.set_action("do", seq=8)
    assert held.read().action == "do" and held.read().seq == 8
    held.set_action("noop", seq=9)
    assert held.read().action == "noop"
    with pytest.raises(ValueError, match="valid actions"):
        held.set_action("fly")


def test_since_is_reported_only_after_a_change():
    clock = FakeClock()
    held = HeldInput(clock=clock.now)
    held.press("KeyA")
    first = held.read()
    assert first.since == clock.now()
    assert held.read().since is None  # unchanged: no input-to-frame latency to report


def test_keymap_rejects_double_bindings_and_unknown_actions(tmp_path):
    with pytest.raises(ValueError, match="bound to both"):
        make_keymap({"do": ["Space"]}, {"pause": ["Space"]})
    with pytest.raises(ValueError, match="valid actions"):
        make_keymap({"jump": ["Space"]})
    bad = tmp_path / "keys.json"
    bad.write_text('{"actions": {"do": "Space"}}')
    with pytest.raises(ValueError, match=r"keys.json.*do must be a list"):
        load_bindings(bad)
    bad.write_text('{"commands": {"fly": ["KeyX"]}}')
    with pytest.raises(ValueError, match="unknown command 'fly'"):
        load_bindings(bad)
    good = tmp_path / "good.json"
    good.write_text('{"actions": {"do": ["KeyE"]}, "commands": {"quit": ["F10"]}}')
    actions, commands = load_bindings(good)
    assert actions["do"] == ("KeyE",) and commands["quit"] == ("F10",) and actions["move_left"] == ("KeyA", "ArrowLeft")


def test_scripted_controller_ends_the_loop_cleanly():
    frames = []
    script = ScriptedController(["move_left", "do", 2])  # names or indices
    loop = RealtimeLoop(lambda a: frame_of(len(frames)), script, lambda f, t: frames.append(t.action), tick_hz=1000)
    loop.start()
    assert loop.finished.wait(10)
    loop.stop()
    assert frames == ["move_left", "do", "move_right"]
    assert loop.error is None and not loop.running
    bad = ScriptedController(["noop", "jump"])
    bad.read()
    with pytest.raises(ValueError, match=r"#1.*valid actions"):
        bad.read()
    then = ScriptedController(iter(["do"]), then="noop")
    assert [then.read().action for _ in range(3)] == ["do", "noop", "noop"]


def test_thread_pause_resume_call_and_stop():
    enough = threading.Event()
    target = {"n": 5}
    frames = []

    def on_frame(f, t):
        frames.append(t.index)
        if len(frames) >= target["n"]:
            enough.set()

    loop = RealtimeLoop(lambda a: frame_of(0), lambda: "noop", on_frame, tick_hz=500)
    with loop:
        assert enough.wait(10)
        loop.pause()
        # call() runs between ticks on the loop thread, also while paused
        n1 = loop.call(lambda: loop.ticks)
        thread = loop.call(lambda: threading.current_thread())
        n2 = loop.call(lambda: loop.ticks)
        assert thread is loop._thread
        assert n1 == n2  # no ticks while paused
        enough.clear()
        target["n"] = len(frames) + 5
        loop.resume()
        assert enough.wait(10)
    assert not loop.running and loop.finished.is_set()
    with pytest.raises(LoopStopped):
        loop.submit(lambda: None).result(1)


def test_tick_errors_stop_the_loop_and_are_kept():
    def boom(action):
        raise RuntimeError("model exploded")

    loop = RealtimeLoop(boom, lambda: "noop", tick_hz=100)
    loop.start()
    assert loop.finished.wait(10)
    loop.stop()
    assert isinstance(loop.error, RuntimeError) and "exploded" in str(loop.error)


def test_none_frame_means_nothing_to_show():
    shown = []
    loop = RealtimeLoop(lambda a: None if a == "rewind" else frame_of(1), ScriptedController(["do", "rewind", "do"], extra=["rewind"]),
                        lambda f, t: shown.append(t.action))
    while loop.step_now() is not None:
        pass
    assert shown == ["do", "do"] and loop.ticks == 3


def test_step_now_refuses_while_running_and_tick_hz_is_validated():
    loop = RealtimeLoop(lambda a: frame_of(0), lambda: "noop", tick_hz=200)
    with pytest.raises(ValueError, match="tick_hz"):
        loop.tick_hz = 0
    with loop:
        with pytest.raises(RuntimeError, match="step_now"):
            loop.step_now()
    assert resolve_tick_hz(None, None) == 5.0
    assert resolve_tick_hz(12, None) == 12.0

    class W:
        tick_hz = 8.0

    assert resolve_tick_hz(None, W()) == 8.0
