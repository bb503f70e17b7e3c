"""`worldsim record`: play the real game with the explorer policy and save episodes as shards.

``record --out DIR --frames N --seed S`` splits N frames into episodes of ``--episode-len`` frames;
episode i uses env seed S + i and becomes ``DIR/shard-{i:05d}.npz``. An episode depends only on its
seed and the config, so the result is the same for any ``--workers``, and an interrupted run resumes
by rerunning the same command: finished shards are verified (checksum) and skipped, bad ones are
re-recorded, and the final shards are byte-identical to an uninterrupted run's.

Python API (eval code records its held-out data with it): ``record_episode`` (one episode in memory)
and ``record_dataset`` (a directory, like the command).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import ACTION_NAMES, NULL_ACTION, NUM_ACTIONS
from worldsim.data.format import (
    EVAL_SEEDS_START,
    MANIFEST,
    DatasetError,
    decode_shard,
    encode_shard,
    make_manifest,
    sha256_bytes,
    sha256_file,
    shard_name,
    split_of_seed,
    validate_manifest,
)
from worldsim.data.policy import POLICY_VERSION, ExplorerPolicy, PolicyConfig
from worldsim.io import atomic_write_bytes, atomic_write_json, read_json

CRAFTER_VERSION = "1.8.3"
DEFAULT_START_INVENTORY: tuple[tuple[str, int], ...] = (("wood", 9), ("stone", 9), ("sapling", 9))
# Keys of the manifest config that do not change the recorded bytes (free to differ on a rerun).
_NON_CONTENT_KEYS = ("workers", "allow_eval_seeds")
_PROGRESS_EVERY = 50  # frames between progress messages from a worker


@dataclass(frozen=True)
class RecordConfig:
    """Everything that determines a recorded dataset's content (plus the seed-split guard)."""

    frames: int
    seed: int = 0
    size: int = 72
    episode_len: int = 1000
    allow_eval_seeds: bool = False
    keep_alive: bool = True
    start_inventory: tuple[tuple[str, int], ...] = DEFAULT_START_INVENTORY
    policy_version: int = POLICY_VERSION
    crafter_version: str = CRAFTER_VERSION
    unlit: bool = False  # also store each frame's unlit view (the lit autoencoder's target; ~2x the bytes)

    def __post_init__(self) -> None:
        for name in ("frames", "seed", "size", "episode_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"record: --{name.replace('_', '-')} must be an int, got {v!r}")
        if self.frames < 1:
            raise ValueError(f"record: --frames must be >= 1, got {self.frames}")
        if self.episode_len < 2:
            raise ValueError(f"record: --episode-len must be >= 2 (a transition needs two frames), got {self.episode_len}")
        if self.size < 18 or self.size % 9:
            raise ValueError(f"record: --size must be a multiple of 9 (whole tiles) >= 18, got {self.size}")
        if self.seed < 0:
            raise ValueError(f"record: --seed must be >= 0, got {self.seed}")
        if self.policy_version != POLICY_VERSION:
            raise ValueError(f"record: this code records policy version {POLICY_VERSION}, not {self.policy_version}")
        last_seed = self.seed + self.num_episodes - 1
        if last_seed >= EVAL_SEEDS_START and not self.allow_eval_seeds:
            raise ValueError(
                f"record: episode seeds {self.seed}..{last_seed} reach the held-out eval range (>= {EVAL_SEEDS_START}); "
                "pass --allow-eval-seeds only to record evaluation data"
            )

    @property
    def num_episodes(self) -> int:
        """Episodes in the plan (the last one may be shorter)."""
        return math.ceil(self.frames / self.episode_len)

    def plan(self) -> list[tuple[int, int, int]]:
        """(index, env seed, frames) of every episode."""
        out = []
        for i in range(self.num_episodes):
            n = min(self.episode_len, self.frames - i * self.episode_len)
            out.append((i, self.seed + i, n))
        return out

    def to_json(self, workers: int = 1) -> dict[str, Any]:
        """The manifest's config block (all record arguments)."""
        d = dataclasses.asdict(self)
        d["start_inventory"] = dict(self.start_inventory)
        d["workers"] = int(workers)
        if not self.unlit:  # absent when off: configs of datasets recorded before the option still match
            del d["unlit"]
        return d


def config_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Content-relevant keys whose values differ between two manifest configs."""
    keys = (set(old) | set(new)) - set(_NON_CONTENT_KEYS)
    return sorted(k for k in keys if old.get(k) != new.get(k))


# -- one episode ---------------------------------------------------------------------------------
def record_episode(
    seed: int,
    frames: int,
    size: int = 72,
    keep_alive: bool = True,
    start_inventory: Mapping[str, int] | None = None,
    policy_config: PolicyConfig = PolicyConfig(),
    progress: Callable[[int], None] | None = None,
    unlit: bool = False,
) -> dict[str, np.ndarray]:
    """Play one episode of ``frames`` frames with env seed ``seed``; return the shard arrays (see ``_play``)."""
    return _play(seed, frames, size, keep_alive, start_inventory, policy_config, progress, unlit)[0]


def _play(
    seed: int,
    frames: int,
    size: int = 72,
    keep_alive: bool = True,
    start_inventory: Mapping[str, int] | None = None,
    policy_config: PolicyConfig = PolicyConfig(),
    progress: Callable[[int], None] | None = None,
    unlit: bool = False,
) -> tuple[dict[str, np.ndarray], ExplorerPolicy]:
    """Play one episode of ``frames`` frames with env seed ``seed``; return the shard arrays.

    frames (N,S,S,3) uint8; actions (N,) int16 with actions[t] taken on frame t (last = NULL_ACTION);
    pos (N,2) int16; facing (N,2) int8; daylight (N,) float32; sleeping (N,) bool; semantic (N,7,9)
    uint8; inventory (N,16) uint8; step (N,) int32; reward (N,) float32; revisit (N,) int8;
    revisit_events (M,6) int32. With ``unlit`` also unlit (N,S,S,3) uint8: each frame's view before the game
    lights it (``CrafterEnv.render_unlit``; the lit autoencoder's target).
    """
    from worldsim.crafter_env import CrafterEnv

    if start_inventory is None:
        start_inventory = dict(DEFAULT_START_INVENTORY)
    n = int(frames)
    if n < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    out = {
        "frames": np.zeros((n, size, size, 3), np.uint8),
        "actions": np.zeros(n, np.int16),
        "pos": np.zeros((n, 2), np.int16),
        "facing": np.zeros((n, 2), np.int8),
        "daylight": np.zeros(n, np.float32),
        "sleeping": np.zeros(n, np.bool_),
        "semantic": np.zeros((n, 7, 9), np.uint8),
        "inventory": np.zeros((n, 16), np.uint8),
        "step": np.zeros(n, np.int32),
        "reward": np.zeros(n, np.float32),
        "revisit": np.zeros(n, np.int8),
    }
    if unlit:
        out["unlit"] = np.zeros((n, size, size, 3), np.uint8)
    env = CrafterEnv(seed=seed, size=size, start_inventory=start_inventory, keep_alive=keep_alive)
    policy = ExplorerPolicy(seed, policy_config)
    frame, info = env.reset(seed)
    reported = 0
    for t in range(n):
        out["frames"][t] = frame
        if unlit:
            out["unlit"][t] = env.render_unlit()
        out["pos"][t] = info["pos"]
        out["facing"][t] = info["facing"]
        out["daylight"][t] = info["daylight"]
        out["sleeping"][t] = info["sleeping"]
        out["semantic"][t] = info["semantic"]
        out["inventory"][t] = info["inventory"]
        out["step"][t] = info["step"]
        out["reward"][t] = info["reward"]
        if t == n - 1:
            out["actions"][t] = NULL_ACTION
            out["revisit"][t] = policy.mode
            break
        action = policy.act(env)
        out["actions"][t] = action
        out["revisit"][t] = policy.label
        frame, info = env.step(action)
        if progress is not None and t + 1 - reported >= _PROGRESS_EVERY:
            progress(t + 1 - reported)
            reported = t + 1
    if progress is not None and n - reported:
        progress(n - reported)
    out["revisit_events"] = np.array(policy.events, np.int32).reshape(-1, 6)
    return out, policy


def episode_stats(arrays: Mapping[str, np.ndarray], attempts: int | None = None) -> dict[str, Any]:
    """Per-episode counts stored in the manifest (so a summary needs no shard reads)."""
    actions = np.asarray(arrays["actions"])
    hist = np.bincount(actions[actions < NUM_ACTIONS].astype(np.int64), minlength=NUM_ACTIONS)
    stats = {
        "actions": hist.tolist(),
        "revisits": int(len(arrays["revisit_events"])),
        "night_frames": int((np.asarray(arrays["daylight"]) < 0.5).sum()),
        "sleeping_frames": int(np.asarray(arrays["sleeping"]).sum()),
        "segments": np.bincount(np.asarray(arrays["revisit"]).astype(np.int64), minlength=5).tolist(),
    }
    if attempts is not None:
        stats["revisit_attempts"] = int(attempts)
    return stats


# -- workers ---------------------------------------------------------------------------------------
_QUEUE: Any = None


def _init_worker(queue: Any) -> None:
    global _QUEUE
    _QUEUE = queue


def _record_job(job: tuple[str, int, int, int, dict[str, Any]]) -> dict[str, Any]:
    """Record one episode into its shard (atomically); return its manifest entry. Runs in a worker."""
    out_dir, index, seed, frames, cfg = job
    progress = (lambda k: _QUEUE.put(k)) if _QUEUE is not None else None
    return _record_to_shard(Path(out_dir), index, seed, frames, cfg, progress)


def _record_to_shard(
    out_dir: Path, index: int, seed: int, frames: int, cfg: Mapping[str, Any], progress: Callable[[int], None] | None
) -> dict[str, Any]:
    arrays, policy = _play(
        seed, frames, size=cfg["size"], keep_alive=cfg["keep_alive"], start_inventory=cfg["start_inventory"], progress=progress,
        unlit=bool(cfg.get("unlit", False)),
    )
    data = encode_shard(arrays, cfg["size"])
    name = shard_name(index)
    atomic_write_bytes(out_dir / name, data)
    return {
        "index": index,
        "seed": seed,
        "split": split_of_seed(seed),
        "file": name,
        "frames": frames,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "stats": episode_stats(arrays, policy.attempts),
    }


# -- a dataset -------------------------------------------------------------------------------------
def _prepare_dir(out: Path, config_json: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Check ``out`` is empty or holds this same recording; return its manifest entries by index."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            manifest = validate_manifest(read_json(manifest_path, "dataset manifest"), where=str(manifest_path))
        except ValueError as e:
            raise DatasetError(f"cannot resume into {out}: {e}") from None
        diff = config_mismatch(manifest["config"], config_json)
        if diff:
            detail = ", ".join(f"{k}: {manifest['config'].get(k)!r} there vs {config_json.get(k)!r} now" for k in diff)
            raise DatasetError(
                f"{out} holds a different recording ({detail}); use another --out or rerun with the same arguments"
            )
        return {e["index"]: e for e in manifest["episodes"]}
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"--out {out} exists and is not a directory")
        stray = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        if stray:
            raise DatasetError(f"--out {out} is not empty and has no {MANIFEST} (found {', '.join(sorted(stray)[:5])})")
    return {}


def _verify_existing(
    out: Path, plan: list[tuple[int, int, int]], known: dict[int, dict[str, Any]], size: int, log: Callable[[str], None]
) -> tuple[dict[int, dict[str, Any]], list[tuple[int, int, int]]]:
    """Keep shards whose checksum (or, without a manifest entry, content) checks out; list the rest to record."""
    done: dict[int, dict[str, Any]] = {}
    todo = []
    for index, seed, frames in plan:
        path = out / shard_name(index)
        entry = known.get(index)
        if not path.exists():
            todo.append((index, seed, frames))
            continue
        try:
            if entry is not None:
                if entry["seed"] != seed or entry["frames"] != frames:
                    raise DatasetError(f"{path}: manifest says seed {entry['seed']}, {entry['frames']} frames; expected {seed}, {frames}")
                digest = sha256_file(path)
                if digest != entry["sha256"]:
                    raise DatasetError(f"{path}: checksum mismatch (file {digest[:12]}..., manifest {entry['sha256'][:12]}...)")
                done[index] = entry
            else:
                # written just before an interruption, before the manifest caught up: check its content
                data = path.read_bytes()
                arrays = decode_shard(data, size, where=str(path))
                if len(arrays["actions"]) != frames:
                    raise DatasetError(f"{path}: holds {len(arrays['actions'])} frames, expected {frames}")
                done[index] = {
                    "index": index, "seed": seed, "split": split_of_seed(seed), "file": path.name, "frames": frames,
                    "sha256": sha256_bytes(data), "bytes": len(data), "stats": episode_stats(arrays),
                }
        except DatasetError as e:
            log(f"warning: {e}; re-recording it")
            path.unlink()
            todo.append((index, seed, frames))
    return done, todo


def record_dataset(
    out: str | Path,
    frames: int,
    seed: int = 0,
    workers: int = 1,
    size: int = 72,
    episode_len: int = 1000,
    allow_eval_seeds: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    unlit: bool = False,
) -> dict[str, Any]:
    """Record (or resume) a dataset directory; return the summary dict (see ``summarize``)."""
    cfg = RecordConfig(
        frames=frames, seed=seed, size=size, episode_len=episode_len, allow_eval_seeds=allow_eval_seeds, unlit=unlit
    )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"record: --workers must be an int >= 1, got {workers!r}")
    out = Path(out)
    config_json = cfg.to_json(workers)
    plan = cfg.plan()
    known = _prepare_dir(out, config_json)
    done, todo = _verify_existing(out, plan, known, cfg.size, log)
    out.mkdir(parents=True, exist_ok=True)

    def write_manifest() -> None:
        atomic_write_json(out / MANIFEST, make_manifest(config_json, done.values(), len(plan)))

    write_manifest()
    if done:
        log(f"resuming: {len(done)} of {len(plan)} shards already recorded and verified")
    jobs = [(str(out), i, s, n, config_json) for i, s, n in todo]
    todo_frames = sum(n for _, _, n in todo)
    t0 = time.perf_counter()
    bar = _progress_bar(todo_frames, progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                entry = _record_to_shard(out, job[1], job[2], job[3], job[4], bar.update)
                done[entry["index"]] = entry
                write_manifest()
        else:
            ctx = mp.get_context("spawn")  # fork-unsafe libraries (torch in the parent) stay out of it
            queue = ctx.Queue()
            pump = threading.Thread(target=_pump_progress, args=(queue, bar), daemon=True)
            pump.start()
            try:
                with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(queue,)) as pool:
                    for entry in pool.imap_unordered(_record_job, jobs, chunksize=1):
                        done[entry["index"]] = entry
                        write_manifest()
            finally:
                queue.put(None)
                pump.join()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    write_manifest()
    return summarize(out, done.values(), recorded_frames=todo_frames, seconds=elapsed)


def _pump_progress(queue: Any, bar: Any) -> None:
    while (k := queue.get()) is not None:
        bar.update(k)


class _NoBar:
    def update(self, k: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    # to a log file (not a terminal) refresh rarely, so that the log stays readable
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, unit="frame", unit_scale=True, smoothing=0.1, desc="record", mininterval=interval)


def summarize(
    out: Path, entries: Any, recorded_frames: int = 0, seconds: float = 0.0
) -> dict[str, Any]:
    """Totals over a dataset's manifest entries: frames, bytes/frame, actions, revisits, night."""
    entries = sorted(entries, key=lambda e: e["index"])
    frames = sum(e["frames"] for e in entries)
    nbytes = sum(e.get("bytes") or (out / e["file"]).stat().st_size for e in entries)
    actions = np.zeros(NUM_ACTIONS, np.int64)
    revisits = attempts = night = sleeping = 0
    segments = np.zeros(5, np.int64)
    have_attempts = True
    for e in entries:
        st = e.get("stats", {})
        actions += np.asarray(st.get("actions", [0] * NUM_ACTIONS), np.int64)
        revisits += st.get("revisits", 0)
        night += st.get("night_frames", 0)
        sleeping += st.get("sleeping_frames", 0)
        segments += np.asarray(st.get("segments", [0] * 5), np.int64)
        if "revisit_attempts" in st:
            attempts += st["revisit_attempts"]
        else:
            have_attempts = False
    return {
        "out": str(out),
        "frames": frames,
        "episodes": len(entries),
        "bytes": nbytes,
        "bytes_per_frame": nbytes / max(frames, 1),
        "recorded_frames": recorded_frames,
        "seconds": seconds,
        "frames_per_s": recorded_frames / seconds if seconds > 0 else 0.0,
        "actions": {name: int(c) for name, c in zip(ACTION_NAMES, actions)},
        "revisits": revisits,
        "revisit_attempts": attempts if have_attempts else None,
        "revisits_per_1000_frames": 1000 * revisits / max(frames, 1),
        "night_fraction": night / max(frames, 1),
        "sleeping_fraction": sleeping / max(frames, 1),
        "segment_fractions": (segments / max(frames, 1)).round(4).tolist(),
    }


def format_summary(s: Mapping[str, Any]) -> str:
    """The human-readable end-of-run summary."""
    total_actions = max(sum(s["actions"].values()), 1)
    hist = ", ".join(f"{k} {100 * v / total_actions:.1f}%" for k, v in sorted(s["actions"].items(), key=lambda kv: -kv[1]))
    attempts = "" if s["revisit_attempts"] is None else f" of {s['revisit_attempts']} attempts"
    lines = [
        f"dataset {s['out']}: {s['frames']} frames in {s['episodes']} episodes, "
        f"{s['bytes'] / 1e6:.1f} MB = {s['bytes_per_frame']:.0f} bytes/frame",
        f"this run: {s['recorded_frames']} frames in {s['seconds']:.1f} s = {s['frames_per_s']:.0f} frames/s",
        f"actions: {hist}",
        f"revisits: {s['revisits']}{attempts} ({s['revisits_per_1000_frames']:.2f} per 1000 frames); "
        f"segments free/placing/away/returning/looking: " + "/".join(f"{100 * x:.1f}%" for x in s["segment_fractions"]),
        f"day {100 * (1 - s['night_fraction']):.1f}% / night {100 * s['night_fraction']:.1f}% "
        f"(daylight < 0.5); sleeping {100 * s['sleeping_fraction']:.1f}%",
    ]
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `worldsim record`."""
    parser.add_argument("--out", required=True, help="dataset directory (created; rerun the same command to resume)")
    parser.add_argument("--frames", type=int, required=True, help="total frames to record")
    parser.add_argument("--seed", type=int, default=0, help="env seed of episode 0; episode i uses seed + i (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="recording processes (the result does not depend on it)")
    parser.add_argument("--size", type=int, default=72, help="frame size in pixels, a multiple of 9 (default 72: 8-px tiles)")
    parser.add_argument("--episode-len", type=int, default=1000, help="frames per episode/shard (default 1000)")
    parser.add_argument(
        "--allow-eval-seeds", action="store_true", help=f"allow episode seeds >= {EVAL_SEEDS_START} (held-out eval data)"
    )
    parser.add_argument("--unlit", action="store_true",
                        help="also store each frame's view before the game lights it (training data of the lit autoencoder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim record`."""
    try:
        summary = record_dataset(
            args.out,
            frames=args.frames,
            seed=args.seed,
            workers=args.workers,
            size=args.size,
            episode_len=args.episode_len,
            allow_eval_seeds=args.allow_eval_seeds,
            progress=not args.no_progress,
            unlit=args.unlit,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except ValueError as e:  # DatasetError included: a clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


__all__ = [
    "RecordConfig", "add_arguments", "episode_stats", "format_summary",
    "record_dataset", "record_episode", "run", "summarize",
]
