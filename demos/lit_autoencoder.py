"""The lit autoencoder against issue #3's bar (decoded frames give the tiles of the originals for >= 99.5% of tiles,
PSNR >= 34 dB by day), next to an unlit autoencoder read with its tile reader.

A lit autoencoder (AEConfig.lit, preset small-lit) draws a frame's unlit view and its light, and lights the view as
the game does, night noise included (worldsim.light.game_light): its night frames are read by the game's own
texture model. Held-out real frames (seeds 950,000-950,001 by default) are round-tripped and read again:

    python demos/lit_autoencoder.py [--ae runs/lit1/autoencoder.safetensors] [--seeds 950000 950001] [--compare tests/data/ae1]

Prints, against the game's semantic map: the texture model on the originals, on the lit round trips (and the share
of tiles that read as the originals' do), an unlit autoencoder's round trips through its reader (--compare: a
directory with autoencoder.safetensors and reader.safetensors; tests/data/ae1 holds the world's autoencoder before
session 15); PSNR by day; the light head's error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Print the readings (all / day / night / deep night / asleep)."""
    import torch

    from engine.world import default_world_dir
    from worldsim.autoencoder import frames_to_tensor, tensor_to_frames
    from worldsim.eval.reader import accuracy, load_reader, play_episode, round_trip
    from worldsim.eval.tiles import get_classifier
    from worldsim.train import load_autoencoder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ae", type=Path, default=None, help="a lit autoencoder (default: the shipped world's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[950_000, 950_001], help="held-out episode seeds (1,000 frames each)")
    p.add_argument("--compare", type=Path, default=None,
                   help="a directory with an unlit autoencoder.safetensors and its reader.safetensors to compare with")
    args = p.parse_args(argv)
    args.ae = args.ae or default_world_dir() / "autoencoder.safetensors"
    ae = load_autoencoder(args.ae).eval()
    if not ae.cfg.lit:
        raise SystemExit(f"{args.ae}: not a lit autoencoder (train one with --set model=small-lit)")
    t0 = time.time()
    eps = [play_episode(s, 1000, ae.cfg.image_size, unlit=True) for s in args.seeds]
    test = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    clf = get_classifier(ae.cfg.image_size)
    orig = clf.classify(test["frames"], test["daylight"], test["sleeping"]).labels
    deep = test["daylight"] < 0.15

    def show(name: str, labels: np.ndarray, extra: str = "") -> None:
        r = accuracy(labels, test)
        print(f"{name:<44} " + "  ".join(f"{k} {100 * v:6.2f}%" for k, v in r.items()
                                         if k in ("all", "day", "night", "deep_night", "asleep")) + extra)

    show("texture model on the originals", orig)
    recon, unlit, light = [], [], []
    with torch.no_grad():
        for i in range(0, len(test["frames"]), 256):
            x = frames_to_tensor(torch.from_numpy(test["frames"][i:i + 256]))
            z = ae.encode(x)
            recon.append(tensor_to_frames(ae.decode(z)).numpy())
            raw = z * ae.latent_std[:, None, None] + ae.latent_mean[:, None, None]
            unlit.append(tensor_to_frames(ae.decode_raw(raw).clamp(0, 1)).numpy())
            d, s = ae.decode_light(z)
            light.append(np.stack([d.numpy(), s.numpy()], 1))
    recon, unlit, light = np.concatenate(recon), np.concatenate(unlit), np.concatenate(light)
    lit = clf.classify(recon, test["daylight"], test["sleeping"]).labels
    same = lit == orig
    show("texture model on the lit round trips", lit, f"  | as the originals read: {100 * same.mean():6.2f}% (deep night {100 * same[deep].mean():6.2f}%)")
    own = clf.classify(recon).labels  # lighting estimated from the decoded frame itself
    orig_own = clf.classify(test["frames"]).labels
    same = own == orig_own
    show("  ... with the light read from each frame", own, f"  | as the originals read: {100 * same.mean():6.2f}% (deep night {100 * same[deep].mean():6.2f}%)")

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
        return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))

    day = test["daylight"] >= 0.5
    print(f"PSNR by day {psnr(recon[day], test['frames'][day]):.2f} dB; unlit view {psnr(unlit, test['unlit']):.2f} dB "
          f"(night {psnr(unlit[~day], test['unlit'][~day]):.2f}); view tiles drawn unlit within 8 levels: "
          f"{100 * np.mean((np.abs(unlit.astype(int) - test['unlit'].astype(int)) <= 8).reshape(len(unlit), 9, 8, 9, 8, 3)[:, :7].all(axis=(2, 4, 5))):.2f}%")
    err = np.abs(light[:, 0] - test["daylight"])
    print(f"light head: daylight error median {np.median(err):.4f}, max {err.max():.4f}; sleep right {100 * np.mean(light[:, 1] == test['sleeping']):.2f}%")
    if args.compare is not None:
        other = load_autoencoder(args.compare / "autoencoder.safetensors").eval()
        reader = load_reader(args.compare / "reader.safetensors", autoencoder=args.compare / "autoencoder.safetensors")
        show(f"{args.compare.name} round trips, its reader", reader.read(round_trip(other, test["frames"]), test["daylight"], test["sleeping"]))
    print(f"({time.time() - t0:.0f} s; deep night = daylight < 0.15; {len(test['frames'])} frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
