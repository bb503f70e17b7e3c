"""Metrics on plain numpy arrays: pixels (PSNR, SSIM), tiles (accuracy by category), view motion
(action following), revisits, inventory, and class distributions. No world, no game, no torch.

Conventions: frames are uint8 (..., H, W, 3); tile labels are semantic ids uint8 (..., 7, 9) [row, col]
with the player at (3, 4); positions are world cells (x, y) with x to the right and y down, so view
tile (r, c) of a player at (x, y) shows cell (x + c - 4, y + r - 3). Rates are accumulated as
(correct, total) counts in a ``Tally`` so that batches and episodes combine exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from worldsim.eval.tiles import (
    GRASS,
    NUM_CLASSES,
    OBJECT_CLASSES,
    PLAYER,
    PLAYER_COL,
    PLAYER_ROW,
    VIEW_COLS,
    VIEW_ROWS,
)

PSNR_CAP = 100.0   # dB reported for identical frames (the MSE is 0); keeps means finite
UNSEEN = 255       # "never seen" in a last-seen map
# Candidate player displacements (dx, dy) between two consecutive frames: stay, then the four moves.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
MOVE_ACTIONS = {1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}   # Crafter action index -> (dx, dy)
INTERACT_ACTIONS = frozenset({5, 7, 8, 9, 10})                 # do, place_stone/table/furnace/plant
IS_OBJECT = np.zeros(256, bool)
IS_OBJECT[list(OBJECT_CLASSES)] = True


# ----- counting ---------------------------------------------------------------------------------
class Tally:
    """Named (sum, count) accumulators; ``rate(name)`` is sum / count (None when nothing was counted)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, hits: float | np.ndarray, count: int | None = None) -> None:
        """Add a number of hits out of ``count``; or, with count None, a bool/float array of outcomes."""
        if count is None:
            arr = np.asarray(hits, np.float64)
            hits, count = float(arr.sum()), int(arr.size)
        self.sums[name] = self.sums.get(name, 0.0) + float(hits)
        self.counts[name] = self.counts.get(name, 0) + int(count)

    def merge(self, other: "Tally") -> "Tally":
        """Add another tally's counts into this one; returns self."""
        for k in other.counts:
            self.add(k, other.sums[k], other.counts[k])
        return self

    def rate(self, name: str) -> float | None:
        """Mean of the outcomes counted under ``name``."""
        n = self.counts.get(name, 0)
        return self.sums[name] / n if n else None

    def as_dict(self, prefix: str = "") -> dict[str, float | None]:
        """{prefix + name: rate} for every name, plus {prefix + name + '_n': count}."""
        out: dict[str, float | None] = {}
        for k in sorted(self.counts):
            out[prefix + k] = self.rate(k)
            out[prefix + k + "_n"] = self.counts[k]
        return out


# ----- pixels -----------------------------------------------------------------------------------
def _check_pair(pred: np.ndarray, true: np.ndarray, what: str = "frames") -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"predicted and true {what} differ in shape: {pred.shape} vs {true.shape}")
    return pred, true


def psnr(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB (capped at PSNR_CAP) of uint8 frames (..., H, W, 3) -> (...,)."""
    pred, true = _check_pair(pred, true)
    mse = ((pred.astype(np.float64) - true.astype(np.float64)) ** 2).mean((-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def _gauss_matrix(n: int, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """(n - size + 1, n) matrix applying a normalised 1D Gaussian window ('valid' convolution)."""
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    m = np.zeros((n - size + 1, n))
    for i in range(n - size + 1):
        m[i, i:i + size] = k
    return m


def ssim(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, per RGB channel) -> (...,)."""
    pred, true = _check_pair(pred, true)
    if pred.shape[-3] < 11 or pred.shape[-2] < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {pred.shape[-3:-1]}")
    lead = pred.shape[:-3]
    h, w = pred.shape[-3:-1]
    # (..., 3, H, W) so that the window is two matmuls: Gh @ X @ Gw^T
    x = np.moveaxis(pred.reshape((-1, h, w, 3)).astype(np.float64), -1, 1)
    y = np.moveaxis(true.reshape((-1, h, w, 3)).astype(np.float64), -1, 1)
    gh, gw = _gauss_matrix(h), _gauss_matrix(w)

    def filt(z: np.ndarray) -> np.ndarray:
        return gh @ z @ gw.T

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean((-3, -2, -1)).reshape(lead)


# ----- tiles in world coordinates ---------------------------------------------------------------
def view_cells(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World cells shown by each view tile of players at pos int (..., 2): (x, y), each (..., 7, 9)."""
    pos = np.asarray(pos)
    cols = np.arange(VIEW_COLS) - PLAYER_COL
    rows = np.arange(VIEW_ROWS) - PLAYER_ROW
    x = pos[..., 0, None, None] + cols[None, :]
    y = pos[..., 1, None, None] + rows[:, None]
    return np.broadcast_to(x, pos.shape[:-1] + (VIEW_ROWS, VIEW_COLS)), np.broadcast_to(y, pos.shape[:-1] + (VIEW_ROWS, VIEW_COLS))


def last_seen(context_labels: np.ndarray, context_pos: np.ndarray, query_pos: np.ndarray) -> np.ndarray:
    """What the context last showed at the cells of each query view: uint8 (T, 7, 9), UNSEEN if never.

    context_labels (K, 7, 9) with player positions context_pos (K, 2); query_pos (T, 2).
    """
    context_labels = np.asarray(context_labels)
    context_pos = np.asarray(context_pos, np.int64)
    query_pos = np.asarray(query_pos, np.int64)
    if len(context_labels) != len(context_pos):
        raise ValueError(f"{len(context_labels)} context label grids but {len(context_pos)} positions")
    allpos = np.concatenate([context_pos, query_pos])
    lo = allpos.min(0) - np.array([PLAYER_COL, PLAYER_ROW])
    hi = allpos.max(0) + np.array([PLAYER_COL, PLAYER_ROW])
    canvas = np.full((hi[1] - lo[1] + 1, hi[0] - lo[0] + 1), UNSEEN, np.uint8)   # [y, x]
    cx, cy = view_cells(context_pos)
    for k in range(len(context_labels)):            # later frames overwrite earlier ones
        canvas[cy[k] - lo[1], cx[k] - lo[0]] = context_labels[k]
    qx, qy = view_cells(query_pos)
    return canvas[qy - lo[1], qx - lo[0]]


def tile_masks(true_labels: np.ndarray, seen: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean masks (..., 7, 9) of the tile categories scored by ``tile_scores``.

    all; non_grass (true tile is not grass); and, given ``seen`` (what the context last showed at the
    same world cell, UNSEEN if never): persistent (seen, a static material, unchanged in the real
    game), changed (seen, but the real game now shows something else) and new (never seen).
    """
    true_labels = np.asarray(true_labels)
    masks = {"all": np.ones(true_labels.shape, bool), "non_grass": true_labels != GRASS}
    if seen is not None:
        seen = np.asarray(seen)
        visible = seen != UNSEEN
        masks["persistent"] = visible & (seen == true_labels) & ~IS_OBJECT[true_labels]
        masks["changed"] = visible & (seen != true_labels)
        masks["new"] = ~visible
    return masks


def tile_scores(pred_labels: np.ndarray, true_labels: np.ndarray, masks: Mapping[str, np.ndarray],
                tally: Tally | None = None, prefix: str = "tile_") -> Tally:
    """Count correct tiles per category mask into a Tally (names prefix + category)."""
    pred_labels, true_labels = _check_pair(pred_labels, true_labels, "tile labels")
    tally = Tally() if tally is None else tally
    hit = pred_labels == true_labels
    for name, m in masks.items():
        tally.add(prefix + name, float(hit[m].sum()), int(m.sum()))
    return tally


# ----- view motion and actions ------------------------------------------------------------------
def shift_scores(prev_labels: np.ndarray, next_labels: np.ndarray) -> np.ndarray:
    """Agreement of next with prev under each player displacement in SHIFTS: float (..., 5).

    A move by (dx, dy) shows next[r, c] = prev[r + dy, c + dx]; only tiles static in both frames
    (not creatures, arrows, plants or the player) on the overlap are compared.
    """
    prev_labels, next_labels = _check_pair(prev_labels, next_labels, "tile labels")
    out = np.zeros(prev_labels.shape[:-2] + (len(SHIFTS),))
    for i, (dx, dy) in enumerate(SHIFTS):
        r0, r1 = max(0, -dy), VIEW_ROWS - max(0, dy)
        c0, c1 = max(0, -dx), VIEW_COLS - max(0, dx)
        a = next_labels[..., r0:r1, c0:c1]
        b = prev_labels[..., r0 + dy:r1 + dy, c0 + dx:c1 + dx]
        valid = ~IS_OBJECT[a] & ~IS_OBJECT[b]
        n = valid.sum((-2, -1))
        out[..., i] = np.where(n > 0, ((a == b) & valid).sum((-2, -1)) / np.maximum(n, 1), 0.0)
    return out


def estimate_shift(prev_labels: np.ndarray, next_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Player displacement between two views: ((..., 2) int (dx, dy), (...,) bool unique best).

    Ties (a featureless view) resolve to the first of SHIFTS, i.e. (0, 0); ``unique`` says whether
    the best displacement beats every other one.
    """
    s = shift_scores(prev_labels, next_labels)
    best = s.argmax(-1)
    top = np.take_along_axis(s, best[..., None], -1)[..., 0]
    others = np.where(np.arange(len(SHIFTS)) == best[..., None], -np.inf, s).max(-1)
    return np.asarray(SHIFTS)[best], top > others


def chain_positions(labels: np.ndarray) -> np.ndarray:
    """Relative player positions (T, 2) of a sequence of views (T, 7, 9) from frame-to-frame shifts."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.zeros((0, 2), np.int64)
    d, _ = estimate_shift(labels[:-1], labels[1:])
    return np.concatenate([np.zeros((1, 2), np.int64), np.cumsum(d, 0)])


def action_following(prev_true: np.ndarray, next_true: np.ndarray, next_pred: np.ndarray, actions: np.ndarray,
                     delta: np.ndarray, facing_next: np.ndarray | None = None, pred_facing: np.ndarray | None = None,
                     facing_prev: np.ndarray | None = None, tally: Tally | None = None,
                     prev_pred: np.ndarray | None = None, next_ref: np.ndarray | None = None) -> Tally:
    """Did the generated view move (or stay) as the real one did, and did actions change the right tile?

    prev_true, next_true, next_pred: labels (N, 7, 9) of real frame t, real frame t+1 and the world's
    frame t+1; actions (N,) taken on frame t; delta (N, 2) the real player displacement. Scored only
    where the real views show the real displacement unambiguously. Categories: moved (the player
    moved), blocked (a move action that did not move), still (any other action, no move); facing
    (after a move action, the generated player sprite faces the real way; needs facing_next and
    pred_facing (N, 2), zeros when unknown); interact_changed / interact_unchanged (after do/place_*,
    the faced tile shows the real outcome, split by whether the real game changed it; needs facing_prev).
    With ``prev_pred`` (the world's own frame t, open loop) the generated motion is measured between
    the world's two frames instead of from the real frame t. ``next_ref`` (default next_true) is what
    the faced tile is compared with (e.g. the real frame read by the classifier). Facing is scored
    only where the real sprite shows a direction (not asleep).
    """
    tally = Tally() if tally is None else tally
    actions = np.asarray(actions)
    delta = np.asarray(delta, np.int64)
    real_shift, unique = estimate_shift(prev_true, next_true)
    ident = unique & (real_shift == delta).all(-1)
    pred_shift, pred_unique = estimate_shift(prev_true if prev_pred is None else prev_pred, next_pred)
    # the world's view must show the real motion unambiguously (a featureless or garbled frame follows nothing)
    follows = (pred_shift == delta).all(-1) & pred_unique
    moved = (delta != 0).any(-1)
    is_move = np.isin(actions, list(MOVE_ACTIONS))
    for name, m in (("moved", moved), ("blocked", ~moved & is_move), ("still", ~moved & ~is_move)):
        sel = ident & m
        tally.add("follow_" + name, float(follows[sel].sum()), int(sel.sum()))
    if facing_next is not None and pred_facing is not None:
        sel = is_move & (np.asarray(facing_next) != 0).any(-1)
        ok = (np.asarray(pred_facing) == np.asarray(facing_next)).all(-1)
        tally.add("follow_facing", float(ok[sel].sum()), int(sel.sum()))
    if facing_prev is not None:
        fp = np.asarray(facing_prev, np.int64)
        sel = np.flatnonzero(np.isin(actions, list(INTERACT_ACTIONS)))
        r, c = PLAYER_ROW + fp[sel, 1], PLAYER_COL + fp[sel, 0]
        ok_pos = (0 <= r) & (r < VIEW_ROWS) & (0 <= c) & (c < VIEW_COLS)
        sel, r, c = sel[ok_pos], r[ok_pos], c[ok_pos]
        changed = next_true[sel, r, c] != prev_true[sel, r, c]
        ref = next_true if next_ref is None else np.asarray(next_ref)
        right = next_pred[sel, r, c] == ref[sel, r, c]
        tally.add("follow_interact_changed", float(right[changed].sum()), int(changed.sum()))
        tally.add("follow_interact_unchanged", float(right[~changed].sum()), int((~changed).sum()))
    return tally


def following_score(tally: Tally) -> float | None:
    """One action-following number: the mean of the moved / blocked / still accuracies that were measured."""
    rates = [tally.rate("follow_" + k) for k in ("moved", "blocked", "still")]
    rates = [r for r in rates if r is not None]
    return float(np.mean(rates)) if rates else None


# ----- revisits, inventory, distributions --------------------------------------------------------
def revisit_scores(pred_labels: np.ndarray, true_labels: np.ndarray, pos: np.ndarray, target: tuple[int, int],
                   placed: int, radius: int = 1, tally: Tally | None = None) -> Tally:
    """Is the placed block still at ``target`` and does the area around it look as in the real game?

    pred_labels/true_labels (T, 7, 9) over the frames after the return, pos (T, 2) the real positions.
    block_kept: frames where the target is on screen and the world shows ``placed`` there (the real
    game still does in our data); area: static tiles within ``radius`` cells of the target.
    """
    tally = Tally() if tally is None else tally
    pred_labels, true_labels = _check_pair(pred_labels, true_labels, "tile labels")
    x, y = view_cells(pos)
    dx, dy = x - target[0], y - target[1]
    at = (dx == 0) & (dy == 0)
    real_there = at & (true_labels == placed)
    tally.add("revisit_block_kept", float((real_there & (pred_labels == placed)).sum()), int(real_there.sum()))
    area = (np.abs(dx) <= radius) & (np.abs(dy) <= radius) & ~IS_OBJECT[true_labels]
    tally.add("revisit_area", float(((pred_labels == true_labels) & area).sum()), int(area.sum()))
    return tally


def inventory_scores(pred_inv: np.ndarray, true_inv: np.ndarray, tally: Tally | None = None) -> Tally:
    """Inventory read from frames vs the truth (N, 16): per-item and whole-inventory exact match."""
    pred_inv, true_inv = _check_pair(pred_inv, true_inv, "inventories")
    tally = Tally() if tally is None else tally
    ok = pred_inv == true_inv
    tally.add("inventory_items", ok)
    tally.add("inventory_exact", ok.all(-1))
    return tally


def class_histogram(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Fraction of tiles of each semantic class (NUM_CLASSES,) over labels (..., 7, 9)."""
    labels = np.asarray(labels)
    vals = labels[mask] if mask is not None else labels.ravel()
    h = np.bincount(vals.astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES].astype(np.float64)
    return h / max(h.sum(), 1.0)


def same_neighbour_rate(labels: np.ndarray) -> tuple[float, int]:
    """How often a non-grass tile's neighbour (left, right, up, down, in view) is of its own class, over labels
    (..., 7, 9); the player's tile is left out. -> (rate, pairs counted). Patches of water, sand, stone or trees
    score high, single stray tiles in grass low: the texture of a world that the class mix alone does not show."""
    lab = np.asarray(labels).reshape(-1, VIEW_ROWS, VIEW_COLS)
    same = pairs = 0
    for a, b in ((lab[:, :, :-1], lab[:, :, 1:]), (lab[:, :-1, :], lab[:, 1:, :])):
        for x, y in ((a, b), (b, a)):   # each tile looks at its neighbour, both ways
            m = (x != GRASS) & (x != PLAYER) & (y != PLAYER)
            same += int((x[m] == y[m]).sum())
            pairs += int(m.sum())
    return (same / pairs if pairs else float("nan")), pairs


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance between two histograms (0 = same distribution, 1 = disjoint)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
    return float(0.5 * np.abs(p - q).sum())


def mean_or_none(values: Iterable[float]) -> float | None:
    """Mean of finite values, None when there are none."""
    arr = np.asarray(list(values), np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None


# ----- one call for training validation ----------------------------------------------------------
def _batched(x: np.ndarray | None, ndim: int, name: str) -> np.ndarray | None:
    """Add a batch axis to an unbatched array (ndim without the batch axis)."""
    if x is None:
        return None
    x = np.asarray(x)
    if x.ndim == ndim:
        return x[None]
    if x.ndim != ndim + 1:
        raise ValueError(f"{name} must have {ndim + 1} dims (B, T, ...) or {ndim} (T, ...), got shape {x.shape}")
    return x


def tile_metrics(pred_frames: np.ndarray, true_frames: np.ndarray, true_semantic: np.ndarray | None = None,
                 context_frames: np.ndarray | None = None, *, true_pos: np.ndarray | None = None,
                 context_pos: np.ndarray | None = None, context_semantic: np.ndarray | None = None,
                 daylight: np.ndarray | None = None, sleeping: np.ndarray | None = None) -> dict[str, float | None]:
    """Cheap tile and pixel metrics of predicted frames against the real ones (for training validation).

    pred_frames, true_frames: uint8 (B, T, H, W, 3) (or (T, H, W, 3)); true_semantic (B, T, 7, 9) if
    known (else the true frames are classified); context_frames (B, K, H, W, 3) enable the persistent /
    changed / new tile categories: world cells are aligned with true_pos and context_pos (B, ., 2) when
    given, else from the view shifts between consecutive frames. daylight / sleeping (B, T) are the
    true frames' (estimated from them when None); predicted frames are read under the same lighting.

    Returns {"tile_all", "tile_non_grass", "tile_persistent", "tile_changed", "tile_new" (accuracies in
    [0, 1], with "_n" tile counts), "psnr", "psnr_day", "psnr_night" (dB), "unexplained" (fraction of
    predicted tiles no texture explains), "lighting_match" (fraction of predicted frames lit as the real
    ones), "frames"}; categories without tiles are None. Truth = the real frames read by the classifier
    (so a perfect prediction scores exactly 1); true_semantic, when given, defines the categories.
    """
    from worldsim.eval.tiles import get_classifier

    pred = _batched(pred_frames, 4, "pred_frames")
    true = _batched(true_frames, 4, "true_frames")
    pred, true = _check_pair(pred, true)
    B, T = true.shape[:2]
    clf = get_classifier(true.shape[-2])
    flat_true = true.reshape((-1,) + true.shape[2:])
    flat_pred = pred.reshape((-1,) + pred.shape[2:])
    if daylight is None or sleeping is None:
        est_d, est_s = clf.estimate_lighting(flat_true)
    d = est_d if daylight is None else np.broadcast_to(np.asarray(daylight, np.float32), (B, T)).reshape(-1)
    s = est_s if sleeping is None else np.broadcast_to(np.asarray(sleeping, bool), (B, T)).reshape(-1)
    # The truth is the real frames as the classifier reads them (a perfect world scores exactly 1);
    # the game's semantic map, when given, only defines the categories.
    true_lab = clf.classify(flat_true, d, s).labels.reshape(B, T, VIEW_ROWS, VIEW_COLS)
    sem = true_lab
    if true_semantic is not None:
        sem = _batched(true_semantic, 3, "true_semantic")
        if sem.shape != (B, T, VIEW_ROWS, VIEW_COLS):
            raise ValueError(f"true_semantic must have shape {(B, T, VIEW_ROWS, VIEW_COLS)}, got {sem.shape}")
    pd, ps, match = clf.choose_lighting(flat_pred, d, s)
    reading = clf.read_generated(flat_pred, pd, ps)
    pred_lab = reading.labels.reshape(B, T, VIEW_ROWS, VIEW_COLS)
    seen = None
    if context_frames is not None or context_semantic is not None:
        if context_semantic is not None:
            ctx_lab = _batched(context_semantic, 3, "context_semantic")
        else:
            ctx = _batched(context_frames, 4, "context_frames")
            ctx_lab = clf.classify(ctx).labels
        if len(ctx_lab) != B:
            raise ValueError(f"context has batch {len(ctx_lab)}, frames have batch {B}")
        seen = np.zeros_like(sem)
        for b in range(B):
            if true_pos is not None and context_pos is not None:
                cpos = _batched(context_pos, 2, "context_pos")[b]
                tpos = _batched(true_pos, 2, "true_pos")[b]
            else:
                allpos = chain_positions(np.concatenate([ctx_lab[b], sem[b]]))
                cpos, tpos = allpos[:len(ctx_lab[b])], allpos[len(ctx_lab[b]):]
            seen[b] = last_seen(ctx_lab[b], cpos, tpos)
    tally = tile_scores(pred_lab, true_lab, tile_masks(sem, seen))
    p = psnr(pred, true).reshape(-1)
    night = d < 0.5
    out: dict[str, float | None] = {k: v for k, v in tally.as_dict().items()}
    out.update({
        "psnr": float(p.mean()),
        "psnr_day": mean_or_none(p[~night]),
        "psnr_night": mean_or_none(p[night]),
        "unexplained": float(reading.unexplained.mean()),
        "lighting_match": float(match.mean()),
        "frames": int(B * T),
    })
    return out
