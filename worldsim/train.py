"""`worldsim train autoencoder|dit`: training loops for the frame autoencoder and the dynamics DiT.

A run directory holds `config.json`, `last.safetensors` (model + EMA + optimizer state, resumable),
`log.jsonl` (one JSON line per log/validation event) and `val/` PNG grids. Runs unchanged under
`torchrun --nproc_per_node=N` (DDP: gloo on CPU, nccl on GPU); only rank 0 writes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.actions import NULL_ACTION
from worldsim.autoencoder import AEConfig, Autoencoder, ae_config_from_dict, ae_preset, frames_to_tensor, tensor_to_frames
from worldsim.checkpoint import CheckpointError, load_checkpoint, load_state_strict, read_meta, save_checkpoint
from worldsim.config import config_from_dict, config_to_dict, preset
from worldsim.diffusion import FlowSampler, add_noise, sample_context_levels, sample_target_levels
from worldsim.dit import CausalDiT, DiTConfig, dit_config_from_dict, dit_preset
from worldsim.io import atomic_write_json


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both stages (fields unused by a stage are ignored)."""

    model: str = "small"  # model preset name
    steps: int = 20000
    batch: int = 64  # frames (autoencoder) or clips (DiT) per step, summed over DDP ranks
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema: float = 0.999
    clip_len: int = 6  # DiT: frames per training clip
    # DiT: every long_clip_every-th step trains on clips of long_clip_len frames (0 = off), long_clip_batch clips
    # (0 = batch): a longer window learned beside the short one (switching to long clips outright unlearned it)
    long_clip_len: int = 0
    long_clip_every: int = 4
    long_clip_batch: int = 0
    ctx_noise_max: float = 0.1  # DiT: context frames get a noise level in [0, this]
    action_dropout: float = 0.1  # DiT: fraction of frames whose action is replaced by the null action
    p_pure: float = 0.25  # DiT: fraction of target frames at noise level 1
    self_rollout_after: float = 0.5  # DiT: fraction of training after which the self-rollout stage starts
    self_rollout_prob: float = 0.5  # DiT: probability a step uses the model's own predictions as context
    self_rollout_depth: int = 1  # DiT: generations the self-rollout context went through (2: predicted from predictions)
    blocked_weight: float = 1.0  # DiT: loss weight of frames after a blocked move (rare, and the view must stay put)
    # DiT: fraction of target frames (after a clip's first, not after a sleep action) whose input is what the
    # engine's warm start gives (preset field warm): the frame before, moved as the player moved, noised to
    # warm_level; the self-rollout context is then generated the same way. 0 = off
    warm_target_prob: float = 0.0
    warm_level: float = 0.5
    # DiT: fraction of clips placed so they hold a frame where the player falls asleep or wakes (1,453 of 200k
    # frames of the training set: the model's sleeping view is where the open loop loses most); 0 = uniform
    sleep_clip_frac: float = 0.0
    memory_frames: int = 0  # DiT: past frames of the same episode given to each clip as memory (0 = off; see worldsim.memory)
    memory_revisit: float = 0.5  # DiT with memory: fraction of clips placed where a revisited place comes back into view
    memory_dropout: float = 0.1  # DiT with memory: fraction of memory frames masked out (the model must also work without)
    memory_max_age: int = 1000  # DiT with memory: memory time offsets are clamped to -this (as at play time)
    bf16: bool = True
    log_every: int = 25
    val_every: int = 500
    ckpt_every: int = 250
    seed: int = 0
    max_train_episodes: int | None = None
    max_val_episodes: int | None = 8


TRAIN_PRESETS: dict[str, dict[str, TrainConfig]] = {
    "autoencoder": {
        "tiny": TrainConfig(model="tiny", steps=20, batch=8, lr=2e-3, warmup=2, log_every=5, val_every=10, ckpt_every=10,
                            max_train_episodes=2, max_val_episodes=1),
        "small": TrainConfig(model="small", steps=6000, batch=64, lr=1e-3, warmup=200),
    },
    "dit": {
        "tiny": TrainConfig(model="tiny", steps=20, batch=4, lr=2e-3, warmup=2, clip_len=4, log_every=5, val_every=10,
                            ckpt_every=10, max_train_episodes=2, max_val_episodes=1),
        "small": TrainConfig(model="small", steps=30000, batch=12, lr=5e-4, warmup=300, clip_len=6, val_every=250, ckpt_every=100),
    },
}


# ---------------------------------------------------------------------------------------------------
# distributed helpers


def _dist_setup() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; -> (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def clip_for_step(step: int, cfg: TrainConfig) -> tuple[int, int]:
    """(frames per clip, clips summed over ranks) of training step ``step`` (the same on every rank)."""
    if cfg.long_clip_len and step % cfg.long_clip_every == cfg.long_clip_every - 1:
        return cfg.long_clip_len, cfg.long_clip_batch or cfg.batch
    return cfg.clip_len, cfg.batch


def trained_window(train_meta: dict[str, Any]) -> int:
    """The longest window (frames of context) a DiT saw in training, from its checkpoint's train config."""
    return max(int(train_meta.get("clip_len", 8)), int(train_meta.get("long_clip_len", 0) or 0)) - 1


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# ---------------------------------------------------------------------------------------------------
# checkpoints


def _opt_state_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an AdamW state into tensors + JSON (no pickles)."""
    tensors, meta = {}, {}
    for i, (pid, st) in enumerate(opt.state_dict()["state"].items()):
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                meta[f"{pid}.{k}"] = v
    return tensors, meta


def _load_opt_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def save_model(path: str | os.PathLike, kind: str, model: torch.nn.Module, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Save a model (weights + its config) as a standalone safetensors checkpoint."""
    meta = {"kind": kind, "config": config_to_dict(cfg), **(extra or {})}
    save_checkpoint(path, dict(model.state_dict()), meta)


def _load_model(path: str | os.PathLike, kind: str, cls: type, config_from_dict) -> torch.nn.Module:
    tensors, meta = load_checkpoint(path, kind=kind)
    model = cls(config_from_dict(meta["config"]))
    load_state_strict(model, model_tensors(tensors), path)
    return model.eval()


def load_autoencoder(path: str | os.PathLike) -> Autoencoder:
    """Load an autoencoder checkpoint (EMA weights when the file is a training state)."""
    return _load_model(path, "autoencoder", Autoencoder, ae_config_from_dict)


def load_dit(path: str | os.PathLike) -> CausalDiT:
    """Load a DiT checkpoint (EMA weights when the file is a training state)."""
    return _load_model(path, "dit", CausalDiT, dit_config_from_dict)


def model_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """From a training state take the EMA weights; a plain model file passes through."""
    if any(k.startswith("ema.") for k in tensors):
        return {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    return tensors


# ---------------------------------------------------------------------------------------------------
# the trainer shared by both stages


class Trainer:
    """Owns the model, EMA, optimizer, run directory, logging, checkpoints and DDP wrapping."""

    def __init__(self, kind: str, model: torch.nn.Module, model_cfg: Any, cfg: TrainConfig, run_dir: Path, extra_meta: dict[str, Any],
                 wrap: Any = None):
        self.kind, self.cfg, self.model_cfg, self.run_dir = kind, cfg, model_cfg, Path(run_dir)
        self.rank, self.world = _dist_setup()
        self.device = _device()
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.step = 0
        self.extra_meta = extra_meta
        self.ddp = None
        if self.world > 1:
            # `wrap` adapts the module whose forward DDP must call (the DiT trains through forward_teacher)
            target = wrap(self.model) if wrap is not None else self.model
            self.ddp = torch.nn.parallel.DistributedDataParallel(target, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ckpt_path = self.run_dir / "last.safetensors"
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._resume_or_init()

    @property
    def net(self) -> torch.nn.Module:
        """The module to call in the training step (DDP-wrapped when distributed)."""
        return self.ddp if self.ddp is not None else self.model

    def _meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": config_to_dict(self.model_cfg), "train": config_to_dict(self.cfg), **self.extra_meta}

    def _resume_or_init(self) -> None:
        cfg_path = self.run_dir / "config.json"
        meta = self._meta()
        if self.ckpt_path.exists():
            tensors, saved = load_checkpoint(self.ckpt_path, kind=self.kind)
            if saved["config"] != meta["config"]:
                raise CheckpointError(f"{self.ckpt_path}: the run was started with model config {saved['config']}, "
                                      f"not {meta['config']}; use another --out or the same preset")
            load_state_strict(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, self.ckpt_path)
            load_state_strict(self.ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, self.ckpt_path)
            _load_opt_state(self.opt, tensors, saved.get("opt_meta", {}))
            self.step = int(saved["step"])
            if self.rank == 0:
                print(f"resumed {self.kind} from {self.ckpt_path} at step {self.step}")
        elif self.rank == 0:
            atomic_write_json(cfg_path, meta)

    def save(self) -> None:
        """Atomically write the full training state (rank 0)."""
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt_t, opt_meta = _opt_state_tensors(self.opt)
        tensors.update(opt_t)
        meta = self._meta() | {"step": self.step, "opt_meta": opt_meta}
        save_checkpoint(self.ckpt_path, tensors, meta)

    def export(self, path: Path) -> None:
        """Write the EMA weights alone (what ships)."""
        if self.rank == 0:
            save_checkpoint(path, dict(self.ema.state_dict()), self._meta() | {"step": self.step})

    def update(self, loss: torch.Tensor) -> float:
        """Backward + clip + AdamW step + EMA; -> grad norm."""
        for g in self.opt.param_groups:
            g["lr"] = _lr_at(self.step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0).item()
        self.opt.step()
        with torch.no_grad():
            d = self.cfg.ema if self.step > self.cfg.warmup else 0.0
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm.detach(), 1 - d)
            for be, bm in zip(self.ema.buffers(), self.model.buffers()):
                be.copy_(bm)
        self.step += 1
        return gn

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to log.jsonl (rank 0)."""
        if self.rank == 0:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "time": time.time(), **record}) + "\n")

    def autocast(self):
        """bf16 autocast context when enabled."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)


# ---------------------------------------------------------------------------------------------------
# data


def _open(data: str, split: str, max_episodes: int | None, fields: tuple[str, ...]):
    from worldsim.data.dataset import open_dataset

    return open_dataset(data).load(split=split, fields=fields, max_episodes=max_episodes)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def _save_grid(path: Path, rows: list[np.ndarray]) -> None:
    """Save rows of frames (each (T,H,W,3) uint8) as one PNG grid."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def _tile_metrics(pred: np.ndarray, true: np.ndarray, **kw) -> dict[str, float]:
    """Tile metrics from the evaluation package when available (it is optional for training)."""
    try:
        from worldsim.eval.metrics import tile_metrics
    except ImportError:
        return {}
    try:
        return {f"tile_{k}": float(v) for k, v in tile_metrics(pred, true, **kw).items() if np.isscalar(v)}
    except Exception as e:  # validation must never kill a long run
        return {"tile_error": str(e)[:200]}


# ---------------------------------------------------------------------------------------------------
# autoencoder


def train_autoencoder(data: str, out: str, cfg: TrainConfig, progress: bool = True, val_data: str | None = None) -> Path:
    """Train the frame autoencoder; -> path of the exported EMA model (out/autoencoder.safetensors)."""
    model_cfg = ae_preset(cfg.model)
    torch.manual_seed(cfg.seed)
    trainer = Trainer("autoencoder", Autoencoder(model_cfg), model_cfg, cfg, Path(out), {"data": str(data)})
    tiles = model_cfg.tile_loss > 0  # the tile-class loss reads the game's semantic map of each frame
    fields = ("frames", "daylight") + (("semantic",) if tiles else ()) + (("unlit", "sleeping") if model_cfg.lit else ())
    train = _open(data, "train", cfg.max_train_episodes, fields)
    val = _open(val_data or data, "val", cfg.max_val_episodes, ("frames", "daylight", "semantic"))
    frames = train.array("frames")  # (N,S,S,3): all episodes back to back, no copy
    semantic = train.array("semantic") if tiles else None  # (N,7,9) the view's tile ids
    vframes, vday = val.array("frames"), val.array("daylight")
    if frames.shape[1] != model_cfg.image_size:
        raise ValueError(f"dataset frames are {frames.shape[1]}px but the autoencoder preset expects {model_cfg.image_size}px")
    if model_cfg.lit:  # the encoder's hints (the texture model's unlit reading), once per run, cached in the run
        hint_view, hint_light = _lit_hints(Path(out), frames, progress and trainer.rank == 0)
        unlit = train.array("unlit")
        light = np.stack([train.array("daylight"), train.array("sleeping")], 1).astype(np.float32)
    rng = np.random.default_rng(cfg.seed + 1000 * trainer.rank)
    per_rank = max(1, cfg.batch // trainer.world)
    bar = _bar(cfg.steps, trainer.step, progress and trainer.rank == 0, "autoencoder")
    t0, seen = time.perf_counter(), 0
    while trainer.step < cfg.steps:
        idx = rng.integers(0, len(frames), per_rank)
        x = frames_to_tensor(torch.from_numpy(frames[idx])).to(trainer.device)
        sem = torch.from_numpy(semantic[idx].astype(np.int64)).to(trainer.device) if tiles else None
        lit = None
        if model_cfg.lit:
            dev = trainer.device
            lit = (frames_to_tensor(torch.from_numpy(hint_view[idx])).to(dev), torch.from_numpy(hint_light[idx]).to(dev),
                   frames_to_tensor(torch.from_numpy(unlit[idx])).to(dev), torch.from_numpy(light[idx]).to(dev))
        with trainer.autocast():
            loss, parts = trainer.net(x, sem, lit)  # Autoencoder.forward is its training loss
        gn = trainer.update(loss)
        seen += per_rank * trainer.world
        if trainer.step % cfg.log_every == 0:
            fps = seen / (time.perf_counter() - t0)
            trainer.log({"loss": loss.item(), "grad_norm": gn, "frames_per_s": fps, **parts})
            if bar:
                bar.set_postfix(loss=f"{loss.item():.5f}", fps=f"{fps:.0f}")
        if bar:
            bar.update(1)
        if trainer.step % cfg.val_every == 0 or trainer.step == cfg.steps:
            _validate_ae(trainer, vframes, vday)
        if trainer.step % cfg.ckpt_every == 0 or trainer.step == cfg.steps:
            trainer.save()
    if bar:
        bar.close()
    _set_latent_stats(trainer.ema, frames, trainer.device)
    out_path = Path(out) / "autoencoder.safetensors"
    trainer.export(out_path)
    return out_path


def _lit_hints(run_dir: Path, frames: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """The texture model's unlit reading of every training frame (worldsim.light.unlit_hint): (N,S,S,3) uint8,
    (N,2) float32; cached in the run directory (``hints.npz``, checked against the frames' count and a digest)."""
    from worldsim.light import unlit_hint

    path = run_dir / "hints.npz"
    digest = hashlib.sha256(frames[:: max(1, len(frames) // 64)].tobytes()).hexdigest()[:16]
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["digest"]) == digest and len(z["view"]) == len(frames):
                    return z["view"], z["light"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a torn or foreign cache: computed again below
    view, light = np.empty_like(frames), np.empty((len(frames), 2), np.float32)
    bar = _bar(len(frames), 0, progress, "hints")
    for i in range(0, len(frames), 2048):
        view[i:i + 2048], light[i:i + 2048] = unlit_hint(frames[i:i + 2048])
        if bar:
            bar.update(len(view[i:i + 2048]))
    if bar:
        bar.close()
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f"hints.{os.getpid()}.tmp.npz"  # DDP ranks each compute it: no shared temporary
    np.savez(tmp, view=view, light=light, digest=np.array(digest))
    os.replace(tmp, path)
    return view, light


@torch.no_grad()
def _set_latent_stats(ae: Autoencoder, frames: np.ndarray, device: torch.device, n: int = 4096) -> None:
    """Per-channel mean/std of raw latents over (a sample of) the training frames."""
    idx = np.random.default_rng(0).choice(len(frames), min(n, len(frames)), replace=False)
    zs = []
    for i in range(0, len(idx), 256):
        x = frames_to_tensor(torch.from_numpy(frames[np.sort(idx[i:i + 256])])).to(device)
        zs.append(ae.encode_raw(x).float())  # a lit autoencoder computes its hints here
    z = torch.cat(zs)
    ae.latent_mean.copy_(z.mean((0, 2, 3)))
    ae.latent_std.copy_(z.std((0, 2, 3)).clamp_min(1e-3))


@torch.no_grad()
def _validate_ae(trainer: Trainer, vframes: np.ndarray, vday: np.ndarray) -> dict[str, float]:
    if trainer.rank != 0:
        return {}
    ae = trainer.ema
    n = min(len(vframes), 512)
    idx = np.linspace(0, len(vframes) - 1, n).astype(int)
    recon = []
    for i in range(0, n, 128):
        x = frames_to_tensor(torch.from_numpy(vframes[idx[i:i + 128]])).to(trainer.device)
        # a lit autoencoder draws the night with its own noise: by day its frames are the game's
        y = ae.decode(ae.encode(x)) if ae.cfg.lit else ae.decode_raw(ae.encode_raw(x)).clamp(0, 1)
        recon.append(tensor_to_frames(y).cpu().numpy())
    recon = np.concatenate(recon)
    true = vframes[idx]
    day = vday[idx] >= 0.5
    rec: dict[str, float] = {"val_psnr_day": float(np.mean([_psnr(r, t) for r, t in zip(recon[day], true[day])])) if day.any() else float("nan"),
                             "val_psnr_night": float(np.mean([_psnr(r, t) for r, t in zip(recon[~day], true[~day])])) if (~day).any() else float("nan")}
    rec.update(_tile_metrics(recon[None], true[None]))
    trainer.log({"val": True, **rec})
    _save_grid(trainer.run_dir / "val" / f"ae-{trainer.step:07d}.png", [true[:8], recon[:8]])
    print(f"[val step {trainer.step}] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    return rec


# ---------------------------------------------------------------------------------------------------
# DiT


class LatentClips:
    """Episodes encoded to normalized latents once; samples aligned (latents, actions) clips."""

    def __init__(self, store, ae: Autoencoder, device: torch.device, batch: int = 256):
        self.lat: list[torch.Tensor] = []  # per episode (N,C,g,g) float16
        self.act: list[np.ndarray] = []
        self.frames = [e["frames"] for e in store.episodes]
        for e in store.episodes:
            zs = []
            with torch.no_grad():
                for i in range(0, len(e["frames"]), batch):
                    x = frames_to_tensor(torch.from_numpy(e["frames"][i:i + batch])).to(device)
                    zs.append(ae.encode(x).half().cpu())
            self.lat.append(torch.cat(zs))
            self.act.append(np.asarray(e["actions"]).astype(np.int64))
        # memory training needs the true poses (and prefers clips at revisits); loaded only then
        self.pos = [np.asarray(e["pos"], np.int64) for e in store.episodes] if all("pos" in e for e in store.episodes) else None
        self.events = ([np.asarray(e["revisit_events"], np.int64).reshape(-1, 6) for e in store.episodes]
                       if all("revisit_events" in e for e in store.episodes) else None)
        # frames where the player falls asleep or wakes (loaded with the 'sleeping' field only)
        self.sleep_changes = ([np.nonzero(np.diff(np.asarray(e["sleeping"]).astype(np.int8)))[0] + 1 for e in store.episodes]
                              if all("sleeping" in e for e in store.episodes) else None)

    def _start(self, rng: np.random.Generator, e: int, T: int, sleep_frac: float) -> int:
        """First frame of a clip of T frames in episode e: uniform (frame s-1 exists: its action produced frame
        s), or with probability ``sleep_frac`` placed to hold a frame where the player falls asleep or wakes."""
        n = len(self.lat[e])
        if sleep_frac > 0:  # no extra draw when off: the uniform clips stay the same
            if self.sleep_changes is None:
                raise ValueError("sleep_clip_frac needs the 'sleeping' field of the dataset")
            changes = self.sleep_changes[e]
            if len(changes) and rng.random() < sleep_frac:
                t = int(changes[rng.integers(len(changes))])
                return int(np.clip(t - rng.integers(0, T), 1, n - T))
        return int(rng.integers(1, n - T + 1))

    def sample(self, rng: np.random.Generator, batch: int, T: int,
               sleep_frac: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """-> latents (B,T,C,g,g) float32, actions (B,T) int64 (action that produced frame i), origins;
        a fraction ``sleep_frac`` of the clips holds a sleep change (``_start``)."""
        lens = np.array([len(x) for x in self.lat])
        ok = np.nonzero(lens > T)[0]
        if len(ok) == 0:
            raise ValueError(f"no episode is longer than the clip length {T}")
        eps = rng.choice(ok, batch, p=lens[ok] / lens[ok].sum())
        zs, acts, origins = [], [], []
        for e in eps:
            s = self._start(rng, int(e), T, sleep_frac)
            zs.append(self.lat[e][s:s + T].float())
            acts.append(torch.from_numpy(self.act[e][s - 1:s - 1 + T]))
            origins.append((int(e), s))
        return torch.stack(zs), torch.stack(acts), origins

    def moves(self, origins: list[tuple[int, int]], T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (moved, blocked), (B,T) bool each: clip frame i shows the player on another tile than frame i-1;
        frame i came from a move action that did not move the player (needs ``pos``)."""
        from worldsim.memory import MOVE_DELTAS

        if self.pos is None:
            raise ValueError("move metrics and blocked-move weighting need the 'pos' field of the dataset")
        pos = np.stack([self.pos[e][s - 1:s + T] for e, s in origins])  # (B,T+1,2)
        moved = (pos[:, 1:] != pos[:, :-1]).any(-1)
        is_move = np.isin(np.stack([self.act[e][s - 1:s - 1 + T] for e, s in origins]), list(MOVE_DELTAS))
        return torch.from_numpy(moved), torch.from_numpy(is_move & ~moved)

    def shifts(self, origins: list[tuple[int, int]], T: int) -> torch.Tensor:
        """-> (B,T,2) int64: (dx, dy) the player moved from the frame before clip frame i to it (needs ``pos``)."""
        if self.pos is None:
            raise ValueError("warm-started targets need the 'pos' field of the dataset")
        pos = np.stack([self.pos[e][s - 1:s + T] for e, s in origins])  # (B,T+1,2)
        return torch.from_numpy(pos[:, 1:] - pos[:, :-1])

    def sample_with_memory(self, rng: np.random.Generator, batch: int, T: int, cfg: "TrainConfig",
                           revisit: float | None = None) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], "MemoryBatch"]:
        """Clips like ``sample`` plus up to ``cfg.memory_frames`` memory frames each: past frames of the same
        episode chosen as the engine's bank would (``worldsim.memory.sample_memory`` on the true poses: older
        than a window before the clip, showing cells the clip shows and that window does not). A fraction
        ``revisit`` (default cfg.memory_revisit) of the clips holds the frame where a revisited place comes
        back into view; absent memory frames have valid = 0."""
        from worldsim.memory import sample_memory

        if self.pos is None:
            raise ValueError("memory training needs the 'pos' field: load the dataset with pos (and revisit_events)")
        M = cfg.memory_frames
        revisit = cfg.memory_revisit if revisit is None else revisit
        lens = np.array([len(x) for x in self.lat])
        ok = np.nonzero(lens > T)[0]
        if len(ok) == 0:
            raise ValueError(f"no episode is longer than the clip length {T}")
        eps = rng.choice(ok, batch, p=lens[ok] / lens[ok].sum())
        C, g = self.lat[0].shape[1], self.lat[0].shape[2]
        zs, acts, origins = [], [], []
        mem = MemoryBatch(torch.zeros(batch, M, C, g, g), torch.zeros(batch, M), torch.zeros(batch, M, 2), torch.zeros(batch, T, 2),
                          torch.zeros(batch, M))
        for b, e in enumerate(eps):
            n = lens[e]
            evs = self.events[e] if self.events is not None else np.zeros((0, 6), np.int64)
            if len(evs) and rng.random() < revisit:
                t_back = int(evs[rng.integers(len(evs))][2])
                s = int(np.clip(t_back - rng.integers(0, T), 1, n - T))  # the clip holds the frame A is back on screen
            else:
                s = self._start(rng, int(e), T, cfg.sleep_clip_frac)
            zs.append(self.lat[e][s:s + T].float())
            acts.append(torch.from_numpy(self.act[e][s - 1:s - 1 + T]))
            origins.append((int(e), s))
            mem.pose[b] = torch.from_numpy(self.pos[e][s:s + T].astype(np.float32))
            idx = sample_memory(self.pos[e], s, T, M, window=T - 1)  # the engine's window is at most clip_len - 1
            idx = idx[rng.random(len(idx)) >= cfg.memory_dropout]
            k = len(idx)
            if k:
                mem.x[b, :k] = self.lat[e][torch.from_numpy(idx)].float()
                mem.t[b, :k] = torch.from_numpy(np.maximum(idx - s, -cfg.memory_max_age).astype(np.float32))
                mem.mem_pose[b, :k] = torch.from_numpy(self.pos[e][idx].astype(np.float32))
                mem.valid[b, :k] = 1.0
        return torch.stack(zs), torch.stack(acts), origins, mem


@dataclass
class MemoryBatch:
    """Memory frames of a batch of clips: x (B,M,C,g,g) latents; t (B,M) frame index minus the clip's first;
    mem_pose (B,M,2) (x,y) player tile when each was seen; pose (B,T,2) the player's tile in each clip frame;
    valid (B,M) 1 = present."""

    x: torch.Tensor
    t: torch.Tensor
    mem_pose: torch.Tensor
    pose: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device) -> "MemoryBatch":
        """The same batch on ``device``."""
        return MemoryBatch(*(a.to(device) for a in (self.x, self.t, self.mem_pose, self.pose, self.valid)))

    def kwargs(self, sigma: torch.Tensor, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """forward_teacher's memory arguments with noise levels ``sigma`` (B,M) (and noised latents ``x``)."""
        return {"mem_x": self.x if x is None else x, "mem_sigma": sigma, "mem_t": self.t, "mem_pose": self.mem_pose,
                "pose": self.pose, "mem_valid": self.valid}


def moved_previous(z: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """The engine's warm start in training: clip frame i (i >= 1) -> frame i-1 of z (B,T,C,g,g) with its world
    view moved by shifts[:, i] (B,T,2) (dx, dy) (worldsim.memory.moved_view); frame 0 -> itself. -> (B,T,C,g,g)."""
    from worldsim.memory import moved_view

    prev = torch.cat([z[:, :1], z[:, :-1]], 1)
    out = prev.clone()
    sh = shifts.tolist()
    for b in range(z.shape[0]):
        for i in range(1, z.shape[1]):
            dx, dy = sh[b][i]
            if dx or dy:
                out[b, i] = moved_view(prev[b, i], dx, dy)
    return out


def _warm_frames(actions: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,T) bool: the frames that start warm (a fraction ``prob``, never a clip's first nor after sleep)."""
    from worldsim.actions import ACTION_NAMES

    pick = torch.rand(actions.shape, generator=generator).to(actions.device) < prob
    pick[:, 0] = False
    return pick & (actions != ACTION_NAMES.index("sleep"))


def dit_loss(model: torch.nn.Module, z: torch.Tensor, actions: torch.Tensor, cfg: TrainConfig,
             ctx: torch.Tensor | None = None, generator: torch.Generator | None = None,
             memory: MemoryBatch | None = None, weight: torch.Tensor | None = None,
             shifts: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher-forced rectified-flow loss on clips z (B,T,C,g,g); `ctx` replaces the context stream
    (self-rollout: the model's own predictions) when given; `memory` adds memory frames (lightly noised
    like the context); `weight` (B,T) weighs the frames (a weighted mean); `shifts` (B,T,2), the player's
    moves, with cfg.warm_target_prob > 0: that fraction of targets starts warm (``moved_previous`` of the
    context stream noised to cfg.warm_level), as the engine's warm start does."""
    B, T = z.shape[:2]
    dev = z.device
    t_ctx = sample_context_levels((B, T), cfg.ctx_noise_max, generator).to(dev)
    t_tgt = sample_target_levels((B, T), generator, p_pure=cfg.p_pure).to(dev)
    eps_c = torch.randn(z.shape, generator=generator).to(dev)
    eps_t = torch.randn(z.shape, generator=generator).to(dev)
    base = z if ctx is None else ctx
    x_ctx = add_noise(base, t_ctx, eps_c)
    x_tgt = add_noise(z, t_tgt, eps_t)
    drop = torch.rand((B, T), generator=generator).to(dev) < cfg.action_dropout
    acts = torch.where(drop, torch.full_like(actions, NULL_ACTION), actions)
    mem_kw: dict[str, torch.Tensor] = {}
    if memory is not None:  # drawn after everything above: the draws without memory stay the same
        t_mem = sample_context_levels(memory.valid.shape, cfg.ctx_noise_max, generator).to(dev)
        mem_kw = memory.kwargs(t_mem, add_noise(memory.x, t_mem, torch.randn(memory.x.shape, generator=generator).to(dev)))
    if cfg.warm_target_prob > 0 and shifts is not None:  # drawn last, for the same reason
        warm = _warm_frames(actions, cfg.warm_target_prob, generator)
        t_warm = torch.full_like(t_tgt, cfg.warm_level)
        x_tgt = torch.where(warm[..., None, None, None], add_noise(moved_previous(base, shifts.to(dev)), t_warm, eps_t), x_tgt)
        t_tgt = torch.where(warm, t_warm, t_tgt)
    # under DDP `model` wraps a _TeacherDDP whose forward is forward_teacher
    pred = (model(x_ctx, t_ctx, x_tgt, t_tgt, acts, **mem_kw) if hasattr(model, "module")
            else model.forward_teacher(x_ctx, t_ctx, x_tgt, t_tgt, acts, **mem_kw))
    err = (pred.float() - z).pow(2).mean((2, 3, 4))  # (B,T)
    loss = err.mean() if weight is None else (err * weight).sum() / weight.sum()
    pure = t_tgt >= 0.999
    parts = {"mse": err.mean().item(), "mse_pure": err[pure].mean().item() if pure.any() else float("nan")}
    return loss, parts


class _TeacherDDP(torch.nn.Module):
    """Adapter so DDP's forward runs forward_teacher (gradient hooks need DDP.__call__)."""

    def __init__(self, dit: CausalDiT):
        super().__init__()
        self.dit = dit

    def forward(self, *args, **kwargs):
        return self.dit.forward_teacher(*args, **kwargs)


@torch.no_grad()
def _self_rollout_context(model: CausalDiT, z: torch.Tensor, actions: torch.Tensor, sampler: FlowSampler,
                          memory: MemoryBatch | None = None, depth: int = 1, shifts: torch.Tensor | None = None,
                          warm: float = 0.0) -> torch.Tensor:
    """The model's own predictions as context: frame 0 stays real, frame i>0 is generated from the context
    < i, which is real for depth 1 and the previous depth's predictions after (teacher-forced, so the errors
    of ``depth`` generations compound: the open-loop fade the model must learn to recover from). With
    ``warm`` > 0 and ``shifts`` (B,T,2), frames start as the engine's warm start does (``moved_previous``
    of the context at level ``warm``; a frame after sleep from pure noise)."""
    if warm > 0 and sampler.steps != 1:
        raise ValueError("warm-started self-rollout takes one sampler step (its update is the prediction at any level)")
    B, T = z.shape[:2]
    ctx_level = torch.zeros(B, T, device=z.device)
    mem_kw = memory.kwargs(torch.zeros_like(memory.valid)) if memory is not None else {}
    ts = sampler.timesteps()
    on = _warm_frames(actions, 1.0) if warm > 0 and shifts is not None else None  # the same frames at every depth
    ctx = z
    for _ in range(depth):
        x = torch.randn_like(z)
        level = torch.ones(B, T, device=z.device)
        if on is not None:
            x = torch.where(on[..., None, None, None], add_noise(moved_previous(ctx, shifts), torch.full_like(level, warm), x), x)
            level = torch.where(on, torch.full_like(level, warm), level)
        for t, t_next in zip(ts[:-1], ts[1:]):
            x0 = model.forward_teacher(ctx, ctx_level, x, level * t, actions, **mem_kw).float()
            x = sampler.step(x, x0, t, t_next, torch.randn_like(z))
        ctx = z.clone()
        ctx[:, 1:] = x[:, 1:]
    return ctx


def init_dit_from(dit: CausalDiT, path: str | os.PathLike) -> None:
    """Load DiT weights to start a run from; weights from before the previous-frame mix start it at zero,
    which is exactly the old model. Any other missing or mismatched tensor is a CheckpointError."""
    tensors = model_tensors(load_checkpoint(path, kind="dit")[0])
    if dit.prev_mix is not None and "prev_mix.kernel" not in tensors:
        tensors["prev_mix.kernel"] = torch.zeros_like(dit.prev_mix.kernel)
    load_state_strict(dit, tensors, path)


def train_dit(data: str, ae_path: str, out: str, cfg: TrainConfig, progress: bool = True, init: str | None = None,
              val_data: str | None = None) -> Path:
    """Train the DiT on AE latents; -> path of the exported EMA model (out/dit.safetensors)."""
    model_cfg = dit_preset(cfg.model)
    if cfg.long_clip_len and (cfg.long_clip_every < 1 or cfg.long_clip_len <= cfg.clip_len):
        raise ValueError(f"long clips need long_clip_every >= 1 and long_clip_len > clip_len ({cfg.clip_len}), "
                         f"got long_clip_len={cfg.long_clip_len}, long_clip_every={cfg.long_clip_every}")
    ae = load_autoencoder(ae_path)
    if ae.cfg.latent_channels != model_cfg.latent_channels or ae.cfg.grid != model_cfg.grid:
        raise ValueError(f"DiT preset {cfg.model!r} expects {model_cfg.latent_channels}x{model_cfg.grid}x{model_cfg.grid} latents; "
                         f"the autoencoder {ae_path} makes {ae.cfg.latent_channels}x{ae.cfg.grid}x{ae.cfg.grid}")
    torch.manual_seed(cfg.seed)
    dit = CausalDiT(model_cfg)
    if init is not None and not (Path(out) / "last.safetensors").exists():
        init_dit_from(dit, init)
    trainer = Trainer("dit", dit, model_cfg, cfg, Path(out), {"data": str(data), "autoencoder": str(ae_path)}, wrap=_TeacherDDP)
    ae = ae.to(trainer.device)
    if not 0 <= cfg.warm_target_prob <= 1 or not 0 < cfg.warm_level < 1:
        raise ValueError(f"warm_target_prob must lie in [0, 1] and warm_level in (0, 1), got {cfg.warm_target_prob}, {cfg.warm_level}")
    needs_pos = cfg.blocked_weight != 1.0 or cfg.warm_target_prob > 0
    mem_fields = ("pos", "revisit_events") if cfg.memory_frames > 0 else ("pos",) if needs_pos else ()
    if not 0 <= cfg.sleep_clip_frac <= 1:
        raise ValueError(f"sleep_clip_frac must lie in [0, 1], got {cfg.sleep_clip_frac}")
    if cfg.sleep_clip_frac > 0:
        mem_fields += ("sleeping",)
    train = LatentClips(_open(data, "train", cfg.max_train_episodes, ("frames", "actions", *mem_fields)), ae, trainer.device)
    # val always loads pos: the moved-frame metric needs it
    val_fields = ("frames", "actions", "semantic", "pos") + (("revisit_events",) if cfg.memory_frames > 0 else ())
    val = LatentClips(_open(val_data or data, "val", cfg.max_val_episodes, val_fields), ae, trainer.device)
    rng = np.random.default_rng(cfg.seed + 1000 * trainer.rank + trainer.step)
    gen = torch.Generator().manual_seed(cfg.seed + 7919 * trainer.rank + trainer.step)
    sampler = FlowSampler(steps=1)
    bar = _bar(cfg.steps, trainer.step, progress and trainer.rank == 0, "dit")
    t0, seen = time.perf_counter(), 0
    while trainer.step < cfg.steps:
        memory = None
        T, clips = clip_for_step(trainer.step, cfg)
        per_rank = max(1, clips // trainer.world)
        if cfg.memory_frames > 0:
            z, a, origins, memory = train.sample_with_memory(rng, per_rank, T, cfg)
            memory = memory.to(trainer.device)
        else:
            z, a, origins = train.sample(rng, per_rank, T, cfg.sleep_clip_frac)
        z, a = z.to(trainer.device), a.to(trainer.device)
        weight = None
        if cfg.blocked_weight != 1.0:
            weight = 1.0 + (cfg.blocked_weight - 1.0) * train.moves(origins, T)[1].float().to(trainer.device)
        shifts = train.shifts(origins, T).to(trainer.device) if cfg.warm_target_prob > 0 else None
        ctx = None
        if trainer.step >= cfg.self_rollout_after * cfg.steps and rng.random() < cfg.self_rollout_prob:
            with trainer.autocast():
                ctx = _self_rollout_context(trainer.model, z, a, sampler, memory, cfg.self_rollout_depth, shifts,
                                            cfg.warm_level if shifts is not None else 0.0).float()
        with trainer.autocast():
            loss, parts = dit_loss(trainer.net, z, a, cfg, ctx=ctx, generator=gen, memory=memory, weight=weight, shifts=shifts)
        gn = trainer.update(loss)
        seen += per_rank * trainer.world * T
        if trainer.step % cfg.log_every == 0:
            fps = seen / (time.perf_counter() - t0)
            trainer.log({"loss": loss.item(), "grad_norm": gn, "target_frames_per_s": fps, "self_rollout": ctx is not None, **parts})
            if bar:
                bar.set_postfix(loss=f"{loss.item():.4f}", fps=f"{fps:.0f}")
        if bar:
            bar.update(1)
        if trainer.step % cfg.val_every == 0 or trainer.step == cfg.steps:
            validate_dit(trainer, ae, val, cfg)
        if trainer.step % cfg.ckpt_every == 0 or trainer.step == cfg.steps:
            trainer.save()
    if bar:
        bar.close()
    out_path = Path(out) / "dit.safetensors"
    trainer.export(out_path)
    return out_path


@torch.no_grad()
def validate_dit(trainer: Trainer, ae: Autoencoder, val: LatentClips, cfg: TrainConfig, n_clips: int = 64,
                 steps: tuple[int, ...] = (1, 2, 4)) -> dict[str, float]:
    """One-step teacher-forced checks against the floor (copy last frame) and ceiling (AE recon of the truth)."""
    if trainer.rank != 0:
        return {}
    model = trainer.ema
    rng = np.random.default_rng(12345)
    z, a, origins = val.sample(rng, n_clips, cfg.clip_len)
    z, a = z.to(trainer.device), a.to(trainer.device)
    B, T = z.shape[:2]
    gen = torch.Generator().manual_seed(0)
    rec: dict[str, float] = {}
    # latent MSE of the last frame predicted from pure noise, vs copying the previous latent
    rec["lat_mse_copy"] = (z[:, -1] - z[:, -2]).pow(2).mean().item()
    preds = {}
    for n in steps:
        sampler = FlowSampler(steps=n)
        x = torch.randn(z.shape, generator=gen).to(z.device)
        ts = sampler.timesteps()
        for t, t_next in zip(ts[:-1], ts[1:]):
            with trainer.autocast():
                x0 = model.forward_teacher(z, torch.zeros(B, T, device=z.device), x, torch.full((B, T), t, device=z.device), a).float()
            x = sampler.step(x, x0, t, t_next, torch.randn(z.shape, generator=gen).to(z.device))
        preds[n] = x
        rec[f"lat_mse_{n}step"] = (x[:, -1] - z[:, -1]).pow(2).mean().item()
    if val.pos is not None:
        # frames where the player moved: the view shifts, so copying the last frame fails; a model that
        # follows moves must beat copy here by far (the first thing to watch in a young model)
        moved = val.moves(origins, T)[0][:, -1].to(z.device)
        rec["moved_frac"] = moved.float().mean().item()
        if moved.any():
            rec["lat_mse_copy_moved"] = (z[moved, -1] - z[moved, -2]).pow(2).mean().item()
            for n in steps:
                rec[f"lat_mse_{n}step_moved"] = (preds[n][moved, -1] - z[moved, -1]).pow(2).mean().item()
    # pixel/tile metrics of the last frame (one step ahead, real context)
    true = np.stack([val.frames[e][s + T - 1] for e, s in origins])  # (B,H,W,3)
    prev = np.stack([val.frames[e][s + T - 2] for e, s in origins])
    ceil = tensor_to_frames(ae.decode(z[:, -1])).cpu().numpy()
    best = max(steps)
    pred = tensor_to_frames(ae.decode(preds[best][:, -1])).cpu().numpy()
    rec["psnr_copy"] = float(np.mean([_psnr(p, t) for p, t in zip(prev, true)]))
    rec[f"psnr_{best}step"] = float(np.mean([_psnr(p, t) for p, t in zip(pred, true)]))
    rec["psnr_ceiling"] = float(np.mean([_psnr(p, t) for p, t in zip(ceil, true)]))
    if cfg.memory_frames > 0 and val.pos is not None:
        rec.update(_validate_memory(trainer, model, val, cfg, n_clips))
    for name, frames in (("copy", prev), (f"{best}step", pred), ("ceiling", ceil)):
        rec.update({f"{k}_{name}": v for k, v in _tile_metrics(frames[:, None], true[:, None]).items()})
    trainer.log({"val": True, **rec})
    _save_grid(trainer.run_dir / "val" / f"dit-{trainer.step:07d}.png", [true[:8], pred[:8], prev[:8]])
    print(f"[val step {trainer.step}] " + " ".join(f"{k}={v:.4f}" for k, v in rec.items() if isinstance(v, float)))
    return rec


@torch.no_grad()
def _validate_memory(trainer: Trainer, model: CausalDiT, val: LatentClips, cfg: TrainConfig, n_clips: int) -> dict[str, float]:
    """Does the model use its memory? Latent MSE of the last frame of revisit clips predicted in one step from
    pure noise with the memory frames, and with the same frames masked out."""
    rng = np.random.default_rng(54321)
    z, a, _, mem = val.sample_with_memory(rng, n_clips, cfg.clip_len, replace(cfg, memory_dropout=0.0), revisit=1.0)
    z, a, mem = z.to(trainer.device), a.to(trainer.device), mem.to(trainer.device)
    B, T = z.shape[:2]
    x = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)).to(z.device)
    out: dict[str, float] = {"mem_frames_mean": float(mem.valid.sum(1).mean())}
    for name, valid in (("mem", mem.valid), ("mem_off", torch.zeros_like(mem.valid))):
        kw = MemoryBatch(mem.x, mem.t, mem.mem_pose, mem.pose, valid).kwargs(torch.zeros_like(valid))
        with trainer.autocast():
            x0 = model.forward_teacher(z, torch.zeros(B, T, device=z.device), x, torch.ones(B, T, device=z.device), a, **kw).float()
        out[f"lat_mse_{name}"] = (x0[:, -1] - z[:, -1]).pow(2).mean().item()
    return out


def _bar(total: int, start: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, mininterval=2.0)


# ---------------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`worldsim train autoencoder|dit` arguments."""
    p.add_argument("stage", choices=["autoencoder", "dit", "package"],
                   help="what to train (package: assemble a playable world dir from trained weights)")
    p.add_argument("--data", help="dataset directory written by `worldsim record` (autoencoder, dit)")
    p.add_argument("--val-data", help="dataset holding the validation split (default: --data)")
    p.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint); for package: the world dir")
    p.add_argument("--preset", default="small", help="training preset: tiny | small")
    p.add_argument("--ae", help="autoencoder checkpoint (required for dit)")
    p.add_argument("--dit", help="DiT checkpoint (package)")
    p.add_argument("--opening-data", help="dataset whose first val episode gives the opening frames (package)")
    p.add_argument("--model-card", help="MODEL_CARD.md to copy into the world (package)")
    p.add_argument("--max-window", type=int, default=None,
                   help="longest window the engine may run (package; default: the longest clip trained, less one). Time is "
                        "relative, so a longer window runs: set it only where an evaluation measured it to hold up")
    p.add_argument("--init", help="start the DiT from these weights (a fresh run only)")
    p.add_argument("--steps", type=int, help="override the number of steps")
    p.add_argument("--batch", type=int, help="override the batch size")
    p.add_argument("--lr", type=float, help="override the learning rate")
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--memory-frames", type=int, help="DiT: memory frames per clip (past frames of the episode beyond the "
                   "window, for persistence; default: the preset's, 0 = off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any training config field, e.g. --set clip_len=16 --set blocked_weight=3 (repeatable)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes; 1 is much "
                   "faster when other jobs share the cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> TrainConfig overrides, each VALUE parsed as its field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"worldsim train: --set wants KEY=VALUE with KEY one of {', '.join(fields)}; got {item!r}")
        default = fields[key].default
        try:
            if raw.lower() in ("none", "null") and (default is None or "None" in str(fields[key].type)):
                out[key] = None
            elif isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1")
            elif isinstance(default, (int, float, str)):
                out[key] = type(default)(raw)
            else:  # Optional[int] fields default to None
                out[key] = int(raw)
        except ValueError:
            raise SystemExit(f"worldsim train: --set {key}: cannot read {raw!r} as {fields[key].type}") from None
    if out.get("clip_len", 2) < 2:
        raise SystemExit("worldsim train: clip_len must be >= 2 (a context frame and a target)")
    if out.get("self_rollout_depth", 1) < 1:
        raise SystemExit("worldsim train: self_rollout_depth must be >= 1")
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim train`."""
    if args.stage == "package":
        return _run_package(args)
    if not args.data:
        raise SystemExit(f"worldsim train {args.stage}: --data DIR is required")
    cfg = preset(TRAIN_PRESETS[args.stage], args.preset, f"{args.stage} training")
    over = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr),
                              ("memory_frames", getattr(args, "memory_frames", None))) if v is not None}
    if over.get("memory_frames", 0) < 0:
        raise SystemExit(f"worldsim train: --memory-frames must be >= 0, got {over['memory_frames']}")
    if args.no_bf16:
        over["bf16"] = False
    over.update(_parse_sets(getattr(args, "set", []) or []))
    cfg = replace(cfg, **over)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    if args.stage == "autoencoder":
        path = train_autoencoder(args.data, args.out, cfg, progress=not args.no_progress, val_data=args.val_data)
    else:
        if not args.ae:
            raise SystemExit("worldsim train dit: --ae PATH (the autoencoder checkpoint) is required")
        path = train_dit(args.data, args.ae, args.out, cfg, progress=not args.no_progress, init=args.init, val_data=args.val_data)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {path}")
    _dist_teardown()
    return 0


def _dist_teardown() -> None:
    """Tear the process group down on every rank together, after rank 0 has written its checkpoint and export."""
    if not torch.distributed.is_initialized():
        return
    # Ranks > 0 finish first (rank 0 alone validates and writes). One that closed its gloo connections while its
    # peer still held them open was seen to abort at exit ("terminate called without an active exception", CI of
    # session 16); a barrier first leaves no rank tearing down alone.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _run_package(args: argparse.Namespace) -> int:
    from worldsim.package import opening_from_dataset, package_world

    if not (args.ae and args.dit and args.opening_data):
        raise SystemExit("worldsim train package: --ae, --dit and --opening-data are required")
    meta = read_meta(args.dit, kind="dit")
    window = args.max_window if args.max_window is not None else trained_window(meta.get("train", {}))
    if window < 1:
        raise SystemExit(f"worldsim train package: --max-window must be >= 1, got {window}")
    out = package_world(args.out, args.ae, args.dit, opening_from_dataset(args.opening_data), max_window=window, model_card=args.model_card)
    print(f"wrote world {out}")
    return 0
