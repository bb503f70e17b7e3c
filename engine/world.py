"""World (loaded weights + backend + runtime preset) and Session (one running game).

A world directory holds `world.json`, `autoencoder.safetensors`, `dit.safetensors`, `opening.npz` (real
opening frames so a session can start without a context) and optionally a model card. The shipped
default world lives in the worldsim package (`worldsim/worlds/crafter`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.backends import (BACKENDS, BackendUnavailable, OrtBackend, TorchBackend, ensure_onnx_graphs, ensure_static_dit,
                             tensorrt_unavailable_reason)
from engine.cache import RingKVCache
from engine.graphs import DIT_PRECISIONS
from engine.ground import GroundHead, load_ground
from engine.rules import (DAY_CLOCK_TOLERANCE, DO, ENERGY_MAX, PLACE_RULES, advance_life, enforce_blocked_move, faced_tile, fit_clock, fit_life,
                          hold_tiles, read_energy, draw_energy, energy_slot, relight, rendered_awake_view, sleeping_view, warm_start)
from engine.memory import (DARK, MemoryBank, MemoryConfig, MemoryKV, fill_uncovered, memory_slots, natural_uncovered, predicted_poses,
                           sample_uncovered, slot_shift)
from worldsim.actions import ACTION_NAMES, MOVES, NULL_ACTION, action_index
from worldsim.diffusion import FlowSampler
from worldsim.io import atomic_path, read_json
from worldsim.eval.reader import TileReader, load_reader, reading_with
from worldsim.eval.tiles import daylight_at
from worldsim.memory import (VIEW_COLS, VIEW_ROWS, estimate_move, frame_lighting, read_facing, read_view_tiles, target_walkable,
                             track_poses)

WORLD_FORMAT = "worldsim-world"
WORLD_VERSION = 1
MOVE_DIRECTIONS = {ACTION_NAMES.index(n): d for n, d in MOVES.items()}  # action index -> (dx, dy)
SESSION_FORMAT = "worldsim-session"
SESSION_VERSION = 1


@dataclass(frozen=True)
class RuntimePreset:
    """How a session steps: denoising steps, cache window (frames), chunk size, context noise."""

    name: str
    steps: int
    window: int
    chunk: int = 1
    ctx_noise: float = 0.02  # a small constant noise on committed frames, as in training: fights drift
    shift: float = 1.0
    stochastic: bool = False
    memory: int = 0  # memory frames read per frame from the session's bank (engine.memory); 0 = off
    memory_capacity: int = 512  # bank entries kept at most (constant memory and time over hours of play)
    memory_fill: bool = False  # tiles a move uncovers come from the bank where it saw them (engine.memory.fill_uncovered)
    block_rule: bool = True  # Crafter's rule on generated frames: a move onto a tile the player cannot enter only turns it
    day_clock: bool = True  # Crafter's day/night clock (fitted to the context) relights generated frames (engine.rules)
    life_clock: bool = True  # Crafter's energy counter (fitted to the context): no sleep at full energy, a sleeper wakes when full (engine.rules)
    sleep_view: bool = True  # with the life clock: a sleeper's frame is drawn as the game draws it, from its last awake frame (engine.rules)
    tile_hold: bool = True  # tiles Crafter could not have changed (materials away from the player's hands, creatures' steps) are put back (engine.rules)
    natural_ground: bool = True  # with the fill: no table, furnace or plant on ground the session never saw (engine.memory)
    # with the fill: ground the session never saw is drawn as one material sampled from the mix the model's token holds,
    # not as the mix's mean (which reads as grass: free play drifted into a lawn; engine.memory.sample_uncovered)
    ground_sample: bool = True
    faced_rule: bool = True  # Crafter's rule for the faced tile: a place action or mining that the game allows shows its block and inventory (engine.rules)
    warm: float = 0.0  # in (0, 1): denoise from this level, starting at the previous frame moved as the action moves the view
    # commit a frame in the next frame's first denoising pass (one 2k-frame pass instead of a k-frame commit pass and a
    # k-frame denoise pass: 1.6x the cost of one pass, not 2x); the window then holds window - chunk committed frames,
    # so the frame being generated still sees `window` frames (see Session._commit). Not with memory slots.
    fuse_commit: bool = True
    # the DiT graphs' precision on onnxruntime: "fp32", or "int8" (MatMul weights int8 per channel, activations
    # quantized per call: engine.graphs.quantize_dit_int8). Other backends run their own precision (World.precision).
    precision: str = "fp32"

    @property
    def reads_frames(self) -> bool:
        """Whether stepping reads the previous/decoded frame on the host (the rules, the warm start): a device
        path that keeps the whole step on the accelerator (tensorrt's CUDA graph) cannot serve it."""
        return self.block_rule or self.day_clock or self.life_clock or self.tile_hold or self.faced_rule or self.warm > 0

    @property
    def fuses_commit(self) -> bool:
        """Whether the generic path commits each chunk in the next chunk's first pass (fuse_commit; not with memory
        slots, whose frames a committed frame must not see, nor with a window that holds only the chunk)."""
        return self.fuse_commit and self.memory == 0 and self.window > self.chunk

    @property
    def ring_slots(self) -> int:
        """Frame slots of a session's KV ring on the generic path: the window, less the chunk still pending when
        commits are fused."""
        return self.window - self.chunk if self.fuses_commit else self.window


# every preset field that reads frames on the host between the passes (the game's rules, the warm start, the fill), off:
# the model alone, and the only presets a device path that keeps the whole step on the accelerator can serve
MODEL_ONLY: dict[str, Any] = {"block_rule": False, "day_clock": False, "life_clock": False, "tile_hold": False,
                              "faced_rule": False, "warm": 0.0, "memory_fill": False}


# Windows are capped by world.json's max_window: by default the longest clip the DiT trained on (15 frames for the
# shipped world), raised where an evaluation measured a longer one to hold (time is relative, so it runs). The
# shipped world's is 31: with the game's rules in the engine, `quality` at 31 keeps 91.3% of the persistent tiles
# over 32-frame rollouts (89.1% at 15) and free play stays varied (session 12, model card); the model alone fell
# apart at 31 (session 4: 73% unexplained tiles in free play).
# `fast` keeps 8: same quick-eval quality as 15 on the shipped world, 34 vs 23 fps on one thread (87.9% at 31 vs
# 88.2% at 8 over 32-frame rollouts, session 12).
# `fast` runs int8 DiT graphs on onnxruntime: the full eval's rollouts are the same as fp32's (persistent tiles 91.9 /
# 88.2 / 82.5 / 70.4% vs 91.9 / 88.2 / 82.7 / 70.3% over 16 / 32 / 64 / 256 frames) and its per-frame DiT call is
# ~1.2x faster (session 13); `quality` and `memory` stay fp32.
# `memory` keeps 15: placed blocks came back in 26% of revisit frames at 15, 11% at 8 (quick eval, 27 frames).
RUNTIME_PRESETS: dict[str, RuntimePreset] = {
    "fast": RuntimePreset("fast", steps=1, window=8, warm=0.5, memory_fill=True, precision="int8"),
    # quality keeps the model's likeliest new ground (ground_sample off): the closest open loop to the real game's
    # (persistent tiles over 32 frames 91.1%; sampled, 89.9 / 91.1% in two runs: a drawn tree blocks a walk the game's
    # grass let through), at the price of free play that drifts to grass (grass 83-88% of the tiles vs the game's 57%)
    "quality": RuntimePreset("quality", steps=4, window=31, stochastic=True, memory_fill=True, ground_sample=False),
    # persistent objects beyond the window: for worlds trained with memory frames (TrainConfig.memory_frames)
    # the day clock off: relit frames cost the revisits (placed block back in 5.5% of frames with it, 16.1% without,
    # full eval, session 5); the warm start off too (5.7% with it)
    "memory": RuntimePreset("memory", steps=1, window=15, memory=2, memory_fill=True, day_clock=False),
}


def resolve_preset(preset: "str | RuntimePreset", overrides: dict[str, Any], max_window: int) -> "RuntimePreset":
    """A preset by name or value, with World.load overrides applied, its window capped at what the model
    was trained on; clear errors for unknown names/options and invalid values."""
    if isinstance(preset, str):
        if preset not in RUNTIME_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(RUNTIME_PRESETS)}")
        preset = RUNTIME_PRESETS[preset]
    if overrides:
        unknown = sorted(set(overrides) - set(RuntimePreset.__dataclass_fields__) - {"name"})
        if unknown or "name" in overrides:
            raise ValueError(f"unknown World.load option(s) {unknown or ['name']}; preset overrides are "
                             f"{', '.join(f for f in RuntimePreset.__dataclass_fields__ if f != 'name')}")
        preset = RuntimePreset(**{**preset.__dict__, **overrides})
    if preset.window > max_window:
        preset = RuntimePreset(**{**preset.__dict__, "window": max_window})  # never past what the model was trained on
    if preset.steps < 1 or preset.window < 1 or preset.chunk < 1:
        raise ValueError(f"preset {preset} needs steps, window and chunk >= 1")
    if preset.memory < 0 or preset.memory_capacity < 1:
        raise ValueError(f"preset {preset}: memory must be >= 0 (0 = off) and memory_capacity >= 1")
    if preset.precision not in DIT_PRECISIONS:
        raise ValueError(f"preset {preset.name}: precision {preset.precision!r} is not one of {', '.join(DIT_PRECISIONS)}")
    if not 0.0 <= preset.warm < 1.0:
        raise ValueError(f"preset {preset}: warm is the level denoising starts from, in [0, 1) (0 = off), got {preset.warm}")
    return preset


def parse_preset_options(items: Sequence[str]) -> dict[str, Any]:
    """["block_rule=false", "window=8", ...] -> preset overrides typed like RuntimePreset's fields; ValueError
    naming the field or value that does not fit."""
    fields = {f.name: f.type for f in dataclasses.fields(RuntimePreset) if f.name != "name"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in fields:
            raise ValueError(f"preset option {item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = fields[key] if isinstance(fields[key], str) else fields[key].__name__
        try:
            if kind == "bool":
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1", "yes", "on")
            else:
                out[key] = {"int": int, "float": float, "str": str}[kind](raw)
        except (ValueError, KeyError):
            raise ValueError(f"preset option {key}: {raw!r} is not a valid {kind}") from None
    return out


def default_world_dir() -> Path:
    """The shipped default world (inside the worldsim package)."""
    from worldsim.package import shipped_world_dir

    return shipped_world_dir()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class World:
    """A loaded world: weights, a backend and a runtime preset. Makes sessions."""

    def __init__(self, path: Path, meta: dict[str, Any], backend, preset: RuntimePreset, opening: tuple[np.ndarray, np.ndarray],
                 ae_cfg, dit_cfg, world_id: str):
        self.path = path
        self.meta = meta
        self.backend = backend
        self.preset = preset
        self.opening_frames, self.opening_actions = opening
        self.ae_cfg, self.dit_cfg = ae_cfg, dit_cfg
        self.id = world_id
        self.sampler = FlowSampler(steps=preset.steps, shift=preset.shift, stochastic=preset.stochastic)
        self._load_models = None  # () -> (ae, dit) for a world directory on onnxruntime: more fixed-shape graphs
        # the tile reader trained on this world's autoencoder (worldsim.eval.reader): the rules and the memory
        # read the world's decoded frames with it; None: the texture model (worldsim.eval.tiles) reads them
        self.reader: TileReader | None = None
        # the ground head fitted on this world's tokens (engine.ground): new ground is sampled from it (preset
        # field ground_sample); None: the model's tokens stand
        self.ground: GroundHead | None = None

    @property
    def fuses_commit(self) -> bool:
        """Whether sessions commit each chunk in the next chunk's first pass (RuntimePreset.fuses_commit); a backend
        with its own device path (tensorrt's step_chunk) commits as it always did."""
        return self.preset.fuses_commit and getattr(self.backend, "step_chunk", None) is None

    @property
    def precision(self) -> str:
        """The DiT's precision as it runs: the onnxruntime graphs' ("fp32" | "int8", the preset's), else "fp32"
        (torch; TensorRT bundles: see meta["bundle"]["precision"])."""
        return getattr(self.backend, "precision", "fp32")

    @property
    def ring_slots(self) -> int:
        """Frame slots of a session's KV ring: RuntimePreset.ring_slots where sessions fuse commits, else the window."""
        return self.preset.ring_slots if self.fuses_commit else self.preset.window

    def prepare_shapes(self, shapes: Sequence[tuple[int, int]]) -> None:
        """Give the onnxruntime backend fixed-shape DiT graphs for one session's (k chunk frames, P cache slots)
        calls ``shapes`` (exported into the graph cache once); a no-op on other backends and for bundles."""
        if self._load_models is None or not isinstance(self.backend, OrtBackend):
            return
        for p in ensure_static_dit(self.backend.graph_dir, shapes, self._load_models, self.backend.precision):
            self.backend.add_static(p)

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, backend: str | None = None, preset: str | RuntimePreset = "fast",
             threads: int | None = None, **overrides: Any) -> "World":
        """Load a world directory (default: the shipped world) on a backend (default: the best available).

        ``overrides`` adjust the preset (steps, window, chunk, ctx_noise, shift, stochastic).
        """
        path = Path(path) if path is not None else default_world_dir()
        if not path.is_dir():
            raise FileNotFoundError(f"world directory not found: {path}")
        if (path / "manifest.json").is_file():  # an exported bundle: validated graphs, no torch weights (issue #7)
            from engine.bundle import load_bundle_world

            return load_bundle_world(cls, path, backend, preset, threads, overrides)
        meta = read_json(path / "world.json", "world description")
        if meta.get("format") != WORLD_FORMAT:
            raise ValueError(f"{path / 'world.json'}: not a worldsim world (format {meta.get('format')!r})")
        if meta.get("version") != WORLD_VERSION:
            raise ValueError(f"{path / 'world.json'}: world format version {meta.get('version')} is not supported (expected {WORLD_VERSION})")
        preset = resolve_preset(preset, overrides, int(meta.get("max_window", 10**9)))
        ae_path, dit_path = path / meta.get("autoencoder", "autoencoder.safetensors"), path / meta.get("dit", "dit.safetensors")
        opening = _load_opening(path / meta.get("opening", "opening.npz"))
        from worldsim.train import load_autoencoder, load_dit  # checkpoint errors are clear CheckpointErrors

        ae_meta, dit_meta = _peek_config(ae_path, "autoencoder"), _peek_config(dit_path, "dit")
        from worldsim.autoencoder import ae_config_from_dict
        from worldsim.dit import dit_config_from_dict

        try:
            ae_cfg = ae_config_from_dict(ae_meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{ae_path}: the autoencoder config does not fit this version of worldsim: {e}") from None
        try:
            dit_cfg = dit_config_from_dict(dit_meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{dit_path}: the DiT config does not fit this version of worldsim: {e}") from None
        if (ae_cfg.latent_channels, ae_cfg.grid) != (dit_cfg.latent_channels, dit_cfg.grid):
            raise ValueError(f"{path}: the autoencoder's latents ({ae_cfg.latent_channels}x{ae_cfg.grid}) do not fit the DiT "
                             f"({dit_cfg.latent_channels}x{dit_cfg.grid})")
        if opening[0].shape[1:] != (ae_cfg.image_size, ae_cfg.image_size, 3):
            raise ValueError(f"{path}: opening frames are {opening[0].shape[1:]}, the world renders {ae_cfg.image_size}px")
        ae_digest, dit_digest = _file_digest(ae_path), _file_digest(dit_path)  # the world's id, and the ground head's check
        world_id = hashlib.sha256((ae_digest + dit_digest).encode()).hexdigest()[:16]

        def load_models():
            return load_autoencoder(ae_path), load_dit(dit_path)

        name = backend or _best_backend()
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        if name == "torch":
            ae, dit = load_models()
            be = TorchBackend(ae, dit, threads=threads)
        elif name == "onnxruntime":
            # the cache key hashes the weight files: a cache hit means these exact files were exported (so were
            # valid); on a miss, exporting loads them first and bad weights raise a clear CheckpointError
            # the per-frame shapes of this preset (one session, a chunk against the window and any memory slots)
            # get fixed-shape DiT graphs beside the dynamic one (engine.graphs.export_static_dit)
            shapes = [(preset.chunk, preset.ring_slots + m) for m in range(preset.memory + 1)]
            if preset.fuses_commit:
                shapes.append((2 * preset.chunk, preset.ring_slots))  # the fused commit + denoise pass
            graph_dir = ensure_onnx_graphs(path, ae_path, dit_path, load_models)
            try:
                ensure_static_dit(graph_dir, shapes, load_models, preset.precision)
                be = OrtBackend(graph_dir, threads=threads, precision=preset.precision)
            except (ValueError, FileNotFoundError):
                # the graphs are only a cache: one that onnxruntime cannot load is rebuilt, once
                shutil.rmtree(graph_dir, ignore_errors=True)
                graph_dir = ensure_onnx_graphs(path, ae_path, dit_path, load_models)
                ensure_static_dit(graph_dir, shapes, load_models, preset.precision)
                be = OrtBackend(graph_dir, threads=threads, precision=preset.precision)
        else:
            reason = tensorrt_unavailable_reason()
            if reason:
                raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
            raise BackendUnavailable(f"backend 'tensorrt' runs exported engines, and {path} is a world directory: export a bundle on this "
                                     f"GPU machine with `worldsim export --world {path} --format tensorrt --out BUNDLE`, then load BUNDLE")
        world = cls(path, meta, be, preset, opening, ae_cfg, dit_cfg, world_id)
        if meta.get("reader"):
            # a reader trained on another autoencoder would misread: load_reader checks the digest
            world.reader = load_reader(path / meta["reader"], autoencoder=ae_path)
            if world.reader.cfg.image_size != ae_cfg.image_size:
                raise ValueError(f"{path / meta['reader']}: the reader reads {world.reader.cfg.image_size}px frames, "
                                 f"the world renders {ae_cfg.image_size}px")
        if meta.get("ground"):
            # fitted on these very weights' tokens (load_ground checks the digests)
            world.ground = load_ground(path / meta["ground"], ae_digest, dit_digest)
            if world.ground.channels != dit_cfg.latent_channels:
                raise ValueError(f"{path / meta['ground']}: the ground head reads {world.ground.channels}-channel tokens, "
                                 f"the world's are {dit_cfg.latent_channels}")
        if name == "onnxruntime":
            world._load_models = load_models
        return world

    # -- public attributes ----------------------------------------------------------------------------

    @property
    def action_names(self) -> list[str]:
        """Action names in the game's order."""
        return list(ACTION_NAMES)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of a frame."""
        s = self.ae_cfg.image_size
        return (s, s, 3)

    @property
    def backend_name(self) -> str:
        """Name of the backend in use."""
        return self.backend.name

    @property
    def preset_name(self) -> str:
        """Name of the runtime preset in use."""
        return self.preset.name

    @property
    def memory_config(self) -> MemoryConfig | None:
        """How sessions remember beyond the window (None: memory off, the default)."""
        if self.preset.memory <= 0 and not self.preset.memory_fill:
            return None
        return MemoryConfig(slots=self.preset.memory, capacity=self.preset.memory_capacity, fill=self.preset.memory_fill)

    @property
    def tick_hz(self) -> float:
        """The pace the world was recorded for (steps per second of the real game's GUI)."""
        return float(self.meta.get("tick_hz", 8.0))

    # -- sessions -----------------------------------------------------------------------------------

    def new_session(self, context: np.ndarray | None = None, actions: Sequence[str | int | None] | None = None, seed: int = 0) -> "Session":
        """Start a session from real context frames uint8 (T,H,W,3) and the actions taken on them
        (acts[i] taken on frame i; the last may be None), or from the world's opening frames."""
        if context is None:
            if actions is not None:
                raise ValueError("actions given without context frames")
            context, acts = self.opening_frames, [int(a) for a in self.opening_actions]
        else:
            context, acts = self._check_context(context, actions)
        s = Session(self, seed)
        s._start(context, acts)
        return s

    def _check_context(self, frames: Any, actions: Any) -> tuple[np.ndarray, list[int]]:
        if not isinstance(frames, np.ndarray):
            raise TypeError(f"context must be a numpy uint8 array (T,H,W,3), got {type(frames).__name__}")
        if frames.dtype != np.uint8:
            raise TypeError(f"context must be uint8 (T,H,W,3), got dtype {frames.dtype}")
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1:] != self.frame_shape or frames.shape[0] < 1:
            raise ValueError(f"context must have shape (T,{','.join(map(str, self.frame_shape))}) with T >= 1, got {frames.shape}")
        T = frames.shape[0]
        if actions is None:
            acts = [NULL_ACTION] * T
        else:
            actions = list(actions)
            if len(actions) not in (T, T - 1):
                raise ValueError(f"{T} context frames need {T} actions (acts[i] taken on frame i; the last may be None) or {T - 1}, got {len(actions)}")
            acts = [NULL_ACTION if a is None else action_index(a) for a in actions] + [NULL_ACTION] * (T - len(actions))
        return frames, acts

    def load_session(self, path: str | os.PathLike) -> "Session":
        """Restore a session saved with Session.save (same world weights required)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"saved session not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise ValueError(f"saved session {path} is corrupt: {e}") from None
        try:
            meta = json.loads(bytes(arrays.pop("meta")).decode())
        except Exception as e:
            raise ValueError(f"saved session {path} has no valid metadata: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT or meta.get("version") != SESSION_VERSION:
            raise ValueError(f"{path}: not a worldsim session file of version {SESSION_VERSION}")
        if meta.get("world_id") != self.id:
            raise ValueError(f"{path} was saved from world {meta.get('world_id')}, this world is {self.id}")
        try:
            state = SessionState.from_arrays(arrays, meta)
            s = Session(self, int(meta["seed"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"saved session {path} is incomplete or corrupt: missing or bad {e}") from None
        d = self.dit_cfg
        want = (d.n_layers, 1, d.n_heads, state.cache.slots * d.tokens_per_frame, d.head_dim)
        if state.cache.k.shape != want or state.cache.v.shape != want or state.frame.shape != self.frame_shape:
            raise ValueError(f"saved session {path} does not fit this world: cache {state.cache.k.shape} (expected {want}), "
                             f"frame {state.frame.shape} (expected {self.frame_shape})")
        if state.memory is not None and state.memory.latent_shape != state.latent.shape:
            raise ValueError(f"saved session {path}: memory latents {state.memory.latent_shape} do not fit the world's {state.latent.shape}")
        s.restore(state)
        return s


def _best_backend() -> str:
    return "onnxruntime"  # the CPU default; tensorrt must be asked for explicitly until #7 lands


def _peek_config(path: Path, kind: str) -> dict:
    from worldsim.checkpoint import CheckpointError, read_meta

    if not path.is_file():
        raise FileNotFoundError(f"{kind} weights not found: {path}")
    meta = read_meta(path, kind=kind)
    if "config" not in meta:
        raise CheckpointError(f"{path}: no config in the checkpoint metadata")
    return meta["config"]


def _load_opening(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"opening frames not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            frames, actions = z["frames"], z["actions"]
    except Exception as e:
        raise ValueError(f"opening frames {path} are corrupt: {e}") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or len(actions) != len(frames):
        raise ValueError(f"opening frames {path}: expected uint8 (T,H,W,3) frames and T actions")
    return frames, actions.astype(np.int64)


# ---------------------------------------------------------------------------------------------------


@dataclass
class SessionState:
    """Everything a session is: restoring it reproduces the same frames for the same inputs."""

    frame_index: int  # absolute index of the current (last) frame
    cache: RingKVCache
    frame: np.ndarray  # uint8 (H,W,3) the current frame
    latent: np.ndarray  # float32 (C,g,g) the current frame's latent
    rng_state: dict
    extra: dict = field(default_factory=dict)
    memory: MemoryBank | None = None  # the memory bank and pose track (preset.memory > 0), else None
    awake: np.ndarray | None = None  # float32 (C,g,g) the last frame whose player was awake (preset.life_clock), else None
    # frames generated but not yet in the cache (RuntimePreset.fuse_commit): (x (1,k,C,g,g) as committed, with its
    # context noise drawn, actions (1,k) int64, index of its first frame); they enter it in the next chunk's first pass
    pending: tuple[np.ndarray, np.ndarray, int] | None = None

    def copy(self) -> "SessionState":
        """A deep copy."""
        return SessionState(self.frame_index, self.cache.copy(), self.frame.copy(), self.latent.copy(),
                            copy.deepcopy(self.rng_state), copy.deepcopy(self.extra), self.memory.copy() if self.memory is not None else None,
                            None if self.awake is None else self.awake.copy(),
                            None if self.pending is None else (self.pending[0].copy(), self.pending[1].copy(), self.pending[2]))

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays + JSON-able meta for saving."""
        arrays = {"cache_k": self.cache.k, "cache_v": self.cache.v, "cache_frame": self.cache.frame, "frame": self.frame, "latent": self.latent}
        meta = {"frame_index": self.frame_index, "next_slot": self.cache.next_slot, "tokens_per_frame": self.cache.tokens_per_frame,
                "rng_state": self.rng_state, "extra": self.extra}
        if self.memory is not None:
            mem_arrays, meta["memory"] = self.memory.to_arrays()
            arrays.update(mem_arrays)
        if self.awake is not None:
            arrays["awake_latent"] = self.awake
        if self.pending is not None:
            arrays["pending_x"], arrays["pending_actions"] = self.pending[0], self.pending[1]
            meta["pending_first"] = self.pending[2]
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "SessionState":
        """Inverse of to_arrays."""
        cache = RingKVCache(arrays["cache_k"], arrays["cache_v"], arrays["cache_frame"], int(meta["next_slot"]), int(meta["tokens_per_frame"]))
        memory = MemoryBank.from_arrays(arrays, meta["memory"]) if meta.get("memory") is not None else None
        pending = None
        if meta.get("pending_first") is not None:
            px, pa = np.asarray(arrays["pending_x"], np.float32), np.asarray(arrays["pending_actions"], np.int64)
            if px.ndim != 5 or pa.shape != px.shape[:2]:
                raise ValueError(f"pending frames of shape {px.shape} with actions {pa.shape}")
            pending = (px, pa, int(meta["pending_first"]))
        return cls(int(meta["frame_index"]), cache, arrays["frame"], arrays["latent"], meta["rng_state"], meta.get("extra", {}), memory,
                   arrays.get("awake_latent"), pending)


def _reads_generated(method):
    """Run a Session method with the world's tile reader in force (it reads the world's decoded frames)."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with reading_with(self.world.reader):
            return method(self, *args, **kwargs)
    return wrapped


class Session:
    """One running game in a world: step it with actions, snapshot/restore, save/load."""

    def __init__(self, world: World, seed: int = 0):
        self.world = world
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._state: SessionState | None = None
        self._energy_px: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the energy slot's token and pixels per count
        self.timings: dict[str, float] = {}
        self._mem_cfg = world.memory_config
        self._mem_kv = MemoryKV(keep=4 * self._mem_cfg.slots + 8) if self._mem_cfg is not None else None
        self._mem_empty: tuple[np.ndarray, ...] | None = None
        # the tile hold's last reading: (frame key, its lighting, its view labels) (derived, not state: a frame
        # read afresh with the same lighting gives the same labels)
        self._hold_labels: tuple[bytes | None, Any, np.ndarray | None] = (None, None, None)

    # -- public API ---------------------------------------------------------------------------------

    @property
    def frame(self) -> np.ndarray:
        """The current frame, uint8 (H,W,3)."""
        return self._state.frame

    @property
    def frame_index(self) -> int:
        """Absolute index of the current frame (the last context frame has index T-1)."""
        return self._state.frame_index

    def step(self, action: str | int | Sequence[str | int]) -> np.ndarray:
        """Advance by one action -> uint8 (H,W,3), or by a chunk of k actions -> uint8 (k,H,W,3)."""
        if isinstance(action, (str, int, np.integer)) and not isinstance(action, bool):
            return self._step_chunk([action_index(int(action) if isinstance(action, np.integer) else action)])[0]
        if isinstance(action, np.ndarray) and action.ndim == 1:
            action = action.tolist()
        if isinstance(action, (list, tuple)):
            if not action:
                raise ValueError("step() needs at least one action")
            idx = [action_index(a) for a in action]
            c = self.world.preset.chunk
            out = [self._step_chunk(idx[i:i + c]) for i in range(0, len(idx), c)]
            return np.concatenate(out)
        raise ValueError(f"step() takes an action name, an index or a list of them, got {action!r}; valid actions: {', '.join(ACTION_NAMES)}")

    def snapshot(self) -> SessionState:
        """A copy of the whole session state."""
        sync = getattr(self.world.backend, "sync_session", None)
        if sync is not None:  # a backend that keeps the cache on its device (tensorrt) copies it back first
            sync(self)
        s = self._state.copy()
        s.rng_state = self._rng.bit_generator.state
        return s

    def restore(self, state: SessionState) -> None:
        """Return to a snapshot: the same inputs then give the same frames."""
        if not isinstance(state, SessionState):
            raise TypeError(f"restore() takes a SessionState from snapshot(), got {type(state).__name__}")
        self._state = state.copy()
        self._rng.bit_generator.state = copy.deepcopy(state.rng_state)
        if self._mem_cfg is None:
            self._state.memory = None  # this world runs without memory
        elif self._state.memory is None:  # a state from a session without memory: start remembering here, at pose (0, 0)
            self._state.memory = self._new_memory()
            self._state.memory.observe(self._state.latent, self._state.frame_index, np.zeros(2, np.int64), _light(self._state.frame))

    def save(self, path: str | os.PathLike) -> None:
        """Save the session to a file (numpy .npz, no pickles), atomically."""
        state = self.snapshot()
        arrays, meta = state.to_arrays()
        meta.update({"format": SESSION_FORMAT, "version": SESSION_VERSION, "world_id": self.world.id, "seed": self.seed,
                     "preset": self.world.preset.__dict__, "backend": self.world.backend_name})
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())

    # -- internals ----------------------------------------------------------------------------------

    def _new_cache(self) -> RingKVCache:
        d = self.world.dit_cfg
        return RingKVCache.empty(d.n_layers, 1, d.n_heads, self.world.ring_slots, d.tokens_per_frame, d.head_dim)

    def _start(self, frames: np.ndarray, acts: list[int]) -> None:
        """Encode the context and commit its last `window` frames to the cache (fused commits: the last chunk of
        them is left pending for the first step's pass)."""
        T = len(frames)
        W = self.world.preset.window
        first = max(0, T - W)
        be = self.world.backend
        z = be.encode(frames[first:])  # (T',C,g,g)
        # model action of frame i = the action taken on frame i-1 (unknown for the first frame)
        model_acts = np.array([[acts[i - 1] if i > 0 else NULL_ACTION for i in range(first, T)]], np.int64)
        cache = self._new_cache()
        self._state = SessionState(T - 1, cache, frames[-1].copy(), z[-1].copy(), {})
        # with fused commits the last chunk's worth of context waits for the first step's pass (the ring holds the rest)
        self._commit(z[None], model_acts, first, pending=min(self.world.preset.chunk, len(z)) if self.world.fuses_commit else 0)
        rules = self.world.preset
        lits = [frame_lighting(f) for f in frames] if (self._mem_cfg is not None or rules.day_clock or rules.life_clock) else []
        lights = [float("nan") if lt is None or lt[1] else lt[0] for lt in lits]  # awake frames only
        if self.world.preset.day_clock:
            step = fit_clock(np.array(lights[-self.world.preset.window - 1:]))  # the game's step count (mod 300) of the last frame
            if step is not None:
                self._state.extra["day_offset"] = step - (T - 1)  # frame f is at step f + day_offset
        if self.world.preset.life_clock:
            self._start_life(frames, lits, z, first)
        if self._mem_cfg is not None:
            # every context frame enters the bank (those older than the window too), at poses tracked from (0, 0)
            z_all = be.encode(frames[:first]) if first > 0 else z[:0]
            z_all = np.concatenate([z_all, z]) if first > 0 else z
            bank = self._new_memory()
            for i, p in enumerate(track_poses(frames, np.asarray(acts[:T], np.int64))):
                bank.observe(z_all[i], i, p, lights[i])
                labels = read_view_tiles(frames[i], np.arange(VIEW_ROWS * VIEW_COLS), lits[i]) if np.isfinite(lights[i]) else None
                if labels is not None:
                    bank.tiles.observe(z_all[i], p, i, lights[i], labels)
            self._state.memory = bank

    def _start_life(self, frames: np.ndarray, lit: list, z: np.ndarray, first: int) -> None:
        """The life clock's state from the context frames uint8 (T,H,W,3), their frame_lighting ``lit`` and z, the
        latents of frames[first:]: energy and fatigue (engine.rules.fit_life) and the last awake frame; off where the
        frames cannot be read."""
        energies = read_energy(frames)
        if energies is None or lit[-1] is None:
            return
        asleep = np.array([lt is not None and lt[1] for lt in lit])
        st = self._state
        awake = np.flatnonzero(~asleep & np.array([lt is not None for lt in lit]))
        if len(awake):
            j = int(awake[-1])
            st.awake = z[j - first].copy() if j >= first else self.world.backend.encode(frames[j][None])[0]
        else:  # a context that only sleeps: the last frame as its sleeper will see it on waking
            j = len(frames) - 1
            view = rendered_awake_view(frames[j], lit[j][0])
            if view is None:
                return
            st.awake = self.world.backend.encode(view[None])[0]
        st.extra["awake_light"] = float(lit[j][0])
        st.extra["life"] = [*fit_life(energies, asleep), int(asleep[-1])]  # energy, fatigue, whether the player sleeps

    def _new_memory(self) -> MemoryBank:
        d = self.world.dit_cfg
        return MemoryBank.empty(self._mem_cfg, (d.latent_channels, d.grid, d.grid), self.world.preset.window + self.world.preset.chunk)

    def _commit(self, z: np.ndarray, acts: np.ndarray, first_frame: int, pending: int = 0) -> float:
        """Write clean (lightly re-noised) frames z (1,k,C,g,g) into the cache; -> seconds spent. The last
        ``pending`` of them (the world fuses commits: preset.fuse_commit) are only noised and kept in the state:
        the next chunk's first pass computes their keys and values with its own (_fused_first_pass). Either way the
        context noise is drawn here, so the RNG runs the same whether commits are fused or not."""
        t0 = time.perf_counter()
        st = self._state
        c = self.world.preset.ctx_noise
        k = z.shape[1]
        x = ((1 - c) * z + c * self._rng.standard_normal(z.shape, dtype=np.float32)).astype(np.float32)
        acts = np.asarray(acts, np.int64)
        if pending:
            st.pending = (x[:, k - pending:].copy(), acts[:, k - pending:].copy(), first_frame + k - pending)
            x, acts = x[:, :k - pending], acts[:, :k - pending]
        if x.shape[1]:
            self._commit_pass(x, acts, first_frame)
        return time.perf_counter() - t0

    def _commit_pass(self, x: np.ndarray, acts: np.ndarray, first_frame: int) -> None:
        """One DiT pass over noised clean frames x (1,k,C,g,g) against the cache; their keys/values go into it."""
        st = self._state
        past_t, past_valid = st.cache.inputs(first_frame)
        _, kk, vv = self.world.backend.dit(x, np.full(acts.shape, self.world.preset.ctx_noise, np.float32), acts, st.cache.k,
                                           st.cache.v, past_t, past_valid, np.zeros((1, st.cache.slots, 2), np.float32))
        st.cache.write(kk, vv, first_frame)

    def _flush_pending(self) -> None:
        """Commit the pending frames on their own pass (where the next pass cannot take them)."""
        st = self._state
        if st is not None and st.pending is not None:
            x, acts, first = st.pending
            st.pending = None
            self._commit_pass(x, acts, first)

    def _fused_first_pass(self, x: np.ndarray, sigma: float, a: np.ndarray) -> np.ndarray:
        """The first denoising pass of chunk x (1,k,C,g,g) at level sigma with the pending frames in front (one
        block-causal chunk: they see the cache, the new frames see the cache and them, as two passes would);
        writes the pending frames' keys/values to the cache -> x0 (1,k,C,g,g)."""
        st = self._state
        px, pa, pfirst = st.pending
        st.pending = None
        kp, c = px.shape[1], self.world.preset.ctx_noise
        past_t, past_valid = st.cache.inputs(pfirst)
        sig = np.concatenate([np.full((1, kp), c, np.float32), np.full((1, x.shape[1]), sigma, np.float32)], 1)
        x0, kk, vv = self.world.backend.dit(np.concatenate([px, x], 1), sig, np.concatenate([pa, a], 1), st.cache.k, st.cache.v,
                                            past_t, past_valid, np.zeros((1, st.cache.slots, 2), np.float32))
        n = kp * st.cache.tokens_per_frame
        st.cache.write(kk[:, :, :, :n], vv[:, :, :, :n], pfirst)
        return x0[:, kp:]

    def _game_actions(self, acts: list[int]) -> list[int]:
        """The actions as the game takes them (preset.life_clock): a sleep action at full energy is a noop."""
        life = self._state.extra.get("life") if self.world.preset.life_clock else None
        if life is not None and life[0] >= ENERGY_MAX and not life[2]:
            return [NOOP if a == SLEEP else a for a in acts]
        return acts

    def _step_chunk(self, acts: list[int]) -> np.ndarray:
        acts = self._game_actions(acts)
        if self._state.pending is not None and (not self.world.fuses_commit or len(acts) != self._state.pending[1].shape[1]):
            self._flush_pending()  # a state from a session that fused, here or on a short last chunk: commit it on its own
        if self._state.memory is not None:
            return self._step_chunk_memory(acts)
        fused = getattr(self.world.backend, "step_chunk", None)
        # the whole per-frame work on the backend's device (tensorrt: one CUDA graph); the rules and the warm
        # start read frames on the host between the passes, so they take the generic path
        if fused is not None and not self.world.preset.reads_frames:
            frames = fused(self, acts)
            if frames is not None:
                return frames
        st = self._state
        first = st.frame_index + 1
        t0 = time.perf_counter()
        past_t, past_valid = st.cache.inputs(first)
        shift = np.zeros((1, st.cache.slots, 2), np.float32)
        frames, _, timings = self._generate(acts, st.cache.k, st.cache.v, past_t, past_valid, shift, t0, {})
        self.timings = timings
        return frames

    def _generate(self, acts: list[int], past_k: np.ndarray, past_v: np.ndarray, past_t: np.ndarray, past_valid: np.ndarray,
                  shift: np.ndarray, t0: float, found: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Denoise k frames against the given past, apply the game's rules and the memory fill (``_finish``,
        which reports into ``found``), commit them to the window cache, decode, advance the state.

        -> (frames uint8 (k,H,W,3), latents (k,C,g,g), timings since t0)."""
        st = self._state
        w = self.world
        k = len(acts)
        d = w.dit_cfg
        first = st.frame_index + 1
        a = np.array([acts], np.int64)
        x = self._rng.standard_normal((1, k, d.latent_channels, d.grid, d.grid), dtype=np.float32)
        ts = w.sampler.timesteps()
        x, s0 = self._warm_start(x, acts)
        ts = [s0 * t for t in ts]  # exact for s0 = 1 (pure noise)
        for t, t_next in zip(ts[:-1], ts[1:]):
            if st.pending is not None and past_k is st.cache.k:
                # the pending frames' commit and this first pass in one call; later passes read them from the cache
                x0 = self._fused_first_pass(x, t, a)
                past_t, past_valid = st.cache.inputs(first)
            else:
                x0, _, _ = w.backend.dit(x, np.full((1, k), t, np.float32), a, past_k, past_v, past_t, past_valid, shift)
            noise = self._rng.standard_normal(x.shape, dtype=np.float32) if (w.sampler.stochastic and t_next > 0) else None
            x = w.sampler.step(x, x0, t, t_next, noise)
        x0 = np.asarray(x, np.float32)
        t1 = time.perf_counter()
        x0, frames = self._finish(x0, acts, found)
        t_fin = time.perf_counter()
        # the window only: a committed frame already shows what memory gave it; fused: kept for the next pass
        commit_s = self._commit(x0, a, first, pending=k if w.fuses_commit else 0)
        t2 = time.perf_counter()
        st.frame_index += k
        st.frame = frames[-1].copy()
        st.latent = x0[0, -1].copy()
        timings = {"denoise_ms": (t1 - t0) * 1e3, "commit_ms": commit_s * 1e3, "decode_ms": (t_fin - t1) * 1e3,
                   "total_ms": (t2 - t0) * 1e3, "rule_fixes": found.get("rule_fixes", 0), "relit": found.get("relit", 0),
                   "woken": found.get("woken", 0), "asleep_drawn": found.get("asleep_drawn", 0), "held": found.get("held", 0),
                   "faced_done": found.get("faced_done", 0), "faced_refused": found.get("faced_refused", 0),
                   "invented": found.get("invented", 0)}
        return frames, x0[0], timings

    # -- memory (preset.memory > 0) -------------------------------------------------------------------

    def _empty_past(self) -> tuple[np.ndarray, ...]:
        """One empty (masked) cache slot: the context of a memory frame's own pass."""
        if self._mem_empty is None:
            d = self.world.dit_cfg
            shape = (d.n_layers, 1, d.n_heads, d.tokens_per_frame, d.head_dim)
            self._mem_empty = (np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros((1, 1), np.float32),
                               np.zeros((1, 1), np.float32), np.zeros((1, 1, 2), np.float32))
        return self._mem_empty

    def _step_chunk_memory(self, acts: list[int]) -> np.ndarray:
        """_step_chunk with memory slots: retrieve for the predicted poses, denoise against window + memory,
        estimate the new frames' poses, commit (without memory: a committed frame already shows what memory
        gave it; training matches), add the frames to the bank. Same RNG draws as without memory."""
        st = self._state
        w = self.world
        bank = st.memory
        k = len(acts)
        d = w.dit_cfg
        first = st.frame_index + 1
        t0 = time.perf_counter()
        targets = predicted_poses(bank.current_pose, acts)  # where the player will be if its moves succeed
        rows = bank.retrieve(targets, first, w.preset.window) if w.preset.memory > 0 else np.zeros(0, np.int64)  # the fill alone reads no slots
        if len(rows):
            self._flush_pending()  # a committed frame sees no memory slots: never fused with a pass that reads them
        past_t, past_valid = st.cache.inputs(first)
        past_k, past_v, shift = st.cache.k, st.cache.v, np.zeros((1, st.cache.slots, 2), np.float32)
        if len(rows):  # only frames that need memory pay for it: the slot axis is dynamic
            mk, mv, mt, mvalid, mposes = memory_slots(bank, self._mem_kv, w.backend, rows, first, self._empty_past(), d.tokens_per_frame)
            past_k, past_v = np.concatenate([past_k, mk], 3), np.concatenate([past_v, mv], 3)
            past_t, past_valid = np.concatenate([past_t, mt], 1), np.concatenate([past_valid, mvalid], 1)
            shift = np.concatenate([shift, slot_shift(mposes, targets[0])], 1)
        t_mem = time.perf_counter()
        found: dict[str, Any] = {}
        frames, latents, timings = self._generate(acts, past_k, past_v, past_t, past_valid, shift, t_mem, found)
        t3 = time.perf_counter()
        for i in range(k):
            bank.observe(latents[i], first + i, found["poses"][i], float(found["lights"][i]))
        t4 = time.perf_counter()
        self.timings = {**timings, "memory_ms": ((t_mem - t0) + (t4 - t3)) * 1e3, "memory_slots": len(rows),
                        "memory_filled": found["filled"], "total_ms": (t4 - t0) * 1e3}
        return frames

    @_reads_generated
    def _warm_start(self, noise: np.ndarray, acts: list[int]) -> tuple[np.ndarray, float]:
        """The start of a chunk's denoising from its noise (1,k,C,g,g): -> (start, its level), (noise, 1.0) cold.

        With preset.warm the frame is denoised from that level, starting at the previous frame moved as the
        action moves the view (engine.rules.warm_start): the one-step sampler's prediction from pure noise
        averages what it is unsure of, and over an open-loop rollout the world's objects fade into grass;
        starting near the previous frame keeps what did not change.
        """
        st, warm = self._state, self.world.preset.warm
        if warm <= 0 or len(acts) != 1 or st.latent is None or st.frame is None:
            return noise, 1.0
        start = warm_start(st.latent, st.frame, acts[0])
        if start is None:
            return noise, 1.0
        return (warm * noise + (1 - warm) * start[None, None]).astype(np.float32), float(warm)

    @_reads_generated
    def _finish(self, x0: np.ndarray, acts: list[int], found: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The denoised chunk x0 (1,k,C,g,g) -> (x0 as it will be committed, its frames uint8 (k,H,W,3)).

        Decodes, then frame by frame (each against the final frame before it): Crafter's blocked-move rule
        (preset.block_rule: a move onto a tile the player cannot enter only turns it), the day clock
        (preset.day_clock: a frame lit otherwise than the game's clock says is relit; both engine.rules), and
        with a memory bank the pose of the new frame and the fill of the tiles its move uncovered. Reports
        rule_fixes, relit, held (preset.tile_hold: tiles put back, engine.rules.hold_tiles), faced_done /
        faced_refused (preset.faced_rule: engine.rules.faced_tile), invented (natural ground) and, with
        memory, poses, lights and filled into ``found``.
        """
        w, st = self.world, self._state
        bank = st.memory
        frames = w.backend.decode(x0[0])
        rule, hold, faced = w.preset.block_rule, w.preset.tile_hold, w.preset.faced_rule
        offset = st.extra.get("day_offset") if w.preset.day_clock else None
        life = st.extra.get("life") if w.preset.life_clock else None
        if not rule and bank is None and offset is None and life is None and not hold and not faced:
            return x0, frames
        k = len(acts)
        out, poses, lights = x0.copy(), np.zeros((k, 2), np.int64), np.zeros(k, np.float32)
        prev, prev_z = st.frame, st.latent
        # the last frame's lighting as the hold read it (state: a restored session reads the same), else read here
        prev_lit = (st.extra.get("hold_lit") or frame_lighting(prev)) if hold else None
        pose = bank.current_pose if bank is not None else np.zeros(2, np.int64)
        fixes = filled = held = relit = woken = drawn = done = refused = invented = 0
        for i, a in enumerate(acts):
            walkable = target_walkable(prev, a, frames[i]) if (rule or bank is not None or hold) else None
            if rule:
                z, fixed = enforce_blocked_move(prev, prev_z, out[0, i], frames[i], a, walkable)
                if fixed:
                    out[0, i], frames[i] = z, w.backend.decode(z[None])[0]
                    fixes += 1
            lit = frame_lighting(frames[i]) if (offset is not None or bank is not None or life is not None or hold or faced) else None
            want = float(daylight_at(st.frame_index + 1 + i + offset)) if offset is not None else None  # the clock's light
            if life is not None:
                out[0, i], frames[i], lit, kind = self._life_step(a, out[0, i], frames[i], lit, want, life)
                woken, drawn = woken + (kind == "woken"), drawn + (kind == "drawn")
            if want is not None and lit is not None and not lit[1]:
                # the game's clock sets the light: a generated frame lit otherwise is relit (engine.rules.relight)
                if abs(lit[0] - want) > DAY_CLOCK_TOLERANCE:
                    z = w.backend.encode(relight(frames[i], lit[0], want)[None])[0]
                    out[0, i], frames[i] = z, w.backend.decode(z[None])[0]
                    lit, relit = (want, False), relit + 1
            if life is not None and lit is not None and not lit[1]:
                st.awake = out[0, i].copy()
                st.extra["awake_light"] = float(lit[0])
            if faced:
                # the way the player faces: Crafter turns it with every move action, blocked or not; until the
                # session's first move, read from the player's sprite when an action needs it
                if a in PLACE_RULES or a == DO:
                    if st.extra.get("facing") is None:
                        f = read_facing(prev)
                        st.extra["facing"] = None if f is None else list(f)
                    z, px, kind = faced_tile(prev, prev_z, frames[i], out[0, i], a, st.extra["facing"], lit,
                                             w.backend.encode, w.backend.decode)
                    if kind is not None:
                        out[0, i], frames[i] = z, px
                        done, refused = done + (kind == "done"), refused + (kind == "refused")
                elif a in MOVE_DIRECTIONS and not (lit is not None and lit[1]):   # a sleeper's moves are ignored
                    st.extra["facing"] = list(MOVE_DIRECTIONS[a])
            if bank is not None or hold:
                move = self._move(prev, frames[i], a, walkable)
                # the fill (cells the move uncovered) and the hold (cells both frames show) touch different tiles:
                # both read the frame as decoded here, and one decode serves both
                z, changed, view = out[0, i], 0, None
                if bank is not None:
                    new_pose = pose + move
                    lights[i] = np.nan if lit is None or lit[1] else lit[0]  # a sleeper's dark view is no tile source
                    if bank.cfg.fill:
                        light = None if lit is None or lit[1] else lit[0]
                        # a dark frame's tiles are checked against the map's brighter views (engine.memory.DARK)
                        view = read_view_tiles(frames[i], np.arange(VIEW_ROWS * VIEW_COLS), lit) if light is not None and light < DARK else None
                        z, n = fill_uncovered(bank.tiles, z, frames[i], pose, new_pose, light,
                                              bank.cfg.fill_light_tol, w.backend.encode, w.backend.decode, view, a)
                        # of the cells the map never saw: no table, furnace or plant the player did not place
                        z, m = (natural_uncovered(bank.tiles, z, frames[i], pose, new_pose, light, w.backend.encode)
                                if w.preset.natural_ground else (z, 0))
                        if w.preset.ground_sample and w.ground is not None:  # then one material drawn from the model's mix
                            z, m2 = sample_uncovered(bank.tiles, z, frames[i], pose, new_pose, light, w.ground, w.backend.encode, self.seed)
                            m += m2
                        filled, changed, invented = filled + n, changed + n + m, invented + m
                    pose = poses[i] = new_pose
                labels = None
                if hold:
                    # the previous frame's labels come from the last hold when it read that very frame
                    key, key_lit, cached = self._hold_labels
                    was = cached if key is not None and key_lit == _lit_key(prev_lit) and key == _frame_key(prev) else None
                    # frames[i] is still the frame as decoded (the fill changed only z): the dark check's reading holds
                    z, px, n, labels = hold_tiles(prev, prev_z, frames[i], z, move, a, prev_lit, lit, was, view)
                    held += n
                    if n and not changed:
                        out[0, i], frames[i] = z, px  # the held tiles' pixels pasted: no decode
                if changed:  # the fill: decode (the held tokens bring their tiles back the same way)
                    out[0, i], frames[i], labels = z, w.backend.decode(z[None])[0], None
                self._hold_labels = (None, None, None) if labels is None else (_frame_key(frames[i]), _lit_key(lit), labels)
                if bank is not None and lit is not None and not lit[1]:  # the tile map: each cell's newest view
                    if labels is None:
                        labels = read_view_tiles(frames[i], np.arange(VIEW_ROWS * VIEW_COLS), lit)
                    if labels is not None:
                        bank.tiles.observe(out[0, i], pose, st.frame_index + 1 + i, float(lit[0]), labels, a)
            prev, prev_z, prev_lit = frames[i], out[0, i], lit
        if hold:
            st.extra["hold_lit"] = None if lit is None else [float(lit[0]), bool(lit[1])]
        found.update(poses=poses, lights=lights, filled=filled, held=held, rule_fixes=fixes, relit=relit, woken=woken, asleep_drawn=drawn,
                     faced_done=done, faced_refused=refused, invented=invented)
        return out, frames

    def _life_step(self, action: int, z: np.ndarray, frame: np.ndarray, lit: tuple[float, bool] | None,
                   clock: float | None, life: list) -> tuple[np.ndarray, np.ndarray, tuple[float, bool] | None, str | None]:
        """The life clock on a frame (latent z (C,g,g), frame uint8 (H,W,3), its lighting ``lit``; ``clock``: the
        day clock's daylight for it, None without the clock) made by ``action``: -> (z, frame, lit, "woken" |
        "drawn" | None), the counter ``life`` [energy, fatigue, asleep] advanced in place.

        Whether the player sleeps is the game's rule, not the model's guess: asleep after a sleep action or
        asleep before, while energy is below the maximum (Player.update). A sleeper's frame is its last awake
        view drawn as the game draws a sleeper's (preset.sleep_view); an awake player the model drew asleep
        gets its last awake frame back. Both are lit as the day clock says (or as they were). The inventory shows
        the counter's energy."""
        w, st = self.world, self._state
        asleep = bool((life[2] or action == SLEEP) and life[0] < ENERGY_MAX)
        light = float(st.extra["awake_light"])
        want = light if clock is None else clock
        kind = None
        if asleep and w.preset.sleep_view:
            # a sleeper does not move: the game draws the world it saw awake, grey (engine.rules.sleeping_view)
            view = sleeping_view(w.backend.decode(st.awake[None])[0], light, want)
            if view is not None:
                z, kind = w.backend.encode(view[None])[0], "drawn"
        elif not asleep and lit is not None and lit[1]:
            # the game woke the player (energy full) or never put it to sleep: its last awake frame
            z = w.backend.encode(relight(w.backend.decode(st.awake[None])[0], light, want)[None])[0] if want != light else st.awake
            kind = "woken"
        if kind is not None:
            frame, lit = w.backend.decode(z[None])[0], (want, asleep)
        life[0], life[1] = advance_life(life[0], life[1], asleep)
        life[2] = int(asleep)
        # the frame shows the energy after this step's update, as the game's: the model copies the inventory it
        # saw (its energy never moved). One token per tile: the slot's token and pixels are swapped in, no pass
        token, pixels, rows, cols = self._energy_tile(frame, life[0])
        if token is not None:
            z = z.copy()
            z[:, rows[0], rows[1]] = token
            frame = frame.copy()
            frame[cols[0], cols[1]] = pixels
        return z, frame, lit, kind

    def _energy_tile(self, frame: np.ndarray, energy: int) -> tuple:
        """The latent token (C,) and decoded pixels (u,u,3) of the inventory's energy slot showing ``energy``
        (cached per count: computed once from ``frame`` with the slot drawn), its token (row, col) and its
        pixel (rows, cols) slices; (None, ...) where the frame is not Crafter's size."""
        try:
            _, r, c, ys, xs = energy_slot(frame.shape[0])
        except (ImportError, ValueError, IndexError):
            return None, None, None, None
        hit = self._energy_px.get(int(energy))
        if hit is None:
            be = self.world.backend
            z = be.encode(draw_energy(frame, energy)[None])
            hit = self._energy_px[int(energy)] = (z[0][:, r, c].copy(), be.decode(z)[0][ys, xs].copy())
        return hit[0], hit[1], (r, c), (ys, xs)

    def _move(self, prev: np.ndarray, frame: np.ndarray, action: int, walkable: bool | None) -> np.ndarray:
        """The player's move (dx, dy) int64 (2,) from ``prev`` to ``frame`` (uint8 (H,W,3)) under ``action``.

        There is no game to ask: the move is read from the generated frames, with Crafter's rule (is the
        faced tile walkable?) deciding where the view alone is ambiguous (worldsim.memory.estimate_move).
        """
        return np.asarray(estimate_move(prev, frame, action, walkable), np.int64)


NOOP, SLEEP = ACTION_NAMES.index("noop"), ACTION_NAMES.index("sleep")


def _frame_key(frame: np.ndarray) -> bytes:
    """A short digest of a frame's pixels (the tile hold's label cache key)."""
    return hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()


def _lit_key(lit: Sequence | None) -> tuple | None:
    """A lighting (daylight, asleep) as a comparable tuple (the state keeps it as a JSON list)."""
    return None if lit is None else (float(lit[0]), bool(lit[1]))


def _light(frame: np.ndarray, awake_only: bool = False) -> float:
    """A frame's daylight (NaN where it cannot be read, or with ``awake_only`` where the player sleeps)."""
    lit = frame_lighting(frame)
    return float("nan") if lit is None or (awake_only and lit[1]) else lit[0]
