"""Each metric on hand-made cases where the answer is known: perfect scores 1, copy-last scores the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.eval import metrics as M
from worldsim.eval import tiles as T

G, S, W, ST, P, ZO = T.GRASS, T.SAND, T.WATER, T.STONE, T.PLAYER, T.ZOMBIE


def _world(seed: int = 0, size: int = 40) -> np.ndarray:
    """A random static world map [y, x] of materials (no objects)."""
    rng = np.random.default_rng(seed)
    return rng.choice([G, G, G, S, W, ST, T.TREE, T.PATH], (size, size)).astype(np.uint8)


def _views(world: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The (T, 7, 9) views of a player walking along pos (T, 2) over a world map [y, x]; player drawn at the centre."""
    x, y = M.view_cells(pos)
    v = world[y, x].copy()
    v[:, T.PLAYER_ROW, T.PLAYER_COL] = P
    return v


def test_psnr_known_values():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    assert M.psnr(a, a).tolist() == [M.PSNR_CAP, M.PSNR_CAP]
    b = a + 10
    np.testing.assert_allclose(M.psnr(b, a), 20 * np.log10(255 / 10))
    with pytest.raises(ValueError, match="shape"):
        M.psnr(a, a[:1])


def test_ssim_orders_degradations():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(M.ssim(x, x), 1.0)
    slight = np.clip(x.astype(int) + rng.integers(-5, 6, x.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(x.astype(int) + rng.integers(-80, 81, x.shape), 0, 255).astype(np.uint8)
    assert (M.ssim(slight, x) > M.ssim(heavy, x)).all() and (M.ssim(slight, x) < 1).all()


def test_last_seen_and_tile_categories():
    world = _world()
    ctx_pos = np.array([[10, 10], [11, 10]])
    ctx = _views(world, ctx_pos)
    seen = M.last_seen(ctx, ctx_pos, np.array([[13, 10]]))[0]
    # moving 2 cells right of the last context view: the 2 rightmost columns were never seen
    assert (seen[:, 7:] == M.UNSEEN).all() and (seen[:, :7] != M.UNSEEN).all()
    truth = _views(world, np.array([[13, 10]]))[0]
    truth[0, 0] = ST if truth[0, 0] != ST else G          # something changed in the real game
    masks = M.tile_masks(truth, seen)
    assert masks["new"].sum() == 14 and masks["changed"][0, 0]
    # the player now stands where the context saw ground, and the context saw the player 2 cells left
    assert masks["changed"][3, 4] and masks["changed"][3, 2] and masks["changed"].sum() == 3
    assert masks["persistent"].sum() == 63 - 14 - 3
    assert not (masks["persistent"] & masks["changed"]).any()


def test_tile_scores_perfect_and_copy_last():
    world = _world(1)
    pos = np.array([[10, 10], [11, 10], [11, 11]])
    views = _views(world, pos)
    prev, nxt = views[:-1], views[1:]
    perfect = M.tile_scores(nxt, nxt, M.tile_masks(nxt))
    assert perfect.rate("tile_all") == 1.0 and perfect.rate("tile_non_grass") == 1.0
    copy = M.tile_scores(prev, nxt, M.tile_masks(nxt))
    assert copy.rate("tile_all") == pytest.approx((prev == nxt).mean())
    ng = nxt != G
    assert copy.rate("tile_non_grass") == pytest.approx((prev == nxt)[ng].mean())


def test_shift_estimation():
    world = _world(2)
    for d in M.SHIFTS:
        pos = np.array([[12, 12], [12 + d[0], 12 + d[1]]])
        v = _views(world, pos)
        shift, unique = M.estimate_shift(v[0], v[1])
        assert tuple(shift) == d and unique
    flat = np.full((7, 9), G, np.uint8)
    _, unique = M.estimate_shift(flat, flat)
    assert not unique
    np.testing.assert_array_equal(M.chain_positions(_views(world, np.array([[5, 5], [6, 5], [6, 4], [6, 4]]))),
                                  [[0, 0], [1, 0], [1, -1], [1, -1]])


def test_action_following_perfect_and_copy_last():
    world = _world(3)
    # right (moves), left (moves), up into a wall (blocked), noop, do
    pos = np.array([[10, 10], [11, 10], [10, 10], [10, 10], [10, 10], [10, 10]])
    actions = np.array([2, 1, 3, 0, 5])
    v = _views(world, pos)
    prev, nxt = v[:-1], v[1:]
    delta = pos[1:] - pos[:-1]
    perfect = M.action_following(prev, nxt, nxt, actions, delta)
    assert [perfect.rate(k) for k in ("follow_moved", "follow_blocked", "follow_still")] == [1.0, 1.0, 1.0]
    assert perfect.counts["follow_moved"] == 2 and perfect.counts["follow_still"] == 2
    assert M.following_score(perfect) == 1.0
    copy = M.action_following(prev, nxt, prev, actions, delta)
    assert copy.rate("follow_moved") == 0.0 and copy.rate("follow_blocked") == 1.0 and copy.rate("follow_still") == 1.0
    assert M.following_score(copy) == pytest.approx(2 / 3)
    # garbage frames follow nothing, not even "stay"
    junk = np.full_like(nxt, G)
    assert M.action_following(prev, nxt, junk, actions, delta).rate("follow_still") == 0.0


def test_interact_and_facing():
    world = _world(4)
    world[10, 11] = T.TREE
    prev = _views(world, np.array([[10, 10]]))
    world2 = world.copy()
    world2[10, 11] = ST                                   # "place_stone" to the right
    nxt = _views(world2, np.array([[10, 10]]))
    facing = np.array([[1, 0]])
    ok = M.action_following(prev, nxt, nxt, np.array([7]), np.zeros((1, 2), int), facing_next=facing,
                            pred_facing=facing, facing_prev=facing)
    assert ok.rate("follow_interact_changed") == 1.0 and ok.counts.get("follow_facing", 0) == 0
    bad = M.action_following(prev, nxt, prev, np.array([7]), np.zeros((1, 2), int), facing_prev=facing)
    assert bad.rate("follow_interact_changed") == 0.0
    turned = M.action_following(prev, prev, prev, np.array([1]), np.zeros((1, 2), int),
                                facing_next=np.array([[-1, 0]]), pred_facing=np.array([[0, 1]]))
    assert turned.rate("follow_facing") == 0.0


def test_revisit_scores():
    world = _world(5)
    world[10, 12] = T.TABLE
    pos = np.array([[11, 10], [11, 10]])
    truth = _views(world, pos)
    perfect = M.revisit_scores(truth, truth, pos, (12, 10), T.TABLE)
    assert perfect.rate("revisit_block_kept") == 1.0 and perfect.rate("revisit_area") == 1.0
    forgot = truth.copy()
    forgot[:, 3, 5] = G
    f = M.revisit_scores(forgot, truth, pos, (12, 10), T.TABLE)
    assert f.rate("revisit_block_kept") == 0.0
    assert f.rate("revisit_area") == pytest.approx(1 - 2 / f.counts["revisit_area"])


def test_inventory_histogram_tally():
    t = M.inventory_scores(np.array([[1] * 16, [2] * 16]), np.array([[1] * 16, [2] * 15 + [3]]))
    assert t.rate("inventory_exact") == 0.5 and t.rate("inventory_items") == pytest.approx(31 / 32)
    h = M.class_histogram(np.array([[G, G], [S, W]]))
    assert h[G] == 0.5 and h.sum() == pytest.approx(1)
    assert M.tv_distance(h, h) == 0.0
    assert M.tv_distance(np.eye(3)[0], np.eye(3)[1]) == 1.0
    a, b = M.Tally(), M.Tally()
    a.add("x", 1, 2)
    b.add("x", np.array([True, True]))
    assert a.merge(b).rate("x") == 0.75 and M.Tally().rate("x") is None


def test_tile_metrics_perfect_and_copy_last():
    """The validation helper on frames drawn from known tiles: perfect = 1, copy-last = the baseline."""
    clf = T.get_classifier(72)
    world = _world(6)
    ctx_pos = np.array([[10, 10], [11, 10], [12, 10]])
    fut_pos = np.array([[13, 10], [13, 11], [13, 11], [12, 11]])
    ctx_lab, fut_lab = _views(world, ctx_pos), _views(world, fut_pos)
    render = lambda labs: np.stack([clf.render(g) for g in labs])  # noqa: E731
    ctx, fut = render(ctx_lab)[None], render(fut_lab)[None]
    m = M.tile_metrics(fut, fut, context_frames=ctx)
    for k in ("tile_all", "tile_non_grass", "tile_persistent", "tile_new"):
        assert m[k] == 1.0, k
    assert m["psnr"] == M.PSNR_CAP and m["unexplained"] == 0.0 and m["lighting_match"] == 1.0
    copy = np.repeat(ctx[:, -1:], len(fut_pos), 1)
    c = M.tile_metrics(copy, fut, fut_lab[None], ctx, true_pos=fut_pos[None], context_pos=ctx_pos[None])
    expect = (ctx_lab[-1][None] == fut_lab)
    assert c["tile_all"] == pytest.approx(expect.mean())
    seen = M.last_seen(ctx_lab, ctx_pos, fut_pos)
    pers = M.tile_masks(fut_lab, seen)["persistent"]
    assert c["tile_persistent"] == pytest.approx(expect[pers].mean())
    assert c["psnr"] == pytest.approx(M.psnr(copy[0], fut[0]).mean())
    # without positions the cells are aligned from the view shifts: same answer
    c2 = M.tile_metrics(copy, fut, fut_lab[None], ctx)
    assert c2["tile_persistent"] == pytest.approx(c["tile_persistent"])


def test_same_neighbour_rate_tells_patches_from_stray_tiles():
    """A lake in one piece scores high, the same number of water tiles scattered over grass scores 0; grass and the
    player are not counted."""
    from worldsim.eval.tiles import GRASS, PLAYER, WATER

    lake = np.full((7, 9), GRASS)
    lake[0:2, 0:3] = WATER   # 6 tiles with 19 neighbours in view; 7 water-water pairs, seen from both sides
    rate, pairs = M.same_neighbour_rate(lake)
    assert pairs == 19 and abs(rate - 14 / 19) < 1e-9
    scattered = np.full((7, 9), GRASS)
    scattered[[0, 0, 2, 4, 6, 6], [0, 4, 2, 6, 0, 8]] = WATER
    assert M.same_neighbour_rate(scattered)[0] == 0.0
    assert M.same_neighbour_rate(np.full((2, 7, 9), GRASS))[1] == 0
    lake[3, 4] = PLAYER
    assert M.same_neighbour_rate(lake)[0] == rate
