"""The ground head (engine.ground): new ground is a material sampled from what the model's token holds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.ground import GroundHead, fit_ground, ground_scores, load_ground
from engine.memory import NATURAL, TileMap, sample_uncovered
from worldsim.eval.tiles import COW, GRASS, SAND, TREE, WATER, get_classifier

LATENT = (16, 9, 9)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (n,16) of three materials whose clouds overlap (grass 60%, water 25%, tree 15%) and their labels."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).standard_normal((3, 16)) * 0.4
    which = rng.choice(3, n, p=[0.6, 0.25, 0.15])
    return protos[which] + rng.standard_normal((n, 16)), np.array([GRASS, WATER, TREE])[which]


def test_fit_gives_calibrated_probabilities_on_held_out_tokens():
    """A head fitted on overlapping clouds: one draw per held-out token gives back the real mix (the point: the
    argmax, like the mean, would favour the common material), and beats the marginal's log loss."""
    x, y = _synthetic(3000, 0)
    head = fit_ground(x, y, NATURAL)
    hx, hy = _synthetic(3000, 1)
    s = ground_scores(head, hx, hy)
    assert s["cells"] == 3000 and s["sampled_tv"] < 0.04
    marginal = -(0.6 * np.log(0.6) + 0.25 * np.log(0.25) + 0.15 * np.log(0.15))
    assert s["log_loss"] < 0.75 * marginal
    p = head.probs(hx)
    assert p.shape == (3000, len(NATURAL)) and np.allclose(p.sum(1), 1)
    argmax_grass = (np.asarray(NATURAL)[p.argmax(1)] == GRASS).mean()
    assert argmax_grass > s["sampled"]["grass"] + 0.04   # sampling is what keeps the rarer materials
    with pytest.raises(ValueError, match="tokens"):
        head.probs(np.zeros((4, 15)))
    with pytest.raises(ValueError, match="too few"):
        fit_ground(x[:20], y[:20], NATURAL)


def test_ground_json_round_trip_and_clear_errors(tmp_path):
    x, y = _synthetic(600, 2)
    head = fit_ground(x, y, NATURAL)
    head = GroundHead(head.classes, head.mean, head.scale, head.weight, head.bias, {"autoencoder_sha256": "a", "dit_sha256": "d"})
    path = tmp_path / "ground.json"
    path.write_text(json.dumps(head.to_dict()))
    back = load_ground(path, "a", "d")
    assert back.classes == head.classes
    np.testing.assert_allclose(back.probs(x[:50]), head.probs(x[:50]), atol=1e-5)
    with pytest.raises(ValueError, match="another dit"):
        load_ground(path, "a", "other")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        load_ground(path)
    path.write_text(json.dumps({**head.to_dict(), "format": "something"}))
    with pytest.raises(ValueError, match="not a ground head"):
        load_ground(path)
    path.write_text(json.dumps({**head.to_dict(), "weight": [[1.0, 2.0]]}))
    with pytest.raises(ValueError, match="usable"):
        load_ground(path)
    with pytest.raises(FileNotFoundError):
        load_ground(tmp_path / "missing.json")


def _always(label: int) -> GroundHead:
    K = len(NATURAL)
    return GroundHead(tuple(NATURAL), np.zeros(16), np.ones(16), np.zeros((16, K)), np.where(np.array(NATURAL) == label, 50.0, 0.0))


def test_sample_uncovered_draws_the_heads_material(monkeypatch):
    """A move uncovers a column the map never saw: its cells take the drawn material's texture, lit at the frame's
    light and encoded; a cell drawn as what the model already shows keeps the model's token, a creature is left,
    and nothing happens without a move, a known light or a head."""
    drawn = {3 * 9 + 8: COW}   # the model drew a cow on one new cell; grass elsewhere
    monkeypatch.setattr("worldsim.memory.read_view_tiles",
                        lambda frame, tiles, lighting=None: np.array([drawn.get(int(t), GRASS) for t in np.asarray(tiles)]))
    tiles = TileMap(4096)
    tiles.observe(np.zeros(LATENT, np.float32), np.array([-3, 0]), 0, 0.9, np.full((7, 9), GRASS))   # saw x = -7..1
    canvases = []

    def encode(frames):
        canvases.append(frames[0].copy())
        return np.full((1,) + LATENT, 7.0, np.float32)

    model = np.full(LATENT, -1.0, np.float32)
    frame = np.full((72, 72, 3), 1, np.uint8)
    z, n = sample_uncovered(tiles, model, frame, np.array([-3, 0]), np.array([-2, 0]), 0.9, _always(WATER), encode, 0)
    assert n == 6 and len(canvases) == 1   # the new column x = 2: 7 cells, less the cow
    assert (z[:, [0, 1, 2, 4, 5, 6], 8] == 7.0).all() and (z[:, 3, 8] == -1).all() and (z[:, :, :8] == -1).all()
    clf = get_classifier(72)
    water = clf.atlas[np.flatnonzero(clf.template_labels == WATER)[0]]
    from engine.rules import light_tiles

    np.testing.assert_array_equal(canvases[0][0:8, 64:72], light_tiles([water], 0.9, np.array([[0, 8]]))[0])
    assert (canvases[0][:, :64] == 1).all()   # nothing else painted
    # the head draws what the model shows: the model's tokens stand, nothing encoded
    z, n = sample_uncovered(tiles, model, frame, np.array([-3, 0]), np.array([-2, 0]), 0.9, _always(GRASS), encode, 0)
    assert n == 0 and np.array_equal(z, model) and len(canvases) == 1
    for prev, light, head in (((-2, 0), 0.9, _always(WATER)), ((-3, 0), None, _always(WATER)), ((-3, 0), 0.9, None)):
        z, n = sample_uncovered(tiles, model, frame, np.array(prev), np.array([-2, 0]), light, head, encode, 0)
        assert n == 0 and np.array_equal(z, model)


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    """The shipped world with a ground head that always draws sand (to see it work)."""
    from engine.testing import add_ground_head
    from worldsim.package import shipped_world_dir

    dst = tmp_path_factory.mktemp("ground") / "w"
    shutil.copytree(shipped_world_dir(), dst, ignore=shutil.ignore_patterns(".cache"))
    (dst / "ground.json").unlink(missing_ok=True)
    add_ground_head(dst, always=SAND)
    return dst


def _walk(world, seed: int, steps: int = 6):
    """From the opening (grass to the player's right), walk right: -> (session, frames)."""
    s = world.new_session(seed=seed)
    frames = [s.step("move_right") for _ in range(steps)]
    return s, frames


def _read(frames):
    from worldsim.memory import frame_lighting

    frames = np.stack(frames)
    day = np.array([frame_lighting(f)[0] for f in frames])
    return get_classifier(72).classify(frames, day, np.zeros(len(frames), bool)).labels


def test_sessions_draw_new_ground_from_the_head_reproducibly(shipped_copy):
    """Walking into new ground with an always-sand head shows sand on the uncovered edge (the model draws grass
    there); the same seed gives the same frames, a restored snapshot continues identically, and with
    ground_sample=False the head is not used."""
    from engine import World

    world = World.load(shipped_copy, backend="onnxruntime")
    assert world.ground is not None
    s, frames = _walk(world, 0)
    off = World.load(shipped_copy, backend="onnxruntime", ground_sample=False)
    _, plain = _walk(off, 0)
    assert (_read(frames)[:, :, 8] == SAND).mean() > 0.5 > (_read(plain)[:, :, 8] == SAND).mean()
    _, again = _walk(world, 0)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    snap = s.snapshot()
    nxt = [s.step("move_right") for _ in range(3)]
    s.restore(snap)
    assert all(np.array_equal(a, s.step("move_right")) for a in nxt)


def test_world_refuses_a_head_fitted_on_other_weights(tiny_world_dir, tmp_path):
    from engine import World
    from engine.testing import add_ground_head

    dst = tmp_path / "w"
    shutil.copytree(tiny_world_dir, dst)
    add_ground_head(dst, seed=1)
    assert World.load(dst, backend="onnxruntime").ground is not None
    d = json.loads((dst / "ground.json").read_text())
    (dst / "ground.json").write_text(json.dumps({**d, "dit_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="fitted on another dit"):
        World.load(dst, backend="onnxruntime")


def test_train_ground_cli(tmp_path, capsys):
    """`worldsim train-ground` on recorded episodes: fits, prints held-out scores, writes ground.json into the world
    and lists it in world.json; eval seeds and missing data are refused with exit 2 and nothing written."""
    from engine import World
    from worldsim.cli import main
    from worldsim.data.record import record_dataset
    from worldsim.package import shipped_world_dir

    world = tmp_path / "w"
    shutil.copytree(shipped_world_dir(), world, ignore=shutil.ignore_patterns(".cache"))
    (world / "ground.json").unlink(missing_ok=True)
    meta = json.loads((world / "world.json").read_text())
    meta.pop("ground", None)
    (world / "world.json").write_text(json.dumps(meta))
    data = tmp_path / "d"
    record_dataset(data, frames=300, seed=930000, workers=1, episode_len=150, progress=False, log=lambda m: None)
    assert main(["train-ground", "--world", str(world), "--data", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err and not (world / "ground.json").exists()
    assert main(["train-ground", "--world", str(world), "--data", str(data), "--samples", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["held_out"]["cells"] > 0 and 0 <= out["held_out"]["sampled_tv"] <= 1
    assert json.loads((world / "world.json").read_text())["ground"] == "ground.json"
    head = World.load(world, backend="onnxruntime").ground
    assert head is not None and head.meta["fit"]["cells"] >= 10 * len(NATURAL)
    evald = tmp_path / "e"
    record_dataset(evald, frames=20, seed=1_000_000, workers=1, episode_len=20, progress=False, log=lambda m: None,
                   allow_eval_seeds=True)
    assert main(["train-ground", "--world", str(world), "--data", str(evald)]) == 2
    assert "eval seeds" in capsys.readouterr().err


def test_cell_uniforms_are_uniform_independent_and_fixed_per_cell():
    """Each cell's number is uniform (so a draw keeps the head's odds), unrelated to its neighbour's, the same whenever
    the cell is asked (restores) and different for another seed."""
    from engine.ground import cell_uniforms, draw

    xy = np.stack(np.meshgrid(np.arange(-60, 60), np.arange(-60, 60)), -1).reshape(-1, 2)
    u = cell_uniforms(0, xy)
    assert ((u > 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12 ** -0.5) < 0.01
    assert np.histogram(u, 10, (0, 1))[0].min() > 0.9 * len(u) / 10
    grid = u.reshape(120, 120)
    assert abs(np.corrcoef(grid[:, 1:].ravel(), grid[:, :-1].ravel())[0, 1]) < 0.05
    assert abs(np.corrcoef(grid[1:].ravel(), grid[:-1].ravel())[0, 1]) < 0.05
    assert np.array_equal(cell_uniforms(0, xy[::-7]), u[::-7])
    assert abs(np.corrcoef(u, cell_uniforms(1, xy))[0, 1]) < 0.05
    # the draw keeps each cell's odds: grass 70%, water 20%, tree 10% over many cells
    p = np.zeros((len(u), len(NATURAL)))
    p[:, [NATURAL.index(GRASS), NATURAL.index(WATER), NATURAL.index(TREE)]] = 0.7, 0.2, 0.1
    got = draw(_always(GRASS), p, u)
    assert abs((got == GRASS).mean() - 0.7) < 0.02 and abs((got == WATER).mean() - 0.2) < 0.02 and abs((got == TREE).mean() - 0.1) < 0.02


def _rows(n_rows: int, seed: int, stay: float = 0.8) -> dict[str, np.ndarray]:
    """Synthetic frontier rows of 7 cells: each cell keeps the material of the one before it with odds ``stay`` (the
    game's patches), else draws from the mix; tokens are weak hints of the label. -> x, y, inward, lateral."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(98).standard_normal((3, 16)) * 0.3
    mats = np.array([GRASS, WATER, TREE])
    y = np.empty((n_rows, 7), np.int64)
    y[:, 0] = rng.choice(3, n_rows, p=[0.6, 0.25, 0.15])
    for j in range(1, 7):
        fresh = rng.choice(3, n_rows, p=[0.6, 0.25, 0.15])
        y[:, j] = np.where(rng.random(n_rows) < stay, y[:, j - 1], fresh)
    lateral = np.concatenate([np.full((n_rows, 1), -1), mats[y[:, :-1]]], 1)
    x = protos[y.ravel()] + rng.standard_normal((y.size, 16))
    return {"x": x, "y": mats[y.ravel()], "inward": np.full(y.size, -1), "lateral": lateral.ravel()}


def test_a_neighbour_head_keeps_the_games_patches():
    """On rows whose cells go on as the one before (80%), a head fitted with the neighbours reads them (lower log
    loss than the token alone) and its draws go on as often as the real rows do; the token-alone head breaks them
    into salt and pepper. Its JSON (version 2) round-trips, and a version-1 file still loads."""
    fit, held = _rows(1500, 0), _rows(1500, 1)
    plain = fit_ground(fit["x"], fit["y"], NATURAL)
    head = fit_ground(fit["x"], fit["y"], NATURAL, inward=fit["inward"], lateral=fit["lateral"])
    assert plain.neighbour is None and head.neighbour.shape == (2, len(NATURAL) + 1, len(NATURAL))
    sp = ground_scores(plain, held["x"], held["y"], inward=held["inward"], lateral=held["lateral"])
    sn = ground_scores(head, held["x"], held["y"], inward=held["inward"], lateral=held["lateral"])
    assert sn["log_loss"] < 0.8 * sp["log_loss"]
    real = sn["same_as_lateral"]["real"]
    assert abs(sn["same_as_lateral"]["sampled"] - real) < 0.04 < real - sp["same_as_lateral"]["sampled"] - 0.2
    assert sn["sampled_tv"] < 0.05
    lateral_only = fit_ground(fit["x"], fit["y"], NATURAL, lateral=fit["lateral"])
    assert (lateral_only.neighbour[0] == 0).all() and np.abs(lateral_only.neighbour[1]).max() > 0.5
    sl = ground_scores(lateral_only, held["x"], held["y"], lateral=held["lateral"])
    assert abs(sl["log_loss"] - sn["log_loss"]) < 0.02   # the synthetic rows hold nothing toward the player
    with pytest.raises(ValueError, match="neighbour labels"):
        head.probs(held["x"][:5], held["inward"][:4], held["lateral"][:5])


def test_neighbour_json_round_trip_and_version_1(tmp_path):
    from engine.ground import GROUND_VERSION

    fit = _rows(300, 2)
    head = fit_ground(fit["x"], fit["y"], NATURAL, inward=fit["inward"], lateral=fit["lateral"])
    path = tmp_path / "ground.json"
    path.write_text(json.dumps(head.to_dict()))
    back = load_ground(path)
    assert json.loads(path.read_text())["version"] == GROUND_VERSION
    np.testing.assert_allclose(back.probs(fit["x"][:50], fit["inward"][:50], fit["lateral"][:50]),
                               head.probs(fit["x"][:50], fit["inward"][:50], fit["lateral"][:50]), atol=1e-5)
    v1 = {k: v for k, v in head.to_dict().items() if k != "neighbour"} | {"version": 1}
    path.write_text(json.dumps(v1))
    old = load_ground(path)
    assert old.neighbour is None
    np.testing.assert_allclose(old.probs(fit["x"][:5], fit["inward"][:5]), old.probs(fit["x"][:5]))
    path.write_text(json.dumps({**head.to_dict(), "neighbour": [[0.0]]}))
    with pytest.raises(ValueError, match="usable"):
        load_ground(path)


def test_sample_uncovered_draws_along_the_row_from_the_neighbours(monkeypatch):
    """A head that copies the material before it along the row (and, at the row's start, the one toward the player)
    fills a new column with the material of the frame's tile beside its top cell: one material down the column,
    drawn top first; the frame's tiles beside are read, not the model's token."""
    from engine.ground import frontier_neighbours

    K = len(NATURAL)
    copy = np.full((2, K + 1, K), 0.0)
    copy[0, :K] += 30 * np.eye(K)   # the inward neighbour's material, strongly
    copy[1, :K] += 60 * np.eye(K)   # the lateral one's, more strongly
    head = GroundHead(tuple(NATURAL), np.zeros(16), np.ones(16), np.zeros((16, K)), np.zeros(K), neighbour=copy)
    # the frame: water at the top-right tile before the new column, stone below it, grass elsewhere
    view = np.full((7, 9), GRASS)
    view[0, 7], view[1:, 7] = WATER, NATURAL[2]
    monkeypatch.setattr("worldsim.memory.read_view_tiles",
                        lambda frame, tiles, lighting=None: view.ravel()[np.asarray(tiles)])
    tiles = TileMap(4096)
    tiles.observe(np.zeros(LATENT, np.float32), np.array([-3, 0]), 0, 0.9, np.full((7, 9), GRASS))
    canvases = []

    def encode(frames):
        canvases.append(frames[0].copy())
        return np.full((1,) + LATENT, 7.0, np.float32)

    model = np.full(LATENT, -1.0, np.float32)
    z, n = sample_uncovered(tiles, model, np.full((72, 72, 3), 1, np.uint8), np.array([-3, 0]), np.array([-2, 0]), 0.9,
                            head, encode, 0)
    assert n == 7 and (z[:, :7, 8] == 7.0).all()   # all 7 drawn as water (the frame showed grass there)
    clf = get_classifier(72)
    water = clf.atlas[np.flatnonzero(clf.template_labels == WATER)[0]]
    from engine.rules import light_tiles

    for r in range(7):
        np.testing.assert_array_equal(canvases[0][8 * r:8 * r + 8, 64:72], light_tiles([water], 0.9, np.array([[r, 8]]))[0])
    order, inward, lateral = frontier_neighbours(np.arange(7), np.full(7, 8), np.array([1, 0]))
    assert order.tolist() == list(range(7)) and inward[0].tolist() == [0, 7] and lateral[0].tolist() == [-1, 8]
