"""The game's rules applied to generated frames: what the world model does not always get right.

The warm start (``warm_start``, preset field ``warm``) uses one of them before denoising: a frame starts
from the previous one moved as Crafter moves the view, not from pure noise (see Session._warm_start).

The rules, each a preset switch (on by default), are applied after denoising and before the commit, so the
model continues from the corrected frame (Session._finish):

- **Blocked moves** (``block_rule``). A Crafter move onto a tile the player cannot enter (water, stone, a
  tree, a table, a creature...) does not move the player: it only turns it to face that way. The model
  learned this from data where it is rare (a few percent of moves) and moved the view anyway in 57% of
  cases (session-3 world). The rule is cheap to read from the frame the move starts from (the faced tile,
  by the nearest-texture classifier of worldsim.eval.tiles, ~0.3 ms): when it says blocked and the new
  frame's view moved, the new frame becomes the previous frame with the model's new player tile (the
  player turned), nothing else changed. It is trusted only where it is sure: an unreadable frame or a
  non-move leaves the model's frame as it is, and a move the rule allows is never forced.
- **The day clock** (``day_clock``). Crafter's daylight is a fixed function of the step count; the model's
  window (1-2 s) cannot tell the time, and in free play a generated night never ended. The session fits
  the clock to its context once (``fit_clock``) and relights each generated frame whose daylight strays
  from it (``relight``: Crafter's lighting is linear per pixel, so it inverts exactly by day; at night the
  game's random noise enters through its mean).
- **The life clock** (``life_clock``). Crafter's player sleeps only while its energy is below the maximum and
  wakes as soon as it is full again; energy moves on a hidden counter (one point per 31 awake steps, one back
  per 11 asleep: ``advance_life``) far beyond the window, and the generated inventory's energy never moved, so
  in free play a generated player that fell asleep seldom woke (asleep in 46-86% of frames against the real
  game's 10-19%). The session reads the energy from its context (``fit_life``), runs the counter on the frames
  it generates, turns a sleep action at full energy into a noop (the game ignores it), and a frame that shows
  the player asleep at full energy becomes the last awake frame, lit by the day clock (the game woke it).
- **The sleeper's view** (``sleep_view``, with the life clock). A sleeper does not move and the game draws its
  view as the grey of the lit world it saw (``sleeping_view``, exact by day); the model drew it nearly black and
  lost the scene (persistent tiles of sleeping frames 64.6% over 32 frames, copy-last 90.4%). A frame that
  shows the player asleep is drawn from the last awake frame at the clock's daylight instead.
- **Tile holds** (``tile_hold``). Crafter's materials (grass, sand, water, stone, trees, tables...) change
  only where the player acts: the tile it faces when it collects or places; a plant grows only where one was
  planted; creatures step one tile at a time and appear in view only by walking in (the game spawns them 5-7
  tiles from the player or farther). The model redrew whole tiles it had in view (a grass tile turned water a
  few frames later, a sapling appeared in front of the player), lost creatures, and in open loop one such tile
  also blocks or frees the player's path, so the generated walk left the real one (revisits: the session's pose
  left the game's within 3-20 frames of the placing). ``hold_tiles`` reads the tiles of the frame before and
  the new one (the nearest-texture classifier, ~0.5 ms a frame) and puts the previous frame's token back where
  the game could not have made the change (one token per tile: it moves with the view unchanged). The player's
  tile and, for an action that can change terrain, the four tiles around it are left to the model.
- **The faced tile** (``faced_rule``). A place action the game allows (the faced ground takes the block, the
  inventory holds what it uses) puts the block there and takes the items; `do` on a mineral with the tool it needs
  leaves path and gives the mineral; a change the game refuses does not happen (``faced_tile``). The model forgot
  to draw a placed table, and in open loop the player then walked where the game's was blocked (session 11). The
  facing is read from the player's sprite once, then follows the move actions as Crafter turns the player.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from worldsim.eval.tiles import (ARROW, COAL, COW, DIAMOND, FURNACE, GRASS, IRON, LAVA, PATH, PLANT, SAND, SKELETON, STATIC_CLASSES, STONE,
                                 TABLE, WATER, ZOMBIE, daylight_at)
from worldsim.actions import ACTION_NAMES
from worldsim.memory import (PLAYER_COL, PLAYER_ROW, VIEW_COLS, VIEW_ROWS, estimate_move, frame_lighting, move_delta, moved_view,
                             read_view_tiles, target_walkable)


_READ = object()  # enforce_blocked_move's default: read the rule here


def enforce_blocked_move(prev_frame: np.ndarray, prev_latent: np.ndarray, latent: np.ndarray, frame: np.ndarray, action: int,
                         walkable: bool | None | object = _READ) -> tuple[np.ndarray, bool]:
    """Crafter's blocked-move rule on one generated frame: -> (latent (C,g,g) to keep, whether it was fixed).

    prev_frame uint8 (H,W,3) / prev_latent (C,g,g): the frame the action was taken on; latent / frame: what
    the model made of it. ``walkable``: ``target_walkable(prev_frame, action, frame)`` when the caller has
    it (read here otherwise). A fixed latent is ``prev_latent`` with the new player tile's token.
    """
    if walkable is _READ:
        walkable = target_walkable(prev_frame, action, frame)
    if walkable is not False:  # a non-move, an allowed move, or a frame the classifier cannot read
        return latent, False
    if estimate_move(prev_frame, frame, action) == (0, 0):  # the model kept the view still: nothing to fix
        return latent, False
    out = np.array(prev_latent, np.float32, copy=True)
    out[:, PLAYER_ROW, PLAYER_COL] = latent[:, PLAYER_ROW, PLAYER_COL]
    return out, True


def warm_start(prev_latent: np.ndarray, prev_frame: np.ndarray, action: int) -> np.ndarray | None:
    """The latent (C,g,g) the frame an action produces starts denoising from (Session._warm_start): the previous
    latent, its world view shifted one tile when the action is a move onto a free tile (Crafter's rule, read
    from the previous frame uint8 (H,W,3)); the tiles the move uncovers repeat their neighbours (terrain tends
    to go on), the player tile and the inventory stay. None (start from pure noise) where the light cannot be
    read, the player sleeps or the action is sleep: falling asleep or waking changes the whole view."""
    lit = frame_lighting(prev_frame)
    if lit is None or lit[1] or ACTION_NAMES[action] == "sleep":  # falling asleep/waking changes the whole view
        return None
    dx, dy = move_delta(action)
    out = np.array(prev_latent, np.float32, copy=True)
    if (dx, dy) == (0, 0) or not target_walkable(prev_frame, action):
        return out
    return moved_view(out, dx, dy)


# ---------------------------------------------------------------------------------------------------
# tile holds (see the module docstring)

# actions that can change the terrain the player faces: collecting (stone, coal... become path) and placing
TERRAIN_ACTIONS = frozenset(i for i, n in enumerate(ACTION_NAMES) if n == "do" or n.startswith("place_"))
# what each of them can do to a tile beside the player (crafter/data.yaml: collect and place): -> {(from, to)}.
# "do" mines stone, coal, iron and diamond to path and eats a ripe plant (grass left); placing puts its block on
# the ground it needs. Anything else a tile beside the player became is the model's (e.g. a mined path drawn as
# stone again while the player keeps hitting it)
_ACTION_CHANGES: dict[int, frozenset[tuple[int, int]]] = {
    ACTION_NAMES.index("do"): frozenset([(m, PATH) for m in (STONE, COAL, IRON, DIAMOND)] + [(PLANT, GRASS)]),
    ACTION_NAMES.index("place_stone"): frozenset((g, STONE) for g in (GRASS, SAND, PATH, WATER, LAVA)),
    ACTION_NAMES.index("place_table"): frozenset((g, TABLE) for g in (GRASS, SAND, PATH)),
    ACTION_NAMES.index("place_furnace"): frozenset((g, FURNACE) for g in (GRASS, SAND, PATH)),
    ACTION_NAMES.index("place_plant"): frozenset([(GRASS, PLANT)]),
}
# materials and plants stay where they are; creatures step one tile at a time; arrows fly and vanish; the player
# sprite leaves the tile it stood on. Indexed by label; -1 (a cell the previous frame did not show) reads False
_KEPT = np.zeros(256, bool)
_KEPT[list(STATIC_CLASSES) + [PLANT]] = True
_CREATURE = np.zeros(256, bool)
_CREATURE[[COW, ZOMBIE, SKELETON]] = True
# Crafter's _balance_object spawns a creature only this far (L1, in tiles) from the player or farther: cow 5,
# zombie 6, skeleton 7; nearer, a creature can only have walked in
_SPAWN_AT = np.full(256, 99)
_SPAWN_AT[[COW, ZOMBIE, SKELETON]] = (5, 6, 7)
# what a creature can stand on (Crafter's `walkable`: objects move, and spawn, only onto free grass, sand or path) and
# what an arrow flies over (Arrow.walkable: those, water and lava): one seen anywhere else was drawn, not moved there
_CREATURE_GROUND = np.zeros(256, bool)
_CREATURE_GROUND[[GRASS, SAND, PATH]] = True
_ARROW_GROUND = _CREATURE_GROUND.copy()
_ARROW_GROUND[[WATER, LAVA]] = True
_NEIGHBOURS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def action_changes(action: int) -> frozenset[tuple[int, int]]:
    """{(from, to)} labels ``action`` can change a tile beside the player from and to (empty for most actions)."""
    return _ACTION_CHANGES.get(int(action), frozenset())


def mover_allowed(mover: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """bool, broadcast: may a ``mover`` label (a creature, an arrow, the player) stand on a tile that holds the
    material ``ground`` (Crafter's walkable sets)? Non-movers: True."""
    mover, ground = np.asarray(mover, np.int64), np.asarray(ground, np.int64)
    creature = _CREATURE[mover] & ~_CREATURE_GROUND[ground]
    arrow = (mover == ARROW) & ~_ARROW_GROUND[ground]
    return ~(creature | arrow)
_DIST = np.abs(np.arange(VIEW_ROWS)[:, None] - PLAYER_ROW) + np.abs(np.arange(VIEW_COLS)[None, :] - PLAYER_COL)  # L1 from the player
_EDGE = np.ones((VIEW_ROWS, VIEW_COLS), bool)
_EDGE[1:-1, 1:-1] = False


def _near(labels: np.ndarray, cls: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(R,C) bool: does ``labels`` (R,C) show class ``cls`` (R,C) at each cell or one of its 4 neighbours (only
    where ``valid`` (R,C) says the cell was in view)?"""
    R, C = labels.shape
    pad = np.full((R + 2, C + 2), -1, np.int64)
    pad[1:-1, 1:-1] = np.where(valid, labels, -1)
    out = np.zeros((R, C), bool)
    for dy, dx in _NEIGHBOURS:
        out |= pad[1 + dy:R + 1 + dy, 1 + dx:C + 1 + dx] == cls
    return out


def hold_tiles(prev_frame: np.ndarray, prev_latent: np.ndarray, frame: np.ndarray, latent: np.ndarray,
               move: tuple[int, int], action: int, prev_lit: tuple[float, bool] | None,
               lit: tuple[float, bool] | None, was: np.ndarray | None = None, now: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """Tiles kept as the previous frame showed them where Crafter could not have changed them: -> (latent
    (C,g,g), frame uint8 (H,W,3), tiles put back, the new frame's view tile labels (7,9) after the hold, or None
    where nothing was read).

    prev_frame/frame uint8 (H,W,3) and prev_latent/latent (C,g,g): the frame the action was taken on and the
    new one; ``move`` (dx, dy) the player's move between them; ``prev_lit``/``lit`` their lighting
    (``frame_lighting``); ``was``: prev_frame's labels when the caller has them (the last call's), ``now``:
    frame's (read with ``lit``). Of the view
    tiles both frames show (under the move), the previous token and pixels come back where a material or a
    plant became anything else but a creature that can have walked in (onto grass, sand or path: one was beside
    it, or it is as far from the player as the game spawns one) or an arrow over ground it flies over, and where
    a creature went without one on its tile or beside it now
    (creatures step one tile at a time and stay in view unless they walk out of it). The player's tile is left
    to the model, and for an action in TERRAIN_ACTIONS so is what that action can do to its four neighbours
    (mining to path, eating a plant, placing its block on ground that takes it, a creature hit). Nothing is held where either frame's light is unknown or the player sleeps (the sleeper's view is
    drawn by the life clock), or where the classifier cannot read the frames.
    """
    if prev_lit is None or lit is None or prev_lit[1] or lit[1]:
        return latent, frame, 0, None
    n = VIEW_ROWS * VIEW_COLS
    if was is None:
        was = read_view_tiles(prev_frame, np.arange(n), prev_lit)
    if now is None:
        now = read_view_tiles(frame, np.arange(n), lit)
    if was is None or now is None:
        return latent, frame, 0, None
    was, now = was.reshape(VIEW_ROWS, VIEW_COLS), now.reshape(VIEW_ROWS, VIEW_COLS)
    dx, dy = (int(v) for v in move)
    r = np.arange(VIEW_ROWS)[:, None] + dy + np.zeros((1, VIEW_COLS), np.int64)  # new tile (r, c) showed prev (r+dy, c+dx)
    c = np.arange(VIEW_COLS)[None, :] + dx + np.zeros((VIEW_ROWS, 1), np.int64)
    inside = (r >= 0) & (r < VIEW_ROWS) & (c >= 0) & (c < VIEW_COLS)
    before = np.where(inside, was[np.clip(r, 0, VIEW_ROWS - 1), np.clip(c, 0, VIEW_COLS - 1)], -1)  # in new-frame cells
    # a creature now: it walked in from a tile beside it that the previous frame showed it on or did not show
    # (beyond its edge), or it spawned far enough away
    seen = np.zeros((VIEW_ROWS + 2, VIEW_COLS + 2), bool)
    seen[1:-1, 1:-1] = inside
    unseen_near = np.zeros((VIEW_ROWS, VIEW_COLS), bool)
    for ny, nx in _NEIGHBOURS:
        unseen_near |= ~seen[1 + ny:VIEW_ROWS + 1 + ny, 1 + nx:VIEW_COLS + 1 + nx]
    # it walked in from a neighbour tile that showed it and no longer does (a creature beside it that is still
    # there did not move: a copy of it is the model's; measured: rows of cows grown one tile per frame)
    pad_b = np.full((VIEW_ROWS + 2, VIEW_COLS + 2), -1, np.int64)
    pad_b[1:-1, 1:-1] = before
    pad_n = np.full((VIEW_ROWS + 2, VIEW_COLS + 2), -1, np.int64)
    pad_n[1:-1, 1:-1] = now
    left = np.zeros((VIEW_ROWS, VIEW_COLS), bool)
    beside = np.zeros((VIEW_ROWS, VIEW_COLS), bool)
    for ny, nx in _NEIGHBOURS[1:]:
        was_there = pad_b[1 + ny:VIEW_ROWS + 1 + ny, 1 + nx:VIEW_COLS + 1 + nx] == now
        still = pad_n[1 + ny:VIEW_ROWS + 1 + ny, 1 + nx:VIEW_COLS + 1 + nx] == now
        left |= was_there & ~still
        beside |= was_there & still
    came = left | unseen_near | (before == now)
    # or it spawned far enough from the player (and not beside one of its kind that stayed: a copy again)
    spawn = (_DIST >= _SPAWN_AT[now]) & ~beside
    arrived = _CREATURE[now] & (came | spawn) & _CREATURE_GROUND[before]
    held = inside & _KEPT[before] & (before != now) & ~arrived & ~((now == ARROW) & _ARROW_GROUND[before])
    # a creature before: still on its tile or beside it now, or at the view's edge (it may have walked out)
    stayed = _near(now, before, np.ones_like(inside))
    held |= inside & _CREATURE[before] & ~stayed & ~_EDGE
    held[PLAYER_ROW, PLAYER_COL] = False
    if action in TERRAIN_ACTIONS:
        # beside the player: what the action can do stays (a tile mined, a block placed, a creature hit and gone)
        allowed = _ACTION_CHANGES[action]
        for ry, cx in _NEIGHBOURS[1:]:
            r0, c0 = PLAYER_ROW + ry, PLAYER_COL + cx
            if _CREATURE[before[r0, c0]] or (int(before[r0, c0]), int(now[r0, c0])) in allowed:
                held[r0, c0] = False
    if not held.any():
        return latent, frame, 0, now
    out = np.array(latent, np.float32, copy=True)
    rr, cc = np.nonzero(held)
    sr, sc = r[held], c[held]
    out[:, rr, cc] = np.asarray(prev_latent)[:, sr, sc]
    # one token per tile: the token brings its tile, so the previous frame's pixels are pasted (no decode)
    u = frame.shape[0] // prev_latent.shape[-1]
    px = frame.copy()
    for i, j, pi, pj in zip(rr, cc, sr, sc):
        px[i * u:(i + 1) * u, j * u:(j + 1) * u] = prev_frame[pi * u:(pi + 1) * u, pj * u:(pj + 1) * u]
    # the labels of the frame given back, as reading it afresh gives them (the pasted tiles read with its light)
    labels = now.copy()
    again = read_view_tiles(px, rr * VIEW_COLS + cc, lit)
    labels[held] = before[held] if again is None else again
    return out, px, int(held.sum()), labels


# ---------------------------------------------------------------------------------------------------
# the faced tile: what placing and mining do (see the module docstring)

# crafter/data.yaml (crafter 1.8.3), `place` and `collect` (tests/test_tile_hold.py checks them against
# crafter.constants): action -> (what it puts on the faced tile, items it uses, the ground it needs)
PLACE_RULES: dict[int, tuple[int, dict[str, int], frozenset[int]]] = {
    ACTION_NAMES.index("place_stone"): (STONE, {"stone": 1}, frozenset((GRASS, SAND, PATH, WATER, LAVA))),
    ACTION_NAMES.index("place_table"): (TABLE, {"wood": 2}, frozenset((GRASS, SAND, PATH))),
    ACTION_NAMES.index("place_furnace"): (FURNACE, {"stone": 4}, frozenset((GRASS, SAND, PATH))),
    ACTION_NAMES.index("place_plant"): (PLANT, {"sapling": 1}, frozenset((GRASS,))),
}
# `do` on a mineral: label -> (the tool it needs, the item it gives); it leaves path
MINE_RULES: dict[int, tuple[str, str]] = {STONE: ("wood_pickaxe", "stone"), COAL: ("wood_pickaxe", "coal"),
                                          IRON: ("stone_pickaxe", "iron"), DIAMOND: ("iron_pickaxe", "diamond")}
DO = ACTION_NAMES.index("do")
ITEM_MAX = 9  # Crafter's inventory counts stop at 9


def faced_tile(prev_frame: np.ndarray, prev_latent: np.ndarray, frame: np.ndarray, latent: np.ndarray, action: int,
               facing: tuple[int, int] | None, lit: tuple[float, bool] | None, encode, decode
               ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Crafter's rule for the tile the player faces after a place action or `do` on a mineral: -> (latent (C,g,g),
    frame uint8 (H,W,3), "done" | "refused" | None where nothing was changed).

    prev_frame/prev_latent: the frame the action was taken on; frame/latent: the new one (the player does not
    move). Where the faced tile (``facing`` (dx, dy)) is ground the block may go on and the inventory prev_frame
    shows holds what it uses (a mineral and the tool it needs), the new frame shows the block (the mined path)
    there and the inventory counts after it (the used items fewer, the mined one more); the game's texture lit
    at the frame's light is drawn in and encoded (``encode`` uint8 (1,S,S,3) -> (1,C,g,g)), and the frame
    decoded again (``decode``). Where the game refuses the action (wrong ground, too few items, no tool) and the
    model drew the change anyway, the faced tile comes back as it was. Nothing is done where the light is
    unknown, the player sleeps, the facing is unknown or a tile cannot be read.
    """
    from worldsim.eval.tiles import INVENTORY_ITEMS, get_classifier

    rule = PLACE_RULES.get(int(action))
    if (rule is None and action != DO) or facing is None or lit is None or lit[1]:
        return latent, frame, None
    r0, c0 = PLAYER_ROW + int(facing[1]), PLAYER_COL + int(facing[0])
    idx = np.array([r0 * VIEW_COLS + c0])
    before, now = read_view_tiles(prev_frame, idx, lit), read_view_tiles(frame, idx, lit)
    if before is None or now is None:
        return latent, frame, None
    before, now = int(before[0]), int(now[0])
    clf = get_classifier(int(frame.shape[0]))
    inv = dict(zip(INVENTORY_ITEMS, (int(v) for v in clf.read_inventory(prev_frame))))
    after = dict(inv)
    if rule is not None:
        block, uses, ground = rule
        can = before in ground and all(inv[k] >= v for k, v in uses.items())
        for k, v in uses.items():
            after[k] = inv[k] - v
    elif before in MINE_RULES:
        block, (tool, item) = PATH, MINE_RULES[before]
        can = inv[tool] >= 1
        after[item] = min(ITEM_MAX, inv[item] + 1)
    else:
        return latent, frame, None   # `do` on anything else (a tree, water, a creature): the tile hold's business
    if not can:
        if now == block and before != block:   # the model did what the game would not: the tile as it was
            u = frame.shape[0] // latent.shape[-1]
            out, px = np.array(latent, np.float32, copy=True), frame.copy()
            out[:, r0, c0] = np.asarray(prev_latent)[:, r0, c0]
            px[r0 * u:(r0 + 1) * u, c0 * u:(c0 + 1) * u] = prev_frame[r0 * u:(r0 + 1) * u, c0 * u:(c0 + 1) * u]
            return out, px, "refused"
        return latent, frame, None
    shown = dict(zip(INVENTORY_ITEMS, (int(v) for v in clf.read_inventory(frame))))
    slots = [INVENTORY_ITEMS.index(k) for k in after if after[k] != inv[k] and shown[k] != after[k]]
    if now == block and not slots:
        return latent, frame, None
    from engine.memory import _texture

    canvas, tiles = frame, []
    if now != block:
        tex = _texture(int(frame.shape[0]), block)
        if tex is None:
            return latent, frame, None
        canvas = paint_tiles(frame, [tex], float(lit[0]), np.array([[r0, c0]]))
        tiles.append((r0, c0))
    for item in slots:
        canvas = clf.draw_inventory_count(canvas, item, after[INVENTORY_ITEMS[item]])
        tiles.append(clf.inventory_tile(item))
    z = encode(canvas[None])[0]   # one token per tile: the drawn tiles' tokens, read off the whole frame
    out = np.array(latent, np.float32, copy=True)
    rr, cc = np.array(tiles).T
    out[:, rr, cc] = z[:, rr, cc]
    return out, decode(out[None])[0], "done"


# ---------------------------------------------------------------------------------------------------
# the day clock (see the module docstring)

NIGHT_NOISE_MEAN = 79.5  # Crafter's night noise is uniform(32, 127), grey
DAY_CLOCK_TOLERANCE = 0.03  # daylight a generated frame may stray from the clock's before it is relit
_LUMA = np.array([0.299, 0.587, 0.114])  # PIL's convert("L"), used by ImageEnhance.Color
_TINT = np.array([0.0, 16.0, 64.0])


@functools.lru_cache(maxsize=4)  # one view size per world: computed once, not per relit frame (read-only)
def _vignette(h: int, w: int) -> np.ndarray:
    """Crafter's night-noise weight over the world view (h, w) (LocalView._vignette, stddev 0.5)."""
    x, y = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    return 1 - np.exp(-0.5 * (x ** 2 + y ** 2) / 0.25)


@functools.lru_cache(maxsize=64)  # a few daylights recur (the estimates come in steps of 0.005); read-only arrays
def _light_terms(daylight: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, lit = a * C + c * luma(C) + b for the unlit view C: -> a, c (h,w,1), b (h,w,3)."""
    d = float(daylight)
    m = (2 * (0.5 - d) * _vignette(h, w))[..., None] if d < 0.5 else np.zeros((h, w, 1))
    a = d + 0.2 * (1 - d) * (1 - m)
    c = 0.3 * (1 - d) * (1 - m)
    b = (1 - d) * (0.5 * m * NIGHT_NOISE_MEAN + 0.5 * _TINT)
    return a, c, b


def _unlight(v: np.ndarray, a: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels float (...,3) lit with the terms a, c, b of _light_terms -> the unlit colours (night noise as its mean)."""
    y = v - b
    luma = (y @ _LUMA)[..., None] / (a + c)
    return np.clip((y - c * luma) / a, 0, 255)


def _light(unlit: np.ndarray, a: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unlit colours float (...,3) lit with the terms a, c, b -> uint8."""
    return np.clip(np.rint(a * unlit + c * (unlit @ _LUMA)[..., None] + b), 0, 255).astype(np.uint8)


def relight(frame: np.ndarray, daylight_from: float, daylight_to: float, view_rows: int = 7) -> np.ndarray:
    """A frame uint8 (S,S,3) lit at ``daylight_from`` as Crafter would light it at ``daylight_to``: the world
    view (the top ``view_rows`` of 9 tile rows) is unlit and lit again; the inventory rows are not lit."""
    S = frame.shape[0]
    h = view_rows * (S // 9)
    unlit = _unlight(frame[:h].astype(np.float64), *_light_terms(daylight_from, h, frame.shape[1]))
    out = frame.copy()
    out[:h] = _light(unlit, *_light_terms(daylight_to, h, frame.shape[1]))
    return out


def light_tiles(textures: Sequence[np.ndarray], daylight: float, at: np.ndarray, view: tuple[int, int] = (7, 9)) -> np.ndarray:
    """Unlit tiles (m of (u,u,3)), the game's textures, as Crafter draws them at view tile (row, col) ``at`` (m,2)
    under ``daylight``: uint8 (m,u,u,3) (the night's vignette depends on where in the view a tile is)."""
    u = len(textures[0]) if len(textures) else 0
    terms = _light_terms(float(daylight), view[0] * u, view[1] * u)
    return np.stack([_light(np.asarray(tex, np.float64), *(t[r * u:(r + 1) * u, c * u:(c + 1) * u] for t in terms))
                     for tex, (r, c) in zip(textures, at)]) if len(textures) else np.zeros((0, u, u, 3), np.uint8)


def paint_tiles(frame: np.ndarray, textures: Sequence[np.ndarray], daylight: float, at: np.ndarray) -> np.ndarray:
    """A copy of frame uint8 (H,W,3) with the game's textures (m of (u,u,3)) drawn, lit by ``light_tiles``, on view
    tiles (row, col) ``at`` (m,2)."""
    canvas = np.array(frame, copy=True)
    u = frame.shape[1] // VIEW_COLS
    for (r, c), px in zip(np.asarray(at).reshape(-1, 2), light_tiles(textures, daylight, np.asarray(at).reshape(-1, 2))):
        canvas[r * u:(r + 1) * u, c * u:(c + 1) * u] = px
    return canvas


def fit_clock(daylights: np.ndarray) -> int | None:
    """The step count (mod 300) of the last of consecutive frames whose daylights (T,) were read (NaN:
    unreadable): the phase whose daylight curve fits them best. None when nothing was readable."""
    d = np.asarray(daylights, np.float64)
    ok = np.isfinite(d)
    if not ok.any():
        return None
    back = np.arange(len(d))[::-1][ok]  # frames before the last one
    phases = np.arange(300)
    err = ((daylight_at(phases[:, None] - back[None]) - d[ok][None]) ** 2).sum(1)
    return int(phases[err.argmin()])


# ---------------------------------------------------------------------------------------------------
# the life clock: Crafter's hidden energy counter (see the module docstring)

ENERGY_MAX = 9  # Crafter's inventory maximum; a sleeper wakes when its energy reaches it


def read_energy(frames: np.ndarray) -> np.ndarray | None:
    """The energy count int64 (T,) each frame uint8 (T,H,W,3) shows in its inventory, None where the frames
    cannot be read (not Crafter's size)."""
    try:
        from worldsim.eval.tiles import INVENTORY_ITEMS, read_inventory

        return np.asarray(read_inventory(np.asarray(frames)))[..., INVENTORY_ITEMS.index("energy")].astype(np.int64)
    except (ImportError, ValueError, AttributeError, IndexError):
        return None


def advance_life(energy: int, fatigue: int, asleep: bool) -> tuple[int, int]:
    """One game step of Crafter's energy counter (Player._update_life_stats) for a player awake or ``asleep``
    during it: -> (energy, fatigue). Awake, fatigue rises by one and every 31st step costs one energy;
    asleep, it falls (from at most 0) and every 11th step gives one back."""
    fatigue = min(fatigue - 1, 0) if asleep else fatigue + 1
    if fatigue < -10:
        return min(energy + 1, ENERGY_MAX), 0
    if fatigue > 30:
        return max(energy - 1, 0), 0
    return energy, fatigue


def fit_life(energies: np.ndarray, asleep: np.ndarray) -> tuple[int, int]:
    """The (energy, fatigue) of the last of consecutive real frames from the energies (T,) they show and whether
    their player sleeps (T,). The counter is hidden: it is known from the last frame whose energy changed (the
    counter was reset there) and otherwise taken where it best predicts the game's sleep over the next 32 steps
    of the training recordings (22 of 0..30 awake: 99.2% of frames vs 99.0% at mid-range; -5 of -10..0 asleep)."""
    e = np.asarray(energies, np.int64)
    s = np.asarray(asleep, bool)
    fatigue: int | None = None
    for t in range(1, len(e)):
        if e[t] != e[t - 1]:
            fatigue = 0
        elif fatigue is not None:
            fatigue = advance_life(int(e[t]), fatigue, bool(s[t]))[1]
    if fatigue is None:
        fatigue = -5 if s[-1] else 22
    return int(e[-1]), fatigue


def rendered_awake_view(frame: np.ndarray, daylight: float) -> np.ndarray | None:
    """A sleeper's frame uint8 (S,S,3) as the player sees it on waking, lit at ``daylight``: its tiles and
    inventory read back (worldsim.eval.tiles) and drawn with the game's textures. The wake view where no awake
    frame is known (a context that only sleeps); None where the frame cannot be read."""
    try:
        from worldsim.eval.tiles import get_classifier

        clf = get_classifier(int(frame.shape[0]))
        labels = clf.classify(frame[None], sleeping=True).labels[0]
        inventory = np.clip(clf.read_inventory(frame[None])[0], 0, 9)
        day = clf.render(labels, 1.0, inventory)
    except (ImportError, ValueError, AttributeError, IndexError):
        return None
    return relight(day, 1.0, daylight) if daylight < 1.0 else day


_SLEEP_TINT = np.array([0.0, 0.0, 16.0])  # LocalView._sleep: tint (0, 0, 16) at 0.5 over the grey view


def sleeping_view(awake: np.ndarray, daylight_from: float, daylight_to: float, view_rows: int = 7) -> np.ndarray | None:
    """An awake player's frame uint8 (S,S,3) lit at ``daylight_from``, as Crafter draws it once the player sleeps
    at ``daylight_to``: the player's sleeping sprite on the ground it stands on, the world view lit at the new
    daylight (``relight``), made grey and tinted (LocalView._sleep); the inventory rows are not touched. Exact by
    day. None where the player's tile cannot be read. (A sleeper does not move: its world is the one it saw.)"""
    try:
        from worldsim.eval.tiles import PLAYER, get_classifier

        clf = get_classifier(int(awake.shape[0]))
        tid = int(clf.classify(awake[None], daylight=daylight_from, sleeping=False).template[0, PLAYER_ROW, PLAYER_COL])
        ground = clf.templates[tid].material
        sprite = next(i for i, t in enumerate(clf.templates) if t.label == PLAYER and t.material == ground and t.sprite == "player-sleep")
    except (ImportError, ValueError, AttributeError, IndexError, StopIteration):
        return None
    unlit = relight(awake, daylight_from, 1.0, view_rows) if daylight_from != 1.0 else awake.copy()
    unlit[clf.tile_pixels(PLAYER_ROW, PLAYER_COL)] = clf.atlas[sprite]
    lit = relight(unlit, 1.0, daylight_to, view_rows) if daylight_to != 1.0 else unlit
    h = view_rows * (awake.shape[0] // 9)
    out = lit.copy()
    grey = np.rint(lit[:h].astype(np.float64) @ _LUMA)[..., None]
    out[:h] = np.clip(np.floor(0.5 * grey + 0.5 * _SLEEP_TINT), 0, 255).astype(np.uint8)
    return out


def energy_slot(size: int) -> tuple[int, int, int, slice, slice]:
    """Where Crafter's inventory shows the energy in a frame of ``size`` pixels: -> (item index, token row,
    token column, pixel rows, pixel columns) (one latent token per tile)."""
    from worldsim.eval.tiles import INVENTORY_ITEMS, get_classifier

    clf = get_classifier(int(size))
    item = INVENTORY_ITEMS.index("energy")
    r, c = clf.inventory_tile(item)
    return (item, r, c, *clf.tile_pixels(r, c))


def draw_energy(frame: np.ndarray, energy: int) -> np.ndarray:
    """The frame uint8 (S,S,3) with its inventory's energy drawn as ``energy``, as the game draws it."""
    from worldsim.eval.tiles import get_classifier

    return get_classifier(int(frame.shape[0])).draw_inventory_count(frame, energy_slot(frame.shape[0])[0], int(energy))
