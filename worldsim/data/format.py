"""The on-disk dataset format: one ``.npz`` shard per episode plus ``manifest.json``.

Layout of a dataset directory::

    manifest.json        {"format": "worldsim-crafter", "version": 1, "config": {...},
                          "episodes": [{"index", "seed", "split", "file", "frames", "sha256", "stats"}],
                          "total_frames", "complete"}
    shard-00000.npz      episode 0 (env seed = config.seed + 0)
    shard-00001.npz      ...

A shard holds exactly ``SHARD_FIELDS`` (N = frames in the episode, S = frame size); row t describes
frame t, and ``actions[t]`` is the action taken on frame t (it produces frame t + 1; the last frame
gets NULL_ACTION). ``reward[t]`` is the reward received on arriving at frame t (0 for t = 0).
``revisit_events`` is (M, 6) int32: (t_place, t_leave_view, t_back_in_view, x, y, placed id), frame
indices of the first frame showing the block, the first frame of the final out-of-view stretch and the
first frame with the block back on screen.

Shards are written with fixed zip timestamps (``np.savez_compressed`` stamps the current time), so the
same episode always gives the same bytes; ``np.load`` reads them as ordinary ``.npz`` files.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import NULL_ACTION, NUM_ACTIONS
from worldsim.io import sha256_file  # noqa: F401  (part of this module's API: the recorder and tests use it)

FORMAT_NAME = "worldsim-crafter"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRAIN_SEEDS_END = 900_000  # train: seed < 900_000
EVAL_SEEDS_START = 1_000_000  # val: [900_000, 1_000_000); eval: >= 1_000_000
SPLITS: tuple[str, ...] = ("train", "val", "eval")
NUM_SEGMENTS = 5  # revisit labels 0..4 (see worldsim.data.policy.SEGMENT_NAMES)
SHARD_RE = re.compile(r"^shard-(\d{5,})\.npz$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# name -> (dtype, per-frame shape); "S" stands for the frame size
SHARD_FIELDS: dict[str, tuple[np.dtype, tuple]] = {
    "frames": (np.dtype(np.uint8), ("S", "S", 3)),
    "actions": (np.dtype(np.int16), ()),
    "pos": (np.dtype(np.int16), (2,)),
    "facing": (np.dtype(np.int8), (2,)),
    "daylight": (np.dtype(np.float32), ()),
    "sleeping": (np.dtype(np.bool_), ()),
    "semantic": (np.dtype(np.uint8), (7, 9)),
    "inventory": (np.dtype(np.uint8), (16,)),
    "step": (np.dtype(np.int32), ()),
    "reward": (np.dtype(np.float32), ()),
    "revisit": (np.dtype(np.int8), ()),
}
# Recorded only on request (``worldsim record --unlit``): each frame's view before the game lights it (the lit
# autoencoder's target, worldsim.light). A shard holds all of SHARD_FIELDS and any of these.
OPTIONAL_FIELDS: dict[str, tuple[np.dtype, tuple]] = {
    "unlit": (np.dtype(np.uint8), ("S", "S", 3)),
}
EVENTS_FIELD = "revisit_events"
EVENT_COLUMNS: tuple[str, ...] = ("t_place", "t_leave_view", "t_back_in_view", "x", "y", "placed_id")
ALL_FIELDS: tuple[str, ...] = (*SHARD_FIELDS, EVENTS_FIELD)


class DatasetError(ValueError):
    """A dataset, manifest or shard is missing, corrupt, or not what this reader expects."""


def split_of_seed(seed: int) -> str:
    """The split an episode seed belongs to: train < 900_000 <= val < 1_000_000 <= eval."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if seed < TRAIN_SEEDS_END:
        return "train"
    if seed < EVAL_SEEDS_START:
        return "val"
    return "eval"


def shard_name(index: int) -> str:
    """File name of episode ``index``'s shard."""
    return f"shard-{index:05d}.npz"


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _check_field_names(names: set[str], where: str) -> None:
    """DatasetError unless ``names`` are the shard fields, with maybe some of the optional ones."""
    missing = sorted(set(ALL_FIELDS) - names)
    extra = sorted(names - set(ALL_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or extra:
        raise DatasetError(f"{where}: wrong fields (missing {missing}, unexpected {extra})")


def encode_shard(arrays: Mapping[str, np.ndarray], size: int) -> bytes:
    """Validate an episode's arrays and encode them as deterministic compressed ``.npz`` bytes."""
    validate_episode(arrays, size, where="episode")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in (*ALL_FIELDS, *(n for n in OPTIONAL_FIELDS if n in arrays)):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def decode_shard(
    data: bytes | str | Path, size: int, fields: Iterable[str] | None = None, where: str = "shard"
) -> dict[str, np.ndarray]:
    """Read a shard (bytes or path), check every field's name, dtype and shape; return ``fields`` of it."""
    wanted = list(ALL_FIELDS if fields is None else fields)
    for name in wanted:
        if name not in ALL_FIELDS and name not in OPTIONAL_FIELDS:
            raise DatasetError(f"unknown shard field {name!r}; fields: {', '.join((*ALL_FIELDS, *OPTIONAL_FIELDS))}")
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        with np.load(src, allow_pickle=False) as npz:
            members = {f[:-4] if f.endswith(".npy") else f for f in npz.files}
            _check_field_names(members, where)
            absent = [n for n in wanted if n in OPTIONAL_FIELDS and n not in members]
            if absent:
                raise DatasetError(f"{where}: has no {absent[0]!r} field (record the dataset with --{absent[0]})")
            # read everything needed to validate cheaply, and the wanted fields
            need = set(wanted) | {"actions", "revisit", EVENTS_FIELD}
            present = (*ALL_FIELDS, *(n for n in OPTIONAL_FIELDS if n in members))
            arrays = {name: npz[name] for name in present if name in need}
            headers = {name: _npy_header(npz, name) for name in present}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{where}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise DatasetError(f"{where}: corrupt or truncated shard ({type(e).__name__}: {e})") from None
    _validate_headers(headers, size, where)
    validate_episode(arrays, size, where=where, partial=True)
    return {name: arrays[name] for name in wanted}


def _npy_header(npz: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a member without decompressing its data."""
    with npz.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version} in member {name}.npy")
    return tuple(shape), np.dtype(dtype)


def _validate_headers(headers: Mapping[str, tuple[tuple[int, ...], np.dtype]], size: int, where: str) -> None:
    n = headers["actions"][0][0] if len(headers["actions"][0]) == 1 else -1
    for name, (dtype, per_frame) in (*SHARD_FIELDS.items(), *OPTIONAL_FIELDS.items()):
        if name not in headers:  # an optional field this shard does not hold
            continue
        shape, got = headers[name]
        want_shape = (n, *(size if d == "S" else d for d in per_frame))
        if got != dtype or shape != want_shape:
            raise DatasetError(f"{where}: field {name!r} is {got}{list(shape)}, expected {dtype}{list(want_shape)}")
    shape, got = headers[EVENTS_FIELD]
    if got != np.int32 or len(shape) != 2 or shape[1] != len(EVENT_COLUMNS):
        raise DatasetError(f"{where}: field {EVENTS_FIELD!r} is {got}{list(shape)}, expected int32[M, 6]")


def validate_episode(
    arrays: Mapping[str, np.ndarray], size: int, where: str = "episode", partial: bool = False
) -> int:
    """Check an episode's arrays (names, dtypes, shapes, value ranges); return its frame count.

    With ``partial`` only the fields present are checked (``actions`` and ``revisit_events`` must be).
    """
    if not partial:
        _check_field_names(set(arrays), where)
    actions = np.asarray(arrays["actions"])
    if actions.ndim != 1 or actions.shape[0] < 1:
        raise DatasetError(f"{where}: field 'actions' must be (N,) with N >= 1, got shape {list(actions.shape)}")
    n = actions.shape[0]
    for name, (dtype, per_frame) in (*SHARD_FIELDS.items(), *OPTIONAL_FIELDS.items()):
        if name not in arrays:
            continue
        a = np.asarray(arrays[name])
        want_shape = (n, *(size if d == "S" else d for d in per_frame))
        if a.dtype != dtype or a.shape != want_shape:
            raise DatasetError(f"{where}: field {name!r} is {a.dtype}{list(a.shape)}, expected {dtype}{list(want_shape)}")
    if actions[-1] != NULL_ACTION or (n > 1 and (actions[:-1].min() < 0 or actions[:-1].max() >= NUM_ACTIONS)):
        raise DatasetError(
            f"{where}: field 'actions' must hold game actions 0..{NUM_ACTIONS - 1} and end with NULL_ACTION={NULL_ACTION}"
        )
    if "revisit" in arrays:
        r = np.asarray(arrays["revisit"])
        if r.min() < 0 or r.max() >= NUM_SEGMENTS:
            raise DatasetError(f"{where}: field 'revisit' has labels outside 0..{NUM_SEGMENTS - 1}")
    ev = np.asarray(arrays[EVENTS_FIELD])
    if ev.dtype != np.int32 or ev.ndim != 2 or ev.shape[1] != len(EVENT_COLUMNS):
        raise DatasetError(f"{where}: field {EVENTS_FIELD!r} is {ev.dtype}{list(ev.shape)}, expected int32[M, 6]")
    if len(ev) and (ev[:, :3].min() < 0 or ev[:, :3].max() >= n or (np.diff(ev[:, :3], axis=1) < 0).any()):
        raise DatasetError(f"{where}: field {EVENTS_FIELD!r} has frame indices outside 0..{n - 1} or out of order")
    return n


# -- manifest --------------------------------------------------------------------------------------
def make_manifest(config: Mapping[str, Any], episodes: Iterable[Mapping[str, Any]], planned: int) -> dict[str, Any]:
    """A manifest dict for the episodes done so far (sorted by index)."""
    eps = sorted((dict(e) for e in episodes), key=lambda e: e["index"])
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": dict(config),
        "episodes": eps,
        "total_frames": int(sum(e["frames"] for e in eps)),
        "complete": len(eps) == planned,
    }


_EPISODE_KEYS: dict[str, type] = {"index": int, "seed": int, "split": str, "file": str, "frames": int, "sha256": str}


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict[str, Any]:
    """Check a manifest's format, version and episode entries; raise DatasetError naming the problem."""
    if not isinstance(manifest, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{where}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{where}: format version {version!r} is not supported (this reader reads version {FORMAT_VERSION})")
    config = manifest.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("size"), int) or config["size"] < 18:
        raise DatasetError(f"{where}: 'config' must be an object with an int 'size' (frame size) >= 18")
    episodes = manifest.get("episodes")
    if not isinstance(episodes, list):
        raise DatasetError(f"{where}: 'episodes' must be a list")
    seen_index: set[int] = set()
    seen_file: set[str] = set()
    total = 0
    for i, e in enumerate(episodes):
        at = f"{where}: episodes[{i}]"
        if not isinstance(e, dict):
            raise DatasetError(f"{at} must be an object")
        for key, typ in _EPISODE_KEYS.items():
            if key not in e:
                raise DatasetError(f"{at} lacks {key!r}")
            if not isinstance(e[key], typ) or isinstance(e[key], bool):
                raise DatasetError(f"{at}.{key} must be {typ.__name__}, got {e[key]!r}")
        if not SHARD_RE.match(e["file"]):
            raise DatasetError(f"{at}.file {e['file']!r} is not a shard name like 'shard-00000.npz'")
        if e["index"] in seen_index or e["file"] in seen_file:
            raise DatasetError(f"{at} repeats index {e['index']} or file {e['file']!r}")
        seen_index.add(e["index"])
        seen_file.add(e["file"])
        if e["frames"] < 1:
            raise DatasetError(f"{at}.frames must be >= 1, got {e['frames']}")
        try:
            split = split_of_seed(e["seed"])
        except ValueError as err:
            raise DatasetError(f"{at}.seed: {err}") from None
        if e["split"] != split:
            raise DatasetError(f"{at}.split is {e['split']!r} but seed {e['seed']} belongs to {split!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", e["sha256"]):
            raise DatasetError(f"{at}.sha256 is not a hex SHA-256")
        total += e["frames"]
    if manifest.get("total_frames") != total:
        raise DatasetError(f"{where}: total_frames is {manifest.get('total_frames')!r} but the episodes hold {total}")
    return manifest
