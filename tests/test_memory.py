"""Persistent memory beyond the window (issue #8): the rotary shift convention, retrieval on hand-made poses,
the bounded bank, pose estimation on real recorded frames, training with memory frames == cached inference
with memory slots, the engine's memory path (frames reach the model exactly as computed by hand, snapshot/
restore and save/load exactness, default off), and the default training path left as it was."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import World
from engine.memory import MemoryBank, MemoryConfig
from engine.testing import make_tiny_world
from worldsim.actions import ACTION_NAMES, NULL_ACTION, action_index
from worldsim.dit import CausalDiT, dit_preset, rotate
from worldsim.memory import (
    HALF_X,
    HALF_Y,
    estimate_move,
    memory_shift,
    move_delta,
    needed_cells,
    retrieve,
    sample_memory,
    target_walkable,
    track_poses,
    view_cells,
)

ROOT = Path(__file__).resolve().parents[1]
T1 = {"threads": 1}
LATENT = (8, 9, 9)  # the tiny preset's latent shape


@pytest.fixture(scope="module")
def episode() -> dict[str, np.ndarray]:
    """A real recorded explorer episode (held-out seed): 400 frames through day and night, one revisit."""
    from worldsim.data.record import record_episode

    return record_episode(1_000_007, 400, size=72)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return make_tiny_world(tmp_path_factory.mktemp("memory") / "tiny")


def _random_dit(seed: int = 0) -> CausalDiT:
    torch.manual_seed(seed)
    m = CausalDiT(dit_preset("tiny")).eval()
    with torch.no_grad():  # the zero-initialised layers are randomised so that every input matters
        for p in m.parameters():
            if float(p.abs().sum()) == 0:
                p.copy_(torch.randn(p.shape) * 0.2)
    return m


# ---------------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize("entry,pose", [((5, 2), (3, 3)), ((-4, 7), (-1, 5)), ((10, 10), (10, 10))])
def test_memory_shift_puts_memory_keys_where_their_world_cells_are(entry, pose):
    """A memory frame seen from `entry` read with memory_shift: for every tile of the current view, the
    memory key the query lines up with exactly (the attention logit peak of a content-free key) is the
    memory tile showing the same world cell."""
    m = _random_dit().double()
    rot = m.rotary
    g = m.cfg.grid
    v = torch.randn(1, 1, 1, m.cfg.head_dim, dtype=torch.float64)
    keys = rotate(v.expand(1, 1, g * g, -1), rot.spatial()[None, None])  # stored keys (spatial rotation only)
    dy, dx = memory_shift(np.array(entry), np.array(pose))
    keys = rotate(keys, rot.angles(torch.tensor([[-40.0, dy, dx]], dtype=torch.float64).expand(g * g, 3))[None, None])
    checked = 0
    for r in range(2 * HALF_Y + 1):
        for c in range(2 * HALF_X + 1):
            wx, wy = pose[0] + c - HALF_X, pose[1] + r - HALF_Y  # the world cell at this current tile
            mc, mr = wx - entry[0] + HALF_X, wy - entry[1] + HALF_Y  # ... and where the memory frame shows it
            if not (0 <= mr <= 2 * HALF_Y and 0 <= mc <= 2 * HALF_X):
                continue
            q = rotate(v, rot.angles(torch.tensor([[-40.0, r, c]], dtype=torch.float64))[None, None])
            logits = (keys * q).sum(-1).flatten()
            assert int(logits.argmax()) == mr * g + mc, (r, c)
            assert torch.isclose(logits.max(), (v * v).sum())  # exactly aligned: every rotary pair agrees
            checked += 1
    assert checked == (9 - abs(entry[0] - pose[0])) * (7 - abs(entry[1] - pose[1]))


def test_retrieval_on_hand_made_poses():
    # the player at (0, 0) is about to step right: it will see column x = 5, which its window never showed
    target = np.array([[1, 0]])
    window = np.array([[0, 0]])
    need = needed_cells(target, window)
    assert sorted(map(tuple, need)) == [(5, y) for y in range(-3, 4)]
    pose = np.array([[4, 0], [6, 0], [4, 0], [20, 20], [1, -3]])
    frame = np.array([10, 30, 20, 40, 50])
    # (4,0)@10, (4,0)@20 and (6,0)@30 all show the column: the newest (frame 30) owns all 7 cells
    assert retrieve(pose, frame, need, slots=2, candidates=np.array([1, 1, 1, 1, 0], bool)).tolist() == [1]
    # (1,-3)@50 shows x=5 for y in -3..0 (4 needed cells) and is newer: it takes those, (6,0) keeps the other 3
    rows = retrieve(pose, frame, need, slots=2)
    assert rows.tolist() == [4, 1]
    assert retrieve(pose, frame, need, slots=1).tolist() == [4]  # most cells first
    # candidates: frames still in the window are never memory
    rows = retrieve(pose, frame, need, slots=2, candidates=frame < 25)
    assert rows.tolist() == [2]  # (4,0)@20 beats (4,0)@10: newest view wins
    # nothing needed (standing still inside the window's view) -> no memory at all
    assert len(retrieve(pose, frame, needed_cells(window, window), slots=2)) == 0
    # an entry far away never comes back
    assert 3 not in retrieve(pose, frame, view_cells(np.array([[0, 0]])), slots=5).tolist()


def test_bank_retrieve_excludes_the_window_and_uses_the_trail():
    bank = MemoryBank.empty(MemoryConfig(slots=2, cell=(1, 1)), LATENT, trail_len=4)
    lat = np.zeros(LATENT, np.float32)
    for i, x in enumerate(range(0, 12)):  # walk right from x = 0 to 11 (frames 0..11)
        bank.observe(lat + i, i, np.array([x, 0]))
    for i, x in enumerate(range(10, -1, -1), start=12):  # and back to x = 0 (frames 12..22)
        bank.observe(lat + i, i, np.array([x, 0]))
    # next frame 23 steps left to x = -1: cells x = -5 were seen only on the way out (frame 0)
    rows = bank.retrieve(np.array([[-1, 0]]), 23, window=3)
    assert len(rows) == 0  # x = -5 was never seen
    rows = bank.retrieve(np.array([[1, 0]]), 23, window=3)  # stepping right again: x = 5 is in the window's view
    assert len(rows) == 0
    # a jump to x = 9 needs x = 7..13 (x <= 6 is in the window's view): each column is owned by the newest frame
    # outside the window that saw it (x=7 by frame 19 at x=3, ..., x=13 by frame 13 at x=9): one column each,
    # so the newest owners rank first
    rows = bank.retrieve(np.array([[9, 0]]), 23, window=3)
    assert bank.frame[rows].tolist() == [19, 18]


def test_bank_merges_same_cell_and_stays_bounded_over_long_runs():
    cfg = MemoryConfig(slots=2, capacity=64, cell=(3, 2))
    bank = MemoryBank.empty(cfg, LATENT, trail_len=7)
    lat = np.zeros(LATENT, np.float32)
    for i in range(5):  # the same cell: one entry, the newest
        bank.observe(lat + i, i, np.array([1, 1]))
    assert len(bank) == 1 and bank.frame[0] == 4 and bank.latents[0, 0, 0, 0] == 4
    rng = np.random.default_rng(0)
    pose = np.zeros(2, np.int64)
    sizes = []
    for t in range(5, 20005):  # hours of play in one area: a random walk
        pose = pose + [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(5)]
        bank.observe(lat + t, t, pose)
        sizes.append(len(bank))
    assert max(sizes) <= cfg.capacity and bank.stats["evicted"] > 0  # bounded
    assert len(set(bank.frame.tolist())) == len(bank) and all(bank.latent(i)[0, 0, 0] == f for i, f in enumerate(bank.frame))
    # a copy (snapshot) shares the entry latents and is not changed by what the bank does next
    snap = bank.copy()
    assert snap.latent(0) is bank.latent(0)
    before = (snap.latents.copy(), snap.pose.copy(), snap.frame.copy())
    for t in range(20005, 20105):
        pose = pose + [(1, 0), (0, 1)][t % 2]
        bank.observe(lat + t, t, pose)
    assert np.array_equal(snap.latents, before[0]) and np.array_equal(snap.pose, before[1]) and np.array_equal(snap.frame, before[2])
    # the cell the player is in is held by its newest frame, and the views around the player survive eviction
    here = np.nonzero((np.floor_divide(bank.pose, (3, 2)) == np.floor_divide(pose, (3, 2))).all(1))[0]
    assert len(here) == 1 and bank.frame[here[0]] == 20104
    assert (bank.owned_cells() > 0).mean() > 0.5


def _world_view(pose: tuple[int, int]) -> np.ndarray:
    """A latent (C,9,9) whose token of world cell (x, y) is 100 x + y (channel 0), seen from ``pose``."""
    z = np.zeros(LATENT, np.float32)
    r, c = np.mgrid[0:2 * HALF_Y + 1, 0:2 * HALF_X + 1]
    z[0, :2 * HALF_Y + 1] = 100 * (pose[0] + c - HALF_X) + (pose[1] + r - HALF_Y)
    return z


def test_fill_copies_remembered_cells_into_the_uncovered_column(monkeypatch):
    """The player walked left from (0, 0) to (-3, 0) and steps back right to (-2, 0): the new column x = 2 comes from
    the tile map (each cell's newest view), except where the model drew a creature. A creature seen on a cell is not
    recorded (the cell keeps its view from before); a view under other light is relit and encoded again."""
    from engine.memory import TileMap, fill_uncovered
    from engine.rules import light_tiles

    new_px = np.full((72, 72, 3), 1, np.uint8)
    cow_here = 3 * 9 + 8  # the model drew a cow at row 3 of the new column

    def labels(frame, tiles, lighting=None):
        tiles = np.asarray(tiles)
        if frame.max() == 0:  # a black frame (the failed decode below) reads as sand
            return np.full(len(tiles), 5)
        return np.where(tiles == cow_here, 14, 2)

    monkeypatch.setattr("worldsim.memory.read_view_tiles", labels)
    tiles = TileMap(4096)
    for i, x in enumerate(range(0, -4, -1)):
        lab = np.full((7, 9), 2)
        if x == -2:
            lab[0, 8] = 15  # frame 2 saw a zombie on (2, -3): that cell keeps frame 1's view
        z = _world_view((x, 0)) + 1000.0 * (x == -1)  # frame 1's tokens are marked
        tiles.observe(z, np.array([x, 0]), i, 0.9, lab)
    model = np.full(LATENT, -1.0, np.float32)  # what the model invented
    z, n = fill_uncovered(tiles, model, new_px, np.array([-3, 0]), np.array([-2, 0]), 0.95)
    want = _world_view((-2, 0))
    want[:, 0, 8] += 1000.0  # from frame 1
    filled = np.zeros((9, 9), bool)
    filled[:7, 8] = True
    filled[3, 8] = False  # the cow the model drew stays
    filled[3, 3] = True   # the tile the player left: (-3, 0) as the map last saw it (the model cannot see under the player)
    assert n == 7
    np.testing.assert_array_equal(z[:, filled], want[:, filled])
    np.testing.assert_array_equal(z[:, ~filled], model[:, ~filled])
    assert (model == -1).all()  # the input is not written
    # unknown light, or no move: nothing is filled; other light without a way to encode: nothing either
    for light, prev in ((None, (-3, 0)), (0.95, (-2, 0)), (0.5, (-3, 0))):
        z, n = fill_uncovered(tiles, model, new_px, np.array(prev), np.array([-2, 0]), light)
        assert n == 0 and np.array_equal(z, model)
    # other light with an encoder: the remembered tiles are drawn from the game's texture of their class (grass here),
    # lit where the new frame shows them, and encoded again
    canvases = []

    def encode(frames):
        canvases.append(frames[0].copy())
        return np.full((1,) + LATENT, 7.0, np.float32)

    z, n = fill_uncovered(tiles, model, new_px, np.array([-3, 0]), np.array([-2, 0]), 0.5, 0.15, encode)
    assert n == 7 and len(canvases) == 1
    assert (z[:, filled] == 7.0).all()
    r = np.flatnonzero(filled[:, 8])
    from worldsim.eval.tiles import GRASS, get_classifier

    clf = get_classifier(72)
    grass = clf.atlas[np.flatnonzero(clf.template_labels == GRASS)[0]]
    relit = light_tiles([grass] * len(r), 0.5, np.stack([r, np.full(len(r), 8)], 1))
    for k, i in enumerate(r):
        np.testing.assert_array_equal(canvases[0][i * 8:(i + 1) * 8, 64:72], relit[k])
    assert (canvases[0][3 * 8:4 * 8, 64:72] == 1).all()  # the cow's tile is the model's
    # a relit tile the autoencoder does not give back as the same kind of tile gets the remembered token as it is
    z, n = fill_uncovered(tiles, model, new_px, np.array([-3, 0]), np.array([-2, 0]), 0.5, 0.15, encode,
                          lambda z: np.zeros((1, 72, 72, 3), np.uint8))
    assert n == 7
    np.testing.assert_array_equal(z[:, filled], want[:, filled])
    # a cell never seen (x = -8 when stepping left of -3) stays the model's; only the tile left behind is filled
    z, n = fill_uncovered(tiles, model, new_px, np.array([-3, 0]), np.array([-4, 0]), 0.95)
    assert n == 1 and (z[:, :7, 0] == -1).all() and (z[:, 3, 5] == _world_view((-4, 0))[:, 3, 5]).all()


def test_fill_replaces_a_creature_drawn_over_a_remembered_stone(monkeypatch):
    """A cow can stand on grass, sand or path only: one the model drew where the map remembers stone is filled."""
    from engine.memory import TileMap, fill_uncovered
    from engine.rules import mover_allowed
    from worldsim.eval.tiles import ARROW, COW, GRASS, STONE, WATER, ZOMBIE

    assert mover_allowed(COW, GRASS) and not mover_allowed(ZOMBIE, STONE) and mover_allowed(ARROW, WATER)
    assert not mover_allowed(COW, WATER) and mover_allowed(GRASS, STONE)
    cow_here = 3 * 9 + 8
    monkeypatch.setattr("worldsim.memory.read_view_tiles",
                        lambda frame, tiles, lighting=None: np.where(np.asarray(tiles) == cow_here, COW, GRASS))
    for remembered, filled in ((STONE, 8), (GRASS, 7)):   # the uncovered column and the tile the player left
        tiles = TileMap(4096)
        for i, x in enumerate(range(0, -4, -1)):
            lab = np.full((7, 9), GRASS)
            lab[3, :] = remembered          # row 3 of every view: the cell (2, 0) is stone or grass
            tiles.observe(_world_view((x, 0)), np.array([x, 0]), i, 0.9, lab)
        model = np.full(LATENT, -1.0, np.float32)
        z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([-3, 0]), np.array([-2, 0]), 0.95)
        assert n == filled, remembered
        assert (z[:, 3, 8] == model[:, 3, 8]).all() == (remembered == GRASS)


def test_no_table_furnace_or_plant_on_ground_the_session_never_saw(monkeypatch):
    """Crafter's generator makes none: the model's table on a newly uncovered cell the map never saw becomes the
    likeliest natural material (grass without a reader), drawn from the game's texture and encoded; a table on a
    cell the map saw, or a tree on new ground, stays the model's."""
    from engine.memory import TileMap, natural_uncovered
    from worldsim.eval.tiles import GRASS, TABLE, TREE, get_classifier

    drawn = {3 * 9 + 8: TABLE, 4 * 9 + 8: TREE, 2 * 9 + 0: TABLE}   # new column x = 2 (rows 3, 4); row 2 of x = -6
    monkeypatch.setattr("worldsim.memory.read_view_tiles",
                        lambda frame, tiles, lighting=None: np.array([drawn.get(int(t), GRASS) for t in np.asarray(tiles)]))
    tiles = TileMap(4096)
    tiles.observe(_world_view((-3, 0)), np.array([-3, 0]), 0, 0.9, np.full((7, 9), GRASS))   # saw x = -7..1
    canvases = []

    def encode(frames):
        canvases.append(frames[0].copy())
        return np.full((1,) + LATENT, 7.0, np.float32)

    model = np.full(LATENT, -1.0, np.float32)
    z, n = natural_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([-3, 0]), np.array([-2, 0]), 0.9, encode)
    assert n == 1 and len(canvases) == 1
    assert (z[:, 3, 8] == 7.0).all() and (np.delete(z.reshape(len(z), -1), 3 * 9 + 8, 1) == -1).all()
    clf = get_classifier(72)
    grass = clf.atlas[np.flatnonzero(clf.template_labels == GRASS)[0]]
    from engine.rules import light_tiles

    np.testing.assert_array_equal(canvases[0][24:32, 64:72], light_tiles([grass], 0.9, np.array([[3, 8]]))[0])
    # the map saw every cell: nothing; no move, or unknown light: nothing
    tiles.observe(_world_view((0, 0)), np.array([0, 0]), 1, 0.9, np.full((7, 9), GRASS))
    for prev, light in (((-3, 0), 0.9), ((-2, 0), 0.9), ((-3, 0), None)):
        z, n = natural_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array(prev), np.array([-2, 0]), light, encode)
        assert n == 0 and np.array_equal(z, model)


def test_fill_draws_a_tile_seen_in_deep_night_from_the_games_texture(monkeypatch):
    """A cell last seen in deep night (too little of its colours is left to light again) is filled, in a day frame,
    with the game's texture of the class it was read as, lit as the game lights it there."""
    from engine.memory import TileMap, fill_uncovered
    from engine.rules import _light, _light_terms
    from worldsim.eval.tiles import STONE, get_classifier

    monkeypatch.setattr("worldsim.memory.read_view_tiles", lambda frame, tiles, lighting=None: np.full(len(np.asarray(tiles)), 2))
    tiles = TileMap(4096)
    lab = np.full((7, 9), STONE)
    tiles.observe(_world_view((0, 0)), np.array([0, 0]), 0, 0.05, lab)
    canvases = []

    def encode(frames):
        canvases.append(frames[0].copy())
        return np.zeros((1,) + LATENT, np.float32)

    model = np.full(LATENT, -1.0, np.float32)
    z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([1, 0]), np.array([0, 0]), 0.9, 0.15, encode)
    assert n == 8 and len(canvases) == 1  # the column x = -4 (seen from (0, 0), not from (1, 0)) and the tile (1, 0) left
    clf = get_classifier(72)
    stone = clf.atlas[np.flatnonzero(clf.template_labels == STONE)[0]].astype(np.float64)
    terms = _light_terms(0.9, 56, 72)
    for r in range(7):
        want = _light(stone, *(t[r * 8:(r + 1) * 8, 0:8] for t in terms))
        np.testing.assert_array_equal(canvases[0][r * 8:(r + 1) * 8, 0:8], want)


def test_a_dark_view_does_not_overwrite_a_brighter_one_but_beside_the_player(monkeypatch):
    """Deep in the night the model's tiles drift: the map keeps a cell's brighter view where a dark frame reads it
    as another class (not beside the player, whose actions change tiles), and the fill draws such tiles back."""
    from engine.memory import DARK, TileMap, fill_uncovered
    from worldsim.eval.tiles import GRASS, PATH, STONE

    tiles = TileMap(4096)
    day = np.full((7, 9), STONE)
    tiles.observe(_world_view((0, 0)), np.array([0, 0]), 0, 0.8, day)
    night = np.full((7, 9), PATH)
    night[0, 0] = STONE                       # a dark view that agrees: the brighter view stays all the same
    dark = _world_view((0, 0)) + 0.5
    tiles.observe(dark, np.array([0, 0]), 1, DARK / 3, night)
    row = lambda x, y: tiles.lookup(np.array([[x, y]]))[0]   # noqa: E731
    far, beside, agree = row(3, 2), row(1, 0), row(-4, -3)
    assert tiles.label[far] == STONE and tiles.light[far] == 0.8 and tiles.token[far][0] == _world_view((0, 0))[0, 5, 7]
    assert tiles.label[beside] == PATH and tiles.light[beside] == np.float32(DARK / 3)   # beside the player: the player mined it
    assert tiles.label[agree] == STONE and tiles.frame[agree] == 0 and tiles.light[agree] == 0.8
    # beside the player only what the action that made the frame can do: "do" mines stone to path, a noop nothing
    from worldsim.actions import action_index

    for action, want in ((action_index("noop"), STONE), (action_index("do"), PATH)):
        t2 = TileMap(4096)
        t2.observe(_world_view((0, 0)), np.array([0, 0]), 0, 0.8, day)
        t2.observe(dark, np.array([0, 0]), 1, DARK / 3, night, action)
        assert t2.label[t2.lookup(np.array([[1, 0]]))[0]] == want
    tiles.observe(dark, np.array([0, 0]), 2, 0.5, night)                # not dark: the newest view, whatever it reads
    assert tiles.label[far] == PATH
    # the fill: a dark frame that shows cells as another class than a brighter view recorded gets those views back
    tiles = TileMap(4096)
    tiles.observe(_world_view((0, 0)), np.array([0, 0]), 0, 0.8, day)
    monkeypatch.setattr("worldsim.memory.read_view_tiles", lambda frame, t, lighting=None: np.full(len(np.asarray(t)), GRASS))
    view = np.full((7, 9), STONE)
    view[0, :3] = GRASS                      # three far cells drifted to grass
    view[3, 5] = GRASS                       # and one beside the player (its action may have done it): left alone
    encoded = []

    def encode(frames):
        encoded.append(1)
        return np.full((1,) + LATENT, 7.0, np.float32)

    model = np.full(LATENT, -1.0, np.float32)
    z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([0, 0]), np.array([0, 0]), DARK / 3,
                          0.15, encode, None, view)
    assert n == 3 and (z[:, 0, :3] == 7.0).all() and (z[:, 3, 5] == -1).all() and encoded
    from worldsim.actions import action_index

    z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([0, 0]), np.array([0, 0]), DARK / 3,
                          0.15, encode, None, view, action_index("noop"))
    assert n == 4 and (z[:, 3, 5] == 7.0).all()   # a noop changes nothing beside the player: drawn back too
    z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([0, 0]), np.array([0, 0]), 0.6,
                          0.15, encode, None, view)
    assert n == 0                            # a frame that is not dark is the model's to draw
    # a dark view that contradicts the map in many places near its centre does not fit the map (a pose estimated
    # wrong): the map paints nothing over it
    shifted = np.full((7, 9), STONE)
    shifted[1:6, 1:4] = GRASS                # 15 tiles near the centre, none beside the player
    z, n = fill_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([0, 0]), np.array([0, 0]), DARK / 3,
                          0.15, encode, None, shifted)
    assert n == 0


def test_tile_map_keeps_each_cells_newest_view_bounded_and_copies_apart():
    from engine.memory import TileMap

    tiles = TileMap(128)
    lab = np.full((7, 9), 2)
    for i in range(12):  # walking right: 62 cells in the first view, 7 more per step: past the capacity
        tiles.observe(_world_view((i, 0)) + i, np.array([i, 0]), i, 0.9, lab)
    assert 128 - 16 <= len(tiles) <= 128
    assert tiles.frame.min() > 0  # the oldest views went first
    row = tiles.lookup(np.array([[12, 0]]))[0]  # seen from (8..11, 0): the newest view is frame 11's
    assert row >= 0 and tiles.frame[row] == 11 and tiles.token[row, 1] == 11
    assert tiles.lookup(np.array([[11, 0]]))[0] >= 0 and tiles.frame[tiles.lookup(np.array([[11, 0]]))[0]] == 10  # not the player's tile
    assert tiles.lookup(np.array([[-4, 0]]))[0] == -1
    c = tiles.copy()
    tiles.observe(_world_view((11, 0)) + 99, np.array([11, 0]), 12, 0.5, lab)
    assert tiles.frame[row] == 12 and tiles.token[row, 1] == 99
    assert c.token[c.lookup(np.array([[12, 0]]))[0], 1] == 11 and c.frame.max() == 11  # the copy is apart
    back = TileMap.from_arrays(tiles.to_arrays(), 128)
    for name in ("xy", "token", "light", "frame", "label"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tiles, name))
    assert back.lookup(np.array([[12, 0]]))[0] == tiles.lookup(np.array([[12, 0]]))[0]
    # a save from before the tile map: an empty map; inconsistent arrays: a clear error
    assert len(TileMap.from_arrays({}, 64)) == 0
    bad = tiles.to_arrays()
    bad["memory_tiles_light"] = bad["memory_tiles_light"][:-1]
    with pytest.raises(ValueError, match="tile map"):
        TileMap.from_arrays(bad, 64)


def test_memory_session_fills_and_can_turn_it_off(world_dir):
    """Through a session: with the memory preset's fill, walking back over seen ground fills tiles; with
    memory_fill=false the same steps fill none; the bank records each frame's light."""
    counts = {}
    for fill in (True, False):
        w = World.load(world_dir, backend="onnxruntime", preset="memory", memory_fill=fill, block_rule=False, **T1)
        s = w.new_session(seed=1)
        s._move = lambda prev, frame, a, walkable: np.array(move_delta(a))  # the random model's moves, as asked
        n = 0
        for a in ["move_left"] * 6 + ["move_right"] * 6:
            s.step(a)
            n += s.timings["memory_filled"]
        counts[fill] = n
        assert np.isfinite(s._state.memory.light).any()
    assert counts[False] == 0
    assert counts[True] > 0


# ---------------------------------------------------------------------------------------------------
# pose estimation on real frames


def test_pose_estimation_on_real_recorded_frames(episode):
    frames, actions, pos = episode["frames"], episode["actions"].astype(int), episode["pos"].astype(np.int64)
    moves = np.array([move_delta(a) != (0, 0) for a in actions[:-1]])
    true = np.diff(pos, axis=0)
    est = np.diff(track_poses(frames, actions), axis=0)
    view_only = np.diff(track_poses(frames, actions, rule=False), axis=0)
    right = (est == true).all(1)
    assert moves.sum() > 200 and (true[~moves] == 0).all()  # only move actions move the player
    assert right[moves].mean() >= 0.995, f"moves right {right[moves].mean():.4f}"
    assert right.all() or right.mean() >= 0.995
    assert (view_only == true).all(1)[moves].mean() >= 0.97
    # the revisit: the pose change between placing the block and seeing it again is exact
    poses = track_poses(frames, actions)
    for t_place, _, t_back, *_ in episode["revisit_events"]:
        assert ((poses[t_back] - poses[t_place]) == (pos[t_back] - pos[t_place])).all()
    # the rule on the faced tile agrees with the game's semantic map for awake frames
    walk = [(target_walkable(frames[t], actions[t]), episode["semantic"][t][3 + move_delta(actions[t])[1], 4 + move_delta(actions[t])[0]])
            for t in np.nonzero(moves & ~episode["sleeping"][:-1])[0]]
    agree = np.mean([w == (s in (2, 4, 5, 7)) for w, s in walk])
    assert agree >= 0.97, agree


def test_estimate_move_candidates_and_overrides():
    rng = np.random.default_rng(1)
    world = rng.integers(0, 255, (40, 40, 16)).astype(np.float32)  # a textured world of per-tile features
    view = lambda x, y: world[y - 3:y + 4, x - 4:x + 5]  # noqa: E731  (7, 9, D) at pose (x, y)
    a_right = action_index("move_right")
    assert estimate_move(view(10, 10), view(11, 10), a_right) == (1, 0)
    assert estimate_move(view(10, 10), view(10, 10), a_right) == (0, 0)  # blocked: only turned
    assert estimate_move(view(10, 10), view(11, 10), action_index("do")) == (0, 0)  # non-moves never move
    # the rule decides an ambiguous view, but not a view that plainly moved
    flat = np.zeros((7, 9, 16), np.float32)
    assert estimate_move(flat, flat, a_right, walkable=True) == (1, 0)
    assert estimate_move(flat, flat, a_right, walkable=False) == (0, 0)
    assert estimate_move(view(10, 10), view(11, 10), a_right, walkable=False) == (1, 0)
    assert estimate_move(view(10, 10), view(10, 10), a_right, walkable=True) == (0, 0)


# ---------------------------------------------------------------------------------------------------
# training with memory == inference with memory slots


def test_teacher_with_memory_equals_cached_inference_with_memory_slots():
    """forward_teacher with memory frames gives, for every target frame, what the engine computes: memory
    keys/values from a pass over the memory frame alone, context committed frame by frame against the
    window only, target denoised against the window plus the memory slots shifted for its pose (memory_shift)."""
    m = _random_dit(1)
    g, C = m.cfg.grid, m.cfg.latent_channels
    B, T, M = 2, 3, 2
    gen = torch.Generator().manual_seed(0)
    zc, zt, zm = (torch.randn(B, n, C, g, g, generator=gen) for n in (T, T, M))
    sc, st, sm = torch.rand(B, T, generator=gen) * 0.1, torch.rand(B, T, generator=gen), torch.rand(B, M, generator=gen) * 0.1
    a = torch.randint(0, 17, (B, T), generator=gen)
    mt = torch.tensor([[-30.0, -12.0], [-50.0, -9.0]])
    mpose = torch.randint(20, 30, (B, M, 2), generator=gen).float()
    pose = torch.randint(20, 30, (B, T, 2), generator=gen).float()
    mv = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        out = m.forward_teacher(zc, sc, zt, st, a, zm, sm, mt, mpose, pose, mv)
        for b in range(B):
            kv = [m(zm[b:b + 1, j:j + 1], sm[b:b + 1, j:j + 1], torch.full((1, 1), NULL_ACTION), *m.empty_cache(1, 1))[1:] for j in range(M)]
            mk, mvv = torch.cat([k for k, _ in kv], 3), torch.cat([v for _, v in kv], 3)
            ctx_k, ctx_v = [], []
            for i in range(T):
                pk, pv = torch.cat(ctx_k + [mk], 3), torch.cat(ctx_v + [mvv], 3)
                pt = torch.tensor([[float(j - i) for j in range(i)] + (mt[b] - i).tolist()])
                pvalid = torch.cat([torch.ones(1, i), mv[b:b + 1]], 1)
                mshift = torch.from_numpy(memory_shift(mpose[b].numpy(), pose[b, i].numpy()))[None]
                shift = torch.cat([torch.zeros(1, i, 2), mshift], 1)
                x0 = m(zt[b:b + 1, i:i + 1], st[b:b + 1, i:i + 1], a[b:b + 1, i:i + 1], pk, pv, pt, pvalid, shift)[0]
                torch.testing.assert_close(out[b, i], x0[0, 0], atol=5e-5, rtol=1e-4)
                # the commit pass reads the window only
                ck, cv, ct, cvalid = (torch.cat(ctx_k, 3), torch.cat(ctx_v, 3), pt[:, :i], torch.ones(1, i)) if i else m.empty_cache(1, 1)
                _, kk, vv = m(zc[b:b + 1, i:i + 1], sc[b:b + 1, i:i + 1], a[b:b + 1, i:i + 1], ck, cv, ct, cvalid)
                ctx_k.append(kk)
                ctx_v.append(vv)
        # absent memory frames change nothing; present ones change the prediction
        plain = m.forward_teacher(zc, sc, zt, st, a)
        torch.testing.assert_close(m.forward_teacher(zc, sc, zt, st, a, zm, sm, mt, mpose, pose, torch.zeros(B, M)), plain, atol=2e-6, rtol=1e-5)
        assert (out - plain).abs().max() > 1e-3
        with pytest.raises(ValueError, match="mem_pose"):
            m.forward_teacher(zc, sc, zt, st, a, zm, sm, mt, mpose[:, :1], pose, mv)


def test_memory_training_batch_and_loss(episode):
    """Clips with memory frames from the same episode (beyond the window, preferring the revisit), their
    time offsets and shifts, and a loss that trains the model through them."""
    from worldsim.train import LatentClips, TrainConfig, dit_loss

    ep = {k: episode[k] for k in ("frames", "actions", "pos", "revisit_events")}
    clips = LatentClips.__new__(LatentClips)  # latents without an autoencoder: random per-frame codes suffice here
    rng = np.random.default_rng(0)
    clips.lat = [torch.from_numpy(rng.standard_normal((len(ep["frames"]), *LATENT)).astype(np.float16))]
    clips.act = [ep["actions"].astype(np.int64)]
    clips.frames = [ep["frames"]]
    clips.pos = [ep["pos"].astype(np.int64)]
    clips.events = [ep["revisit_events"].astype(np.int64).reshape(-1, 6)]
    cfg = TrainConfig(model="tiny", clip_len=4, memory_frames=2, memory_dropout=0.0, memory_revisit=1.0, action_dropout=0.0)
    z, a, origins, mem = clips.sample_with_memory(rng, 6, 4, cfg)
    pos = clips.pos[0]
    t_back = int(clips.events[0][0, 2])
    assert all(s <= t_back < s + 4 for _, s in origins)  # revisit clips hold the frame A is back on screen
    assert mem.valid.sum() > 0
    for b, (_, s) in enumerate(origins):
        assert mem.pose[b].tolist() == pos[s:s + 4].tolist()
        for j in range(2):
            if mem.valid[b, j]:
                f = s + int(mem.t[b, j])
                assert f < s - 3  # older than the window before the clip
                torch.testing.assert_close(clips.lat[0][f].float(), mem.x[b, j])
                assert mem.mem_pose[b, j].tolist() == pos[f].tolist()
                # it shows world cells the clip shows
                assert any(abs(pos[f][0] - p[0]) <= 2 * HALF_X and abs(pos[f][1] - p[1]) <= 2 * HALF_Y for p in pos[s:s + 4])
    idx = sample_memory(pos, 200, 4, 2, window=3)
    assert all(i < 197 for i in idx)
    m = _random_dit(2)
    loss, _ = dit_loss(m, z, a, cfg, generator=torch.Generator().manual_seed(0), memory=mem)
    loss.backward()
    assert torch.isfinite(loss) and m.x_in.weight.grad.abs().sum() > 0
    loss_off, _ = dit_loss(m, z, a, cfg, generator=torch.Generator().manual_seed(0))
    assert loss_off.item() != loss.item()


def _baseline_module(rel: str, name: str):
    """The committed pre-memory version of a module (commit c30a75c), or None where git history is missing."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"c30a75c:{rel}"], capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    try:
        exec(compile(src, rel, "exec"), mod.__dict__)
    finally:
        del sys.modules[name]
    return mod


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_default_model_and_loss_match_the_pre_memory_code(preset):
    """No memory => the old outputs and loss, and the same parameters (running checkpoints stay valid). The
    inference step is bit-identical; the training pass attends block by block since, so it agrees to float
    rounding (the summation order differs)."""
    old_dit = _baseline_module("worldsim/dit.py", "_old_dit")
    old_train = _baseline_module("worldsim/train.py", "_old_train")
    if old_dit is None or old_train is None:
        pytest.skip("the pre-memory commit c30a75c is not in this checkout's history")
    from worldsim.train import TrainConfig, dit_loss

    torch.manual_seed(0)
    new = CausalDiT(replace(dit_preset(preset), prev_mix=False))  # the previous-frame mix came later, and is its own switch
    with torch.no_grad():
        for p in new.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    old = old_dit.CausalDiT(old_dit.dit_preset(preset))
    assert list(old.state_dict()) == list(new.state_dict())
    old.load_state_dict(new.state_dict())
    B, T, C, g = 2, 4, new.cfg.latent_channels, new.cfg.grid
    gen = torch.Generator().manual_seed(3)
    args = (torch.randn(B, T, C, g, g, generator=gen), torch.rand(B, T, generator=gen), torch.randn(B, T, C, g, g, generator=gen),
            torch.rand(B, T, generator=gen), torch.randint(0, 18, (B, T), generator=gen))
    with torch.no_grad():
        torch.testing.assert_close(new.forward_teacher(*args), old.forward_teacher(*args), atol=2e-5, rtol=1e-5)
        pk, pv, pt, pval = new.empty_cache(B, 3)
        pk.normal_(generator=gen)
        pv.normal_(generator=gen)
        pt[:] = -torch.arange(1, 4).float()
        pval[:] = 1
        step = (args[0][:, :1], args[1][:, :1], args[4][:, :1], pk, pv, pt, pval, torch.randint(-2, 3, (B, 3, 2), generator=gen).float())
        assert all(torch.equal(x, y) for x, y in zip(old(*step), new(*step)))
    cfg = TrainConfig(model=preset)
    z, acts = args[0], args[4] % 17
    l_new, _ = dit_loss(new, z, acts, cfg, generator=torch.Generator().manual_seed(5))
    l_old, _ = old_train.dit_loss(new, z, acts, old_train.TrainConfig(model=preset), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(l_new, l_old, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# the engine


def test_memory_slots_are_off_by_default_and_a_memoryless_step_is_unchanged(world_dir):
    # the default preset (fast) keeps a bank for the fill alone: no slots
    assert World.load(world_dir, backend="torch", **T1).memory_config.slots == 0
    plain = World.load(world_dir, backend="torch", memory_fill=False, **T1)
    assert plain.memory_config is None and plain.preset.memory == 0
    s0 = plain.new_session(seed=4)
    assert s0.snapshot().memory is None
    mem = World.load(world_dir, backend="torch", memory=2, memory_fill=False, **T1)
    s1 = mem.new_session(seed=4)
    # non-moves never need memory: the memory path then gives bit-identical frames
    for a in ["noop", "do", "noop", "place_stone", "sleep", "noop"] * 2:
        f0, f1 = s0.step(a), s1.step(a)
        assert s1.timings["memory_slots"] == 0
        assert np.array_equal(f0, f1)
    with pytest.raises(ValueError, match="memory"):
        World.load(world_dir, backend="torch", memory=-1, **T1)


def _hand_bank(world: World, session, entries: list[tuple[np.ndarray, tuple[int, int], int]]) -> None:
    """Replace a session's memory with hand-made entries (latent, pose, frame) and the trail of its window at (0, 0)."""
    st = session.snapshot()
    bank = MemoryBank.empty(world.memory_config, st.latent.shape, st.memory.trail_len)
    for lat, pose, frame in entries:
        bank.insert(lat, np.array(pose), frame)
    for f in range(st.frame_index - world.preset.window + 1, st.frame_index + 1):
        bank.trail_pose = np.concatenate([bank.trail_pose, np.zeros((1, 2), np.int64)])
        bank.trail_frame = np.concatenate([bank.trail_frame, [f]])
    st.memory = bank
    session.restore(st)


def test_memory_frames_reach_the_model_exactly(world_dir):
    """A small revisit on the tiny preset: a remembered frame beyond the window is read by the model, and the
    frame equals one computed by hand from the cache plus that memory slot (its keys/values from a pass over
    it alone, time = its frame - the new frame's, shift = memory_shift(its pose, the predicted pose))."""
    # the memory slots alone: no fill, no rules (they edit the frame after the model), no warm start (pure noise)
    world = World.load(world_dir, backend="torch", memory=2, memory_fill=False, block_rule=False, day_clock=False, life_clock=False, tile_hold=False,
                       warm=0.0, **T1)
    s = world.new_session(seed=7)
    for a in ["noop"] * 12:
        s.step(a)
    rng = np.random.default_rng(0)
    remembered = rng.standard_normal(LATENT).astype(np.float32)
    # seen 9 frames before the window, from 4 tiles to the right: stepping right shows its cells
    first = s.frame_index + 1
    _hand_bank(world, s, [(remembered, (4, 1), 2)])
    before = s.snapshot()
    frame = s.step("move_right")
    latent = s.snapshot().latent
    assert s.timings["memory_slots"] == 1
    # by hand
    be, d = world.backend, world.dit_cfg
    gen = np.random.Generator(np.random.PCG64(0))
    gen.bit_generator.state = before.rng_state
    x = gen.standard_normal((1, 1, d.latent_channels, d.grid, d.grid), dtype=np.float32)
    empty = (np.zeros((d.n_layers, 1, d.n_heads, d.tokens_per_frame, d.head_dim), np.float32),) * 2
    _, mk, mv = be.dit(remembered[None, None], np.zeros((1, 1), np.float32), np.full((1, 1), NULL_ACTION), *empty,
                       np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32), np.zeros((1, 1, 2), np.float32))
    past_t, past_valid = before.cache.inputs(first)
    shift = np.concatenate([np.zeros((1, before.cache.slots, 2), np.float32), memory_shift(np.array([[4, 1]]), np.array([1, 0]))[None]], 1)
    assert shift[0, -1].tolist() == [1.0, 3.0]  # (dy, dx)
    ts = world.sampler.timesteps()
    for t, t_next in zip(ts[:-1], ts[1:]):  # the fast preset: one deterministic step
        x0, _, _ = be.dit(x, np.full((1, 1), t, np.float32), np.array([[action_index("move_right")]]), np.concatenate([before.cache.k, mk], 3),
                          np.concatenate([before.cache.v, mv], 3), np.concatenate([past_t, [[2.0 - first]]], 1).astype(np.float32),
                          np.concatenate([past_valid, [[1.0]]], 1).astype(np.float32), shift)
        x = world.sampler.step(x, x0, t, t_next, None)
    assert np.array_equal(latent, np.asarray(x, np.float32)[0, 0]) and np.array_equal(frame, be.decode(np.asarray(x, np.float32)[0])[0])
    # without the memory entry the same step gives another frame: the memory reached the model
    s.restore(before)
    _hand_bank(world, s, [])
    s.step("move_right")
    assert s.timings["memory_slots"] == 0 and np.abs(s.snapshot().latent - latent).max() > 1e-3
    # the same entry still inside the window is not memory
    s.restore(before)
    _hand_bank(world, s, [(remembered, (4, 1), first - 2)])
    s.step("move_right")
    assert s.timings["memory_slots"] == 0


def test_snapshot_restore_and_save_load_with_memory(world_dir, tmp_path):
    world = World.load(world_dir, memory=2)  # onnxruntime: the DiT graph takes a varying number of slots
    s = world.new_session(seed=11)
    walk = ["move_right"] * 6 + ["move_down"] * 3 + ["move_left"] * 8 + ["move_up"] * 3 + ["move_right"] * 6
    for a in walk:
        s.step(a)
    assert len(s.snapshot().memory) > 0
    snap = s.snapshot()
    more = ["move_left"] * 8 + ["move_down"] * 3 + ["move_right"] * 8  # back through remembered places
    first, used = [], 0
    for a in more:
        first.append(s.step(a))
        used += s.timings["memory_slots"]
    assert used > 0
    s.restore(snap)
    again = [s.step(a) for a in more]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    path = tmp_path / "s.npz"
    s.save(path)
    with np.load(path) as z:
        assert {"memory_latents", "memory_pose", "memory_frame"} <= set(z.files)
    loaded = world.load_session(path)
    assert np.array_equal(loaded.snapshot().memory.latents, s.snapshot().memory.latents)
    assert all(np.array_equal(s.step(a), loaded.step(a)) for a in more)
    # a memoryless world drops the memory; a memory world given a memoryless session starts remembering
    plain = World.load(world_dir, memory_fill=False)
    assert plain.load_session(path).snapshot().memory is None
    s0 = plain.new_session(seed=1)
    s0.step("noop")
    p0 = tmp_path / "plain.npz"
    s0.save(p0)
    s1 = world.load_session(p0)
    assert s1.snapshot().memory is not None
    s1.step("move_left")


def test_corrupt_memory_in_a_saved_session_is_a_clear_error(world_dir, tmp_path):
    import json

    world = World.load(world_dir, backend="torch", memory=2, **T1)
    s = world.new_session(seed=2)
    s.step("move_left")
    path = tmp_path / "s.npz"
    s.save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    arrays.pop("memory_pose")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="memory"):
        world.load_session(tmp_path / "bad.npz")
    meta["memory"]["version"] = 99
    arrays = {k: v for k, v in arrays.items()}
    with np.load(path) as z:
        arrays["memory_pose"] = z["memory_pose"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(ValueError, match="version"):
        world.load_session(tmp_path / "bad2.npz")


def test_memory_preset_is_listed():
    from engine import RUNTIME_PRESETS

    assert RUNTIME_PRESETS["memory"].memory > 0 and RUNTIME_PRESETS["fast"].memory == 0
    assert ACTION_NAMES[action_index("move_left")] == "move_left"


def test_sessions_see_memory_config_from_the_preset(world_dir):
    w = World.load(world_dir, backend="torch", preset="memory", memory_capacity=32, **T1)
    cfg = w.memory_config
    assert cfg.slots == 2 and cfg.capacity == 32
    s = w.new_session(seed=0)
    for a in ["move_left", "move_up", "move_right", "move_down"] * 20:
        s.step(a)
    assert len(s.snapshot().memory) <= 32


def test_session_batch_refuses_memory_sessions(tmp_path):
    """Batched stepping reads no memory slots: it must refuse sessions that read them instead of silently
    ignoring them. The fill alone (the fast preset) needs no slots: a batch steps its sessions as alone, banks
    included."""
    from engine import World
    from engine.batch import SessionBatch
    from engine.testing import make_tiny_world

    path = make_tiny_world(tmp_path / "w")
    world = World.load(path, backend="onnxruntime", preset="memory", threads=1)
    with pytest.raises(ValueError, match="memory"):
        SessionBatch([world.new_session(seed=0), world.new_session(seed=1)])
    # float32: int8 graphs quantize a call's activations over the whole batch (engine.batch), so only float32 is exact
    fast = World.load(path, backend="onnxruntime", preset="fast", threads=1, precision="fp32")
    assert fast.memory_config is not None and fast.memory_config.fill and fast.memory_config.slots == 0
    # a batch runs the dynamic-shape graph; a lone session would take the fixed-shape one (equal to ~1e-6):
    # compare like with like, bit for bit
    fast.backend.static.clear()
    solo = [fast.new_session(seed=i) for i in range(2)]
    batch = SessionBatch([fast.new_session(seed=i) for i in range(2)])
    for step in (["move_left", "move_up"], ["move_left", "do"], ["move_right", "move_down"]) * 3:
        for s, got, act in zip(solo, batch.step(step), step):
            np.testing.assert_array_equal(s.step(act), got)
    for s, b in zip(solo, batch.sessions):
        a, c = s.snapshot().memory, b.snapshot().memory
        assert len(a) == len(c) > 0
        np.testing.assert_array_equal(a.pose, c.pose)
        np.testing.assert_array_equal(a.latents, c.latents)
