"""Tiles Crafter could not have changed are kept (engine.rules.hold_tiles, preset.tile_hold)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import World
from engine.rules import TERRAIN_ACTIONS, hold_tiles
from engine.testing import exact_codec, make_tiny_world
from worldsim.actions import ACTION_NAMES, action_index
from worldsim.eval.tiles import ARROW, COW, GRASS, PATH, SKELETON, STONE, TREE, WATER, ZOMBIE
from worldsim.memory import PLAYER_COL, PLAYER_ROW, frame_lighting, read_view_tiles

NOOP, DO = action_index("noop"), action_index("do")
U = 8  # tile size at 72x72


@pytest.fixture(scope="module")
def episode() -> dict[str, np.ndarray]:
    """A real recorded explorer episode (held-out seed): day, dusk and night, cows, a zombie, a skeleton, plants."""
    from worldsim.data.record import record_episode

    return record_episode(1_000_007, 240, size=72)


def _latents() -> tuple[np.ndarray, np.ndarray]:
    """A previous and a new latent (4,9,9) whose tokens are all different (prev >= 0, new < 0)."""
    prev = np.arange(4 * 81, dtype=np.float32).reshape(4, 9, 9)
    return prev, -prev - 1


def _tile(frame: np.ndarray, r: int, c: int) -> np.ndarray:
    return frame[r * U:(r + 1) * U, c * U:(c + 1) * U]


def _paste(frame: np.ndarray, r: int, c: int, tile: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[r * U:(r + 1) * U, c * U:(c + 1) * U] = tile
    return out


def _still(ep: dict[str, np.ndarray], t: int) -> bool:
    """The player did not move at step t and its action cannot change terrain (a blocked move, noop, crafting)."""
    return bool((ep["pos"][t + 1] == ep["pos"][t]).all()) and int(ep["actions"][t]) not in TERRAIN_ACTIONS


def _find(sem: np.ndarray, cls: int, away: int = 2) -> tuple[int, int]:
    """A view cell (r, c) of class ``cls`` at least ``away`` tiles (L1) from the player and off the view's edge."""
    for r in range(1, 6):
        for c in range(1, 8):
            if sem[r, c] == cls and abs(r - PLAYER_ROW) + abs(c - PLAYER_COL) >= away:
                return r, c
    raise AssertionError(f"no class {cls} in view")


def test_the_game_never_needs_a_hold(episode):
    """On 239 real transitions (true moves), no tile whose world cell the game changed is put back; by day
    nothing at all is (at deep night the classifier's rare stone/path flips are put back: the same tile)."""
    f, a, pos, sem, day = episode["frames"], episode["actions"], episode["pos"], episode["semantic"], episode["daylight"]
    prev, new = _latents()
    creature_steps = 0
    for t in range(len(a) - 1):
        move = tuple(int(v) for v in pos[t + 1] - pos[t])
        out, px, n, _ = hold_tiles(f[t], prev, f[t + 1], new, move, int(a[t]), frame_lighting(f[t]), frame_lighting(f[t + 1]))
        creature_steps += int(np.isin(sem[t + 1], (14, 15, 16)).any())
        if day[t + 1] > 0.1:
            assert n == 0, f"step {t}: {n} tiles held on real frames by day"
        for r, c in zip(*np.nonzero(out[0, :7] >= 0)):
            assert sem[t][r + move[1], c + move[0]] == sem[t + 1][r, c], f"step {t}: held a cell the game changed"
    assert creature_steps > 50  # creatures walked in view: their steps were allowed


def test_a_redrawn_material_comes_back_except_where_the_player_acts(episode):
    """A grass tile the model redrew as a tree gets the previous token back; on a tile beside the player the
    model's tile stays where the action can make that change (stone mined to path by "do", a stone placed on
    grass), not otherwise (grass to tree, or a mined path drawn as stone again)."""
    f, sem = episode["frames"], episode["semantic"]
    t = next(t for t in range(150) if _still(episode, t) and (sem[t] == TREE).any() and sem[t + 1][PLAYER_ROW, PLAYER_COL + 1] == GRASS)
    tree = _tile(f[t + 1], *_find(sem[t + 1], TREE, away=0))
    prev, new = _latents()
    lit = frame_lighting(f[t]), frame_lighting(f[t + 1])
    r, c = _find(sem[t + 1], GRASS)
    out, px, n, _ = hold_tiles(f[t], prev, _paste(f[t + 1], r, c, tree), new, (0, 0), NOOP, *lit)
    assert n == 1 and (out[:, r, c] == prev[:, r, c]).all()
    assert (np.delete(out.reshape(4, -1), r * 9 + c, 1) < 0).all()  # nothing else touched
    np.testing.assert_array_equal(px, _paste(f[t + 1], r, c, _tile(f[t], r, c)))  # its previous pixels too
    faced = _paste(f[t + 1], PLAYER_ROW, PLAYER_COL + 1, tree)
    assert hold_tiles(f[t], prev, faced, new, (0, 0), DO, *lit)[2] == 1       # "do" grows no tree
    assert hold_tiles(f[t], prev, faced, new, (0, 0), NOOP, *lit)[2] == 1
    stone, path = (_tile(f[t2], *_find(sem[t2], cls, away=0)) for cls, t2 in
                   ((STONE, next(i for i in range(len(sem)) if (sem[i][1:6, 1:8] == STONE).any())),
                    (PATH, next(i for i in range(len(sem)) if (sem[i][1:6, 1:8] == PATH).any()))))
    placed = _paste(f[t + 1], PLAYER_ROW, PLAYER_COL + 1, stone)
    assert hold_tiles(f[t], prev, placed, new, (0, 0), action_index("place_stone"), *lit)[2] == 0
    assert hold_tiles(f[t], prev, placed, new, (0, 0), DO, *lit)[2] == 1      # "do" places nothing
    # stone beside the player mined to path: stays; path drawn back as stone while the player hits it: held
    assert hold_tiles(placed, prev, f[t + 1], new, (0, 0), DO, *lit)[2] == 1  # stone -> grass by "do": held
    mined = _paste(f[t + 1], PLAYER_ROW, PLAYER_COL + 1, path)
    assert hold_tiles(placed, prev, mined, new, (0, 0), DO, *lit)[2] == 0
    assert hold_tiles(mined, prev, placed, new, (0, 0), DO, *lit)[2] == 1
    # after a move the previous token comes from where the previous frame showed that cell
    m = next(m for m in range(100) if (episode["pos"][m + 1] - episode["pos"][m]).any() and (sem[m + 1][1:6, 1:8] == GRASS).sum() > 10)
    d = tuple(int(v) for v in episode["pos"][m + 1] - episode["pos"][m])
    r, c = _find(sem[m + 1], GRASS)
    out, px, n, _ = hold_tiles(f[m], prev, _paste(f[m + 1], r, c, tree), new, d, int(episode["actions"][m]),
                        frame_lighting(f[m]), frame_lighting(f[m + 1]))
    assert n == 1 and (out[:, r, c] == prev[:, r + d[1], c + d[0]]).all()
    np.testing.assert_array_equal(_tile(px, r, c), _tile(f[m], r + d[1], c + d[0]))  # its tile comes with it


def test_creatures_step_and_never_vanish_or_pop_up(episode):
    """A cow the model erased is put back; a cow that stepped to a tile beside it is left alone; a cow drawn
    next to the player with none beside it (the game spawns them 5+ tiles away) is removed."""
    f, sem = episode["frames"], episode["semantic"]
    t = next(t for t in range(len(sem) - 1) if (sem[t][1:6, 1:8] == COW).any() and (sem[t + 1][1:6, 1:8] == COW).any()
             and _still(episode, t))
    cr, cc = _find(sem[t], COW, away=0)
    assert sem[t + 1][cr, cc] == COW or (sem[t + 1][cr - 1:cr + 2, cc - 1:cc + 2] == COW).any()
    grass = _tile(f[t + 1], *_find(sem[t + 1], GRASS, away=0))
    cow = _tile(f[t], cr, cc)
    prev, new = _latents()
    lit = frame_lighting(f[t]), frame_lighting(f[t + 1])
    a = int(episode["actions"][t])
    # erased: every cow tile of the new frame painted grass
    erased = f[t + 1].copy()
    for r, c in zip(*np.nonzero(sem[t + 1] == COW)):
        erased = _paste(erased, r, c, grass)
    out, px, n, _ = hold_tiles(f[t], prev, erased, new, (0, 0), a, *lit)
    assert n >= 1 and (out[:, cr, cc] == prev[:, cr, cc]).all()
    # stepped: the cow moved one tile onto grass, its old tile grass
    step = next((dr, dc) for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)) if sem[t][cr + dr, cc + dc] == GRASS
                and (cr + dr, cc + dc) != (PLAYER_ROW, PLAYER_COL))
    stepped = _paste(_paste(f[t], cr, cc, grass), cr + step[0], cc + step[1], cow)
    assert hold_tiles(f[t], prev, stepped, new, (0, 0), a, lit[0], lit[0])[2] == 0
    # popped up beside the player, no cow near: removed
    spots = [(PLAYER_ROW + dr, PLAYER_COL + dc) for dr, dc in ((0, 2), (0, -2), (2, 0), (-2, 0), (1, 1), (-1, -1))]
    r, c = next(p for p in spots if sem[t][p] == GRASS and not (sem[t][p[0] - 1:p[0] + 2, p[1] - 1:p[1] + 2] == COW).any())
    out, px, n, _ = hold_tiles(f[t], prev, _paste(f[t], r, c, cow), new, (0, 0), a, lit[0], lit[0])
    assert n == 1 and (out[:, r, c] == prev[:, r, c]).all()
    assert read_view_tiles(_paste(f[t], r, c, cow), np.array([r * 9 + c]), lit[0])[0] == COW  # it reads as a cow
    # far enough to have spawned, but on ground no creature stands on (water, a tree, stone): removed; on grass: kept
    far = [(r, c) for r in range(7) for c in range(9) if abs(r - PLAYER_ROW) + abs(c - PLAYER_COL) >= 5]
    tried = set()
    for ground, expect in ((WATER, 1), (TREE, 1), (STONE, 1), (GRASS, 0)):
        spot = next(((r, c) for r, c in far if sem[t][r, c] == ground), None)
        if spot is None:
            continue
        tried.add(ground)
        out, px, n, _ = hold_tiles(f[t], prev, _paste(f[t], *spot, cow), new, (0, 0), a, lit[0], lit[0])
        assert n == expect, (ground, spot)
    assert GRASS in tried and len(tried) >= 3
    # copied: a second cow beside the one that stayed (the model grows rows of cows): removed, near or far
    for (r, c) in [(cr + dr, cc + dc) for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))]:
        if 0 <= r < 7 and 0 <= c < 9 and sem[t][r, c] == GRASS and (r, c) != (PLAYER_ROW, PLAYER_COL):
            out, px, n, _ = hold_tiles(f[t], prev, _paste(f[t], r, c, cow), new, (0, 0), a, lit[0], lit[0])
            assert n == 1 and (out[:, r, c] == prev[:, r, c]).all(), (r, c)


def test_a_session_keeps_the_tile_the_model_redrew(tmp_path, episode):
    """Through a session (tiny world, exact token-by-token codec): a model that draws a tree over a grass tile
    gives back the game's grass there with tile_hold, the tree without it."""
    f, a, sem = episode["frames"], episode["actions"], episode["semantic"]
    t = next(t for t in range(8, 150) if _still(episode, t) and (sem[t + 1] == TREE).any())
    r, c = _find(sem[t + 1], GRASS)
    tree = _tile(f[t + 1], *_find(sem[t + 1], TREE, away=0))
    drawn = _paste(f[t + 1], r, c, tree)
    got = {}
    for hold in (True, False):
        w = World.load(make_tiny_world(tmp_path / f"tiny{hold}"), backend="onnxruntime", threads=1, block_rule=False,
                       day_clock=False, life_clock=False, memory_fill=False, tile_hold=hold)
        exact_codec(w.backend)
        z = w.backend.encode(drawn[None])[None]
        real_dit = w.backend.dit
        w.backend.dit = lambda x, tt, aa, *rest: (np.repeat(z, x.shape[1], 1), *real_dit(x, tt, aa, *rest)[1:])  # every frame of the call
        sess = w.new_session(f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None], seed=0)
        got[hold] = (sess.step(ACTION_NAMES[int(a[t])]), sess.timings["held"])
    frame, held = got[True]
    assert held == 1
    np.testing.assert_array_equal(_tile(frame, r, c), _tile(f[t], r, c))  # the previous frame's grass
    np.testing.assert_array_equal(_paste(frame, r, c, tree), drawn)  # everything else as the model drew it
    np.testing.assert_array_equal(got[False][0], drawn)
    assert got[False][1] == 0


def test_a_session_fills_ground_it_saw_from_its_tile_map(tmp_path, episode):
    """Through a session (tiny world, exact codec, the fast preset's fill and hold, the clocks off): a model that
    makes up the ground it was not shown, anew each time that ground comes back into view, gets the session's own
    earlier view of it back (the tile map: each cell's newest view, also cells last seen at a view's edge), and
    keeps what it made up where the session never saw the ground."""
    f, a, sem, pos = episode["frames"], episode["actions"], episode["semantic"], episode["pos"]
    t0, n = 12, 90  # frames 12-102 are day (daylight 0.88-1.0) and walk back over seen ground
    # ground the player can walk on (the walk stays the game's), from a day frame: path and grass
    palette = [_tile(f[t], r, c) for cls in (PATH, GRASS) for t, r, c in [np.argwhere(sem[:100, :7] == cls)[0]]]

    def cells(t: int) -> list[tuple[int, int, int, int]]:  # (r, c, x, y) of the view tiles of real frame t
        return [(r, c, int(pos[t][0]) + c - PLAYER_COL, int(pos[t][1]) + r - PLAYER_ROW) for r in range(7) for c in range(9)]

    context = {(x, y) for t in range(t0 - 7, t0 + 1) for _, _, x, y in cells(t)}
    visits: dict[tuple[int, int], int] = {}
    for t in range(t0 - 7, t0 + 1):
        visits.update({(x, y): 1 for _, _, x, y in cells(t)})

    def drawn(t: int) -> np.ndarray:  # real frame t+1, where walkable ground the model was not shown is made up per visit
        out = f[t + 1].copy()
        for r, c, x, y in cells(t + 1):
            if (x, y) not in context and sem[t + 1][r, c] in (GRASS, PATH) and (r, c) != (PLAYER_ROW, PLAYER_COL):
                out = _paste(out, r, c, palette[hash((x, y, visits.get((x, y), 1))) % len(palette)])
        return out

    w = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1, block_rule=False, day_clock=False,
                   life_clock=False, warm=0.0)
    assert w.memory_config is not None and w.memory_config.fill and w.preset.tile_hold
    exact_codec(w.backend)
    real_dit, step = w.backend.dit, {"t": t0}

    def dit(x, tt, aa, *rest):
        z = w.backend.encode(drawn(step["t"])[None])[None]
        return (np.repeat(z, x.shape[1], 1), *real_dit(x, tt, aa, *rest)[1:])  # every frame of the call (fused commits: 2)

    w.backend.dit = dit
    sess = w.new_session(f[t0 - 7:t0 + 1], [int(x) for x in a[t0 - 7:t0]] + [None], seed=0)
    offset = pos[t0] - sess._state.memory.current_pose
    shown: dict[tuple[int, int], np.ndarray] = {}  # the tile the session last showed at each ground cell
    movers = np.isin(sem, [COW, ZOMBIE, SKELETON, ARROW])

    def remember(t: int, frame: np.ndarray) -> None:
        for r, c, x, y in cells(t):
            if (r, c) != (PLAYER_ROW, PLAYER_COL) and not movers[t][r, c]:
                shown[(x, y)] = _tile(frame, r, c)

    for t in range(t0 - 7, t0 + 1):
        remember(t, f[t])
    restored = made_up = 0
    for t in range(t0, t0 + n):
        lit = frame_lighting(f[t + 1])
        if lit is None or lit[0] < 0.85:  # day only: a relit tile is not the game's pixels exactly
            break
        before = {(x, y) for _, _, x, y in cells(t)}
        for _, _, x, y in cells(t + 1):
            if (x, y) not in before:
                visits[(x, y)] = visits.get((x, y), 0) + 1
        frame = sess.step(ACTION_NAMES[int(a[t])])
        step["t"] = t + 1
        assert np.array_equal(sess._state.memory.current_pose + offset, pos[t + 1])  # the session follows its walk
        for r, c, x, y in cells(t + 1):
            if (x, y) in before or movers[t + 1][r, c]:
                continue
            if (x, y) in shown:  # the session's own last view of that ground (a few levels off where the daylight moved)
                assert np.abs(_tile(frame, r, c).astype(int) - shown[(x, y)]).max() <= 12, (t, r, c)
                restored += int((x, y) not in context and visits[(x, y)] > 1)
            else:
                np.testing.assert_array_equal(_tile(frame, r, c), _tile(drawn(t), r, c))
                made_up += 1
        remember(t + 1, frame)
    assert restored >= 5 and made_up >= 5


# -- the faced tile: placing and mining (engine.rules.faced_tile, preset.faced_rule) -----------------------


def test_the_faced_tile_rules_are_crafters():
    """PLACE_RULES and MINE_RULES say what crafter's data.yaml says (block, items used, ground; tool, item)."""
    import crafter.constants as cc

    from engine.rules import MINE_RULES, PLACE_RULES
    from worldsim.eval.tiles import SEMANTIC_NAMES

    assert {ACTION_NAMES[a][len("place_"):] for a in PLACE_RULES} == set(cc.place)
    for a, (block, uses, ground) in PLACE_RULES.items():
        info = cc.place[ACTION_NAMES[a][len("place_"):]]
        assert SEMANTIC_NAMES[block] == ACTION_NAMES[a][len("place_"):] and uses == info["uses"]
        assert {SEMANTIC_NAMES[g] for g in ground} == set(info["where"])
    mined = {m for m, info in cc.collect.items() if info["leaves"] == "path"}
    assert {SEMANTIC_NAMES[m] for m in MINE_RULES} == mined
    for m, (tool, item) in MINE_RULES.items():
        info = cc.collect[SEMANTIC_NAMES[m]]
        assert info["require"] == {tool: 1} and info["receive"] == {item: 1}


def _codec(tmp_path):
    w = World.load(make_tiny_world(tmp_path / "tiny"), backend="onnxruntime", threads=1)
    exact_codec(w.backend)
    return w.backend


def test_the_game_agrees_with_the_faced_tile_rule(tmp_path, episode):
    """On the real place actions of an episode, a model that forgot to draw the block gets it from the rule where
    the game placed it (the block read on the faced tile, the inventory counts of the game's next frame), and
    nothing where the game refused (a plant on a plant); with too few items the game's block, drawn by the
    model, goes away."""
    from engine.rules import PLACE_RULES, faced_tile
    from worldsim.eval.tiles import INVENTORY_ITEMS, get_classifier

    be = _codec(tmp_path)
    clf = get_classifier(72)
    f, a, sem, inv, facing = episode["frames"], episode["actions"], episode["semantic"], episode["inventory"], episode["facing"]
    done = kept = 0
    for t in range(len(a) - 1):
        if int(a[t]) not in PLACE_RULES or episode["sleeping"][t]:
            continue
        fx, fy = (int(v) for v in facing[t])
        r, c = PLAYER_ROW + fy, PLAYER_COL + fx
        lit = frame_lighting(f[t])
        z0 = be.encode(f[t][None])[0]
        z, frame, kind = faced_tile(f[t], z0, f[t], z0, int(a[t]), (fx, fy), lit, be.encode, be.decode)
        if sem[t + 1][r, c] == sem[t][r, c]:   # the game refused: nothing to do
            assert kind is None and np.array_equal(frame, f[t])
            kept += 1
            continue
        assert kind == "done", t                # the game placed it
        assert read_view_tiles(frame, np.array([r * 9 + c]), lit)[0] == sem[t + 1][r, c]
        np.testing.assert_array_equal(clf.read_inventory(frame), inv[t + 1])
        np.testing.assert_array_equal(_paste(frame, r, c, _tile(f[t], r, c))[:56], f[t][:56])  # nothing else
        done += 1
        # the same step with the items it uses gone from the inventory: the game's next frame is refused
        poor = f[t]
        for item in PLACE_RULES[int(a[t])][1]:
            poor = clf.draw_inventory_count(poor, INVENTORY_ITEMS.index(item), 0)
        z, frame, kind = faced_tile(poor, be.encode(poor[None])[0], f[t + 1], be.encode(f[t + 1][None])[0], int(a[t]), (fx, fy),
                                    lit, be.encode, be.decode)
        assert kind == "refused"
        np.testing.assert_array_equal(_tile(frame, r, c), _tile(f[t], r, c))
    assert done >= 3 and kept >= 1


def test_mining_leaves_path_and_gives_the_item_with_the_tool(tmp_path, episode):
    """`do` facing stone: with a wood pickaxe the faced tile becomes path and the stone count goes up by one;
    without one nothing changes (and a path the model drew becomes stone again)."""
    from engine.rules import faced_tile, light_tiles
    from engine.memory import _texture
    from worldsim.eval.tiles import INVENTORY_ITEMS, get_classifier

    be = _codec(tmp_path)
    clf = get_classifier(72)
    f, sem, facing = episode["frames"], episode["semantic"], episode["facing"]
    t = next(t for t in range(len(f)) if episode["daylight"][t] > 0.9 and not episode["sleeping"][t])
    fx, fy = (int(v) for v in facing[t])
    r, c = PLAYER_ROW + fy, PLAYER_COL + fx
    lit = frame_lighting(f[t])
    stone = _paste(f[t], r, c, light_tiles([_texture(72, STONE)], lit[0], np.array([[r, c]]))[0])
    pick, item = INVENTORY_ITEMS.index("wood_pickaxe"), INVENTORY_ITEMS.index("stone")
    for tool in (1, 0):
        before = clf.draw_inventory_count(clf.draw_inventory_count(stone, pick, tool), item, 3)
        z0 = be.encode(before[None])[0]
        z, frame, kind = faced_tile(before, z0, before, z0, DO, (fx, fy), lit, be.encode, be.decode)
        if tool:
            assert kind == "done"
            assert read_view_tiles(frame, np.array([r * 9 + c]), lit)[0] == PATH
            assert clf.read_inventory(frame)[item] == 4 and clf.read_inventory(frame)[pick] == 1
        else:
            assert kind is None
            path = _paste(before, r, c, light_tiles([_texture(72, PATH)], lit[0], np.array([[r, c]]))[0])
            z, frame, kind = faced_tile(before, z0, path, be.encode(path[None])[0], DO, (fx, fy), lit, be.encode, be.decode)
            assert kind == "refused" and read_view_tiles(frame, np.array([r * 9 + c]), lit)[0] == STONE


def test_a_session_places_the_block_the_model_forgot(tmp_path, episode):
    """Through a session (tiny world, exact codec, a model that repeats the last frame): place_table facing grass
    with two wood shows the table and one wood fewer with faced_rule, the unchanged frame without it; the facing
    is read from the player's sprite and then follows the move actions."""
    from worldsim.eval.tiles import INVENTORY_ITEMS, TABLE, get_classifier

    f, a, sem = episode["frames"], episode["actions"], episode["semantic"]
    t = next(t for t in range(8, len(a) - 1) if ACTION_NAMES[int(a[t])] == "place_table" and (sem[t + 1] == TABLE).any()
             and not (sem[t] == TABLE).any())
    fx, fy = (int(v) for v in episode["facing"][t])
    r, c = PLAYER_ROW + fy, PLAYER_COL + fx
    got = {}
    for faced in (True, False):
        w = World.load(make_tiny_world(tmp_path / f"tiny{faced}"), backend="onnxruntime", threads=1, block_rule=False,
                       day_clock=False, life_clock=False, memory_fill=False, tile_hold=False, faced_rule=faced)
        exact_codec(w.backend)
        z = w.backend.encode(f[t][None])[None]
        real_dit = w.backend.dit
        w.backend.dit = lambda x, tt, aa, *rest: (np.repeat(z, x.shape[1], 1), *real_dit(x, tt, aa, *rest)[1:])  # every frame of the call
        sess = w.new_session(f[t - 7:t + 1], [int(x) for x in a[t - 7:t]] + [None], seed=0)
        got[faced] = sess.step("place_table")
        if faced:
            assert sess._state.extra["facing"] == [fx, fy]
            sess.step("move_up")
            assert sess._state.extra["facing"] == [0, -1]
    lit = frame_lighting(f[t])
    assert read_view_tiles(got[True], np.array([r * 9 + c]), lit)[0] == TABLE
    wood = INVENTORY_ITEMS.index("wood")
    inv = get_classifier(72).read_inventory(f[t])
    assert get_classifier(72).read_inventory(got[True])[wood] == inv[wood] - 2
    np.testing.assert_array_equal(got[False], f[t])
