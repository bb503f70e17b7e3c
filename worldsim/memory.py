"""Memory geometry shared by training and the engine: poses, views, pose estimation and retrieval.

Crafter shows 9 x 7 world tiles (the player at column 4, row 3) above 2 inventory rows. A *pose* is the
player's tile (x, y) (x to the right, y down). A frame seen from pose p shows, at view tile (row r,
column c), the world cell (p.x + c - 4, p.y + r - 3). Poses at play time are relative (the session's
first frame is at (0, 0)): nothing needs the game's absolute coordinates.

- ``memory_shift``: the (dy, dx) a memory frame's keys are rotated by so that the DiT's rotary positions
  put each of its tokens where that world cell appears in the frame being generated.
- ``estimate_move``: the player's move between two consecutive frames from their latents (or pixels) and
  the action taken: a move action either moved the player one tile or was blocked (it only turned), no
  other action moves it, so the choice is between two candidate shifts of the view. ~0.1 ms.
- ``retrieve``: the few bank entries that hold the newest view of the world cells the model needs and
  its window does not show (each needed cell is "owned" by the newest entry that saw it; entries are
  ranked by how many cells they own). Training samples memory frames with the same function.

Everything is plain numpy: no torch, no engine.
"""

from __future__ import annotations

import numpy as np

from worldsim.actions import ACTION_NAMES, MOVES

VIEW_COLS, VIEW_ROWS = 9, 7  # world tiles on screen
PLAYER_COL, PLAYER_ROW = 4, 3  # the player's view tile
HALF_X, HALF_Y = VIEW_COLS // 2, VIEW_ROWS // 2  # a view spans pose +- (4, 3)
# Pose cell of the bank: a frame replaces the entry of its cell (newest wins). Measured on the explorer's val
# episodes with true poses, 2 slots: cells of 3 x 2 tiles cover 90% of the needed cells that were seen before
# the window (1 x 1: 87%) and need less than half the memory K/V passes (0.14 per frame, 1 x 1: 0.31).
DEFAULT_CELL = (3, 2)
# action index -> (dx, dy) of the player when the move is not blocked
MOVE_DELTAS: dict[int, tuple[int, int]] = {ACTION_NAMES.index(name): d for name, d in MOVES.items()}


def move_delta(action: int) -> tuple[int, int]:
    """(dx, dy) an action moves the player if it is not blocked; (0, 0) for non-moves."""
    return MOVE_DELTAS.get(int(action), (0, 0))


def moved_view(latent, dx: int, dy: int):
    """A frame's latent (C,g,g) (numpy or torch) with its world view moved as a move by (dx, dy) moves it:
    new[r, c] = prev[r + dy, c + dx]; the row/column the move uncovers repeats its neighbour (terrain tends to go
    on), the player tile and the inventory rows stay. A copy. Used by the engine's warm start and by training on
    warm-started targets."""
    rows = np.clip(np.arange(VIEW_ROWS) + int(dy), 0, VIEW_ROWS - 1)
    cols = np.clip(np.arange(VIEW_COLS) + int(dx), 0, VIEW_COLS - 1)
    out = latent.clone() if hasattr(latent, "clone") else latent.copy()
    out[:, :VIEW_ROWS] = latent[:, rows][:, :, cols]
    out[:, PLAYER_ROW, PLAYER_COL] = latent[:, PLAYER_ROW, PLAYER_COL]
    return out


def memory_shift(entry_pose: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Rotary shift (dy, dx) of a memory frame seen from ``entry_pose`` (..., 2) (x, y), read by a frame at
    ``pose`` (2,) or (..., 2): -> float32 (..., 2) = (entry.y - pose.y, entry.x - pose.x).

    Token (r, c) of the memory frame shows world cell (e.x + c - 4, e.y + r - 3), which the current frame
    shows at (r + e.y - p.y, c + e.x - p.x): its key must sit at that position, i.e. shifted by this.
    """
    d = np.asarray(entry_pose, np.int64) - np.asarray(pose, np.int64)
    return np.stack([d[..., 1], d[..., 0]], -1).astype(np.float32)


_VIEW_OFFSETS = np.stack(np.meshgrid(np.arange(-HALF_X, HALF_X + 1), np.arange(-HALF_Y, HALF_Y + 1)), -1).reshape(-1, 2)  # (63, 2) (dx, dy)


def view_cells(poses: np.ndarray) -> np.ndarray:
    """World cells (x, y) shown by views from ``poses`` (K, 2): -> unique int64 (M, 2)."""
    poses = np.asarray(poses, np.int64).reshape(-1, 2)
    if len(poses) == 1:
        return poses + _VIEW_OFFSETS
    cells = (poses[:, None, :] + _VIEW_OFFSETS[None]).reshape(-1, 2)
    lo = cells.min(0)
    span = int(cells[:, 1].max() - lo[1]) + 1
    key = np.unique((cells[:, 0] - lo[0]) * span + (cells[:, 1] - lo[1]))  # 1-D keys: much faster than unique(axis=0)
    return np.stack([key // span + lo[0], key % span + lo[1]], -1)


def needed_cells(target_poses: np.ndarray, window_poses: np.ndarray | None = None) -> np.ndarray:
    """World cells (M, 2) seen from any target pose (K, 2) and from none of the window poses (W, 2)."""
    cells = view_cells(target_poses)
    if window_poses is None or len(window_poses) == 0:
        return cells
    w = np.asarray(window_poses, np.int64).reshape(-1, 2)
    seen = ((np.abs(cells[:, None, 0] - w[None, :, 0]) <= HALF_X) & (np.abs(cells[:, None, 1] - w[None, :, 1]) <= HALF_Y)).any(1)
    return cells[~seen]


def newest_views(view_pose: np.ndarray, view_frame: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which views (poses (E,2), frames (E,)) show world ``cells`` (M,2): -> (seen bool (M,), owner int64 (S,)
    the index of the newest view showing each seen cell, ties to the later row)."""
    E = len(view_pose)
    cover = (np.abs(view_pose[:, None, 0] - cells[None, :, 0]) <= HALF_X) & (np.abs(view_pose[:, None, 1] - cells[None, :, 1]) <= HALF_Y)
    seen = cover.any(0)
    key = np.where(cover[:, seen], view_frame[:, None] * (E + 1) + np.arange(E)[:, None], -1)
    return seen, key.argmax(0).astype(np.int64)


def retrieve(bank_pose: np.ndarray, bank_frame: np.ndarray, cells: np.ndarray, slots: int, min_owned: int = 1,
             candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices (<= slots,) of the bank entries to show the model for world ``cells`` (M, 2).

    Each cell is owned by the newest candidate entry (largest ``bank_frame``) whose view contains it; the
    entries owning the most cells (at least ``min_owned``) are returned, most cells first, newer first on
    ties. bank_pose (E, 2) (x, y); bank_frame (E,); candidates: bool (E,) mask (default: all).
    """
    bank_pose = np.asarray(bank_pose, np.int64).reshape(-1, 2)
    bank_frame = np.asarray(bank_frame, np.int64).reshape(-1)
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    if len(bank_pose) == 0 or len(cells) == 0 or slots < 1:
        return np.zeros(0, np.int64)
    # only entries whose view can reach the cells' bounding box take part (a cheap filter over the whole bank)
    lo, hi = cells.min(0), cells.max(0)
    near = ((bank_pose[:, 0] >= lo[0] - HALF_X) & (bank_pose[:, 0] <= hi[0] + HALF_X)
            & (bank_pose[:, 1] >= lo[1] - HALF_Y) & (bank_pose[:, 1] <= hi[1] + HALF_Y))
    if candidates is not None:
        near &= np.asarray(candidates, bool)
    rows = np.nonzero(near)[0]
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    pose, frame = bank_pose[rows], bank_frame[rows]
    seen, owner = newest_views(pose, frame, cells)
    if not seen.any():
        return np.zeros(0, np.int64)
    owned = np.bincount(owner, minlength=len(rows))
    order = np.lexsort((-frame, -owned))  # most cells first, then newest
    order = order[owned[order] >= max(1, min_owned)]
    return rows[order[:slots]].astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# pose estimation


def view_features(x: np.ndarray) -> np.ndarray:
    """The world part of a frame as a (7, 9, D) float32 grid of per-tile features.

    A latent (C, g, g) with g = 9 (one token per tile) gives its first 7 rows (D = C); a frame (S, S, 3)
    uint8 gives each tile's pixels (D = 3 * t * t, t = S // 9).
    """
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 3 and x.shape[0] == x.shape[1] and x.shape[0] >= 9:
        t = x.shape[0] // 9
        w = x[:VIEW_ROWS * t, :VIEW_COLS * t].astype(np.float32)
        return w.reshape(VIEW_ROWS, t, VIEW_COLS, t, 3).transpose(0, 2, 1, 3, 4).reshape(VIEW_ROWS, VIEW_COLS, -1)
    if x.ndim == 3 and x.shape[1] == x.shape[2] == 9:
        return np.ascontiguousarray(x[:, :VIEW_ROWS].transpose(1, 2, 0), dtype=np.float32)
    raise ValueError(f"view_features takes a latent (C,9,9) or a frame (S,S,3) with S >= 9, got shape {x.shape}")


def _tile_errors(prev: np.ndarray, new: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Per-tile squared differences between ``new`` and ``prev`` moved by the player shift (dx, dy):
    -> (errors (h, w) over the overlap in new-frame tiles, keep mask (h, w), (r0, r1, c0, c1) of the overlap).
    A move by (dx, dy) shows new[r, c] = prev[r + dy, c + dx]; the player's tile in either frame is left out
    (its sprite turns with the facing)."""
    r0, r1 = max(0, -dy), VIEW_ROWS - max(0, dy)
    c0, c1 = max(0, -dx), VIEW_COLS - max(0, dx)
    d = ((new[r0:r1, c0:c1] - prev[r0 + dy:r1 + dy, c0 + dx:c1 + dx]) ** 2).mean(-1)
    keep = np.ones(d.shape, bool)
    for r, c in ((PLAYER_ROW, PLAYER_COL), (PLAYER_ROW - dy, PLAYER_COL - dx)):
        if r0 <= r < r1 and c0 <= c < c1:
            keep[r - r0, c - c0] = False
    return d, keep, (r0, r1, c0, c1)


def shift_errors(prev: np.ndarray, new: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """Mean squared difference between ``new`` and ``prev`` moved by each player shift (dx, dy): (len(shifts),).
    prev/new: (7, 9, D) from ``view_features``."""
    out = np.empty(len(shifts), np.float64)
    for i, (dx, dy) in enumerate(shifts):
        d, keep, _ = _tile_errors(prev, new, dx, dy)
        out[i] = float(d[keep].mean())
    return out


def _as_view(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 3 and x.shape[:2] == (VIEW_ROWS, VIEW_COLS) else view_features(x)


def estimate_move(prev: np.ndarray, new: np.ndarray, action: int, walkable: bool | None = None,
                  override: float = 4.0, min_votes: int = 3) -> tuple[int, int]:
    """The player's move (dx, dy) from frame ``prev`` to ``new`` (frames (S,S,3), latents (C,9,9) or
    ``view_features`` grids) produced by ``action``.

    Only a move action moves the player, by its own direction or not at all (blocked: it only turns), so
    two view shifts compete. The view alone is ambiguous where little is static (a grass field with a cow
    walking along), so when ``walkable`` (``target_walkable`` of ``prev``: Crafter's own rule) is given it
    decides, unless the view contradicts it overwhelmingly (a world model that broke the rule): the other
    shift fits ``override`` times better and at least ``min_votes`` tiles clearly prefer it.
    """
    d = move_delta(action)
    if d == (0, 0):
        return (0, 0)
    p, n = _as_view(prev), _as_view(new)
    es, ks, _ = _tile_errors(p, n, 0, 0)
    em, km, (r0, r1, c0, c1) = _tile_errors(p, n, *d)
    e_stay, e_move = float(es[ks].mean()), float(em[km].mean())
    by_view = e_move < e_stay
    if walkable is None or bool(walkable) == by_view:
        return d if by_view else (0, 0)
    # the rule and the view disagree: count tiles (of the overlap) that clearly prefer the view's answer
    es_o, ok = es[r0:r1, c0:c1], ks[r0:r1, c0:c1] & km
    floor = 0.01 * float((n * n).mean())  # "clearly": the worse fit is a real mismatch, not noise
    if by_view:
        votes = int(((em < 0.25 * es_o) & (es_o > floor) & ok).sum())
        strong = e_move * override < e_stay and votes >= min_votes
    else:
        votes = int(((es_o < 0.25 * em) & (em > floor) & ok).sum())
        strong = e_stay * override < e_move and votes >= min_votes
    moved = by_view if strong else bool(walkable)
    return d if moved else (0, 0)


# Crafter's player walks onto grass, sand, path and lava, when no creature, plant or arrow stands there
# (crafter.objects.Player._move / World.is_free); a sleeping player does not move.
_WALKABLE_IDS = (2, 4, 5, 7)


def frame_lighting(frame: np.ndarray) -> tuple[float, bool] | None:
    """(daylight, sleeping) of a frame uint8 (S,S,3) from the player tile (worldsim.eval.tiles), or None
    where the classifier cannot read it. ~0.1 ms."""
    try:
        from worldsim.eval.tiles import get_classifier

        frame = np.asarray(frame)
        day, sleep = get_classifier(int(frame.shape[0])).estimate_lighting(frame[None])
    except (ImportError, ValueError, AttributeError, IndexError):
        return None
    return float(day[0]), bool(sleep[0])


def read_view_tiles(frame: np.ndarray, tiles: np.ndarray, lighting: tuple[float, bool] | None = None) -> np.ndarray | None:
    """Semantic labels int64 (n,) of view tiles ``tiles`` (n,) (index row * 9 + column) of a frame uint8
    (S,S,3), by worldsim.eval.tiles' nearest-texture model (its Gaussian night model); ``lighting`` from
    ``frame_lighting`` (estimated here when None). None where the classifier cannot read the frame. Inside
    ``worldsim.eval.reader.reading_with(reader)`` (a world's session step) the labels come from that reader."""
    tiles = np.asarray(tiles, np.int64).reshape(-1)
    try:
        from worldsim.eval.reader import active_reader
        from worldsim.eval.tiles import get_classifier

        frame = np.asarray(frame)
        clf = get_classifier(int(frame.shape[0]))
        lighting = frame_lighting(frame) if lighting is None else lighting
        if lighting is None:
            return None
        reader = active_reader(int(frame.shape[0]))
        if reader is not None:   # a world's decoded frame, read with the reader trained on its autoencoder
            return reader.read_tiles(frame, tiles, float(lighting[0]), bool(lighting[1]))
        return clf.template_labels[_nearest_templates(clf, frame, tiles, lighting)].astype(np.int64)
    except (ImportError, ValueError, AttributeError, IndexError):  # not a Crafter frame the classifier can read
        return None


def _nearest_templates(clf, frame: np.ndarray, tiles: np.ndarray, lighting: tuple[float, bool]) -> np.ndarray:
    """The texture model's best template (n,) (index into clf.templates) for view tiles ``tiles`` (n,) of a frame."""
    day, sleep = np.array([lighting[0]], np.float32), np.array([lighting[1]])
    obs = clf.view_tiles(frame[None])[:, tiles]
    dist = clf._day_distances(obs, day, sleep) if day[0] >= 0.5 else clf._gaussian_distances(obs, day, sleep, tiles)
    return (dist[0] + clf._penalty[tiles]).argmin(-1)


def target_walkable(frame: np.ndarray, action: int, next_frame: np.ndarray | None = None) -> bool | None:
    """Would Crafter's rules let ``action`` move the player in ``frame`` (uint8 (S,S,3))? -> True/False, or
    None for a non-move (or a frame the tile classifier cannot read).

    Reads only the lighting (from the player tile) and the one tile the player faces after turning, with
    worldsim.eval.tiles' nearest-texture model (its Gaussian night model): ~0.2-0.4 ms. A sleeping player
    does not move, unless it wakes up in that very step: given ``next_frame``, an awake next frame says so.
    """
    d = move_delta(action)
    if d == (0, 0):
        return None
    lighting = frame_lighting(frame)
    if lighting is None:
        return None
    if lighting[1]:
        woke = next_frame is not None and (nxt := frame_lighting(next_frame)) is not None and not nxt[1]
        if not woke:
            return False
    label = read_view_tiles(frame, [(PLAYER_ROW + d[1]) * VIEW_COLS + PLAYER_COL + d[0]], lighting)
    return None if label is None else int(label[0]) in _WALKABLE_IDS


def track_poses(views: np.ndarray, actions: np.ndarray, start: tuple[int, int] = (0, 0), rule: bool = True) -> np.ndarray:
    """Poses (T, 2) of a sequence of frames uint8 (T,S,S,3) (or latents (T,C,9,9): the view only) with
    actions[t] taken on frame t, from ``start``; frames also use Crafter's rule (``target_walkable``)."""
    views = np.asarray(views)
    pixels = rule and views.ndim == 4 and views.shape[-1] == 3 and views.dtype == np.uint8
    poses = np.zeros((len(views), 2), np.int64)
    if len(views):
        poses[0] = start
    for t in range(1, len(views)):
        a = int(actions[t - 1])
        walk = target_walkable(views[t - 1], a, views[t]) if pixels else None
        poses[t] = poses[t - 1] + np.array(estimate_move(views[t - 1], views[t], a, walk))
    return poses


# ---------------------------------------------------------------------------------------------------
# training: which past frames of an episode serve as memory for a clip


def newest_per_cell(poses: np.ndarray, cell: tuple[int, int] = DEFAULT_CELL) -> np.ndarray:
    """Indices of the newest row per insertion cell among ``poses`` (N, 2) given oldest first (the bank's
    merge rule: a frame replaces the entry of its cell)."""
    poses = np.asarray(poses, np.int64).reshape(-1, 2)
    if len(poses) == 0:
        return np.zeros(0, np.int64)
    keys = np.floor_divide(poses, np.asarray(cell, np.int64))
    rev = keys[::-1]
    _, first = np.unique(rev, axis=0, return_index=True)
    return np.sort(len(poses) - 1 - first)


def sample_memory(poses: np.ndarray, start: int, clip_len: int, slots: int, window: int, cell: tuple[int, int] = DEFAULT_CELL,
                  min_owned: int = 1) -> np.ndarray:
    """Frame indices (<= slots,) of an episode to give a training clip as memory, chosen as the engine does
    when it generates frame ``start``: the frames ``start - window .. start - 1`` are its window (they are not
    memory, and the cells they show are not needed), older frames are the bank (newest per cell), and the
    needed cells are those the clip's frames show. poses (N, 2) are the episode's true poses."""
    limit = start - window
    if limit <= 0:
        return np.zeros(0, np.int64)
    bank = newest_per_cell(poses[:limit], cell)
    cells = needed_cells(poses[start:start + clip_len], poses[limit:start])
    pick = retrieve(poses[bank], bank, cells, slots, min_owned)
    return bank[pick]


def read_facing(frame: np.ndarray, lighting: tuple[float, bool] | None = None) -> tuple[int, int] | None:
    """The way the player faces (dx, dy), read from its sprite at the view's centre of a frame uint8 (S,S,3) by
    the nearest-texture model; None where it shows no facing sprite (asleep) or the frame cannot be read."""
    try:
        from worldsim.eval.tiles import SPRITE_FACING, get_classifier

        frame = np.asarray(frame)
        clf = get_classifier(int(frame.shape[0]))
        lighting = frame_lighting(frame) if lighting is None else lighting
        if lighting is None or lighting[1]:
            return None
        best = int(_nearest_templates(clf, frame, np.array([PLAYER_ROW * VIEW_COLS + PLAYER_COL]), lighting)[0])
        return SPRITE_FACING.get(clf.templates[best].sprite)
    except (ImportError, ValueError, AttributeError, IndexError):
        return None
