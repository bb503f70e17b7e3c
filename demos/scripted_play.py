"""Play a world with a scripted controller through the real-time loop, record it, replay it, compare.

    python demos/scripted_play.py [--world DIR] [--out DIR] [--tick-hz 8] [--tiny]

Writes OUT/demo.wslog (the action log) and OUT/demo.gif (the live frames), then re-renders the log
and checks that every replayed frame equals the live one. ``--tiny`` uses a random-weight tiny world
(no trained world needed). Prints frames/s and input-to-frame latency.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from controllers.actionlog import ActionLogWriter, LogHeader, Timeline, read_log, replay_frames
from controllers.input import ScriptedController
from controllers.replay import VideoWriter
from engine import World
from engine.loop import RealtimeLoop, resolve_tick_hz


def walk():
    """A small scripted route: wander, hit things, place a table, come back."""
    for leg in itertools.cycle([("move_left", 4), ("do", 2), ("move_up", 3), ("place_table", 1), ("move_right", 4), ("move_down", 3)]):
        action, n = leg
        yield from [action] * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None, help="world directory (default: the default world)")
    ap.add_argument("--tiny", action="store_true", help="use a random-weight tiny world instead")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--out", default=None, help="output folder (default: a temp dir)")
    ap.add_argument("--ticks", type=int, default=40)
    ap.add_argument("--tick-hz", type=float, default=None, help="pace (default: the world's); 0 = as fast as possible")
    args = ap.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="worldsim-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from engine.testing import make_tiny_world

        args.world = str(make_tiny_world(out / "tiny-world"))
    world = World.load(args.world, backend=args.backend)
    hz = 1e6 if args.tick_hz == 0 else resolve_tick_hz(args.tick_hz, world)

    session = world.new_session(seed=0)
    timeline = Timeline(session, lambda s: world.new_session(seed=s))
    log = ActionLogWriter(out / "demo.wslog", LogHeader(world.id, world.backend_name, world.preset_name, hz, seed=0))
    video = VideoWriter(out / "demo.gif", fps=min(hz, 25), scale=4)
    live = [session.frame.copy()]
    video.append(session.frame)
    latencies = []

    def tick(action: str) -> np.ndarray:
        log.step(action)
        return timeline.step(action)

    def on_frame(frame: np.ndarray, t) -> None:
        live.append(frame.copy())
        video.append(frame)
        latencies.append(t.latency_s)

    script = ScriptedController(itertools.islice(walk(), args.ticks))
    loop = RealtimeLoop(tick, script, on_frame, tick_hz=hz)
    loop.start()
    loop.finished.wait()
    loop.stop()
    if loop.error is not None:
        raise loop.error
    log.close()
    video.close()
    print(f"played {loop.ticks} ticks at {loop.fps:.1f} frames/s (target {hz:g} Hz), "
          f"input-to-frame latency median {1000 * float(np.median(latencies)):.1f} ms, max {1000 * max(latencies):.1f} ms")

    replayed = list(replay_frames(world, read_log(out / "demo.wslog")))
    same = len(replayed) == len(live) and all(np.array_equal(a, b) for a, b in zip(replayed, live))
    print(f"replay of {out / 'demo.wslog'}: {len(replayed)} frames, identical to live: {same}")
    print(f"wrote {out / 'demo.gif'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
