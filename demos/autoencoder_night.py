"""Where does an unlit autoencoder lose the night's tiles? (issue #3: decoded frames must give the tiles of
the originals for >= 99.5% of tiles.)

Three readings of held-out real frames (seeds 950,000-950,001), each against the game's semantic map:
  1. the texture model (worldsim.eval.tiles) on the original frames: what the pixels hold;
  2. the world's tile reader on the autoencoder's round trips (noisy night as the game draws it, and the night
     drawn noise-free): what the decoded frames hold;
  3. an MLP probe trained on the encoder's latents (+ position, daylight) of other episodes: what the latents hold.
If 3 is no better than 2, the decoder is not the bottleneck: the encoder drops the tile. The reader on the
noise-free originals is the ceiling of any decoder that draws a noisy night as its mean in uint8 pixels.

    python demos/autoencoder_night.py [--world tests/data/ae1] [--reader R] [--train-episodes 8] [--steps 6000]

The default is tests/data/ae1: the autoencoder the default world shipped until session 15, with its reader (the lit
autoencoder shipped since draws the night as the game does and needs no reader: demos/lit_autoencoder.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

AE1 = Path(__file__).resolve().parent.parent / "tests" / "data" / "ae1"


def _episodes(seeds, smooth: bool = False) -> dict[str, np.ndarray]:
    from worldsim.eval.reader import play_episode

    eps = [play_episode(s, 1000, smooth_night=smooth) for s in seeds]
    return {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}


def _latent_features(ae, data: dict[str, np.ndarray]) -> np.ndarray:
    """(N*7*9, C+64) per view tile: its latent, a one-hot of its place, the frame's daylight."""
    import torch

    with torch.no_grad():
        z = np.concatenate([ae.encode(torch.from_numpy(data["frames"][i:i + 256]).permute(0, 3, 1, 2).float() / 255).numpy()
                            for i in range(0, len(data["frames"]), 256)])
    z = z.transpose(0, 2, 3, 1)[:, :7]  # the 7x9 view (the last two rows are the inventory)
    n = len(z)
    pos = np.broadcast_to(np.eye(63, dtype=np.float32).reshape(1, 7, 9, 63), (n, 7, 9, 63))
    light = np.broadcast_to(data["daylight"][:, None, None, None], (n, 7, 9, 1))
    return np.concatenate([z, pos, light], -1).reshape(n * 63, -1).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Print the three readings (all / day / night / deep night / asleep / stone and trees at night)."""
    import torch
    from torch import nn

    from worldsim.eval.reader import accuracy, load_reader, round_trip
    from worldsim.eval.tiles import NUM_CLASSES, get_classifier
    from worldsim.train import load_autoencoder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-episodes", type=int, default=8, help="probe training episodes (seeds 500,000+)")
    p.add_argument("--steps", type=int, default=6000, help="probe training steps (batches of 1,024 tiles)")
    p.add_argument("--world", type=Path, default=AE1, help="directory with autoencoder.safetensors (default: tests/data/ae1)")
    p.add_argument("--reader", type=Path, default=None, help="tile reader of that world's autoencoder (default: WORLD/reader.safetensors)")
    args = p.parse_args(argv)
    world = args.world
    ae = load_autoencoder(world / "autoencoder.safetensors").eval()
    reader = load_reader(args.reader or world / "reader.safetensors", autoencoder=world / "autoencoder.safetensors")
    t0 = time.time()
    test = _episodes([950_000, 950_001])

    def show(name: str, labels: np.ndarray, data=test) -> None:
        r = accuracy(labels, data)
        print(f"{name:<52} " + "  ".join(f"{k} {100 * v:5.1f}%" for k, v in r.items() if k in ("all", "day", "night", "deep_night", "night_stone")))

    show("texture model on the original frames", get_classifier(72).classify(test["frames"], test["daylight"], test["sleeping"]).labels)
    show("reader on round trips", reader.read(round_trip(ae, test["frames"]), test["daylight"], test["sleeping"]))
    smooth = _episodes([950_000, 950_001], smooth=True)
    # what a perfect autoencoder decodes a noisy night to (its mean over the noise), rounded to uint8
    show("reader on the noise-free night's originals", reader.read(smooth["frames"], smooth["daylight"], smooth["sleeping"]), smooth)
    show("reader on round trips of the noise-free night", reader.read(round_trip(ae, smooth["frames"]), smooth["daylight"], smooth["sleeping"]), smooth)
    train = _episodes(range(500_000, 500_000 + args.train_episodes))
    x, y = torch.from_numpy(_latent_features(ae, train)), torch.from_numpy(train["semantic"].reshape(-1).astype(np.int64))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, NUM_CLASSES))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=args.steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        i = torch.randint(0, len(x), (1024,), generator=g)
        loss = nn.functional.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        probe = net(torch.from_numpy(_latent_features(ae, test))).argmax(-1).numpy().reshape(test["semantic"].shape)
    show(f"MLP probe on the latents ({args.train_episodes} training episodes)", probe)
    print(f"({time.time() - t0:.0f} s; deep night = daylight < 0.15)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
