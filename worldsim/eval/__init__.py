"""Evaluation: measure a world against the real game (`worldsim eval`).

- ``tiles``: read frames back into their 7x9 semantic tiles and inventory (the ruler).
- ``metrics``: PSNR, SSIM, tile accuracies, action following, revisits on numpy arrays;
  ``tile_metrics`` is the one-call version for training validation.
- ``reference``: the copy-last baseline and the real-game oracle as worlds.
- ``protocols``: one-step, open-loop rollouts, revisits, long-run stability on held-out seeds.
- ``report``: JSON + Markdown + PNG plots; ``cli``: the subcommand.

Importing this package is cheap: the game and torch load only when a function needs them.
"""

from worldsim.eval.metrics import psnr, ssim, tile_metrics
from worldsim.eval.tiles import classify_tiles, read_inventory, read_tiles

__all__ = ["classify_tiles", "psnr", "read_inventory", "read_tiles", "ssim", "tile_metrics"]
