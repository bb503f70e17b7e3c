"""Test helpers: a tiny world with random weights, fast to build and to step (for tests and demos)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from worldsim.actions import NULL_ACTION
from worldsim.autoencoder import Autoencoder, ae_preset
from worldsim.checkpoint import save_checkpoint
from worldsim.config import config_to_dict
from worldsim.dit import CausalDiT, PrevFrameMix, dit_preset
from worldsim.io import atomic_write_json, sha256_file


def make_tiny_world(path: str | os.PathLike, seed: int = 0, opening: np.ndarray | None = None, frames: int = 4) -> Path:
    """Write a world dir with random tiny-preset weights; -> path. Deterministic for a seed.

    The zero-initialised output layers are randomised so that actions and context visibly change frames.
    """
    return make_random_world(path, dit="tiny", ae="tiny", seed=seed, opening=opening, frames=frames)


def make_random_world(path: str | os.PathLike, dit: str = "tiny", ae: str | None = None, seed: int = 0,
                      opening: np.ndarray | None = None, frames: int = 4) -> Path:
    """Write a world dir with random weights of the named DiT/autoencoder presets (ae defaults to the
    preset of the same name, else "small"); -> path. Deterministic for a seed. For tests and benchmarks."""
    from worldsim.autoencoder import AE_PRESETS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seed the modules' own init without touching the caller's RNG
        torch.manual_seed(seed)
        ae_model = Autoencoder(ae_preset(ae or (dit if dit in AE_PRESETS else "small")))
        dit_model = CausalDiT(dit_preset(dit))
    # 0.2 suits d_model=32 (tiny); scale down for wider models so activations stay O(1)
    std = 0.2 * min(1.0, (32 / dit_model.cfg.d_model) ** 0.5)
    with torch.no_grad():
        for m in (ae_model, dit_model):
            for name, p in m.named_parameters():
                if p.dim() >= 1 and float(p.abs().sum()) == 0.0 and "latent" not in name:
                    # the previous-frame mix kernel is stored divided by its gain: keep the kernel itself O(1)
                    scale = std / PrevFrameMix.GAIN if name == "prev_mix.kernel" else std
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
    save_checkpoint(path / "autoencoder.safetensors", dict(ae_model.state_dict()), {"kind": "autoencoder", "config": config_to_dict(ae_model.cfg)})
    save_checkpoint(path / "dit.safetensors", dict(dit_model.state_dict()), {"kind": "dit", "config": config_to_dict(dit_model.cfg)})
    if opening is None:
        rng = np.random.default_rng(seed)
        s = ae_model.cfg.image_size
        opening = rng.integers(0, 256, (frames, s, s, 3), dtype=np.uint8)
    actions = np.array([0] * (len(opening) - 1) + [NULL_ACTION], np.int64)
    np.savez_compressed(path / "opening.npz", frames=opening, actions=actions)
    atomic_write_json(path / "world.json", {"format": "worldsim-world", "version": 1, "name": f"{dit}-random", "autoencoder": "autoencoder.safetensors",
                                            "dit": "dit.safetensors", "opening": "opening.npz", "max_window": 8, "tick_hz": 8.0})
    return path


def exact_codec(backend) -> None:
    """Make a backend's decoder give back exactly the frames its encoder saw, token by token: a latent (C,g,g)
    whose every token (C,) came from some encoded frame decodes to those frames' tiles put together (what an
    ideal one-token-per-tile decoder does: a token moved or copied between latents brings its tile); any other
    latent goes to the real decoder."""
    tiles: dict[bytes, np.ndarray] = {}
    enc, dec = backend.encode, backend.decode

    def encode(frames):
        z = enc(frames)
        g = z.shape[-1]
        u = frames.shape[1] // g
        for zi, fi in zip(z, frames):
            zi = np.asarray(zi, np.float32)
            for r in range(g):
                for c in range(g):
                    tiles[zi[:, r, c].tobytes()] = np.array(fi[r * u:(r + 1) * u, c * u:(c + 1) * u])
        return z

    def decode(z):
        out = []
        for zi in np.asarray(z, np.float32):
            g = zi.shape[-1]
            parts = [[tiles.get(zi[:, r, c].tobytes()) for c in range(g)] for r in range(g)]
            if any(p is None for row in parts for p in row):
                out.append(dec(zi[None])[0])
            else:
                out.append(np.concatenate([np.concatenate(row, 1) for row in parts], 0))
        return np.stack(out)

    backend.encode, backend.decode = encode, decode


def add_random_reader(world_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Give a world dir a random-weight tiny tile reader tied to its autoencoder (listed in world.json); -> its path."""
    import json

    from worldsim.eval.reader import TileReader, reader_config, save_reader
    from worldsim.eval.tiles import NUM_CLASSES

    world_dir = Path(world_dir)
    meta = json.loads((world_dir / "world.json").read_text())
    cfg = reader_config("tiny")
    rng = np.random.default_rng(seed)
    dims = [cfg.inputs] + [cfg.hidden] * cfg.depth + [NUM_CLASSES]
    weights = [((rng.standard_normal((a, b)) / a ** 0.5).astype(np.float32), np.zeros(b, np.float32)) for a, b in zip(dims, dims[1:])]
    reader = TileReader(cfg, weights, {"autoencoder_sha256": sha256_file(world_dir / meta["autoencoder"])})
    save_reader(world_dir / "reader.safetensors", reader)
    meta["reader"] = "reader.safetensors"
    atomic_write_json(world_dir / "world.json", meta)
    return world_dir / "reader.safetensors"


def add_ground_head(world_dir: str | os.PathLike, always: int | None = None, seed: int = 0) -> Path:
    """Give a world dir a ground head (engine.ground) tied to its weights (listed in world.json); -> its path.
    ``always``: a semantic label the head draws every time (among the natural materials), else random weights."""
    import json

    from engine.ground import GROUND_FILE, GroundHead
    from engine.memory import NATURAL

    world_dir = Path(world_dir)
    meta = json.loads((world_dir / "world.json").read_text())
    from worldsim.checkpoint import read_meta

    C = int(read_meta(world_dir / meta["dit"])["config"]["latent_channels"])
    K = len(NATURAL)
    rng = np.random.default_rng(seed)
    weight = np.zeros((C, K)) if always is not None else rng.standard_normal((C, K))
    bias = np.where(np.array(NATURAL) == always, 50.0, 0.0) if always is not None else np.zeros(K)
    head = GroundHead(tuple(NATURAL), np.zeros(C), np.ones(C), weight, bias,
                      {"autoencoder_sha256": sha256_file(world_dir / meta["autoencoder"]), "dit_sha256": sha256_file(world_dir / meta["dit"])})
    atomic_write_json(world_dir / GROUND_FILE, head.to_dict())
    meta["ground"] = GROUND_FILE
    atomic_write_json(world_dir / "world.json", meta)
    return world_dir / GROUND_FILE

