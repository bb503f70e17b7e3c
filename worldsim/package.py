"""Assemble a playable world directory from trained weights: the shipped default world is made this way.

    worldsim train package --ae RUN/autoencoder.safetensors --dit RUN/dit.safetensors \
        --opening-data DATA --out worldsim/worlds/crafter

A world directory: world.json, autoencoder.safetensors, dit.safetensors (EMA weights only, no optimizer
state), opening.npz (real opening frames + the actions taken on them) and, when given, MODEL_CARD.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from worldsim.actions import NULL_ACTION
from worldsim.checkpoint import load_checkpoint, save_checkpoint
from worldsim.io import atomic_path, atomic_write_json


def shipped_world_dir() -> Path:
    """The shipped default world (inside the worldsim package)."""
    return Path(__file__).resolve().parent / "worlds" / "crafter"


def _strip_to_ema(src: Path, dst: Path, kind: str) -> dict:
    """Copy a checkpoint keeping only the shipped (EMA) weights and the config; -> its meta."""
    from worldsim.train import model_tensors

    tensors, meta = load_checkpoint(src, kind=kind)
    tensors = model_tensors(tensors)
    keep = {k: meta[k] for k in ("kind", "config", "step", "train", "data") if k in meta}
    save_checkpoint(dst, tensors, keep)
    return keep


def opening_from_dataset(data: str | Path, frames: int = 8, split: str = "val", episode: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real frames (T,H,W,3) and the actions taken on them (T,) from a recorded episode (never eval seeds)."""
    from worldsim.data.dataset import open_dataset

    if split == "eval":
        raise ValueError("opening frames must not come from the held-out evaluation seeds")
    store = open_dataset(data).load(split=split, fields=("frames", "actions"), max_episodes=episode + 1)
    ep = store.episodes[episode]
    fr = ep["frames"][start:start + frames]
    acts = np.asarray(ep["actions"][start:start + frames], np.int64).copy()
    acts[-1] = NULL_ACTION  # the next action comes from the player
    return fr, acts


def package_world(out: str | Path, ae: str | Path, dit: str | Path, opening: tuple[np.ndarray, np.ndarray], name: str = "crafter",
                  max_window: int = 7, tick_hz: float = 5.0, model_card: str | Path | None = None, extra: dict | None = None) -> Path:
    """Write a world directory; -> its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ae_meta = _strip_to_ema(Path(ae), out / "autoencoder.safetensors", "autoencoder")
    dit_meta = _strip_to_ema(Path(dit), out / "dit.safetensors", "dit")
    frames, actions = opening
    with atomic_path(out / "opening.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, frames=frames, actions=actions)
    if model_card is not None and Path(model_card).resolve() != (out / "MODEL_CARD.md").resolve():
        shutil.copyfile(model_card, out / "MODEL_CARD.md")
    atomic_write_json(out / "world.json", {
        "format": "worldsim-world", "version": 1, "name": name,
        "autoencoder": "autoencoder.safetensors", "dit": "dit.safetensors", "opening": "opening.npz",
        # the longest context the DiT saw in training (worldsim.train.trained_window): presets never use a longer window
        "max_window": int(max_window), "tick_hz": float(tick_hz),
        "trained_steps": {"autoencoder": ae_meta.get("step"), "dit": dit_meta.get("step")}, **(extra or {}),
    })
    return out
