"""A learned tile reader for frames that came out of a world's autoencoder.

``worldsim.eval.tiles`` reads a real Crafter frame exactly: every tile is a game texture under a known
lighting and noise model. A frame a world draws has passed through its autoencoder, which keeps each
tile's class but not its exact pixels; at night, where a tile's colours are a few pixel levels apart,
the texture model then misreads it (measured on the shipped autoencoder's round trips of real night
frames: tables 46% right, read as path; stone 86%). This reader is trained on exactly that: real frames
(their semantic map as labels) passed through the world's own autoencoder, by day and night, with the
game's noisy night and with a noise-free night (a world draws the noise's mean: its night is smooth).
It reads one tile from its own pixels, its place on screen and the frame's lighting, so it cannot borrow
a class from its neighbours; it never sees a generated frame in training, so it cannot learn a model's
mistakes. A world ships its reader beside its autoencoder (``reader.safetensors``, tied to the
autoencoder file by digest); readings of generated frames use it inside ``reading_with(reader)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.config import config_from_dict, config_to_dict, preset
from worldsim.eval.tiles import NUM_CLASSES, VIEW_COLS, VIEW_ROWS
from worldsim.io import sha256_file

KIND = "tile_reader"


@dataclass(frozen=True)
class ReaderConfig:
    """Tile reader hyper-parameters (an MLP over one tile's pixels, its screen place and the lighting)."""

    image_size: int = 72
    hidden: int = 256
    depth: int = 2                   # hidden layers
    daylight_jitter: float = 0.03    # training noise on the daylight input: at play time it is estimated

    @property
    def tile(self) -> int:
        """Tile side in pixels (the screen is 9 tiles wide)."""
        return self.image_size // 9

    @property
    def inputs(self) -> int:
        """Features per tile: its pixels, a one-hot row and column, daylight, sleeping."""
        return self.tile * self.tile * 3 + VIEW_ROWS + VIEW_COLS + 2

    def validate(self) -> None:
        """Raise ValueError for unusable sizes."""
        if self.image_size % 9 or self.image_size < 9:
            raise ValueError(f"image_size must be a multiple of 9, got {self.image_size}")
        if self.hidden < 1 or self.depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got {self.hidden}, {self.depth}")


READER_PRESETS: dict[str, ReaderConfig] = {
    "tiny": ReaderConfig(hidden=32, depth=1),
    "small": ReaderConfig(),
}


def reader_config(name: str) -> ReaderConfig:
    """A named reader preset."""
    return preset(READER_PRESETS, name, "reader")


def tile_features(frames: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray) -> np.ndarray:
    """float32 (N, 63, F) per view tile of frames uint8 (N,S,S,3) with their daylight (N,) and sleeping (N,)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.shape[1] % 9:
        raise ValueError(f"frames must be (N, S, S, 3) with S a multiple of 9, got {frames.shape}")
    n, u = len(frames), frames.shape[1] // 9
    day = np.broadcast_to(np.asarray(daylight, np.float32).reshape(-1), (n,))
    sleep = np.broadcast_to(np.asarray(sleeping, np.float32).reshape(-1), (n,))
    px = frames[:, : VIEW_ROWS * u].reshape(n, VIEW_ROWS, u, VIEW_COLS, u, 3).transpose(0, 1, 3, 2, 4, 5)
    out = np.empty((n, VIEW_ROWS * VIEW_COLS, u * u * 3 + VIEW_ROWS + VIEW_COLS + 2), np.float32)
    out[..., : u * u * 3] = px.reshape(n, VIEW_ROWS * VIEW_COLS, -1)
    out[..., : u * u * 3] *= 1 / 255
    r, c = np.divmod(np.arange(VIEW_ROWS * VIEW_COLS), VIEW_COLS)
    place = np.zeros((VIEW_ROWS * VIEW_COLS, VIEW_ROWS + VIEW_COLS), np.float32)
    place[np.arange(len(r)), r] = 1
    place[np.arange(len(r)), VIEW_ROWS + c] = 1
    out[..., u * u * 3: -2] = place
    out[..., -2] = day[:, None]
    out[..., -1] = sleep[:, None]
    return out


class TileReader:
    """Reads (N,S,S,3) decoded frames into (N,7,9) semantic labels; numpy inference (~0.2 ms a frame)."""

    def __init__(self, cfg: ReaderConfig, weights: list[tuple[np.ndarray, np.ndarray]], meta: dict[str, Any] | None = None):
        cfg.validate()
        dims = [cfg.inputs] + [cfg.hidden] * cfg.depth + [NUM_CLASSES]
        if len(weights) != len(dims) - 1:
            raise ValueError(f"a {cfg.depth}-layer reader has {len(dims) - 1} weight matrices, got {len(weights)}")
        for i, (w, b) in enumerate(weights):
            if w.shape != (dims[i], dims[i + 1]) or b.shape != (dims[i + 1],):
                raise ValueError(f"layer {i}: expected {(dims[i], dims[i + 1])} and {(dims[i + 1],)}, got {w.shape} and {b.shape}")
        self.cfg = cfg
        self.weights = [(np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)) for w, b in weights]
        self.meta = dict(meta or {})

    def logits(self, frames: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray) -> np.ndarray:
        """float32 (N, 7, 9, classes) for frames uint8 (N,S,S,3), daylight (N,), sleeping (N,)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.cfg.image_size, self.cfg.image_size, 3):
            raise ValueError(f"this reader reads (N, {self.cfg.image_size}, {self.cfg.image_size}, 3) frames, got {frames.shape}")
        return self._forward(tile_features(frames, daylight, sleeping)).reshape(len(frames), VIEW_ROWS, VIEW_COLS, NUM_CLASSES)

    def _forward(self, h: np.ndarray) -> np.ndarray:
        """Features float32 (..., F) -> logits (..., classes)."""
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < len(self.weights) - 1:
                # tanh-approximated GELU, as torch's gelu(approximate="tanh") used in training
                h = 0.5 * h * (1 + np.tanh(0.7978845608 * (h + 0.044715 * h * h * h)))
        return h

    def read(self, frames: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray) -> np.ndarray:
        """uint8 (N, 7, 9) labels of frames uint8 (N,S,S,3)."""
        return self.logits(frames, daylight, sleeping).argmax(-1).astype(np.uint8)

    def read_tiles(self, frame: np.ndarray, tiles: np.ndarray, daylight: float, sleeping: bool,
                   allowed: Sequence[int] | None = None) -> np.ndarray:
        """int64 (n,) labels of view tiles ``tiles`` (n,) (row * 9 + column) of one frame uint8 (S,S,3); given
        ``allowed`` (class ids), the likeliest of those."""
        frame = np.asarray(frame)
        if frame.shape != (self.cfg.image_size, self.cfg.image_size, 3):
            raise ValueError(f"this reader reads ({self.cfg.image_size}, {self.cfg.image_size}, 3) frames, got {frame.shape}")
        feats = tile_features(frame[None], np.array([daylight]), np.array([sleeping]))[0]
        logits = self._forward(feats[np.asarray(tiles, np.int64)])   # only the tiles asked for
        if allowed is not None:
            keep = np.zeros(NUM_CLASSES, bool)
            keep[list(allowed)] = True
            logits = np.where(keep, logits, -np.inf)
        return logits.argmax(-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# the reader in force for generated frames (explicit, per context: two worlds in one process stay apart)

_ACTIVE: contextvars.ContextVar[TileReader | None] = contextvars.ContextVar("worldsim_tile_reader", default=None)


def active_reader(size: int | None = None) -> TileReader | None:
    """The reader set by the innermost ``reading_with`` (None outside one, or when it reads another frame size)."""
    r = _ACTIVE.get()
    return r if r is not None and (size is None or r.cfg.image_size == size) else None


@contextlib.contextmanager
def reading_with(reader: TileReader | None) -> Iterator[None]:
    """Within this block, frame readings of generated frames (engine rules, memory, eval) use ``reader``."""
    token = _ACTIVE.set(reader)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


# --------------------------------------------------------------------------------------------------
# files


def save_reader(path: str | os.PathLike, reader: TileReader) -> None:
    """Save a reader as safetensors with its config and meta (autoencoder digest, metrics) in the header."""
    import torch

    from worldsim.checkpoint import save_checkpoint

    tensors = {}
    for i, (w, b) in enumerate(reader.weights):
        tensors[f"w{i}"], tensors[f"b{i}"] = torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
    save_checkpoint(path, tensors, {**reader.meta, "kind": KIND, "config": config_to_dict(reader.cfg)})


def load_reader(path: str | os.PathLike, autoencoder: str | os.PathLike | None = None) -> TileReader:
    """Load a reader; with ``autoencoder`` given, raise CheckpointError unless it was trained on that file."""
    from worldsim.checkpoint import CheckpointError, load_checkpoint

    tensors, meta = load_checkpoint(path, KIND)
    try:
        cfg = config_from_dict(ReaderConfig, meta.get("config", {}))
        weights = [(tensors[f"w{i}"].float().numpy(), tensors[f"b{i}"].float().numpy()) for i in range(cfg.depth + 1)]
        reader = TileReader(cfg, weights, {k: v for k, v in meta.items() if k not in ("kind", "config")})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"reader {path} does not hold a usable tile reader: {e}") from None
    if autoencoder is not None and meta.get("autoencoder_sha256") != sha256_file(autoencoder):
        raise CheckpointError(f"reader {path} was trained on another autoencoder than {autoencoder}; retrain it with "
                              f"`worldsim train-reader --world <dir>`")
    return reader


def save_reader_npz(path: str | os.PathLike, reader: TileReader) -> None:
    """Save a reader as a numpy archive (an exported bundle's form: it loads without torch or safetensors)."""
    import json

    from worldsim.io import atomic_path

    arrays = {}
    for i, (w, b) in enumerate(reader.weights):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    meta = {**reader.meta, "kind": KIND, "config": config_to_dict(reader.cfg)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)


def load_reader_npz(path: str | os.PathLike) -> TileReader:
    """Load a reader saved by ``save_reader_npz``; ValueError naming the file when it is not one."""
    import json

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("kind") != KIND:
                raise ValueError(f"holds a {meta.get('kind')!r}, not a tile reader")
            cfg = config_from_dict(ReaderConfig, meta.get("config", {}))
            weights = [(z[f"w{i}"], z[f"b{i}"]) for i in range(cfg.depth + 1)]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"reader {path} is corrupt or not a tile reader: {e}") from None
    return TileReader(cfg, weights, {k: v for k, v in meta.items() if k not in ("kind", "config")})


# --------------------------------------------------------------------------------------------------
# data and training


@contextlib.contextmanager
def _smooth_nights() -> Iterator[None]:
    """Within this block crafter draws its night noise as the noise's mean (a world's smooth night).

    The uniform draw still happens, so the game's random stream (and so its world) is unchanged. Patches
    crafter's LocalView class for the block: training-data recording only, never at play time."""
    import crafter.engine as ce

    original = ce.LocalView._noise

    def noise(view, canvas, amount, stddev):
        view._world.random.uniform(32, 127, canvas.shape[:2])
        mask = amount * view._vignette(canvas.shape, stddev)[..., None]
        return (1 - mask) * canvas + mask * 79.5

    ce.LocalView._noise = noise
    try:
        yield
    finally:
        ce.LocalView._noise = original


def play_episode(seed: int, steps: int = 1000, size: int = 72, smooth_night: bool = False,
                 unlit: bool = False) -> dict[str, np.ndarray]:
    """Real frames with truth, played by the recorder's policy (worldsim.data.record: the training data's
    walks, caves, the world's edge, placing, sleeping; night is steps ~150-270 of every 300): frames uint8
    (T,S,S,3), semantic (T,7,9), daylight (T,), sleeping (T,); with ``unlit`` also unlit (T,S,S,3), the frames
    before the game lights them."""
    from worldsim.data.record import record_episode

    with _smooth_nights() if smooth_night else contextlib.nullcontext():
        ep = record_episode(int(seed), int(steps), size=size, unlit=unlit)
    out = {"frames": ep["frames"], "semantic": ep["semantic"].astype(np.uint8), "daylight": ep["daylight"].astype(np.float32),
           "sleeping": ep["sleeping"].astype(bool)}
    if unlit:
        out["unlit"] = ep["unlit"]
    return out


def round_trip(ae: Any, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """frames uint8 (N,S,S,3) -> the autoencoder's decode(encode(frames)) as uint8 (N,S,S,3)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])).permute(0, 3, 1, 2).float() / 255
            y = ae.decode(ae.encode(x)).permute(0, 2, 3, 1).numpy()
            out.append((y * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def reader_data(ae: Any, seeds: list[int], steps: int = 1000) -> dict[str, np.ndarray]:
    """Round-tripped frames with their truth for ``seeds`` (every other seed with the smooth night)."""
    eps = []
    for i, s in enumerate(seeds):
        ep = play_episode(s, steps, ae.cfg.image_size, smooth_night=bool(i % 2))
        ep["frames"] = round_trip(ae, ep["frames"])
        eps.append(ep)
    return {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}


def accuracy(labels: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of tiles read right: all, day, night, deep night (daylight < 0.15), asleep, and per key class."""
    ok = labels == data["semantic"]
    day, sl, sem = data["daylight"], data["sleeping"], data["semantic"]
    out = {"all": float(ok.mean())}
    for name, m in (("day", day >= 0.5), ("night", day < 0.5), ("deep_night", day < 0.15), ("asleep", sl)):
        if m.any():
            out[name] = float(ok[m].mean())
    night = day < 0.5
    for name, cls in (("stone", 3), ("table", 11), ("plant", 18), ("tree", 6)):
        m = (sem == cls) & night[:, None, None]
        if m.any():
            out[f"night_{name}"] = float(ok[m].mean())
    return out


def train_reader(ae: Any, cfg: ReaderConfig, seeds: list[int], steps: int = 6000, batch: int = 1024,
                 lr: float = 2e-3, seed: int = 0, episode_steps: int = 1000, log=print) -> TileReader:
    """Train a reader on ``ae``'s round trips of real frames from ``seeds`` (their semantic maps as labels);
    ``episode_steps`` frames per seed (300: a whole day, night included)."""
    import torch
    from torch import nn

    cfg.validate()
    if ae.cfg.image_size != cfg.image_size:
        raise ValueError(f"reader image_size {cfg.image_size} != autoencoder image_size {ae.cfg.image_size}")
    t0 = time.time()
    data = reader_data(ae, seeds, episode_steps)
    x = torch.from_numpy(tile_features(data["frames"], data["daylight"], data["sleeping"]).reshape(-1, cfg.inputs))
    y = torch.from_numpy(data["semantic"].reshape(-1).astype(np.int64))
    log(f"reader data: {len(data['frames'])} frames, {len(y)} tiles from {len(seeds)} episodes ({time.time() - t0:.0f} s)")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dims = [cfg.inputs] + [cfg.hidden] * cfg.depth + [NUM_CLASSES]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.GELU(approximate="tanh"))
    net = nn.Sequential(*layers)
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    for step in range(steps):
        i = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[i].clone()
        if cfg.daylight_jitter:
            xb[:, -2] = (xb[:, -2] + (torch.rand(batch, generator=g) * 2 - 1) * cfg.daylight_jitter).clamp(0, 1)
        loss = nn.functional.cross_entropy(net(xb), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    lin = [m for m in net if isinstance(m, nn.Linear)]
    weights = [(m.weight.detach().T.numpy().copy(), m.bias.detach().numpy().copy()) for m in lin]
    return TileReader(cfg, weights, {"train_seeds": [int(seeds[0]), int(seeds[-1])], "train_episodes": len(seeds),
                                     "train_steps": steps, "train_seconds": round(time.time() - t0, 1)})


# --------------------------------------------------------------------------------------------------
# `worldsim train-reader`

TRAIN_SEED0 = 500_000      # reader episodes: the training range (< 900,000), apart from the DiT's recordings
EVAL_SEED0 = 950_000       # the validation range [900,000, 1,000,000): never the eval's held-out seeds


def add_arguments(p) -> None:
    """CLI arguments of `worldsim train-reader`."""
    p.add_argument("--world", default=None, help="world directory with an unlit autoencoder (default: the shipped world)")
    p.add_argument("--preset", default="small", choices=sorted(READER_PRESETS))
    p.add_argument("--episodes", type=int, default=24, help="training episodes (1000 frames each, three nights)")
    p.add_argument("--eval-episodes", type=int, default=2, help="held-out episodes for the printed accuracy")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--out", default=None, help="output file (default: WORLD/reader.safetensors, added to world.json)")


def run(args) -> int:
    """Train a world's tile reader, report held-out accuracy next to the texture classifier, save it."""
    import json

    import torch

    from worldsim.eval.tiles import get_classifier
    from worldsim.train import load_autoencoder

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from worldsim.package import shipped_world_dir

    world = Path(args.world) if args.world is not None else shipped_world_dir()
    manifest_path = world / "world.json"
    manifest = json.loads(manifest_path.read_text())
    ae_path = world / manifest["autoencoder"]
    ae = load_autoencoder(ae_path).eval()
    if ae.cfg.lit:  # it draws the night as the game does: the texture model already reads its frames (99.5%)
        print(f"{ae_path}: a lit autoencoder needs no tile reader (the texture model reads its frames); "
              "train one for a world with an unlit autoencoder (--world W)", file=sys.stderr)
        return 2
    cfg = reader_config(args.preset)
    if cfg.image_size != ae.cfg.image_size:
        cfg = ReaderConfig(**{**config_to_dict(cfg), "image_size": ae.cfg.image_size})
    reader = train_reader(ae, cfg, list(range(TRAIN_SEED0, TRAIN_SEED0 + args.episodes)), steps=args.steps)
    held = reader_data(ae, list(range(EVAL_SEED0, EVAL_SEED0 + args.eval_episodes)))
    mine = accuracy(reader.read(held["frames"], held["daylight"], held["sleeping"]), held)
    clf = get_classifier(ae.cfg.image_size)
    theirs = accuracy(clf.classify(held["frames"], held["daylight"], held["sleeping"]).labels, held)
    print(f"held-out round trips ({len(held['frames'])} frames): " + ", ".join(
        f"{k} {mine[k]:.2%} (texture model {theirs[k]:.2%})" for k in mine))
    reader.meta.update({"autoencoder_sha256": sha256_file(ae_path), "heldout": mine, "heldout_texture_model": theirs,
                        "heldout_seeds": [EVAL_SEED0, EVAL_SEED0 + args.eval_episodes - 1]})
    out = Path(args.out) if args.out else world / "reader.safetensors"
    save_reader(out, reader)
    if args.out is None:
        manifest["reader"] = out.name
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"saved {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0
