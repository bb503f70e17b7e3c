"""Persistent memory beyond the cache window: a bank of past frames with the pose they were seen from.

Why: the KV cache holds only the last `window` frames, so a world model forgets a place once it has
been out of view for longer than that. The bank keeps one latent per pose cell (the newest frame seen
from there) with its estimated pose and frame index. Before each frame the session retrieves the few
entries that hold the newest view of the world cells the next frame shows and the window does not
(``worldsim.memory.retrieve``), and the denoising passes read them as extra cache slots with their own
relative time and spatial shift (past_t, past_shift): like window frames seen from elsewhere. The
commit pass reads the window only (the committed frame already shows what memory gave it), so a frame
that needs memory pays for it once. Training does the same (``TrainConfig.memory_frames``).

- Poses are estimated at play time from the generated frames and the actions (``worldsim.memory``:
  view shift + Crafter's walkability rule on the faced tile), starting at (0, 0) on the first frame.
- A memory slot's keys/values come from one DiT pass over that frame alone (clean, null action, no
  context), exactly what ``CausalDiT.forward_teacher`` computes for memory frames in training. They are
  a pure function of the stored latent, so they are cached per session (``MemoryKV``, keyed by the
  latent's bytes, not part of the state): snapshots stay small and restores stay exact.
- Only retrieved entries become slots (no padding; the DiT's slot axis is dynamic), so frames that need
  no memory cost what they cost without it.
- The bank is bounded: a frame replaces the entry of its pose cell, and when the bank is over capacity
  the entries that own the fewest world cells (cells a newer entry also shows are not theirs) are
  evicted, oldest first on ties. Memory and per-frame time stay constant over hours of play.
- The inventory rows (screen rows 7-8) are not world. A slot is all-or-nothing (past_valid is per
  frame), so a memory frame's inventory tokens come along, shifted like the rest; their keys also carry
  the DiT's absolute in-frame position embedding, so the model can tell them from world tokens, and
  training shows it exactly these inputs (same retrieval, same shifts). The current inventory is always
  in the window.

Everything here is numpy; ``MemoryBank`` is arrays + JSON-able numbers (snapshot/save friendly).
Measurements: ``python -m engine.memory pose --data DIR`` and ``python -m engine.memory fps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldsim.actions import NULL_ACTION
from worldsim.eval.tiles import (ARROW, COAL, COW, DIAMOND, FURNACE, GRASS, IRON, LAVA, PATH, PLANT, PLAYER, SAND, SKELETON, STONE, TABLE,
                                 TREE, WATER, ZOMBIE)
from worldsim.memory import (DEFAULT_CELL, HALF_X, HALF_Y, VIEW_COLS, VIEW_ROWS, memory_shift, move_delta, needed_cells,
                             retrieve)

MEMORY_VERSION = 1
# what moves by itself: the tile map does not record it, and the fill leaves it where the model draws it (a plant
# stays where it was planted: it is remembered, and one drawn where the map knows other ground is replaced)
MOVERS = (PLAYER, COW, ZOMBIE, SKELETON, ARROW)
# daylight under which a view is "dark": its reading does not replace a brighter view's class of a cell (TileMap),
# and a dark frame's tiles that contradict such a view are drawn from it (fill_uncovered's ``view_labels``)
DARK = 0.3
MAX_DARK_FIXES = 6  # ... where at most this many tiles near the view's centre contradict it (more: a pose the map does not fit)


@dataclass(frozen=True)
class MemoryConfig:
    """How a session remembers: slots given to the model per frame, bank capacity, pose cell, age clamp."""

    slots: int = 2  # memory frames read by the model per frame (extra cache slots)
    capacity: int = 512  # bank entries kept at most
    cell: tuple[int, int] = DEFAULT_CELL  # (x, y) size of a pose cell: a new frame replaces the entry of its cell
    max_age: int = 1000  # memory time offsets are clamped to -this (training clips never see older ones)
    min_owned: int = 1  # an entry is given to the model only if it is the newest view of this many needed cells
    fill: bool = True  # tiles a move uncovers come from the tile map: the newest view of their cell (see fill_uncovered)
    fill_light_tol: float = 0.15  # ... copied as they are from views this close in daylight, relit from the others
    tiles: int = 4096  # world cells the tile map keeps at most (a Crafter world has 64 x 64)

    def validate(self) -> None:
        """Raise ValueError for impossible settings."""
        if self.slots < 0 or self.capacity < 1 or self.max_age < 1 or self.min_owned < 1:
            raise ValueError(f"memory config {self}: slots must be >= 0, capacity, max_age and min_owned >= 1")
        if self.slots == 0 and not self.fill:
            raise ValueError(f"memory config {self}: no slots and no fill is no memory")
        if not 0 <= self.fill_light_tol <= 1:
            raise ValueError(f"memory config: fill_light_tol must be in [0, 1], got {self.fill_light_tol}")
        if len(self.cell) != 2 or min(self.cell) < 1:
            raise ValueError(f"memory config: cell must be two sizes >= 1, got {self.cell}")
        if self.tiles < 64:
            raise ValueError(f"memory config: tiles (the tile map's capacity) must be >= 64, got {self.tiles}")


class TileMap:
    """The newest view of every world cell the session has seen, by cell (x, y) in its pose coordinates: the
    cell's latent token (C,), the frame's daylight and index, and the tile's label as read then. Part of the
    memory state.

    Why: one token is one tile in this top-down world, so a map of tokens is a perfect memory of what was seen.
    The bank's frames cannot be: a frame replaces the one of its pose cell, and with it the only view of cells
    at that view's edge (a block placed, then one step away: its last views are gone). Creatures, arrows and
    the player's tile are not recorded (MOVERS): a cell keeps the view from before one stood on it. A view
    darker than ``DARK`` does not replace a brighter one (but beside the player): deep in the night the model's
    tiles drift and their reading is least sure, while nothing but the player changes the world's terrain. Bounded: past ``capacity`` cells the oldest views are dropped.
    """

    def __init__(self, capacity: int, xy: np.ndarray | None = None, token: np.ndarray | None = None,
                 light: np.ndarray | None = None, frame: np.ndarray | None = None, label: np.ndarray | None = None):
        self.capacity = int(capacity)
        n = 0 if xy is None else len(xy)
        parts = (token, light, frame, label)
        if n and (any(a is None or len(a) != n for a in parts) or np.shape(xy)[1:] != (2,) or np.ndim(token) != 2
                  or np.ndim(light) != 1 or np.ndim(frame) != 1 or np.ndim(label) != 1):
            raise ValueError(f"memory: inconsistent tile map arrays for {n} cells: "
                             f"{[None if a is None else np.shape(a) for a in (xy, *parts)]}")
        self.xy = np.zeros((0, 2), np.int64) if xy is None else np.asarray(xy, np.int64).reshape(n, 2)
        self.token = token  # (n,C) float32; allocated on the first view (C comes with it)
        self.light = np.zeros(0, np.float32) if light is None else np.asarray(light, np.float32).reshape(n)
        self.frame = np.zeros(0, np.int64) if frame is None else np.asarray(frame, np.int64).reshape(n)
        self.label = np.zeros(0, np.uint8) if label is None else np.asarray(label, np.uint8).reshape(n)  # as read then
        self._index = {(int(x), int(y)): i for i, (x, y) in enumerate(self.xy)}

    def __len__(self) -> int:
        return len(self.xy)

    def lookup(self, cells: np.ndarray) -> np.ndarray:
        """Rows of world cells (M,2) (x, y): int64 (M,), -1 where never seen."""
        get = self._index.get
        return np.array([get((int(x), int(y)), -1) for x, y in np.asarray(cells).reshape(-1, 2)], np.int64)

    def observe(self, latent: np.ndarray, pose: np.ndarray, frame_index: int, light: float, labels: np.ndarray,
                action: int | None = None) -> None:
        """Record the view tiles of a frame (latent (C,g,g), its view's labels (7,9)) seen from ``pose`` (x, y)
        under ``light``: each cell's newest view, but for creatures, arrows and the player. ``action``: the one that
        made the frame (what it can change beside the player, engine.rules.action_changes; None: anything)."""
        labels = np.asarray(labels).reshape(VIEW_ROWS, VIEW_COLS)
        keep = ~np.isin(labels, MOVERS)
        keep[HALF_Y, HALF_X] = False
        rows, cols = np.nonzero(keep)
        if not len(rows):
            return
        tok = np.asarray(latent, np.float32)[:, rows, cols].T  # (m,C)
        lab = labels[rows, cols].astype(np.uint8)
        xy = np.stack([pose[0] + cols - HALF_X, pose[1] + rows - HALF_Y], 1).astype(np.int64)
        if self.token is None:
            self.token = np.zeros((0, tok.shape[1]), np.float32)
        idx = self.lookup(xy)
        if light < DARK and len(self.xy):
            # a dark view does not replace a cell's view in better light, not even where it reads the same (the
            # brighter view must stay to check the next dark frames against), but where it shows a tile beside the
            # player as something else (the only tiles that change, by its actions; read near the view's centre,
            # where the night is lightest)
            from engine.rules import action_changes

            beside = np.abs(rows - HALF_Y) + np.abs(cols - HALF_X) <= 1
            safe = np.maximum(idx, 0)
            changed = self.label[safe] != lab
            if action is not None:   # only what that action can do to a tile beside the player
                can = action_changes(action)
                changed &= np.array([(int(a), int(b)) in can for a, b in zip(self.label[safe], lab)], bool)
            stale = (idx >= 0) & (self.light[safe] >= DARK) & (~beside | ~changed)
            idx = np.where(stale, -2, idx)
        old, new = idx >= 0, idx == -1
        i = idx[old]
        self.token[i], self.light[i], self.frame[i], self.label[i] = tok[old], light, frame_index, lab[old]
        if new.any():
            start, m = len(self.xy), int(new.sum())
            self.xy = np.concatenate([self.xy, xy[new]])
            self.token = np.concatenate([self.token, tok[new]])
            self.light = np.concatenate([self.light, np.full(m, light, np.float32)])
            self.frame = np.concatenate([self.frame, np.full(m, frame_index, np.int64)])
            self.label = np.concatenate([self.label, lab[new]])
            for j, (x, y) in enumerate(xy[new]):
                self._index[(int(x), int(y))] = start + j
        if len(self.xy) > self.capacity:  # drop the oldest views, an eighth of the capacity at once
            keep_rows = np.sort(np.argsort(-self.frame, kind="stable")[:self.capacity - self.capacity // 8])
            self.xy, self.token, self.light = self.xy[keep_rows], self.token[keep_rows], self.light[keep_rows]
            self.frame, self.label = self.frame[keep_rows], self.label[keep_rows]
            self._index = {(int(x), int(y)): i for i, (x, y) in enumerate(self.xy)}

    def copy(self) -> "TileMap":
        """An independent copy (observe writes rows in place)."""
        return TileMap(self.capacity, self.xy.copy(), None if self.token is None else self.token.copy(), self.light.copy(),
                       self.frame.copy(), self.label.copy())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays named memory_tiles_* (empty where nothing was seen)."""
        tok = self.token if self.token is not None else np.zeros((0, 0), np.float32)
        return {"memory_tiles_xy": self.xy, "memory_tiles_token": tok, "memory_tiles_light": self.light,
                "memory_tiles_frame": self.frame, "memory_tiles_label": self.label}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], capacity: int) -> "TileMap":
        """Inverse of to_arrays; a save from before the tile map gives an empty one."""
        if "memory_tiles_xy" not in arrays:
            return cls(capacity)
        xy = arrays["memory_tiles_xy"]
        if len(xy) == 0:
            return cls(capacity)
        missing = [k for k in ("token", "light", "frame", "label") if f"memory_tiles_{k}" not in arrays]
        if missing:
            raise ValueError(f"memory: the tile map lacks arrays {missing}")
        return cls(capacity, xy, arrays["memory_tiles_token"].astype(np.float32), arrays["memory_tiles_light"],
                   arrays["memory_tiles_frame"], arrays["memory_tiles_label"])


class MemoryBank:
    """The session's memory (part of its state): bank entries + the pose track of the recent frames.

    Entries: latents (n,C,g,g) float32, pose (n,2) int64 (x, y), frame (n,) int64 absolute frame index,
    light (n,) float32 the frame's daylight (NaN: unknown).
    Each entry's latent is its own array that is never written again (a replaced entry gets a new one),
    so a copy (a snapshot, the rewind ring) shares them and costs O(n) pointers, not O(n) latents.
    trail_pose (m,2) / trail_frame (m,): the estimated poses of the last m frames (window + current).
    """

    def __init__(self, cfg: MemoryConfig, latents: list[np.ndarray] | np.ndarray, pose: np.ndarray, frame: np.ndarray,
                 trail_pose: np.ndarray, trail_frame: np.ndarray, trail_len: int, latent_shape: tuple[int, ...] | None = None,
                 stats: dict | None = None, light: np.ndarray | None = None, tiles: TileMap | None = None):
        cfg.validate()
        self.cfg = cfg
        self.tiles = tiles if tiles is not None else TileMap(cfg.tiles)
        self._lat: list[np.ndarray] = list(latents)
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else tuple(np.shape(latents)[1:])
        self._pose, self._frame = np.asarray(pose, np.int64).reshape(-1, 2), np.asarray(frame, np.int64).reshape(-1)
        self._light = np.full(len(self._frame), np.nan, np.float32) if light is None else np.asarray(light, np.float32).reshape(-1)
        if len(self._light) != len(self._frame):
            raise ValueError(f"memory: {len(self._light)} light values for {len(self._frame)} entries")
        self.trail_pose, self.trail_frame, self.trail_len = trail_pose, trail_frame, int(trail_len)
        self.stats = dict(stats) if stats else {"inserted": 0, "replaced": 0, "evicted": 0}

    @classmethod
    def empty(cls, cfg: MemoryConfig, latent_shape: tuple[int, ...], trail_len: int) -> "MemoryBank":
        """An empty bank for latents of ``latent_shape`` (C,g,g), tracking the last ``trail_len`` poses."""
        return cls(cfg, [], np.zeros((0, 2), np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, np.int64),
                   trail_len, latent_shape)

    def __len__(self) -> int:
        return len(self._frame)

    @property
    def latents(self) -> np.ndarray:
        """(n,C,g,g) float32 entry latents (a new stacked array)."""
        return np.stack(self._lat) if self._lat else np.zeros((0, *self.latent_shape), np.float32)

    def latent(self, i: int) -> np.ndarray:
        """Entry ``i``'s latent (C,g,g) (read-only by convention)."""
        return self._lat[i]

    @property
    def pose(self) -> np.ndarray:
        """(n,2) int64 entry poses (x, y)."""
        return self._pose

    @property
    def frame(self) -> np.ndarray:
        """(n,) int64 entry frame indices."""
        return self._frame

    @property
    def light(self) -> np.ndarray:
        """(n,) float32 entry daylight (NaN: unknown)."""
        return self._light

    @property
    def current_pose(self) -> np.ndarray:
        """The estimated pose (x, y) of the latest frame, int64 (2,)."""
        return self.trail_pose[-1].copy() if len(self.trail_pose) else np.zeros(2, np.int64)

    # -- updates ------------------------------------------------------------------------------------

    def observe(self, latent: np.ndarray, frame_index: int, pose: np.ndarray, light: float = float("nan")) -> None:
        """Record frame ``frame_index`` (latent (C,g,g), daylight ``light``) at ``pose`` (x, y): track it and insert it."""
        pose = np.asarray(pose, np.int64).reshape(2)
        self.trail_pose = np.concatenate([self.trail_pose, pose[None]])[-self.trail_len:]
        self.trail_frame = np.concatenate([self.trail_frame, [int(frame_index)]])[-self.trail_len:]
        self.insert(latent, pose, frame_index, light)

    def insert(self, latent: np.ndarray, pose: np.ndarray, frame_index: int, light: float = float("nan")) -> None:
        """Add an entry; it replaces the entry of the same pose cell (newest wins); evict when over capacity."""
        latent = np.array(latent, np.float32)  # a private copy: entries are never written in place
        if latent.shape != self.latent_shape:
            raise ValueError(f"memory: latent of shape {latent.shape}, the bank holds {self.latent_shape}")
        pose = np.asarray(pose, np.int64).reshape(2)
        cell = np.asarray(self.cfg.cell, np.int64)
        same = np.nonzero((np.floor_divide(self._pose, cell) == np.floor_divide(pose, cell)).all(1))[0]
        if len(same):
            i = int(same[0])
            self._lat[i] = latent
            self._pose = self._pose.copy()  # copies share nothing that is written (snapshots hold the old arrays)
            self._frame = self._frame.copy()
            self._light = self._light.copy()
            self._pose[i], self._frame[i], self._light[i] = pose, frame_index, light
            self.stats["replaced"] += 1
        else:
            self._lat.append(latent)
            self._pose = np.concatenate([self._pose, pose[None]])
            self._frame = np.concatenate([self._frame, [int(frame_index)]])
            self._light = np.concatenate([self._light, np.array([light], np.float32)])
            self.stats["inserted"] += 1
        if len(self) > self.cfg.capacity:
            # evict a batch at once (1/8 of the capacity) so the ownership count runs rarely
            self._evict(len(self) - self.cfg.capacity + self.cfg.capacity // 8)

    def owned_cells(self) -> np.ndarray:
        """For each entry, the world cells for which it is the newest view in the bank: int64 (n,)."""
        n = len(self)
        if n == 0:
            return np.zeros(0, np.int64)
        dx, dy = np.meshgrid(np.arange(-HALF_X, HALF_X + 1), np.arange(-HALF_Y, HALF_Y + 1))
        xs = (self._pose[:, 0:1] + dx.ravel()[None]).ravel()
        ys = (self._pose[:, 1:2] + dy.ravel()[None]).ravel()
        x0, y0 = xs.min(), ys.min()
        canvas = np.full((ys.max() - y0 + 1, xs.max() - x0 + 1), -1, np.int64)
        key = np.repeat(self._frame * (n + 1) + np.arange(n), VIEW_ROWS * VIEW_COLS)
        np.maximum.at(canvas, (ys - y0, xs - x0), key)
        owner = canvas[canvas >= 0] % (n + 1)
        return np.bincount(owner, minlength=n)

    def _evict(self, count: int) -> None:
        owned = self.owned_cells()
        drop = np.lexsort((self._frame, owned))[:count]  # fewest owned cells first, then oldest
        keep = np.setdiff1d(np.arange(len(self)), drop)
        self._lat = [self._lat[i] for i in keep]
        self._pose, self._frame, self._light = self._pose[keep], self._frame[keep], self._light[keep]
        self.stats["evicted"] += len(drop)

    # -- reads ----------------------------------------------------------------------------------------

    def retrieve(self, target_poses: np.ndarray, first_frame: int, window: int) -> np.ndarray:
        """Bank rows (<= slots,) to show the model when it generates frame ``first_frame`` (and the chunk after
        it) at ``target_poses`` (k, 2): entries older than the window (frames < first_frame - window) that
        hold the newest view of cells the targets show and the window's frames do not."""
        lo = first_frame - window
        win = self.trail_pose[(self.trail_frame >= lo) & (self.trail_frame < first_frame)]
        cells = needed_cells(target_poses, win)
        return retrieve(self.pose, self.frame, cells, self.cfg.slots, self.cfg.min_owned, candidates=self.frame < lo)

    # -- state ----------------------------------------------------------------------------------------

    def copy(self) -> "MemoryBank":
        """A copy that shares the (never written) entry latents: O(n) pointers."""
        return MemoryBank(self.cfg, list(self._lat), self._pose.copy(), self._frame.copy(), self.trail_pose.copy(),
                          self.trail_frame.copy(), self.trail_len, self.latent_shape, self.stats, self._light.copy(), self.tiles.copy())

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays (names prefixed memory_) + JSON-able meta, for saving."""
        arrays = {"memory_latents": self.latents, "memory_pose": self.pose, "memory_frame": self.frame,
                  "memory_trail_pose": self.trail_pose, "memory_trail_frame": self.trail_frame, "memory_light": self._light,
                  **self.tiles.to_arrays()}
        c = self.cfg
        meta = {"version": MEMORY_VERSION, "slots": c.slots, "capacity": c.capacity, "cell": list(c.cell), "max_age": c.max_age,
                "min_owned": c.min_owned, "fill": c.fill, "fill_light_tol": c.fill_light_tol, "tiles": c.tiles, "trail_len": self.trail_len,
                "stats": dict(self.stats)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "MemoryBank":
        """Inverse of to_arrays; raises ValueError naming what is missing or inconsistent."""
        if not isinstance(meta, dict) or meta.get("version") != MEMORY_VERSION:
            raise ValueError(f"memory: version {meta.get('version') if isinstance(meta, dict) else meta!r} is not supported "
                             f"(expected {MEMORY_VERSION})")
        names = ("memory_latents", "memory_pose", "memory_frame", "memory_trail_pose", "memory_trail_frame")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"memory: missing arrays {missing}")
        lat, pose, frame = arrays["memory_latents"], arrays["memory_pose"], arrays["memory_frame"]
        tp, tf = arrays["memory_trail_pose"], arrays["memory_trail_frame"]
        n = len(frame)
        if lat.ndim != 4 or len(lat) != n or pose.shape != (n, 2) or tp.ndim != 2 or tp.shape[1:] != (2,) or tf.shape != (len(tp),):
            raise ValueError(f"memory: inconsistent arrays latents {lat.shape}, pose {pose.shape}, frame {frame.shape}, "
                             f"trail {tp.shape}/{tf.shape}")
        # fill / memory_light came later: saves without them remembered without filling
        cfg = MemoryConfig(int(meta["slots"]), int(meta["capacity"]), tuple(int(v) for v in meta["cell"]), int(meta["max_age"]),
                           int(meta["min_owned"]), bool(meta.get("fill", False)), float(meta.get("fill_light_tol", 0.15)),
                           int(meta.get("tiles", MemoryConfig.tiles)))
        light = arrays.get("memory_light")
        if light is not None and light.shape != (n,):
            raise ValueError(f"memory: {light.shape} light values for {n} entries")
        cfg.validate()
        lat = lat.astype(np.float32)
        return cls(cfg, [lat[i].copy() for i in range(n)], pose.astype(np.int64), frame.astype(np.int64), tp.astype(np.int64),
                   tf.astype(np.int64), int(meta["trail_len"]), lat.shape[1:], dict(meta.get("stats", {})), light,
                   TileMap.from_arrays(arrays, cfg.tiles))


class MemoryKV:
    """Per-session cache of memory slots' keys/values (derived data: not part of the state).

    ``backend.dit`` over one frame alone gives its keys/values; they depend only on the latent, so they
    are computed once per bank entry (one frame at a time: the same numbers whatever else is missing)
    and kept for the most recently used entries.
    """

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._kv: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self.computed = 0  # passes run (for timing reports)

    def clear(self) -> None:
        """Forget every cached entry."""
        self._kv.clear()

    def get(self, backend, latent: np.ndarray, empty_kv: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Keys/values (L,1,H,N,dh) of the memory frame ``latent`` (C,g,g) (keyed by its bytes: exact after any restore)."""
        key = np.asarray(latent, np.float32).tobytes()
        hit = self._kv.pop(key, None)
        if hit is None:
            pk, pv, pt, pvalid, pshift = empty_kv
            x = np.asarray(latent, np.float32)[None, None]
            _, k, v = backend.dit(x, np.zeros((1, 1), np.float32), np.full((1, 1), NULL_ACTION, np.int64), pk, pv, pt, pvalid, pshift)
            hit = (k, v)
            self.computed += 1
        self._kv[key] = hit  # most recently used last
        while len(self._kv) > self.keep:
            self._kv.pop(next(iter(self._kv)))
        return hit


def memory_slots(bank: MemoryBank, kv: MemoryKV, backend, rows: np.ndarray, first_frame: int, empty_kv: tuple[np.ndarray, ...],
                 tokens_per_frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Extra cache slots for bank ``rows`` (m <= cfg.slots of them): -> (k, v (L,1,H,m*N,dh), past_t (1,m),
    past_valid (1,m), poses (m,2)) with times relative to ``first_frame`` (clamped to -max_age).

    Only retrieved entries become slots (no padding): a frame that needs no memory costs what it costs
    without memory, and the DiT's slot axis is dynamic in every backend graph.
    """
    rows = np.asarray(rows, np.int64)[:bank.cfg.slots]
    m, N = len(rows), tokens_per_frame
    L, _, H, _, dh = empty_kv[0].shape
    k = np.empty((L, 1, H, m * N, dh), np.float32)
    v = np.empty_like(k)
    for j, r in enumerate(rows):
        k[:, :, :, j * N:(j + 1) * N], v[:, :, :, j * N:(j + 1) * N] = kv.get(backend, bank.latent(int(r)), empty_kv)
    t = np.maximum(bank.frame[rows] - first_frame, -bank.cfg.max_age).astype(np.float32)[None]
    return k, v, t, np.ones((1, m), np.float32), bank.pose[rows].copy()


def fill_uncovered(tiles: TileMap, latent: np.ndarray, frame: np.ndarray, prev_pose: np.ndarray, pose: np.ndarray,
                   light: float | None, light_tol: float = 0.15, encode=None, decode=None,
                   view_labels: np.ndarray | None = None, action: int | None = None) -> tuple[np.ndarray, int]:
    """Copy into ``latent`` (C,g,g) of a new frame at ``pose`` the tokens of the world cells its move uncovered
    (in view from ``pose``, not from ``prev_pose``) and of the cell the player left (``prev_pose``) from the tile
    map (the newest view of each cell; the player's tile is never recorded): -> (latent, tiles filled).

    Why: the model invents what enters the view; where the session has seen that cell before, the map knows
    what is there. A cell seen under daylight within ``light_tol`` of the new frame's gives its token as it
    is; one seen under other light (a day tile in a night frame) is drawn as the game would draw it now: the
    game's texture of the class it was read as, lit at its new place in the view (engine.rules.light_tiles), and
    encoded again with ``encode`` (uint8
    (1,S,S,3) -> (1,C,g,g)); given ``decode`` too, a relit tile the autoencoder does not give back as the same
    kind of tile (it can fail on a tile it never saw lit so) gets the remembered token as it is (right, if lit
    as before); without ``encode`` such cells are left to the model. Cells where the model drew a
    creature or an arrow are left to it (MOVERS: a zombie walking in is not erased; the map holds none) where the
    remembered tile is ground it can stand on or fly over (``engine.rules.mover_allowed``), and
    nothing is filled where the frame's light is unknown (None: unreadable, or the player sleeps).
    ``frame`` uint8 (S,S,3) is the decoded new frame. Given ``view_labels`` (7,9), its tiles as read, a frame
    darker than ``DARK`` also gets, off the player (and its four neighbours where ``action``, the one that made the
    frame, can change them; None: it can), the cells it shows as another class than a brighter view recorded (deep in the night the model's tiles drift, and nothing but the player
    changes terrain).
    """
    from engine.rules import paint_tiles
    from worldsim.memory import read_view_tiles

    pose, prev_pose = np.asarray(pose, np.int64).reshape(2), np.asarray(prev_pose, np.int64).reshape(2)
    if light is None or not np.isfinite(light) or len(tiles) == 0:
        return latent, 0
    cells = np.zeros((0, 2), np.int64)
    if (pose != prev_pose).any():
        # the cells the move uncovered, and the tile the player left: the model cannot know what lies under the
        # player sprite (it drew grass where the player had stood on a mined path), the map holds that cell's view
        # from before the player stood on it
        cells = np.concatenate([needed_cells(pose[None], prev_pose[None]), prev_pose[None]]).astype(np.int64)
    if view_labels is not None and light < DARK:
        from engine.rules import TERRAIN_ACTIONS

        # off the player's tile, and off its four neighbours where the action can change them
        reach = 1 if action is None or action in TERRAIN_ACTIONS else 0
        vr, vc = np.nonzero(np.abs(np.arange(VIEW_ROWS)[:, None] - HALF_Y) + np.abs(np.arange(VIEW_COLS)[None, :] - HALF_X) > reach)
        vcells = np.stack([pose[0] + vc - HALF_X, pose[1] + vr - HALF_Y], 1).astype(np.int64)
        vrows = tiles.lookup(vcells)
        safe = np.maximum(vrows, 0)
        wrong = (vrows >= 0) & (tiles.light[safe] >= DARK) & (tiles.label[safe] != np.asarray(view_labels).reshape(VIEW_ROWS, VIEW_COLS)[vr, vc])
        # a few tiles drift; a view that contradicts the map in many places is more likely a pose the map is not
        # registered to (a walk estimated wrong): then the map does not paint over it. Counted near the view's
        # centre, where the night's vignette leaves the tiles readable (at its edges deep night misreads many)
        inner = (np.abs(vr - HALF_Y) <= 2) & (np.abs(vc - HALF_X) <= 3)
        if (wrong & inner).sum() <= MAX_DARK_FIXES:
            cells = np.concatenate([cells, vcells[wrong]])
    if not len(cells):
        return latent, 0
    rows = tiles.lookup(cells)
    seen = rows >= 0
    if not seen.any():
        return latent, 0
    cells, rows = cells[seen], rows[seen]
    r, c = cells[:, 1] - pose[1] + HALF_Y, cells[:, 0] - pose[0] + HALF_X  # where the new frame shows each cell
    # the cells' labels: the caller's reading of this frame where it has one, else read here
    here = (np.asarray(view_labels).reshape(-1)[r * VIEW_COLS + c] if view_labels is not None
            else read_view_tiles(frame, r * VIEW_COLS + c, (float(light), False)))
    if here is None:
        return latent, 0
    # a creature or an arrow the model drew is left to it (a zombie walking in is not erased), but only on ground
    # it could be on (Crafter's walkable sets): one drawn over a remembered stone, tree or table is the model's
    # invention (measured: a row of cows drawn across a placed stone as it came back into view)
    from engine.rules import mover_allowed

    ok = ~np.isin(here, MOVERS) | ~mover_allowed(here, tiles.label[rows])
    near = ok & (np.abs(tiles.light[rows] - light) <= light_tol)
    other = np.flatnonzero(ok & ~near) if encode is not None else np.zeros(0, np.int64)
    textures = {int(j): _texture(frame.shape[0], int(tiles.label[rows[j]])) for j in other}
    far = np.zeros_like(ok)
    far[[j for j, t in textures.items() if t is not None]] = True
    out = np.array(latent, np.float32, copy=True)
    out[:, r[near], c[near]] = tiles.token[rows[near]].T
    if far.any():
        # drawn from the game's texture of the class it was read as, not by unlighting the model's pixels: those
        # are smooth where the game's night is noisy and, seen in deep night, keep too little of the tile to light
        # again (measured: `fast` revisits 84.0% -> 94.2%, `quality` 59.9% -> 86.2%)
        canvas = paint_tiles(frame, [textures[int(j)] for j in np.flatnonzero(far)], float(light), np.stack([r[far], c[far]], 1))
        z = encode(canvas[None])[0]  # one token is one tile: the relit tiles' tokens, read off the whole frame
        tok = z[:, r[far], c[far]]
        if decode is not None:
            idx = r[far] * VIEW_COLS + c[far]
            want, got = read_view_tiles(canvas, idx, (float(light), False)), read_view_tiles(decode(z[None])[0], idx, (float(light), False))
            if want is not None and got is not None:
                bad = want != got
                tok[:, bad] = tiles.token[rows[far][bad]].T
        out[:, r[far], c[far]] = tok
    return out, int(near.sum() + far.sum())


def _texture(size: int, label: int) -> np.ndarray | None:
    """The game's unlit texture (u,u,3) of class ``label`` at frame size ``size`` (its first template), or None."""
    from worldsim.eval.tiles import get_classifier

    clf = get_classifier(size)
    idx = np.flatnonzero(clf.template_labels == label)
    return clf.atlas[idx[0]] if len(idx) else None


def slot_shift(poses: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """past_shift (1,m,2) of memory slots seen from ``poses`` (m,2) and read by a frame at ``pose`` (x, y)."""
    return memory_shift(poses, pose)[None].astype(np.float32)


def predicted_poses(pose: np.ndarray, actions: list[int]) -> np.ndarray:
    """Poses (k, 2) of the next k frames if every move succeeds (the retrieval target before generating)."""
    out = np.zeros((len(actions), 2), np.int64)
    p = np.asarray(pose, np.int64).copy()
    for i, a in enumerate(actions):
        p = p + np.array(move_delta(a))
        out[i] = p
    return out


# ---------------------------------------------------------------------------------------------------
# measurements: `python -m engine.memory pose|fps` (what docs/memory.md reports)


def measure_pose(data: str, episodes: int = 10) -> dict:
    """Pose estimation on real recorded frames (a dataset's first ``episodes`` episodes, any split) against the
    recorded positions: moves right (per move action), revisits whose pose change from placing the block
    to seeing it again is exact, and the cost per frame."""
    import time

    from worldsim.data.dataset import open_dataset
    from worldsim.memory import estimate_move, target_walkable

    store = open_dataset(data).load("all", fields=("frames", "actions", "pos", "revisit_events"), max_episodes=episodes)
    out = {"episodes": len(store), "frames": store.num_frames, "moves": 0}
    for name in ("rule+view", "view"):
        out[name] = {"moves_right": 0, "revisits_exact": 0, "revisits": 0}
    cost = []
    for ep in store.episodes:
        fr, ac, pos = ep["frames"], np.asarray(ep["actions"], np.int64), np.asarray(ep["pos"], np.int64)
        est = {name: np.zeros_like(pos) for name in ("rule+view", "view")}
        for t in range(len(fr) - 1):
            a = int(ac[t])
            t0 = time.perf_counter()
            both = estimate_move(fr[t], fr[t + 1], a, target_walkable(fr[t], a, fr[t + 1]))
            cost.append(time.perf_counter() - t0)
            moved = {"rule+view": both, "view": estimate_move(fr[t], fr[t + 1], a)}
            moving = move_delta(a) != (0, 0)
            out["moves"] += moving
            for name, d in moved.items():
                est[name][t + 1] = est[name][t] + d
                out[name]["moves_right"] += bool(moving and (est[name][t + 1] - est[name][t] == pos[t + 1] - pos[t]).all())
        for name in est:
            for t_place, _, t_back, *_ in np.asarray(ep["revisit_events"]).reshape(-1, 6):
                out[name]["revisits"] += 1
                out[name]["revisits_exact"] += bool(((est[name][t_back] - est[name][t_place]) == (pos[t_back] - pos[t_place])).all())
    for name in ("rule+view", "view"):
        out[name]["moves_right"] /= max(1, out["moves"])
    out["ms_per_frame"] = float(np.mean(cost) * 1e3)
    return out


def measure_fps(dit: str = "small", frames: int = 300, data: str | None = None, threads: int = 1) -> dict:
    """fps of the `fast` and `memory` presets on a random-weight world, stepped alternately (one frame each,
    so load on the machine hits both alike). With ``data``, the actions (and, since random weights draw no
    real game, the player's moves) are those of a recorded explorer episode, so memory is read as often as
    in real play with revisits; then a bound: every frame reads `slots` memory frames (their K/V cached)."""
    import tempfile
    import time
    from pathlib import Path

    from engine.testing import make_random_world
    from engine.world import World
    from worldsim.actions import ACTION_NAMES

    moves = None
    if data:
        from worldsim.data.dataset import open_dataset

        ep = open_dataset(data).load("all", fields=("actions", "pos"), max_episodes=1).episodes[0]
        acts = [ACTION_NAMES[int(a)] for a in ep["actions"][:-1]]
        moves = np.diff(np.asarray(ep["pos"], np.int64), axis=0)
    else:
        acts = ["move_left", "move_left", "move_up", "do", "move_right", "noop", "move_down", "do", "place_stone", "move_up"]
    with tempfile.TemporaryDirectory() as tmp:
        path = make_random_world(Path(tmp) / dit, dit=dit)
        w0 = World.load(path, backend="onnxruntime", threads=threads)
        w1 = World.load(path, backend="onnxruntime", threads=threads, preset="memory")
        s0, s1 = w0.new_session(seed=0), w1.new_session(seed=0)
        clock = [0]
        if moves is not None:  # the recording's moves stand in for what a trained model would draw
            s1._move = lambda prev, fr, a, walkable: moves[clock[0]]
        out: dict = {"dit": dit, "frames": frames, "backend": "onnxruntime", "threads": threads}

        def run(n: int) -> tuple[float, float, list[int]]:
            t = {0: 0.0, 1: 0.0}
            slots = []
            for i in range(n):
                a = acts[clock[0] % len(acts)]
                for j in ((0, 1) if i % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    (s0, s1)[j].step(a)
                    t[j] += time.perf_counter() - t0
                slots.append(s1.timings["memory_slots"])
                clock[0] = (clock[0] + 1) % len(acts)
            return n / t[0], n / t[1], slots

        run(20)  # warm up: fill the window
        kv0 = s1._mem_kv.computed
        f0, f1, slots = run(frames)
        out["play"] = {"fps_fast": f0, "fps_memory": f1, "ratio": f1 / f0, "memory_slots_per_frame": float(np.mean(slots)),
                       "frames_with_memory": float(np.mean(np.array(slots) > 0)), "kv_passes_per_frame": (s1._mem_kv.computed - kv0) / frames,
                       "bank_entries": len(s1._state.memory)}
        bank = s1._state.memory
        n_slots = bank.cfg.slots
        bank.retrieve = lambda targets, first, window: np.nonzero(bank.frame < first - window)[0][:n_slots]
        f0, f1, slots = run(frames // 2)
        out["every_frame_reads_memory"] = {"fps_fast": f0, "fps_memory": f1, "ratio": f1 / f0, "memory_slots_per_frame": float(np.mean(slots))}
    return out


def add_arguments(p) -> None:
    """Arguments of the measurements (`python -m engine.memory pose|fps ...`; ready for a CLI subcommand)."""
    sub = p.add_subparsers(dest="what", required=True)
    pp = sub.add_parser("pose", help="pose estimation on real recorded frames")
    pp.add_argument("--data", required=True, help="a recorded dataset (e.g. /work/data/crafter-val)")
    pp.add_argument("--episodes", type=int, default=10)
    pf = sub.add_parser("fps", help="fps with memory against without, on a random-weight world")
    pf.add_argument("--dit", default="small", help="DiT preset of the random world (default: small)")
    pf.add_argument("--frames", type=int, default=300)
    pf.add_argument("--data", default=None, help="take actions and moves from this dataset's first episode")
    pf.add_argument("--threads", type=int, default=1)


def run(args) -> int:
    """Run a measurement and print its results as JSON."""
    import json

    res = measure_pose(args.data, args.episodes) if args.what == "pose" else measure_fps(args.dit, args.frames, args.data, args.threads)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.memory", description="measure the memory's pose estimation and fps cost")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))


# Crafter's world generator (crafter/worldgen.py) draws only these materials; tables, furnaces and plants exist
# only where the player placed them, and the player saw every one it placed
NATURAL = (WATER, GRASS, STONE, PATH, SAND, TREE, LAVA, COAL, IRON, DIAMOND)
PLACED_ONLY = (TABLE, FURNACE, PLANT)


def _unseen_uncovered(tiles: TileMap, prev_pose: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The world cells (m,2) a move from ``prev_pose`` to ``pose`` uncovered that the tile map never saw, and their
    view rows and columns (m,), (m,) in the new frame."""
    cells = needed_cells(pose[None], prev_pose[None]).astype(np.int64)
    cells = cells[tiles.lookup(cells) < 0] if len(tiles) else cells
    return cells, cells[:, 1] - pose[1] + HALF_Y, cells[:, 0] - pose[0] + HALF_X


def natural_uncovered(tiles: TileMap, latent: np.ndarray, frame: np.ndarray, prev_pose: np.ndarray, pose: np.ndarray,
                      light: float | None, encode) -> tuple[np.ndarray, int]:
    """The cells a move uncovered that the tile map never saw and the model drew as a table, a furnace or a plant
    (only the player places those, and it saw each one) are drawn as the likeliest natural material instead (the
    world's tile reader over those classes, else grass), the game's texture lit at the frame's light and encoded
    with ``encode`` (uint8 (1,S,S,3) -> (1,C,g,g)): -> (latent (C,g,g), tiles redrawn). Why: in open loop a row of
    tables the model drew on new ground blocked the walk where the game's player walked on (session 11)."""
    from engine.rules import paint_tiles
    from worldsim.eval.reader import active_reader
    from worldsim.memory import read_view_tiles

    pose, prev_pose = np.asarray(pose, np.int64).reshape(2), np.asarray(prev_pose, np.int64).reshape(2)
    if light is None or not np.isfinite(light) or (pose == prev_pose).all():
        return latent, 0
    cells, r, c = _unseen_uncovered(tiles, prev_pose, pose)
    if not len(cells):
        return latent, 0
    idx = r * VIEW_COLS + c
    here = read_view_tiles(frame, idx, (float(light), False))
    if here is None:
        return latent, 0
    bad = np.isin(here, PLACED_ONLY)
    if not bad.any():
        return latent, 0
    reader = active_reader(int(frame.shape[0]))
    instead = (reader.read_tiles(frame, idx[bad], float(light), False, allowed=NATURAL) if reader is not None
               else np.full(int(bad.sum()), GRASS, np.int64))
    textures = [_texture(frame.shape[0], int(k)) for k in instead]
    if any(t is None for t in textures):
        return latent, 0
    z = encode(paint_tiles(frame, textures, float(light), np.stack([r[bad], c[bad]], 1))[None])[0]
    out = np.array(latent, np.float32, copy=True)
    out[:, r[bad], c[bad]] = z[:, r[bad], c[bad]]
    return out, int(bad.sum())


# ground sampling: the cells a move uncovers that the session never saw (engine.ground) ----------------------------


def sample_uncovered(tiles: TileMap, latent: np.ndarray, frame: np.ndarray, prev_pose: np.ndarray, pose: np.ndarray,
                     light: float | None, head, encode, seed: int) -> tuple[np.ndarray, int]:
    """The cells a move uncovered that the tile map never saw, each drawn as one natural material sampled from the
    world's ground head (engine.ground.GroundHead: p(material | the model's token)): -> (latent (C,g,g), tiles redrawn).

    Why: the model's token there is the mean of what it expects, and the mean of grass and something else decodes as
    grass (engine.ground). A cell whose draw is the material the model's frame shows keeps the model's token; the
    others take the game's texture of the drawn material, lit at the frame's light and encoded with ``encode`` (uint8
    (1,S,S,3) -> (1,C,g,g)). Cells the model drew as a creature, an arrow or the world's edge are left to it.
    Each cell draws with its own number (engine.ground.cell_uniforms of the session's ``seed`` and the cell): a cell
    redrawn after a restore draws the same. A head with neighbour terms draws the cells in order along the new row,
    each given the material toward the player (as the frame shows it) and the one drawn before it."""
    from engine.ground import cell_uniforms, draw, frontier_neighbours
    from engine.rules import paint_tiles
    from worldsim.memory import read_view_tiles

    pose, prev_pose = np.asarray(pose, np.int64).reshape(2), np.asarray(prev_pose, np.int64).reshape(2)
    if head is None or light is None or not np.isfinite(light) or (pose == prev_pose).all():
        return latent, 0
    cells, r, c = _unseen_uncovered(tiles, prev_pose, pose)
    if not len(cells):
        return latent, 0
    # the frame's tiles at the new cells and, for a head that reads them, at their neighbours: one read
    look = np.stack([r, c], 1)
    if head.neighbour is not None:
        _, inward, lateral = frontier_neighbours(r, c, pose - prev_pose)
        look = np.concatenate([look, inward, lateral])
    look = look[(look[:, 0] >= 0) & (look[:, 0] < VIEW_ROWS) & (look[:, 1] >= 0) & (look[:, 1] < VIEW_COLS)]
    idx = np.unique(look[:, 0] * VIEW_COLS + look[:, 1])
    seen = read_view_tiles(frame, idx, (float(light), False))
    if seen is None:
        return latent, 0
    grid = np.full((VIEW_ROWS, VIEW_COLS), -1, np.int64)   # the frame's labels where read, -1 elsewhere
    grid.flat[idx] = seen
    here = grid[r, c]
    keep = np.isin(here, NATURAL + PLACED_ONLY)
    r, c, here, cells = r[keep], c[keep], here[keep], cells[keep]
    if not len(r):
        return latent, 0
    tokens, u = np.asarray(latent, np.float32)[:, r, c].T, cell_uniforms(seed, cells)
    if head.neighbour is None:
        drawn = draw(head, head.probs(tokens), u)
    else:
        drawn = _draw_along_row(head, grid, r, c, pose - prev_pose, tokens, u)
    new = drawn != here
    textures = [_texture(frame.shape[0], int(k)) for k in drawn[new]]
    if not new.any() or any(t is None for t in textures):
        return latent, 0
    at = np.stack([r[new], c[new]], 1)
    z = encode(paint_tiles(frame, textures, float(light), at)[None])[0]
    out = np.array(latent, np.float32, copy=True)
    out[:, r[new], c[new]] = z[:, r[new], c[new]]
    return out, int(new.sum())


def _draw_along_row(head, grid: np.ndarray, r: np.ndarray, c: np.ndarray, move: np.ndarray, tokens: np.ndarray,
                    u: np.ndarray) -> np.ndarray:
    """Labels (m,) of new cells at view rows/columns r, c (m,) drawn one by one along the row (engine.ground
    .frontier_neighbours), each from the head's odds given its token (m,C) and its two neighbours' materials in
    ``grid`` (VIEW_ROWS, VIEW_COLS) (the frame's labels, -1 unread), where each draw is written as it is made."""
    from engine.ground import _labels_at, draw, frontier_neighbours

    order, inward, lateral = frontier_neighbours(r, c, move)
    grid = grid.copy()
    drawn = np.empty(len(r), np.int64)
    for i in order:
        p = head.probs(tokens[i:i + 1], _labels_at(grid, inward[i:i + 1]), _labels_at(grid, lateral[i:i + 1]))
        drawn[i] = draw(head, p, u[i:i + 1])[0]
        grid[r[i], c[i]] = drawn[i]
    return drawn
