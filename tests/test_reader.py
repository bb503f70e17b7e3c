"""The tile reader of decoded frames (worldsim.eval.reader): it reads an unlit autoencoder's round trips of real
night frames where the texture model fails; it trains; its files and errors; where it is in force.

The autoencoder and reader are the ones the default world shipped until session 15 (ae1 and its reader, in
tests/data/ae1): ae1 loses night tiles the texture model then misreads, the case a reader is for. The lit
autoencoder shipped since needs no reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import World
from worldsim.checkpoint import CheckpointError
from worldsim.eval import reader as R
from worldsim.eval import tiles as T
from worldsim.io import sha256_file
from worldsim.memory import read_view_tiles
from worldsim.train import load_autoencoder

LAVA = T.LAVA


AE1 = Path(__file__).parent / "data" / "ae1"


@pytest.fixture(scope="module")
def ae1():
    ae = load_autoencoder(AE1 / "autoencoder.safetensors").eval()
    return AE1, ae, R.load_reader(AE1 / "reader.safetensors", autoencoder=AE1 / "autoencoder.safetensors")


@pytest.fixture(scope="module")
def held(ae1):
    """A whole day (smooth night: a world's night) of real frames through the unlit autoencoder ae1; not a training seed."""
    _, ae, _ = ae1
    ep = R.play_episode(950_001, 300, smooth_night=True)
    ep["frames"] = R.round_trip(ae, ep["frames"])
    return ep


def _constant_reader(label: int, size: int = 72) -> R.TileReader:
    """A reader that reads every tile as ``label`` (its last bias decides)."""
    cfg = R.ReaderConfig(image_size=size, hidden=4, depth=1)
    b = np.zeros(T.NUM_CLASSES, np.float32)
    b[label] = 100
    return R.TileReader(cfg, [(np.zeros((cfg.inputs, 4), np.float32), np.zeros(4, np.float32)),
                              (np.zeros((4, T.NUM_CLASSES), np.float32), b)])


def test_ae1s_reader_reads_round_trips_where_the_texture_model_fails(ae1, held):
    _, _, reader = ae1
    mine = R.accuracy(reader.read(held["frames"], held["daylight"], held["sleeping"]), held)
    theirs = R.accuracy(T.get_classifier(72).classify(held["frames"], held["daylight"], held["sleeping"]).labels, held)
    assert mine["day"] >= 0.995
    assert mine["night"] >= 0.95 and mine["night"] >= theirs["night"] + 0.03, (mine, theirs)
    assert mine["all"] > theirs["all"]


def test_read_tiles_agrees_with_read_and_keeps_to_allowed_classes(ae1, held):
    """read_tiles reads the tiles asked for as read() does; with ``allowed`` it gives the likeliest of those."""
    _, _, reader = ae1
    i = 10
    frame, day, sleep = held["frames"][i], float(held["daylight"][i]), bool(held["sleeping"][i])
    full = reader.read(frame[None], np.array([day]), np.array([sleep]))[0].reshape(-1)
    tiles = np.array([0, 13, 31, 62])
    np.testing.assert_array_equal(reader.read_tiles(frame, tiles, day, sleep), full[tiles])
    allowed = [T.TREE, T.WATER]
    got = reader.read_tiles(frame, np.arange(63), day, sleep, allowed=allowed)
    assert set(got.tolist()) <= set(allowed)
    logits = reader.logits(frame[None], np.array([day]), np.array([sleep]))[0].reshape(63, -1)
    np.testing.assert_array_equal(got, np.array(allowed)[logits[:, allowed].argmax(-1)])


def test_a_tiny_reader_learns_from_round_trips(ae1, held):
    _, ae, _ = ae1
    reader = R.train_reader(ae, R.reader_config("tiny"), [600_000, 600_001, 600_002], steps=600, episode_steps=150, log=lambda s: None)
    day = held["daylight"] >= 0.5
    acc = (reader.read(held["frames"][day], held["daylight"][day], held["sleeping"][day]) == held["semantic"][day]).mean()
    majority = np.bincount(held["semantic"][day].ravel()).max() / held["semantic"][day].size
    assert acc >= 0.75 and acc > majority + 0.2, (acc, majority)   # 0.80 vs 0.54 measured


def test_files_round_trip_and_errors(ae1, held, tmp_path):
    d, _, reader = ae1
    p = tmp_path / "reader.safetensors"
    R.save_reader(p, reader)
    again = R.load_reader(p, autoencoder=d / "autoencoder.safetensors")
    f = held["frames"][:5]
    np.testing.assert_array_equal(again.logits(f, held["daylight"][:5], held["sleeping"][:5]),
                                  reader.logits(f, held["daylight"][:5], held["sleeping"][:5]))
    other = tmp_path / "other-ae.bin"
    other.write_bytes(b"another autoencoder")
    with pytest.raises(CheckpointError, match="another autoencoder"):
        R.load_reader(p, autoencoder=other)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        R.load_reader(bad)
    with pytest.raises(CheckpointError, match="tile_reader"):
        R.load_reader(d / "autoencoder.safetensors")
    with pytest.raises(ValueError, match=r"\(N, 72, 72, 3\)"):
        reader.read(np.zeros((1, 90, 90, 3), np.uint8), [1.0], [False])
    with pytest.raises(ValueError, match="layer 0"):
        R.TileReader(R.ReaderConfig(hidden=4, depth=1), [(np.zeros((3, 4)), np.zeros(4)), (np.zeros((4, 19)), np.zeros(19))])


def test_the_reader_is_in_force_only_inside_its_scope(held):
    frame, lit = held["frames"][10], (float(held["daylight"][10]), bool(held["sleeping"][10]))
    tiles = np.arange(63)
    texture = read_view_tiles(frame, tiles, lit)
    assert (texture == held["semantic"][10].reshape(-1)).mean() > 0.95
    lava = _constant_reader(LAVA)
    with R.reading_with(lava):
        assert (read_view_tiles(frame, tiles, lit) == LAVA).all()
        with R.reading_with(None):       # a world without a reader, inside one with
            np.testing.assert_array_equal(read_view_tiles(frame, tiles, lit), texture)
        assert R.active_reader(90) is None      # a reader reads its own frame size only
        # the eval's reading of generated frames: labels from the reader, distances from the texture model
        clf = T.get_classifier(72)
        gen = clf.read_generated(held["frames"][10:12], held["daylight"][10:12], held["sleeping"][10:12])
        assert (gen.labels == LAVA).all()
        np.testing.assert_array_equal(gen.distance, clf.classify(held["frames"][10:12], held["daylight"][10:12],
                                                                 held["sleeping"][10:12]).distance)
    np.testing.assert_array_equal(read_view_tiles(frame, tiles, lit), texture)
    assert R.active_reader() is None


def test_sessions_read_generated_frames_with_the_worlds_reader(tiny_world_dir):
    world = World.load(tiny_world_dir, backend="torch", preset="fast")
    assert world.reader is None                      # the tiny world ships none: the texture model reads
    calls = []

    class Spy(R.TileReader):
        def _forward(self, h):
            calls.append(len(h))
            return super()._forward(h)

    lava = _constant_reader(LAVA)
    world.reader = Spy(lava.cfg, lava.weights)
    s = world.new_session()
    assert not calls                                 # the context is real frames: the texture model reads them
    s.step("move_left")
    assert calls                                     # the rules read the drawn frame with the world's reader
    assert R.active_reader() is None                 # and only while stepping


def test_world_loads_its_reader_and_refuses_a_foreign_one(tiny_world_dir, tmp_path):
    from engine.testing import add_random_reader

    d = tmp_path / "w"
    shutil.copytree(tiny_world_dir, d, ignore=shutil.ignore_patterns(".cache"))
    add_random_reader(d)
    world = World.load(d, backend="torch")
    assert world.reader is not None and world.reader.meta["autoencoder_sha256"] == sha256_file(d / "autoencoder.safetensors")
    foreign = _constant_reader(LAVA, size=world.reader.cfg.image_size)
    foreign.meta["autoencoder_sha256"] = "0" * 64
    R.save_reader(d / "reader.safetensors", foreign)
    with pytest.raises(CheckpointError, match="another autoencoder"):
        World.load(d, backend="torch")
    meta = json.loads((d / "world.json").read_text())
    del meta["reader"]
    (d / "world.json").write_text(json.dumps(meta))
    assert World.load(d, backend="torch").reader is None


def test_train_reader_refuses_a_lit_autoencoder(capsys):
    """The shipped world's autoencoder is lit (the texture model reads its frames): no reader is trained or listed."""
    import argparse

    from worldsim.package import shipped_world_dir

    world = shipped_world_dir()
    before = (world / "world.json").read_text()
    args = argparse.Namespace(world=str(world), preset="tiny", episodes=1, eval_episodes=1, steps=1, out=None)
    assert R.run(args) == 2
    assert "needs no tile reader" in capsys.readouterr().err
    assert (world / "world.json").read_text() == before and not (world / "reader.safetensors").exists()
