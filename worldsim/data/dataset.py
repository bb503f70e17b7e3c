"""Load a recorded dataset into memory and cut it into training clips that never cross episodes.

    ds = open_dataset("/work/data/crafter-train")         # checks the manifest only
    store = ds.load("train", fields=("frames", "actions"))  # reads, checksums and checks the shards
    clip = store.sample_clips(np.random.default_rng(0), batch=32, clip_len=16)
    clip.frames   # (32, 16, S, S, 3) uint8
    clip.actions  # (32, 16) int64; actions[:, t] is taken on frame t and produces frame t + 1

Every per-frame field of an episode lives in one array for the whole store (episodes back to back),
so a batch is one fancy-indexing gather per field; ``store.episodes`` holds per-episode views.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.format import (
    ALL_FIELDS,
    EVENTS_FIELD,
    MANIFEST,
    OPTIONAL_FIELDS,
    SHARD_FIELDS,
    SPLITS,
    DatasetError,
    decode_shard,
    sha256_bytes,
    validate_manifest,
)
from worldsim.io import read_json

CLIP_FIELDS: tuple[str, ...] = (
    "frames", "actions", "pos", "facing", "daylight", "sleeping", "semantic", "inventory", "revisit",
)

__all__ = ["CLIP_FIELDS", "Clip", "Dataset", "DatasetError", "EpisodeStore", "open_dataset"]


@dataclass(frozen=True)
class Clip:
    """A batch of clips; every array has a leading (B, T) except ``episode``/``start`` (B,).

    frames (B,T,S,S,3) uint8; actions (B,T) int64 (actions[:, t] taken on frame t, producing t + 1;
    NULL_ACTION on an episode's last frame); pos (B,T,2) int16 (x, y); facing (B,T,2) int8;
    daylight (B,T) float32; sleeping (B,T) bool; semantic (B,T,7,9) uint8; inventory (B,T,16) uint8;
    revisit (B,T) int8. Fields not loaded are None. ``episode`` indexes ``EpisodeStore.episodes``,
    ``start`` is the first frame's index in that episode.
    """

    actions: np.ndarray
    episode: np.ndarray
    start: np.ndarray
    frames: np.ndarray | None = None
    pos: np.ndarray | None = None
    facing: np.ndarray | None = None
    daylight: np.ndarray | None = None
    sleeping: np.ndarray | None = None
    semantic: np.ndarray | None = None
    inventory: np.ndarray | None = None
    revisit: np.ndarray | None = None

    @property
    def batch(self) -> int:
        """B."""
        return int(self.actions.shape[0])

    @property
    def length(self) -> int:
        """T."""
        return int(self.actions.shape[1])


class EpisodeStore:
    """Episodes in memory: per-frame fields concatenated episode after episode."""

    def __init__(self, arrays: dict[str, np.ndarray], lengths: list[int], meta: list[dict[str, Any]],
                 events: list[np.ndarray] | None = None) -> None:
        self.fields = tuple(arrays)
        self._arrays = arrays
        self.lengths = np.asarray(lengths, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.meta = meta  # manifest entries (index, seed, split, file, frames, ...)
        self.episodes: list[dict[str, np.ndarray]] = []
        for i, (o, n) in enumerate(zip(self.offsets, self.lengths)):
            ep = {name: a[o: o + n] for name, a in arrays.items()}  # views, no copies
            if events is not None:
                ep[EVENTS_FIELD] = events[i]
            self.episodes.append(ep)

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        """Frames over all episodes."""
        return int(self.lengths.sum())

    def array(self, name: str) -> np.ndarray:
        """A per-frame field of all episodes back to back, (total_frames, ...)."""
        if name not in self._arrays:
            raise KeyError(f"field {name!r} was not loaded; loaded: {', '.join(self.fields)}")
        return self._arrays[name]

    def _clip(self, episode: np.ndarray, start: np.ndarray, clip_len: int) -> Clip:
        idx = (self.offsets[episode] + start)[:, None] + np.arange(clip_len)[None, :]  # (B, T) global frames
        values: dict[str, Any] = {}
        for name in CLIP_FIELDS:
            if name in self._arrays:
                values[name] = self._arrays[name][idx]
        values["actions"] = values["actions"].astype(np.int64)
        return Clip(episode=episode.astype(np.int64), start=start.astype(np.int64), **values)

    def _check_len(self, clip_len: int) -> None:
        if isinstance(clip_len, bool) or not isinstance(clip_len, (int, np.integer)) or clip_len < 1:
            raise ValueError(f"clip_len must be an int >= 1, got {clip_len!r}")
        if len(self.lengths) == 0 or clip_len > self.lengths.max():
            longest = int(self.lengths.max()) if len(self.lengths) else 0
            raise ValueError(f"clip_len {clip_len} is longer than every episode (longest: {longest} frames)")

    def sample_clips(self, rng: np.random.Generator, batch: int, clip_len: int) -> Clip:
        """``batch`` clips of ``clip_len`` frames, uniform over all valid (episode, start) pairs."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        self._check_len(clip_len)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        starts = np.maximum(self.lengths - clip_len + 1, 0)  # valid start positions per episode
        cum = np.cumsum(starts)
        u = rng.integers(0, cum[-1], size=batch)
        episode = np.searchsorted(cum, u, side="right")
        start = u - (cum[episode] - starts[episode])
        return self._clip(episode, start, clip_len)

    def iter_clips(self, clip_len: int, stride: int | None = None, batch: int = 1) -> Iterator[Clip]:
        """Every clip at starts 0, stride, 2*stride... of each episode in order, ``batch`` at a time."""
        self._check_len(clip_len)
        stride = clip_len if stride is None else stride
        if stride < 1 or batch < 1:
            raise ValueError(f"stride and batch must be >= 1, got {stride}, {batch}")
        pairs = [(e, s) for e, n in enumerate(self.lengths) for s in range(0, int(n) - clip_len + 1, stride)]
        for i in range(0, len(pairs), batch):
            chunk = np.asarray(pairs[i: i + batch], np.int64)
            yield self._clip(chunk[:, 0], chunk[:, 1], clip_len)


class Dataset:
    """A validated manifest; shards are read (and checked) by ``load``."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.config: dict[str, Any] = manifest["config"]
        self.size: int = int(self.config["size"])
        self.entries: list[dict[str, Any]] = sorted(manifest["episodes"], key=lambda e: e["index"])

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, episodes={len(self.entries)}, frames={self.num_frames}, size={self.size})"

    @property
    def num_frames(self) -> int:
        """Frames over all listed episodes."""
        return int(self.manifest["total_frames"])

    @property
    def complete(self) -> bool:
        """Whether the recording finished (a dataset being recorded lists only finished shards)."""
        return bool(self.manifest.get("complete", True))

    def select(self, split: str = "all", max_episodes: int | None = None) -> list[dict[str, Any]]:
        """Manifest entries of ``split`` ("train" | "val" | "eval" | "all"), in index order."""
        if split not in (*SPLITS, "all"):
            raise ValueError(f"unknown split {split!r}; choose from {', '.join((*SPLITS, 'all'))}")
        entries = [e for e in self.entries if split == "all" or e["split"] == split]
        if max_episodes is not None:
            if max_episodes < 0:
                raise ValueError(f"max_episodes must be >= 0, got {max_episodes}")
            entries = entries[:max_episodes]
        return entries

    def read_episode(self, entry: dict[str, Any], fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One shard's fields, after checking its checksum and content."""
        path = self.root / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{path}: shard listed in {MANIFEST} is missing") from None
        except OSError as e:
            raise DatasetError(f"{path}: cannot read shard ({e})") from None
        digest = sha256_bytes(data)
        if digest != entry["sha256"]:
            raise DatasetError(
                f"{path}: checksum mismatch (file sha256 {digest[:12]}..., manifest {entry['sha256'][:12]}...); "
                "the shard is corrupt or was replaced"
            )
        arrays = decode_shard(data, self.size, fields=fields, where=str(path))
        n = len(arrays["actions"]) if "actions" in arrays else None
        if n is not None and n != entry["frames"]:
            raise DatasetError(f"{path}: holds {n} frames but {MANIFEST} says {entry['frames']}")
        return arrays

    def load(
        self, split: str = "train", fields: Iterable[str] | None = None, max_episodes: int | None = None
    ) -> EpisodeStore:
        """Read the episodes of ``split`` into an ``EpisodeStore`` (``actions`` is always loaded)."""
        wanted = list(ALL_FIELDS if fields is None else fields)
        for name in wanted:
            if name not in ALL_FIELDS and name not in OPTIONAL_FIELDS:
                raise ValueError(f"unknown field {name!r}; fields: {', '.join((*ALL_FIELDS, *OPTIONAL_FIELDS))}")
        if "actions" not in wanted:
            wanted.append("actions")
        entries = self.select(split, max_episodes)
        if not entries:
            raise DatasetError(f"{self.root}: no {split!r} episodes (the dataset has {len(self.entries)} episodes)")
        per_frame = [n for n in (*SHARD_FIELDS, *OPTIONAL_FIELDS) if n in wanted]
        total = sum(e["frames"] for e in entries)
        arrays: dict[str, np.ndarray] = {}
        for name in per_frame:  # preallocate: no second copy of the frames while loading
            dtype, shape = {**SHARD_FIELDS, **OPTIONAL_FIELDS}[name]
            arrays[name] = np.empty((total, *(self.size if d == "S" else d for d in shape)), dtype)
        events: list[np.ndarray] | None = [] if EVENTS_FIELD in wanted else None
        offset = 0
        for entry in entries:
            ep = self.read_episode(entry, [*per_frame, *([EVENTS_FIELD] if events is not None else [])])
            n = entry["frames"]
            for name in per_frame:
                arrays[name][offset: offset + n] = ep[name]
            if events is not None:
                events.append(ep[EVENTS_FIELD])
            offset += n
        return EpisodeStore(arrays, [e["frames"] for e in entries], entries, events)


def open_dataset(root: str | Path) -> Dataset:
    """Open a dataset directory and validate its manifest (format, version, entries); shards load lazily."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset directory not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset: no {MANIFEST}")
    try:
        manifest = read_json(path, "dataset manifest")
    except ValueError as e:
        raise DatasetError(str(e)) from None
    return Dataset(root, validate_manifest(manifest, where=str(path)))
