"""`worldsim play` under SDL's dummy video driver: real pygame key events -> actions -> frames."""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np
import pytest

pygame = pytest.importorskip("pygame")

from controllers.actionlog import read_log, replay_frames  # noqa: E402
from controllers.play import PlayApp, PlayConfig  # noqa: E402


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world  # tests/conftest.py


@pytest.fixture
def app(world, tmp_path):
    a = PlayApp(world, PlayConfig(out_dir=str(tmp_path / "out"), rewind=50, scale=4))
    pygame.event.clear()  # start from an empty queue (window events from set_mode)
    yield a
    a.close()


def key(kind, k, scancode=0):
    """Post a real pygame key event (keysym k; an SDL scancode if given)."""
    pygame.event.post(pygame.event.Event(kind, key=k, scancode=scancode, mod=0, unicode=""))


def down(k, scancode=0):
    key(pygame.KEYDOWN, k, scancode)


def up(k, scancode=0):
    key(pygame.KEYUP, k, scancode)


def tick(app):
    """Pump the posted events, then run one tick; -> (frame or None, Tick)."""
    app.pump()
    return app.loop.step_now()


def test_keys_drive_actions_and_frames_match_the_world(app, world):
    ref = world.new_session(seed=0)
    assert np.array_equal(app.frame, ref.frame)
    got = []
    down(pygame.K_a)
    got.append(tick(app))  # A held: move_left
    got.append(tick(app))  # still held
    down(pygame.K_RIGHT)
    got.append(tick(app))  # Right pressed later: it wins
    up(pygame.K_RIGHT)
    got.append(tick(app))  # back to A
    up(pygame.K_a)
    down(pygame.K_SPACE)
    up(pygame.K_SPACE)
    got.append(tick(app))  # a tap between two ticks still counts once
    got.append(tick(app))  # nothing held
    actions = [t.action for _, t in got]
    assert actions == ["move_left", "move_left", "move_right", "move_left", "do", "noop"]
    for (frame, _), a in zip(got, actions):
        assert np.array_equal(frame, ref.step(a))  # the frames are the world's, step for step
    assert np.array_equal(app.frame, ref.frame)  # and the window shows the latest
    app.draw()  # HUD with fps + latency renders


def test_physical_scancode_wins_over_layout_keysym(app):
    # On an AZERTY keyboard the key in the QWERTY 'A' position reports keysym 'q': it must still move left.
    down(pygame.K_q, scancode=pygame.KSCAN_A)
    _, t = tick(app)
    assert t.action == "move_left"
    assert app.running  # and it is not taken as the Q (quit) command


def test_rewind_restores_earlier_frames_exactly(app, world):
    frames = [app.frame.copy()]
    for k in (pygame.K_d, pygame.K_s, pygame.K_SPACE):
        down(k)
        frames.append(tick(app)[0].copy())
        up(k)
    after = app.frame.copy()
    down(pygame.K_BACKSPACE)  # held: one step back per tick
    f1, t1 = tick(app)
    f2, _ = tick(app)
    up(pygame.K_BACKSPACE)
    assert t1.action == "rewind"
    assert np.array_equal(f1, frames[2]) and np.array_equal(f2, frames[1])
    assert np.array_equal(app.frame, frames[1])
    # continuing after a rewind replays the original future exactly
    down(pygame.K_s)
    f, _ = tick(app)
    up(pygame.K_s)
    assert np.array_equal(f, frames[2])
    down(pygame.K_SPACE)
    f, _ = tick(app)
    up(pygame.K_SPACE)
    assert np.array_equal(f, after)


def test_rewind_past_the_start_shows_nothing_new(app):
    start = app.frame.copy()
    down(pygame.K_BACKSPACE)
    frame, t = tick(app)
    assert frame is None and t.action == "rewind"
    assert np.array_equal(app.frame, start)


def test_overlay_pause_screenshot_reset_and_quit(app, world):
    assert not app.show_help
    down(pygame.K_h)
    app.pump()
    assert app.show_help
    app.draw()
    rows = dict(app.help_rows())
    assert rows["move left"] == "A, Left" and rows["rewind"] == "Backspace"
    down(pygame.K_h)
    app.pump()
    assert not app.show_help

    down(pygame.K_ESCAPE)
    app.pump()
    assert app.loop.paused
    down(pygame.K_ESCAPE)
    app.pump()
    assert not app.loop.paused

    down(pygame.K_F2)
    app.pump()
    shots = list((app.out / "screenshots").glob("*.png"))
    assert len(shots) == 1
    from PIL import Image

    img = np.asarray(Image.open(shots[0]).convert("RGB"))
    assert img.shape == (72 * 4, 72 * 4, 3)
    assert np.array_equal(img[::4, ::4], app.frame)  # nearest-neighbour upscale of the frame on screen

    down(pygame.K_d)
    tick(app)
    up(pygame.K_d)
    down(pygame.K_n)  # new start with the next seed
    app.pump()
    assert np.array_equal(app.frame, world.new_session(seed=1).frame)

    down(pygame.K_q)
    app.pump()
    assert not app.running


def test_save_and_load_a_game(app, world):
    down(pygame.K_w)
    tick(app)
    up(pygame.K_w)
    down(pygame.K_F5)
    app.pump()
    saved = app.frame.copy()
    down(pygame.K_SPACE)
    expected_next = tick(app)[0].copy()
    up(pygame.K_SPACE)
    tick(app)
    assert not np.array_equal(app.frame, saved)
    down(pygame.K_F9)
    app.pump()
    assert np.array_equal(app.frame, saved)
    down(pygame.K_SPACE)
    assert np.array_equal(tick(app)[0], expected_next)  # the loaded game continues exactly
    up(pygame.K_SPACE)
    # the save is an ordinary session file
    s = world.load_session(app.out / "saves" / "quicksave")
    assert np.array_equal(s.frame, saved)


def test_recording_writes_a_gif_and_a_log_that_replays_identically(app, world):
    down(pygame.K_d)
    tick(app)  # recording starts mid-game: the log starts from a saved copy of this state
    up(pygame.K_d)
    live = []
    app.loop.on_frame = lambda f, t: (app._on_frame(f, t), live.append(f.copy()))
    down(pygame.K_F3)
    app.pump()
    live.insert(0, app.frame.copy())
    for k in (pygame.K_a, pygame.K_BACKSPACE, pygame.K_SPACE, pygame.K_s):
        down(k)
        tick(app)
        up(k)
    down(pygame.K_F3)
    app.pump()
    paths = app.recording_paths
    gif = next(p for p in paths if p.suffix == ".gif")
    log_path = next(p for p in paths if p.suffix == ".wslog")
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == len(live) == 5
    log = read_log(log_path)
    assert log.header.world_id == world.id and log.header.start_session is not None
    assert [e[0] for e in log.events] == ["step", "rewind", "step", "step"]
    replayed = list(replay_frames(world, log))
    assert len(replayed) == len(live)
    for a, b in zip(replayed, live):
        assert np.array_equal(a, b)


def test_run_exits_cleanly_on_window_close(world, tmp_path):
    app = PlayApp(world, PlayConfig(out_dir=str(tmp_path), tick_hz=50))
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    app.run()  # starts the loop thread, sees QUIT, stops and joins it
    assert not app.loop.running and app.loop.error is None


def test_cli_rejects_bad_key_file(tmp_path, capsys):
    from worldsim.cli import main

    bad = tmp_path / "keys.json"
    bad.write_text('{"actions": {"do": ["KeyA"]}}')  # KeyA already moves left
    assert main(["play", "--keys", str(bad), "--world", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "keys.json" in err and "bound to both" in err
