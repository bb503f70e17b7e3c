"""Revisits counted in the world's own walk (a measurement, not yet an eval protocol).

`worldsim eval --protocols revisits` replays the real actions open loop and looks for the block where the real
player's walk puts it; a world whose walk left the recorded one (a creature that stepped elsewhere blocked a
move) fails it even with a perfect memory: the real game with other luck keeps the block in 37.7% of frames.
Here the block's cell is followed with the session's own pose track: for each revisit event of the held-out
episodes, once the world's own walk has had the cell out of view for more than the context (15 frames) and
brings it back on screen, is the placed block drawn there?

    python scripts/own_walk_revisits.py luck            # the real game with other luck (RealGameWorld reseeded)
    python scripts/own_walk_revisits.py memory [KEY=true|false ...]   # an engine preset of the shipped world
"""

import sys

import numpy as np

from worldsim.actions import ACTION_NAMES
from worldsim.eval.cli import default_cache_dir
from worldsim.eval.protocols import EVAL_PRESETS, _events, load_episodes, look_end
from worldsim.eval.tiles import get_classifier
from worldsim.memory import frame_lighting


def main(which: str, options: list[str]) -> None:
    cfg = EVAL_PRESETS["full"]
    eps = load_episodes(default_cache_dir(), cfg, progress=False)
    k, clf = cfg.context, get_classifier(72)
    if which == "luck":
        from worldsim.eval.reference import RealGameWorld

        world, pose = RealGameWorld(eps, reseed=True), (lambda s: np.array(s.env.pos))
    else:
        from engine import World

        opts = {kv.split("=")[0]: kv.split("=")[1] == "true" for kv in options}
        world, pose = World.load(preset=which, **opts), (lambda s: s._state.memory.current_pose.copy())
    evs = _events(eps, cfg.revisits)
    events = frames_back = kept = 0
    for i, (e, (t_place, _, t_back, x, y, placed)) in enumerate(evs):
        ep = eps[e]
        t_end = look_end(ep, int(t_back), cfg)
        frames, acts = ep.context(t_place, k)
        s = world.new_session(context=frames, actions=acts, seed=cfg.sample_seed + i)
        target = pose(s) + (np.array([x, y]) - ep.pos[t_place])  # the block's cell in the world's own coordinates
        away, returned, counted = 0, False, False
        for t in range(t_place, t_end):
            f = s.step(ACTION_NAMES[int(ep.actions[t])])
            d = target - pose(s)
            if abs(d[0]) > 4 or abs(d[1]) > 3:
                away += 1
                continue
            returned = returned or away > k
            away = 0
            if not returned:
                continue
            events += not counted
            counted = True
            lit = frame_lighting(f)
            if lit is None:
                continue
            labels = clf.classify(f[None], np.array([lit[0]], np.float32), np.array([lit[1]])).labels[0]
            frames_back += 1
            kept += int(labels[3 + d[1], 4 + d[0]] == placed)
    print(f"{which} {' '.join(options)}: {events} of {len(evs)} events came back in the world's own walk, "
          f"{frames_back} frames with the cell on screen, block there in {kept / max(frames_back, 1):.1%}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
