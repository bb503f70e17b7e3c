"""Record a tiny Crafter dataset (2 episodes x 200 frames), print its stats, and sample a batch of clips."""

import sys
import tempfile

import numpy as np

from worldsim.data import open_dataset
from worldsim.data.record import format_summary, record_dataset

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="worldsim-small-")
print(format_summary(record_dataset(out, frames=400, seed=0, episode_len=200, workers=1)))
clip = open_dataset(out).load("train").sample_clips(np.random.default_rng(0), batch=4, clip_len=16)
print(f"clip batch: frames {clip.frames.shape} {clip.frames.dtype}, actions {clip.actions.shape} {clip.actions.dtype}")
