"""Evaluation protocols on held-out episodes (env seeds >= 1,000,000), for any world with the session API.

1. ``one_step``: real context, one action, compare the next frame (pixels, tiles, action following,
   inventory).
2. ``rollouts``: open-loop rollouts of up to ``rollout_len`` frames from real context with the real
   actions; metrics per horizon step, summarised over the first 16 / 64 / 256 frames. Persistent tiles are
   also scored in the world's own walk (``own_walk_persistent``: once a walk parts from the real one, at
   ground the context never showed or a creature's other step, every tile is misplaced) next to the share
   of frames whose walk is the real one.
3. ``revisits``: the recorder's A -> B -> A events: context ends when the block is placed at A, the
   world plays the real actions until the player stands beside A again: is the block still there,
   and does the area around A look as it did?
   ``revisits_own``: the same events followed in the world's own walk (the block's cell tracked with the
   walk the world's frames show, the area compared with what the world itself showed before leaving).
4. Action following is scored inside ``one_step`` (and open-loop inside ``long_run``).
5. ``long_run``: 1000+ frames of play with the recorded actions: do the tile classes stay those of
   a Crafter world, and how many tiles does no texture explain?

Worlds are duck-typed (``action_names``, ``frame_shape``, ``new_session(context, actions, seed)``,
``session.step(action)``); nothing here imports the engine. Generated frames are read with the real
game's lighting at the same step (daylight is a function of the step; sleep follows the actions) unless
they are clearly lit otherwise, and tiles are compared with the real frames read by the same classifier,
so the real game (``RealGameWorld``) scores exactly 1 and classifier errors never count against a world.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import ACTION_NAMES
from worldsim.eval import metrics as M
from worldsim.eval.reader import reading_with
from worldsim.eval.tiles import (ARROW, COAL, COW, DIAMOND, IRON, PATH, PLAYER, PLAYER_COL, PLAYER_ROW, SAND, SEMANTIC_NAMES, SKELETON, SPRITE_FACING, STONE,
                                 VIEW_COLS, VIEW_ROWS, ZOMBIE, get_classifier)

EVAL_SEEDS_START = 1_000_000       # held-out env seeds (worldsim.data.format.EVAL_SEEDS_START)
LOOKING = 4                         # recorder segment label: standing beside A, facing it


@dataclass(frozen=True)
class EvalConfig:
    """How much of each protocol to run; frames are at ``size`` pixels."""

    name: str = "full"
    episodes: int = 8              # held-out episodes recorded (and cached)
    episode_len: int = 1200        # frames per episode (>= context + long_run_len)
    seed: int = EVAL_SEEDS_START   # env seed of the first episode
    size: int = 72
    context: int = 16              # real frames given to a session (capped by the world's window)
    one_step: int = 1000           # one-step samples
    rollouts: int = 16             # open-loop rollouts
    rollout_len: int = 256
    horizons: tuple[int, ...] = (16, 32, 64, 256)  # 32: the open-loop horizon of the world-model quality bar (#3)
    revisits: int = 40             # revisit events (at most; as many as the episodes hold)
    look_max: int = 30             # frames after A is back on screen that are scored (the looking segment)
    long_runs: int = 4
    long_run_len: int = 1000
    long_run_window: int = 250
    sample_seed: int = 0           # which samples/starts are drawn

    def __post_init__(self) -> None:
        if self.seed < EVAL_SEEDS_START:
            raise ValueError(f"eval seeds must be held out: --seed must be >= {EVAL_SEEDS_START}, got {self.seed}")
        for f in ("episodes", "episode_len", "context", "rollout_len", "long_run_window"):
            if getattr(self, f) < 1:
                raise ValueError(f"eval config: {f} must be >= 1, got {getattr(self, f)}")
        for f in ("one_step", "rollouts", "revisits", "long_runs", "long_run_len"):
            if getattr(self, f) < 0:
                raise ValueError(f"eval config: {f} must be >= 0, got {getattr(self, f)}")
        if any(h < 1 or h > self.rollout_len for h in self.horizons):
            raise ValueError(f"eval config: horizons {self.horizons} must lie in 1..rollout_len ({self.rollout_len})")
        if self.long_runs and self.context + self.long_run_len > self.episode_len:
            raise ValueError(f"eval config: context + long_run_len ({self.context} + {self.long_run_len}) must fit in "
                             f"episode_len ({self.episode_len})")
        if self.rollouts and self.context + self.rollout_len > self.episode_len:
            raise ValueError(f"eval config: context + rollout_len must fit in episode_len ({self.episode_len})")


EVAL_PRESETS: dict[str, EvalConfig] = {
    # a few minutes on a 2-core CPU with a small world
    "quick": EvalConfig(name="quick", episodes=2, one_step=64, rollouts=3, revisits=4, long_runs=1),
    # under an hour
    "full": EvalConfig(name="full"),
}


@dataclass
class Episode:
    """One recorded held-out episode (fields as in worldsim.data; row t describes frame t)."""

    seed: int
    frames: np.ndarray          # (N, S, S, 3) uint8
    actions: np.ndarray         # (N,) actions[t] taken on frame t
    pos: np.ndarray             # (N, 2) (x, y)
    facing: np.ndarray          # (N, 2)
    daylight: np.ndarray        # (N,)
    sleeping: np.ndarray        # (N,)
    semantic: np.ndarray        # (N, 7, 9)
    inventory: np.ndarray       # (N, 16)
    revisit: np.ndarray         # (N,) segment labels
    revisit_events: np.ndarray  # (M, 6) t_place, t_leave_view, t_back_in_view, x, y, placed id

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_arrays(cls, seed: int, arrays: dict[str, np.ndarray]) -> "Episode":
        """Build from a recorder/loader dict of arrays."""
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
        missing = [f for f in fields if f not in arrays]
        if missing:
            raise ValueError(f"episode of seed {seed} lacks fields {missing}")
        return cls(seed=int(seed), **{f: np.asarray(arrays[f]) for f in fields})

    def context(self, t: int, k: int) -> tuple[np.ndarray, list[str | None]]:
        """Real context ending at frame t: frames (<=k, S, S, 3) and action names (the last is None)."""
        a = max(0, t - k + 1)
        acts: list[str | None] = [ACTION_NAMES[int(x)] for x in self.actions[a:t]]
        return self.frames[a:t + 1], acts + [None]


def load_episodes(cache_dir: str | Path, cfg: EvalConfig, progress: bool = True,
                  log: Callable[[str], None] = print) -> list[Episode]:
    """Record (once; cached under ``cache_dir``) and load the held-out episodes of ``cfg``."""
    from worldsim.data import open_dataset
    from worldsim.data.record import record_dataset

    root = Path(cache_dir) / f"eval-seed{cfg.seed}-n{cfg.episodes}-len{cfg.episode_len}-s{cfg.size}"
    ds = None
    if (root / "manifest.json").exists():
        try:
            ds = open_dataset(root)
            if not ds.complete:
                ds = None
        except ValueError:
            ds = None
    if ds is None:
        log(f"recording {cfg.episodes} held-out episodes (seeds {cfg.seed}..{cfg.seed + cfg.episodes - 1}) into {root}")
        record_dataset(root, frames=cfg.episodes * cfg.episode_len, seed=cfg.seed, workers=1,
                       size=cfg.size, episode_len=cfg.episode_len, allow_eval_seeds=True, progress=progress,
                       log=log)
        ds = open_dataset(root)
    store = ds.load("eval")
    return [Episode.from_arrays(meta["seed"], ep) for meta, ep in zip(store.meta, store.episodes)]


# ----- helpers ----------------------------------------------------------------------------------
def _bar(total: int, desc: str, enabled: bool):
    """A tqdm progress bar (or a silent stand-in)."""
    if not enabled:
        class _No:
            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass
        return _No()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False)


def _facing_from_templates(clf, template_ids: np.ndarray) -> np.ndarray:
    """(N, 2) facing of the player sprite at the centre tile; (0, 0) when it is not a facing sprite."""
    table = np.zeros((len(clf.templates), 2), np.int64)
    for i, t in enumerate(clf.templates):
        if t.sprite in SPRITE_FACING:
            table[i] = SPRITE_FACING[t.sprite]
    return table[template_ids[..., PLAYER_ROW, PLAYER_COL]]


def _rollout(world: Any, ep: Episode, start: int, length: int, k: int, seed: int, bar) -> np.ndarray:
    """Generate frames start+1 .. start+length from real context ending at ``start``: (length, S, S, 3)."""
    frames, acts = ep.context(start, k)
    session = world.new_session(context=frames, actions=acts, seed=seed)
    out = np.empty((length,) + ep.frames.shape[1:], np.uint8)
    for i in range(length):
        out[i] = session.step(ACTION_NAMES[int(ep.actions[start + i])])
        bar.update(1)
    return out


def _read(clf, pred: np.ndarray, true: np.ndarray, day: np.ndarray, sleep: np.ndarray):
    """Read generated and real frames into tiles: -> (pred TileReading, real labels, lighting matched (F,)).

    The real frames are read with the game's lighting; the generated ones with the same lighting unless
    they are clearly lit otherwise (then with their own, so that content is scored apart from time of day).
    Comparing the world's tiles with the *read* real tiles makes a perfect world score exactly 1.
    """
    d, s, match = clf.choose_lighting(pred, day, sleep)
    return clf.read_generated(pred, d, s), clf.classify(true, day, sleep), match


def _rates(tally: M.Tally, names: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for n in names:
        out[n] = tally.rate(n)
        out[n + "_n"] = tally.counts.get(n, 0)
    return out


TILE_KEYS = ("tile_all", "tile_non_grass", "tile_persistent", "tile_changed", "tile_new")
# rollouts also score persistent tiles in the world's own walk (own_walk_persistent) and how often that walk is
# still the real one
OWN_KEYS = ("tile_persistent_own", "tile_persistent_own_non_grass", "walk_aligned")
# rollout tile scores also split by the real game's frame: the player awake by day, or night/asleep (a sleeping
# player's view is dark and still, which copy-last gets right for free); "asleep" is the sleeping part of the latter
DAY_SPLIT = ("tile_non_grass", "tile_persistent")
DAY_PARTS = ("day", "night", "asleep")


# ----- 1 + 4. one step, action following ---------------------------------------------------------
def one_step(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, progress: bool = True,
             label: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Predict one frame from real context at ``cfg.one_step`` random points; -> (metrics, samples)."""
    k = cfg.context
    pool = [(e, t) for e, ep in enumerate(episodes) for t in range(k - 1, len(ep) - 1)]
    rng = np.random.default_rng(cfg.sample_seed)
    n = min(cfg.one_step, len(pool))
    picks = sorted(pool[i] for i in rng.choice(len(pool), n, replace=False)) if n else []
    if not picks:
        return {"samples": 0}, {}
    S = episodes[0].frames.shape[1:]
    pred = np.empty((n,) + S, np.uint8)
    bar = _bar(n, f"one-step [{label}]", progress)
    t0 = time.perf_counter()
    for i, (e, t) in enumerate(picks):
        frames, acts = episodes[e].context(t, k)
        session = world.new_session(context=frames, actions=acts, seed=cfg.sample_seed + i)
        pred[i] = session.step(ACTION_NAMES[int(episodes[e].actions[t])])
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0

    E = np.array([p[0] for p in picks])
    T = np.array([p[1] for p in picks])
    g = lambda name, dt=0: np.stack([getattr(episodes[e], name)[t + dt] for e, t in picks])  # noqa: E731
    true_next, day, sleep = g("frames", 1), g("daylight", 1), g("sleeping", 1)
    clf = get_classifier(S[0])
    reading, true_read, match = _read(clf, pred, true_next, day, sleep)
    pred_lab, true_lab, prev_lab = reading.labels, true_read.labels, g("semantic")
    sem_next = g("semantic", 1)
    seen = np.stack([
        M.last_seen(episodes[e].semantic[max(0, t - k + 1):t + 1], episodes[e].pos[max(0, t - k + 1):t + 1],
                    episodes[e].pos[t + 1][None])[0]
        for e, t in picks])
    tally = M.tile_scores(pred_lab, true_lab, M.tile_masks(sem_next, seen))
    actions = g("actions")
    delta = g("pos", 1).astype(np.int64) - g("pos").astype(np.int64)
    M.action_following(prev_lab, sem_next, pred_lab, actions, delta,
                       facing_next=_facing_from_templates(clf, true_read.template),
                       pred_facing=_facing_from_templates(clf, reading.template), facing_prev=g("facing"), tally=tally,
                       next_ref=true_lab)
    M.inventory_scores(clf.read_inventory(pred), g("inventory", 1), tally)
    p, s = M.psnr(pred, true_next), M.ssim(pred, true_next)
    night = day < 0.5
    is_move = np.isin(actions, list(M.MOVE_ACTIONS))
    out: dict[str, Any] = {
        "samples": n,
        "psnr": float(p.mean()), "psnr_day": M.mean_or_none(p[~night]), "psnr_night": M.mean_or_none(p[night]),
        "psnr_move": M.mean_or_none(p[is_move]), "psnr_other": M.mean_or_none(p[~is_move]),
        "ssim": float(s.mean()), "ssim_day": M.mean_or_none(s[~night]), "ssim_night": M.mean_or_none(s[night]),
        "unexplained": float(reading.unexplained.mean()),
        "lighting_match": float(match.mean()),
        "action_following": M.following_score(tally),
        "seconds": seconds, "frames_per_s": n / seconds if seconds > 0 else None,
        "points": [[int(e), int(t)] for e, t in picks],
    }
    out.update(_rates(tally, TILE_KEYS))
    out.update(_rates(tally, [k_ for k_ in sorted(tally.counts) if k_.startswith(("follow_", "inventory_"))]))
    samples = {"pred": pred[:8], "true": true_next[:8], "prev": g("frames")[:8], "episode": E[:8], "t": T[:8]}
    return out, samples


# ----- 2. open-loop rollouts ---------------------------------------------------------------------
def _starts(episodes: Sequence[Episode], count: int, k: int, length: int, seed: int) -> list[tuple[int, int]]:
    """``count`` rollout starts (episode, last context frame) spread over the episodes."""
    pool = [(e, t) for e, ep in enumerate(episodes) for t in range(k - 1, len(ep) - length)]
    if not pool or count == 0:
        return []
    rng = np.random.default_rng(seed + 1)
    idx = rng.choice(len(pool), min(count, len(pool)), replace=False)
    return sorted(pool[i] for i in idx)


_TERRAIN_ACTIONS = frozenset(ACTION_NAMES.index(a) for a in ("do", "place_stone", "place_table", "place_furnace", "place_plant"))


def own_walk_persistent(clf: Any, ep: Episode, s: int, k: int, pred: np.ndarray, pred_labels: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Persistent tiles in the world's own walk: where the context showed a static material that the real game
    never changed, does the world still show it at the cell its own walk puts there? pred uint8 (L,S,S,3) and
    its tile labels (L,7,9) continue the real context ending at frame ``s`` -> (scored (L,7,9), right (L,7,9),
    walk aligned with the real walk (L,), the class each cell should show (L,7,9)).

    The plain persistent score compares with the real frame at the real position: once the world's walk leaves
    the real one (a move blocked by terrain the context never showed, a creature's other step) every tile is
    misplaced, however well the world keeps its scene. Here the walk is read from the world's frames (as in
    ``revisits_own``); cells beside the world's player after a do/place action are not scored (its own changes),
    nor cells whose real material changed during the rollout, nor ground that a creature the world drew stands on."""
    from worldsim.memory import track_poses

    L = len(pred)
    ctx = slice(s - k + 1, s + 1)
    ctx_read = clf.classify(ep.frames[ctx], ep.daylight[ctx], ep.sleeping[ctx]).labels
    acts = ep.actions[s:s + L + 1]
    walk = track_poses(np.concatenate([ep.frames[s:s + 1], pred]), acts)       # (L+1, 2), 0 at frame s
    own = ep.pos[s][None].astype(np.int64) + walk[1:]
    seen = M.last_seen(ctx_read, ep.pos[ctx], own)                                # (L,7,9) read classes
    ref = M.last_seen(ep.semantic[ctx], ep.pos[ctx], own)                        # the true classes there
    scored = (seen != M.UNSEEN) & ~M.IS_OBJECT[np.where(seen == M.UNSEEN, 0, seen)] & (seen == ref)
    # cells whose real material changed by frame j (the real player mined or placed there): not persistent
    sem = ep.semantic[s + 1:s + 1 + L]
    before = M.last_seen(ep.semantic[ctx], ep.pos[ctx], ep.pos[s + 1:s + 1 + L])   # the context's class there
    rx, ry = M.view_cells(ep.pos[s + 1:s + 1 + L])
    changed: dict[tuple[int, int], int] = {}
    for j, r, c in zip(*np.nonzero((before != M.UNSEEN) & (sem != before) & ~np.isin(sem, _MOVERS))):  # j ascending
        changed.setdefault((int(rx[j, r, c]), int(ry[j, r, c])), int(j))
    ox, oy = M.view_cells(own)
    touched: set[tuple[int, int]] = set()
    for j in range(L):
        if int(acts[j]) in _TERRAIN_ACTIONS:   # the action on frame j-1 (j=0: the context's last) made frame j
            px, py = (int(v) for v in (ep.pos[s] + walk[j]))
            touched.update({(px + dx, py + dy) for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))})
        for r, c in zip(*np.nonzero(scored[j])):
            key = (int(ox[j, r, c]), int(oy[j, r, c]))
            if key in touched or changed.get(key, L) <= j:
                scored[j, r, c] = False
    # a creature (or the player) standing on ground it may walk on hides the cell without contradicting it
    scored &= ~(np.isin(pred_labels, _MOVERS) & np.isin(seen, (M.GRASS, SAND, PATH)))
    real = ep.pos[s:s + L + 1].astype(np.int64) - ep.pos[s]
    return scored, scored & (pred_labels == seen), (walk[1:] == real[1:]).all(-1), seen


def rollouts(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, progress: bool = True,
             label: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Open-loop rollouts with the real actions; per-step curves and per-horizon summaries."""
    k, L = cfg.context, cfg.rollout_len
    starts = _starts(episodes, cfg.rollouts, k, L, cfg.sample_seed)
    if not starts:
        return {"rollouts": 0}, {}
    S = episodes[0].frames.shape[1:]
    clf = get_classifier(S[0])
    names = ("psnr", "ssim", "unexplained", "lighting_match")
    sums = {n: np.zeros(L) for n in names}
    keys = TILE_KEYS + tuple(f"{n}_{part}" for n in DAY_SPLIT for part in DAY_PARTS) + OWN_KEYS
    hits = {n: np.zeros(L) for n in keys}
    counts = {n: np.zeros(L) for n in keys}
    split = {n: np.zeros(L) for n in ("psnr_day", "ssim_day", "n_day", "psnr_night", "ssim_night", "n_night")}
    samples: dict[str, np.ndarray] = {}
    bar = _bar(len(starts) * L, f"rollouts [{label}]", progress)
    seconds = 0.0
    for i, (e, s) in enumerate(starts):
        ep = episodes[e]
        t0 = time.perf_counter()
        pred = _rollout(world, ep, s, L, k, cfg.sample_seed + i, bar)
        seconds += time.perf_counter() - t0
        sl = slice(s + 1, s + 1 + L)
        true, day, sleep = ep.frames[sl], ep.daylight[sl], ep.sleeping[sl]
        reading, true_read, match = _read(clf, pred, true, day, sleep)
        seen = M.last_seen(ep.semantic[s - k + 1:s + 1], ep.pos[s - k + 1:s + 1], ep.pos[sl])
        masks = M.tile_masks(ep.semantic[sl], seen)
        right = reading.labels == true_read.labels
        awake_day = ((day >= 0.5) & ~sleep)[:, None, None]  # frames where the real player is awake by day
        asleep = sleep.astype(bool)[:, None, None]
        for name, m in masks.items():
            hits["tile_" + name] += (right & m).sum((-2, -1))
            counts["tile_" + name] += m.sum((-2, -1))
            if "tile_" + name in DAY_SPLIT:
                for part, pm in (("day", m & awake_day), ("night", m & ~awake_day), ("asleep", m & asleep)):
                    hits[f"tile_{name}_{part}"] += (right & pm).sum((-2, -1))
                    counts[f"tile_{name}_{part}"] += pm.sum((-2, -1))
        p, q = M.psnr(pred, true), M.ssim(pred, true)
        sums["psnr"] += p
        sums["ssim"] += q
        night = day < 0.5      # night noise is random: pixel metrics have a lower ceiling there
        for part, m in (("day", ~night), ("night", night)):
            split["psnr_" + part] += np.where(m, p, 0.0)
            split["ssim_" + part] += np.where(m, q, 0.0)
            split["n_" + part] += m
        sums["unexplained"] += reading.unexplained.mean((-2, -1))
        sums["lighting_match"] += match
        scored, right_own, aligned, kept = own_walk_persistent(clf, ep, s, k, pred, reading.labels)
        for name, m in (("tile_persistent_own", scored), ("tile_persistent_own_non_grass", scored & (kept != M.GRASS))):
            hits[name] += (right_own & m).sum((-2, -1))
            counts[name] += m.sum((-2, -1))
        hits["walk_aligned"] += aligned
        counts["walk_aligned"] += 1
        if i == 0:
            samples = {"pred": pred, "true": true, "context_last": ep.frames[s], "episode": np.array(e), "start": np.array(s)}
    bar.close()
    n = len(starts)
    curves = {name: (sums[name] / n).tolist() for name in names}
    for name in keys:
        curves[name] = [float(h / c) if c else None for h, c in zip(hits[name], counts[name])]
    out: dict[str, Any] = {"rollouts": n, "length": L, "frames_per_s": n * L / seconds if seconds > 0 else None,
                           "seconds": seconds, "starts": [[int(e), int(s)] for e, s in starts], "horizons": {}}
    for H in cfg.horizons:
        summary: dict[str, Any] = {name: float(sums[name][:H].mean() / n) for name in names}
        for name in keys:
            c = counts[name][:H].sum()
            summary[name] = float(hits[name][:H].sum() / c) if c else None
            summary[name + "_n"] = int(c)
        for part in ("day", "night"):
            c = split["n_" + part][:H].sum()
            for metric in ("psnr", "ssim"):
                summary[f"{metric}_{part}"] = float(split[f"{metric}_{part}"][:H].sum() / c) if c else None
            summary[f"frames_{part}"] = int(c)
        summary["psnr_at"] = float(sums["psnr"][H - 1] / n)
        summary["tile_all_at"] = curves["tile_all"][H - 1]
        out["horizons"][str(H)] = summary
    out["curves"] = curves
    return out, samples


# ----- 3. revisits -------------------------------------------------------------------------------
def _events(episodes: Sequence[Episode], count: int) -> list[tuple[int, np.ndarray]]:
    evs = [(e, row) for e, ep in enumerate(episodes) for row in ep.revisit_events]
    if len(evs) > count:
        idx = np.linspace(0, len(evs) - 1, count).round().astype(int)
        evs = [evs[i] for i in idx]
    return evs


def look_end(ep: Episode, t_back: int, cfg: EvalConfig) -> int:
    """The last frame of a revisit's look at A: the player stays looking from ``t_back`` on, for at most cfg.look_max."""
    t_end = t_back
    while t_end + 1 < len(ep) and ep.revisit[t_end + 1] == LOOKING and t_end - t_back < cfg.look_max:
        t_end += 1
    return t_end


def revisits(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, progress: bool = True,
             label: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A -> B -> A: context ends at the placing; is the block at A when the player is back beside it?"""
    k = cfg.context
    evs = _events(episodes, cfg.revisits)
    if not evs:
        return {"events": 0}, {}
    plans = []
    for e, (t_place, t_leave, t_back, x, y, placed) in evs:
        t_end = look_end(episodes[e], int(t_back), cfg)
        plans.append((e, int(t_place), int(t_leave), int(t_back), int(t_end), (int(x), int(y)), int(placed)))
    S = episodes[0].frames.shape[1:]
    clf = get_classifier(S[0])
    total, beyond = M.Tally(), M.Tally()
    final, perfect = M.Tally(), M.Tally()
    away = []
    samples: dict[str, np.ndarray] = {}
    bar = _bar(sum(p[4] - p[1] for p in plans), f"revisits [{label}]", progress)
    for i, (e, t_place, t_leave, t_back, t_end, target, placed) in enumerate(plans):
        ep = episodes[e]
        pred = _rollout(world, ep, t_place, t_end - t_place, k, cfg.sample_seed + i, bar)
        look = slice(t_back, t_end + 1)
        pl = pred[t_back - t_place - 1:]
        reading, true_read, _ = _read(clf, pl, ep.frames[look], ep.daylight[look], ep.sleeping[look])
        lab, ref = reading.labels, true_read.labels
        M.revisit_scores(lab, ref, ep.pos[look], target, placed, tally=total)
        M.tile_scores(lab, ref, {"all": np.ones(lab.shape, bool)}, total, prefix="revisit_view_")
        M.revisit_scores(lab[-1:], ref[-1:], ep.pos[t_end:t_end + 1], target, placed, tally=final)
        if label == "model":  # the perfect-memory reference: every cell as the real game last showed it by departure
            seen = slice(max(0, t_place - k + 1), t_leave + 1)
            seen_labels = clf.classify(ep.frames[seen], ep.daylight[seen], ep.sleeping[seen]).labels
            pm = M.last_seen(seen_labels, ep.pos[seen], ep.pos[look])
            M.revisit_scores(pm, ref, ep.pos[look], target, placed, tally=perfect)
            M.tile_scores(pm, ref, {"all": np.ones(ref.shape, bool)}, perfect, prefix="revisit_view_")
        out_of_view = t_back - t_leave
        away.append(out_of_view)
        if out_of_view > k:
            M.revisit_scores(lab, ref, ep.pos[look], target, placed, tally=beyond)
        if i == 0:
            samples = {"placed_real": ep.frames[t_place], "true": ep.frames[look], "pred": pl,
                       "pos": ep.pos[look], "target": np.array(target), "pos_placed": ep.pos[t_place],
                       "t": np.array([t_place, t_back, t_end])}
    bar.close()
    out: dict[str, Any] = {"events": len(plans), "out_of_view_frames_mean": float(np.mean(away)),
                           "beyond_context": int(sum(a > k for a in away)), "context": k}
    out.update(_rates(total, ["revisit_block_kept", "revisit_area", "revisit_view_all"]))
    out["revisit_block_kept_final"] = final.rate("revisit_block_kept")
    out["revisit_block_kept_beyond_context"] = beyond.rate("revisit_block_kept")
    out["revisit_area_beyond_context"] = beyond.rate("revisit_area")
    if label == "model":
        out["perfect_memory"] = _rates(perfect, ["revisit_block_kept", "revisit_area", "revisit_view_all"])
    return out, samples


def _true_pos(session: Any) -> np.ndarray | None:
    """The player's real position (x, y) where the session is a real game (RealGameSession), else None."""
    pos = getattr(getattr(session, "env", None), "pos", None)
    return None if pos is None else np.asarray(pos, np.int64).copy()


def _return_after_gap(on: np.ndarray, gap: int) -> tuple[int, int] | None:
    """(departure, return): the first frame indices of ``on`` (bool (T,)) where a True follows more than
    ``gap`` Falses, and the last True before them; None where that never happens."""
    last = -1
    for j in np.flatnonzero(on):
        if last >= 0 and j - last - 1 > gap:
            return int(last), int(j)
        last = int(j)
    return None


# Deep in the night (daylight < 0.1) the game's vignette leaves too little of a tile at the view's edges for any
# reader: a perfect world (real frames through the shipped autoencoder, read by its tile reader) reads as stone in
# 86% of such tiles, path 64%, a table 12% (daylight < 0.05), against 99-100% from 0.1 up. Cells are scored in
# both, and the "readable" figure counts frames lit at READABLE_LIGHT or more.
READABLE_LIGHT = 0.1
MINED_FROM = (STONE, COAL, IRON, DIAMOND)   # mined with "do", they leave path (crafter's collect rules)
_MOVERS = (PLAYER, COW, ZOMBIE, SKELETON, ARROW)  # they walk over path


def mined_events(ep: Episode, k: int, look_max: int) -> list[tuple[int, int, int, int, int]]:
    """Cells the player mined (stone, coal, iron, diamond -> path) whose real walk leaves them for more than ``k``
    frames and comes back: (t, t_end, x, y, label) with t the first frame that shows the path, t_end the last
    frame of the look at it (at most ``look_max`` frames after the return). (Crafter leaves a tree in place when
    wood is collected: mining is the terrain a player changes besides placing.)"""
    from worldsim.actions import action_index

    do = action_index("do")
    out = []
    for t in np.flatnonzero(ep.actions[:-1] == do):
        t = int(t)
        fx, fy = (int(v) for v in ep.facing[t])
        r, c = PLAYER_ROW + fy, PLAYER_COL + fx
        if not (0 <= r < VIEW_ROWS and 0 <= c < VIEW_COLS) or (ep.pos[t + 1] != ep.pos[t]).any():
            continue
        if ep.semantic[t][r, c] not in MINED_FROM or ep.semantic[t + 1][r, c] != PATH:
            continue
        x, y = int(ep.pos[t][0]) + fx, int(ep.pos[t][1]) + fy
        d = np.array([x, y])[None] - ep.pos[t + 1:].astype(np.int64)
        on = (np.abs(d[:, 0]) <= PLAYER_COL) & (np.abs(d[:, 1]) <= PLAYER_ROW)
        # the event ends where the real game shows the cell as something else than path or a creature on it (the
        # player placed a block there, say)
        rr, cc = np.clip(PLAYER_ROW + d[:, 1], 0, VIEW_ROWS - 1), np.clip(PLAYER_COL + d[:, 0], 0, VIEW_COLS - 1)
        there = ep.semantic[t + 1:][np.arange(len(d)), rr, cc]
        other = np.flatnonzero(on & (there != PATH) & ~np.isin(there, _MOVERS))
        if len(other):
            on = on[:other[0]]
        back = _return_after_gap(on, k)
        if back is None:
            continue
        t_end = t + 1 + back[1]
        while t_end + 1 < len(ep) and t_end - (t + 1 + back[1]) < look_max and on[t_end + 1 - (t + 1)]:
            t_end += 1
        out.append((t + 1, t_end, x, y, PATH))
    return out


def revisits_own(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, progress: bool = True,
                 label: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A -> B -> A in the world's own walk: the same events and real actions as ``revisits``, but the block's
    cell is followed with the player's walk as the world's frames show it, not the recorded one.

    Why: replaying the actions open loop, a world whose walk left the recorded one (a creature that stepped
    elsewhere and blocked a move) is scored where its player is not; the real game itself with other luck
    keeps the block at the recorded cell in only ~38% of frames. Here the walk is estimated from the frames
    (worldsim.memory.track_poses: the view shift and Crafter's walkable rule, what the engine's memory uses),
    the block's cell is placed in it by the real offset at the placing, and once the world's walk has had the
    cell out of view for more than the context and brings it back on screen, each frame that shows the cell is
    scored: the block there (``block_kept``; also split into frames lit by day, daylight >= 0.5 and awake, and the
    rest, and into frames lit at READABLE_LIGHT or more and the deep night under it), the cells within one tile of it (``area``) and the whole view (``view``) as the world itself last showed
    them before it left (the perfect-memory reference scores 1 by
    construction; creatures and the player's tile are not scored). The same for cells the player mined
    (``mined_events``, up to as many as the placing events: ``mined_kept``, ``mined_area``, ``mined_view``: the
    path left there). A world whose sessions expose the real position (the real game, ``RealGameWorld``) also
    scores the walk estimate (``pose_steps_right``). ``per_event`` lists each event that came back.
    """
    k = cfg.context
    evs = _events(episodes, cfg.revisits)
    if not evs:
        return {"events": 0}, {}
    plans = [(e, *map(int, row)) for e, row in evs]
    plans = [("block", e, t_place, look_end(episodes[e], t_back, cfg), x, y, placed)
             for e, t_place, _, t_back, x, y, placed in plans]
    mined = [(e, *m) for e, ep in enumerate(episodes) for m in mined_events(ep, k, cfg.look_max)]
    if len(mined) > cfg.revisits:
        mined = [mined[i] for i in np.linspace(0, len(mined) - 1, cfg.revisits).round().astype(int)]
    plans += [("mined", e, t, t_end, x, y, lab) for e, t, t_end, x, y, lab in mined]
    tally, pose = M.Tally(), M.Tally()
    count = {"block": [0, 0], "mined": [0, 0]}      # events, came back
    gaps, per_event = [], []
    samples: dict[str, np.ndarray] = {}
    bar = _bar(sum(p[3] - p[2] for p in plans), f"revisits in the world's own walk [{label}]", progress)
    for i, (kind, e, t0, t_end, x, y, want) in enumerate(plans):
        count[kind][0] += 1
        got = _own_walk_event(world, episodes[e], t0, t_end, x, y, want, k, cfg.sample_seed + i, bar, pose,
                              movers_ok=kind == "mined")
        if got is None:
            continue
        count[kind][1] += 1
        kept, by_day, light, area, view, gap, seen, out = got
        name = "block_kept" if kind == "block" else "mined_kept"
        tally.add(name, kept)
        tally.add(name + "_day", kept[by_day])
        tally.add(name + "_night", kept[~by_day])
        tally.add(name + "_readable", kept[light >= READABLE_LIGHT])
        tally.add(name + "_deep_night", kept[light < READABLE_LIGHT])
        tally.add("area" if kind == "block" else "mined_area", area)
        tally.add("view" if kind == "block" else "mined_view", view)
        if kind == "block":
            gaps.append(gap)
        # per event, for reading the misses: what was placed, how long away, what stood there instead
        per_event.append({"kind": kind, "seed": int(episodes[e].seed), "t_place": int(t0), "placed": SEMANTIC_NAMES[int(want)],
                          "gap": int(gap), "frames": int(len(kept)), "kept": int(kept.sum()),
                          "frames_night": int((~by_day).sum()), "kept_night": int(kept[~by_day].sum()),
                          "read_instead": SEMANTIC_NAMES[int(np.bincount(seen[~kept], minlength=len(SEMANTIC_NAMES)).argmax())]
                          if (~kept).any() else None})
        if not samples and kind == "block":
            samples = out
    bar.close()
    result: dict[str, Any] = {"events": count["block"][0], "returned": count["block"][1], "context": k,
                              "gap_frames_mean": float(np.mean(gaps)) if gaps else None,
                              "mined_events": count["mined"][0], "mined_returned": count["mined"][1]}
    result.update(_rates(tally, ["block_kept", "area", "view", "block_kept_day", "block_kept_night", "block_kept_readable",
                                 "block_kept_deep_night", "mined_kept", "mined_area", "mined_view", "mined_kept_day",
                                 "mined_kept_night", "mined_kept_readable", "mined_kept_deep_night"]))
    result["frames_back"] = result.pop("block_kept_n")
    result["mined_frames_back"] = result.pop("mined_kept_n")
    result["per_event"] = per_event
    if pose.counts:
        result.update(_rates(pose, ["pose_steps_right"]))
    return result, samples


def _own_walk_event(world: Any, ep: Episode, t0: int, t_end: int, x: int, y: int, want: int, k: int, seed: int, bar: Any,
                    pose: M.Tally, movers_ok: bool = False):
    """Play one event's real actions from frame ``t0`` in ``world`` and score cell (x, y) (class ``want``) once
    the world's own walk brings it back after more than ``k`` frames away: -> (kept (n,), by day (n,), area hits,
    view hits, gap, labels read at the cell (n,), sample) or None where it never comes back. ``movers_ok``: a
    creature or the player can stand on the cell (path): frames that show one there are not scored (on a
    placed block none can: one drawn there is a miss)."""
    from worldsim.memory import track_poses

    clf = get_classifier(ep.frames.shape[1])
    frames, acts = ep.context(t0, k)
    session = world.new_session(context=frames, actions=acts, seed=seed)
    n = t_end - t0
    out = np.empty((n + 1,) + ep.frames.shape[1:], np.uint8)
    out[0] = frames[-1]
    truth = [_true_pos(session)]
    for j in range(n):
        out[j + 1] = session.step(ACTION_NAMES[int(ep.actions[t0 + j])])
        truth.append(_true_pos(session))
        bar.update(1)
    walk = track_poses(out, ep.actions[t0:t_end + 1])
    if truth[0] is not None:
        real = np.stack(truth)
        pose.add("pose_steps_right", (np.diff(walk, axis=0) == np.diff(real, axis=0)).all(-1))
    day, asleep = clf.estimate_lighting(out)  # read from each frame: there is no real frame to borrow it from
    labels = clf.read_generated(out, day, asleep).labels
    d = (np.array([x, y]) - ep.pos[t0])[None] - walk  # the cell relative to the player
    on = (np.abs(d[:, 0]) <= PLAYER_COL) & (np.abs(d[:, 1]) <= PLAYER_ROW)
    back = _return_after_gap(on, k)
    if back is None:
        return None
    dep, ret = back
    idx = np.flatnonzero(on[ret:]) + ret
    if movers_ok:
        at = labels[idx, PLAYER_ROW + d[idx, 1], PLAYER_COL + d[idx, 0]]
        idx = idx[~np.isin(at, _MOVERS)]
        if not len(idx):
            return None
    lab = labels[idx]
    ref = M.last_seen(labels[:dep + 1], walk[:dep + 1], walk[idx])  # the world's own view up to its departure
    rows, cols = PLAYER_ROW + d[idx, 1], PLAYER_COL + d[idx, 0]
    seen = lab[np.arange(len(idx)), rows, cols]
    kept = seen == want
    by_day = (day[idx] >= 0.5) & ~asleep[idx]
    scored = (ref != M.UNSEEN) & ~M.IS_OBJECT[ref] & ~M.IS_OBJECT[lab]
    scored[:, PLAYER_ROW, PLAYER_COL] = False
    near = (np.abs(np.arange(VIEW_ROWS)[None, :, None] - rows[:, None, None]) <= 1) & \
           (np.abs(np.arange(VIEW_COLS)[None, None, :] - cols[:, None, None]) <= 1)
    sample = {"frames": out, "poses": walk, "target": np.array([x, y]) - ep.pos[t0], "t": np.array([t0, dep, ret])}
    return kept, by_day, day[idx], (lab == ref)[scored & near], (lab == ref)[scored], ret - dep - 1, seen, sample


# ----- 5. long-run stability ---------------------------------------------------------------------
def reference_histogram(episodes: Sequence[Episode]) -> np.ndarray:
    """Class distribution of the real game's view tiles over all episodes (NUM_CLASSES,)."""
    return M.class_histogram(np.concatenate([ep.semantic for ep in episodes]))


def long_run(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, progress: bool = True,
             label: str = "model") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``long_run_len`` frames of open-loop play per episode: class distribution, unexplained tiles, drift."""
    k, L, W = cfg.context, cfg.long_run_len, cfg.long_run_window
    eps = [e for e, ep in enumerate(episodes) if len(ep) >= k + L][:cfg.long_runs]
    if not eps or L == 0:
        return {"runs": 0}, {}
    S = episodes[0].frames.shape[1:]
    clf = get_classifier(S[0])
    ref = reference_histogram(episodes)
    nwin = (L + W - 1) // W
    # asleep: a world whose player falls asleep and never wakes shows a dark, still view with few unexplained
    # tiles and a fair class mix; the share of sleeping frames next to the real game's tells it apart
    win = [{"pred_hist": np.zeros(len(ref)), "true_hist": np.zeros(len(ref)), "unexplained": [], "tile_all": [],
            "psnr": [], "asleep": [], "real_asleep": [], "patches": [0, 0], "real_patches": [0, 0]} for _ in range(nwin)]
    follow = M.Tally()
    bar = _bar(len(eps) * L, f"long run [{label}]", progress)
    samples: dict[str, np.ndarray] = {}
    seconds = 0.0
    for e in eps:
        ep = episodes[e]
        s = k - 1
        t0 = time.perf_counter()
        pred = _rollout(world, ep, s, L, k, cfg.sample_seed + e, bar)
        seconds += time.perf_counter() - t0
        sl = slice(s + 1, s + 1 + L)
        reading, true_read, _ = _read(clf, pred, ep.frames[sl], ep.daylight[sl], ep.sleeping[sl])
        true_lab = true_read.labels
        prev_pred = np.concatenate([ep.semantic[s:s + 1], reading.labels[:-1]])
        delta = ep.pos[s + 1:s + 1 + L].astype(np.int64) - ep.pos[s:s + L].astype(np.int64)
        M.action_following(ep.semantic[s:s + L], ep.semantic[sl], reading.labels, ep.actions[s:s + L], delta,
                           tally=follow, prev_pred=prev_pred)
        p = M.psnr(pred, ep.frames[sl])
        for w in range(nwin):
            ws = slice(w * W, min(L, (w + 1) * W))
            win[w]["pred_hist"] += M.class_histogram(reading.labels[ws])
            win[w]["true_hist"] += M.class_histogram(ep.semantic[sl][ws])
            win[w]["unexplained"].append(float(reading.unexplained[ws].mean()))
            win[w]["tile_all"].append(float((reading.labels[ws] == true_lab[ws]).mean()))
            win[w]["psnr"].append(float(p[ws].mean()))
            win[w]["asleep"].append(float(np.mean(reading.sleeping[ws])))
            win[w]["real_asleep"].append(float(np.mean(ep.sleeping[sl][ws])))
            for key, lab in (("patches", reading.labels[ws]), ("real_patches", ep.semantic[sl][ws])):
                rate, n = M.same_neighbour_rate(lab)
                win[w][key][0] += 0 if n == 0 else rate * n
                win[w][key][1] += n
        if not samples:
            idx = np.unique(np.clip([0, L // 4, L // 2, 3 * L // 4, L - 1], 0, L - 1))
            samples = {"pred": pred[idx], "true": ep.frames[sl][idx], "index": idx + 1}
    bar.close()
    windows = []
    for w, d in enumerate(win):
        windows.append({
            "frames": [w * W + 1, min(L, (w + 1) * W)],
            "class_tv_to_real": M.tv_distance(d["pred_hist"], ref),
            "real_class_tv_to_real": M.tv_distance(d["true_hist"], ref),
            "class_tv_to_same_frames": M.tv_distance(d["pred_hist"], d["true_hist"]),
            "unexplained": float(np.mean(d["unexplained"])),
            "tile_all": float(np.mean(d["tile_all"])),
            "psnr": float(np.mean(d["psnr"])),
            "asleep": float(np.mean(d["asleep"])),
            "real_asleep": float(np.mean(d["real_asleep"])),
            "pred_classes": (d["pred_hist"] / len(eps)).round(5).tolist(),
            # non-grass tiles whose neighbour is of their class: patches (lakes, forests) vs stray single tiles
            "same_neighbour": d["patches"][0] / d["patches"][1] if d["patches"][1] else None,
            "real_same_neighbour": d["real_patches"][0] / d["real_patches"][1] if d["real_patches"][1] else None,
        })
    out: dict[str, Any] = {
        "runs": len(eps), "length": L, "window": W, "windows": windows,
        "class_tv_to_real_last": windows[-1]["class_tv_to_real"],
        "unexplained_last": windows[-1]["unexplained"],
        "same_neighbour_last": windows[-1]["same_neighbour"],
        "open_loop_following": M.following_score(follow),
        "reference_classes": ref.round(5).tolist(),
        "frames_per_s": len(eps) * L / seconds if seconds > 0 else None,
    }
    out.update(_rates(follow, [n for n in sorted(follow.counts) if n.startswith("follow_")]))
    return out, samples


# ----- the ruler ---------------------------------------------------------------------------------
def validate_reader(world: Any, episodes: Sequence[Episode], max_frames: int = 1000) -> dict[str, Any]:
    """The world's tile reader against the texture model on held-out real frames passed through the world's
    autoencoder (the ceiling of what its frames can show), both against the game's semantic map."""
    from worldsim.eval.reader import accuracy

    frames = np.concatenate([ep.frames for ep in episodes])
    data = {"semantic": np.concatenate([ep.semantic for ep in episodes]), "daylight": np.concatenate([ep.daylight for ep in episodes]),
            "sleeping": np.concatenate([ep.sleeping for ep in episodes])}
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    frames, data = frames[idx], {k: v[idx] for k, v in data.items()}
    rt = np.concatenate([world.backend.decode(world.backend.encode(frames[i:i + 64])) for i in range(0, len(frames), 64)])
    clf = get_classifier(frames.shape[1])
    with reading_with(world.reader):
        mine = clf.read_generated(rt, data["daylight"], data["sleeping"]).labels
    theirs = clf.classify(rt, data["daylight"], data["sleeping"]).labels
    return {"frames": int(len(frames)), "reader": accuracy(mine, data), "texture_model": accuracy(theirs, data)}


def validate_classifier(episodes: Sequence[Episode], max_frames: int = 4000) -> dict[str, Any]:
    """Accuracy of the tile classifier (with estimated lighting) against the game's semantic map."""
    frames = np.concatenate([ep.frames for ep in episodes])
    sem = np.concatenate([ep.semantic for ep in episodes])
    day = np.concatenate([ep.daylight for ep in episodes])
    sleep = np.concatenate([ep.sleeping for ep in episodes])
    inv = np.concatenate([ep.inventory for ep in episodes])
    if len(frames) > max_frames:
        idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames, sem, day, sleep, inv = frames[idx], sem[idx], day[idx], sleep[idx], inv[idx]
    clf = get_classifier(frames.shape[1])
    t0 = time.perf_counter()
    reading = clf.classify(frames)
    seconds = time.perf_counter() - t0
    ok = reading.labels == sem
    night = day < 0.5
    out: dict[str, Any] = {"frames": int(len(frames)), "tiles": int(ok.size), "accuracy": float(ok.mean()),
                           "ms_per_frame": 1000 * seconds / max(len(frames), 1)}
    for name, m in (("day", ~night), ("night", night), ("night_awake", night & ~sleep), ("night_asleep", night & sleep),
                    ("asleep", sleep)):
        out[f"accuracy_{name}"] = float(ok[m].mean()) if m.any() else None
        out[f"frames_{name}"] = int(m.sum())
    out["unexplained_real"] = float(reading.unexplained.mean())
    out["daylight_error"] = float(np.abs(reading.daylight - day).mean())
    out["sleep_detection"] = float((reading.sleeping == sleep).mean())
    out["inventory_exact"] = float((clf.read_inventory(frames) == inv).all(-1).mean())
    return out


# ----- everything --------------------------------------------------------------------------------
PROTOCOLS: dict[str, Callable[..., tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
    "one_step": one_step, "rollouts": rollouts, "revisits": revisits, "revisits_own": revisits_own, "long_run": long_run,
}


def context_length(world: Any, wanted: int) -> int:
    """Context frames to give a world: ``wanted``, capped by a window the world advertises (duck-typed)."""
    window = getattr(world, "context_window", None)
    if window is None:
        window = getattr(getattr(world, "preset", None), "window", None)
    return max(1, min(int(wanted), int(window))) if window else int(wanted)


def evaluate(world: Any, episodes: Sequence[Episode], cfg: EvalConfig, baseline: Any | None = None,
             protocols: Sequence[str] = tuple(PROTOCOLS), progress: bool = True,
             log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the protocols on ``world`` and on the copy-last baseline; -> (JSON-able results, plot samples)."""
    from worldsim.eval.reference import CopyLastWorld

    if not episodes:
        raise ValueError("no held-out episodes to evaluate on")
    bad = [ep.seed for ep in episodes if ep.seed < EVAL_SEEDS_START]
    if bad:
        raise ValueError(f"evaluation episodes must use held-out seeds >= {EVAL_SEEDS_START}; got seeds {bad[:5]}")
    frame_shape = tuple(episodes[0].frames.shape[1:])
    world_shape = tuple(getattr(world, "frame_shape", frame_shape))
    if world_shape != frame_shape:
        raise ValueError(f"the world renders {world_shape} frames but the held-out episodes are {frame_shape}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)}")
    baseline = CopyLastWorld(frame_shape) if baseline is None else baseline
    cfg = dataclasses.replace(cfg, context=context_length(world, cfg.context))
    results: dict[str, Any] = {"classifier": validate_classifier(episodes)}
    log(f"classifier on {results['classifier']['frames']} real frames: "
        f"{100 * results['classifier']['accuracy']:.2f}% of tiles right")
    if getattr(world, "reader", None) is not None and hasattr(getattr(world, "backend", None), "encode"):
        results["reader"] = validate_reader(world, episodes)
        r = results["reader"]
        log(f"tile reader on {r['frames']} held-out frames through the world's autoencoder: {100 * r['reader']['all']:.2f}% "
            f"of tiles right (night {100 * r['reader'].get('night', float('nan')):.2f}%); the texture model "
            f"{100 * r['texture_model']['all']:.2f}% (night {100 * r['texture_model'].get('night', float('nan')):.2f}%)")
    samples: dict[str, Any] = {}
    for name in protocols:
        fn = PROTOCOLS[name]
        t0 = time.perf_counter()
        # each world's frames are read with its own tile reader (the texture model where it has none)
        with reading_with(getattr(world, "reader", None)):
            model, model_s = fn(world, episodes, cfg, progress, "model")
        with reading_with(getattr(baseline, "reader", None)):
            base, base_s = fn(baseline, episodes, cfg, progress, "copy-last")
        results[name] = {"model": model, "copy_last": base, "seconds": time.perf_counter() - t0}
        samples[name] = {"model": model_s, "copy_last": base_s}
        log(f"{name}: done in {results[name]['seconds']:.0f} s")
    results["config"] = dataclasses.asdict(cfg)
    return results, samples
