"""The loader: manifest/shard validation errors, clips that stay inside episodes, frame/action alignment."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from worldsim.actions import MOVES, action_index
from worldsim.data import DatasetError, open_dataset
from worldsim.data.format import sha256_file
from worldsim.data.record import record_dataset

FRAMES, EPISODE_LEN = 240, 120  # steps 0..119: daytime (night starts near step 148)
MOVE_OF = {action_index(k): np.array(v) for k, v in MOVES.items()}
TILE = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "data"
    record_dataset(out, frames=FRAMES, seed=40, episode_len=EPISODE_LEN, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def store(root):
    return open_dataset(root).load("train")


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_open_and_load_splits_and_fields(root, store):
    ds = open_dataset(root)
    assert ds.num_frames == FRAMES and ds.complete and ds.size == 72
    assert len(store) == 2 and store.num_frames == FRAMES
    assert store.episodes[1]["frames"].shape == (EPISODE_LEN, 72, 72, 3)
    assert store.episodes[0]["revisit_events"].shape[1] == 6
    with pytest.raises(DatasetError, match="no 'val' episodes"):
        ds.load("val")
    small = ds.load("all", fields=("pos",), max_episodes=1)
    assert len(small) == 1 and set(small.fields) == {"actions", "pos"}
    clip = small.sample_clips(np.random.default_rng(0), batch=3, clip_len=5)
    assert clip.frames is None and clip.pos.shape == (3, 5, 2) and clip.actions.dtype == np.int64
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        ds.load(fields=("colour",))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        ds.load("test")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: shutil.rmtree(p), "dataset directory not found"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
        (lambda p: _edit_manifest(p, lambda m: m.update(version=2)), "format version 2 is not supported"),
        (lambda p: _edit_manifest(p, lambda m: m.update(format="other")), "format is 'other'"),
        (lambda p: _edit_manifest(p, lambda m: m["episodes"][0].pop("sha256")), r"episodes\[0\] lacks 'sha256'"),
        (lambda p: _edit_manifest(p, lambda m: m["episodes"][1].update(split="val")), "belongs to 'train'"),
        (lambda p: _edit_manifest(p, lambda m: m.update(total_frames=1)), "total_frames"),
        (lambda p: _edit_manifest(p, lambda m: m["episodes"][0].update(file="../x.npz")), "not a shard name"),
    ],
)
def test_manifest_errors_name_the_problem(root, tmp_path, damage, message):
    path = _copy(root, tmp_path)
    damage(path)
    with pytest.raises(DatasetError, match=message):
        open_dataset(path)


def _replace_field(path: Path, name: str, value: np.ndarray) -> None:
    """Rewrite one member of a shard (and its checksum, so the content check is what fails)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.namelist():
            if item == f"{name}.npy":
                with dst.open(item, "w") as f:
                    np.lib.format.write_array(f, value)
            else:
                dst.writestr(item, src.read(item))
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("case", ["flipped_byte", "truncated", "missing", "wrong_dtype", "bad_actions"])
def test_corrupt_shards_raise_dataset_error_naming_the_file(root, tmp_path, case):
    path = _copy(root, tmp_path)
    shard = path / "shard-00001.npz"
    message = "shard-00001.npz"
    if case == "flipped_byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        message += ".*checksum mismatch"
    elif case == "missing":
        shard.unlink()
        message += ".*missing"
    else:
        if case == "truncated":
            shard.write_bytes(shard.read_bytes()[:5000])
            message += ".*corrupt or truncated"
        elif case == "wrong_dtype":
            with np.load(shard) as z:
                _replace_field(shard, "pos", z["pos"].astype(np.float64))
            message += ".*field 'pos' is float64"
        else:
            with np.load(shard) as z:
                _replace_field(shard, "actions", np.full_like(z["actions"], 40))
            message += ".*'actions' must hold game actions"
        digest = sha256_file(shard)
        _edit_manifest(path, lambda m: m["episodes"][1].update(sha256=digest))
    ds = open_dataset(path)  # the manifest is fine: shards are checked when loaded
    with pytest.raises(DatasetError, match=message):
        ds.load("train")


def test_sampled_clips_stay_inside_episodes_and_are_reproducible(store):
    clip_len = 30
    a = store.sample_clips(np.random.default_rng(7), batch=64, clip_len=clip_len)
    b = store.sample_clips(np.random.default_rng(7), batch=64, clip_len=clip_len)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions)
    assert a.frames.shape == (64, clip_len, 72, 72, 3) and a.actions.shape == (64, clip_len)
    assert set(a.episode.tolist()) == {0, 1}, "both episodes are sampled"
    for i in range(a.batch):
        e, s = int(a.episode[i]), int(a.start[i])
        ep = store.episodes[e]
        assert 0 <= s and s + clip_len <= len(ep["actions"])
        assert np.array_equal(a.frames[i], ep["frames"][s: s + clip_len])
        assert np.array_equal(a.actions[i], ep["actions"][s: s + clip_len])
        assert np.array_equal(a.revisit[i], ep["revisit"][s: s + clip_len])
    with pytest.raises(ValueError, match="longer than every episode"):
        store.sample_clips(np.random.default_rng(0), batch=1, clip_len=EPISODE_LEN + 1)


def test_iter_clips_is_deterministic_and_complete(store):
    clip_len, stride = 50, 30
    clips = list(store.iter_clips(clip_len, stride, batch=4))
    starts = [(int(e), int(s)) for c in clips for e, s in zip(c.episode, c.start)]
    per_episode = list(range(0, EPISODE_LEN - clip_len + 1, stride))  # 0, 30, 60
    assert starts == [(e, s) for e in range(2) for s in per_episode]
    again = [(int(e), int(s)) for c in store.iter_clips(clip_len, stride, batch=4) for e, s in zip(c.episode, c.start)]
    assert again == starts
    first = clips[0]
    assert np.array_equal(first.frames[1], store.episodes[0]["frames"][30:80])


def _tile_error(f0: np.ndarray, f1: np.ndarray, s0: np.ndarray, s1: np.ndarray, dx: int, dy: int) -> float:
    """Mean |frame t+1 - frame t scrolled by (dx, dy) tiles| over the world tiles both show, creatures masked."""
    w0, w1 = f0[:56].astype(np.int16), f1[:56].astype(np.int16)  # the world area: 7 x 9 tiles of 8 px
    # after a move by (dx, dy), tile (r, c) of frame t+1 shows what tile (r + dy, c + dx) of frame t showed
    rows1, cols1 = slice(max(0, -dy), 7 - max(0, dy)), slice(max(0, -dx), 9 - max(0, dx))
    rows0, cols0 = slice(max(0, dy), 7 - max(0, -dy)), slice(max(0, dx), 9 - max(0, -dx))
    static = (s1[rows1, cols1] < 13) & (s0[rows0, cols0] < 13)  # ids >= 13: player, creatures, arrows, plants
    t1 = w1.reshape(7, TILE, 9, TILE, 3)[rows1, :, cols1]
    t0 = w0.reshape(7, TILE, 9, TILE, 3)[rows0, :, cols0]
    return float(np.abs(t1 - t0).mean(axis=(1, 3, 4))[static].mean())


def test_loader_alignment_successful_move_shifts_the_frame_by_one_tile(store):
    """actions[:, t] taken on frame t produces frame t+1: a successful move scrolls the world by a tile.

    Measured on this data: shifted error <= 0.7 grey levels (daylight drifts a little each step); pairing
    the action with frames (t+1, t+2) or (t-1, t) instead fails for ~1 in 4 moves (error up to ~45).
    """
    shifted, still = [], []
    for clip in store.iter_clips(clip_len=2, stride=1, batch=64):
        for i in range(clip.batch):
            a = int(clip.actions[i, 0])
            if a not in MOVE_OF or clip.sleeping[i].any() or (clip.daylight[i] < 0.5).any():
                continue
            d = MOVE_OF[a]
            if not np.array_equal(clip.pos[i, 1] - clip.pos[i, 0], d):
                continue  # blocked: the player only turned
            f0, f1 = clip.frames[i]
            s0, s1 = clip.semantic[i]
            shifted.append(_tile_error(f0, f1, s0, s1, int(d[0]), int(d[1])))
            still.append(_tile_error(f0, f1, s0, s1, 0, 0))
    shifted, still = np.array(shifted), np.array(still)
    assert len(shifted) >= 30, "too few successful moves by day to check"
    assert shifted.max() < 3.0, f"worst shifted error {shifted.max():.2f}"
    assert (still > 5).mean() > 0.5, "the frames must differ when not scrolled, or the check could not fail"


def test_move_actions_turn_the_player_on_the_next_frame_not_this_one(store):
    """facing[t+1] == the move of actions[t] always; an off-by-one alignment would break it."""
    ok = off_by_one = total = 0
    for ep in store.episodes:
        actions, facing, sleeping = ep["actions"], ep["facing"], ep["sleeping"]
        for t in range(1, len(actions) - 1):
            a = int(actions[t])
            if a in MOVE_OF and not sleeping[t] and int(actions[t - 1]) != a:  # first step of a run
                total += 1
                ok += np.array_equal(facing[t + 1], MOVE_OF[a])
                off_by_one += np.array_equal(facing[t], MOVE_OF[a])
    assert total >= 20 and ok == total
    assert off_by_one < 0.7 * total
