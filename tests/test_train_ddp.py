"""Training end to end on a tiny recording: the autoencoder in one process, then the DiT under
`torchrun --nproc_per_node=2` (DDP, gloo on CPU), resumed, and packaged into a world the engine plays."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from worldsim.checkpoint import load_checkpoint
from worldsim.data.record import record_dataset


def _run(args: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.mark.slow
def test_tiny_training_pipeline_with_two_process_ddp(tmp_path):
    train, val = tmp_path / "train", tmp_path / "val"
    record_dataset(train, frames=240, seed=0, workers=1, episode_len=120, progress=False)
    record_dataset(val, frames=120, seed=900_000, workers=1, episode_len=120, progress=False)
    ws = [sys.executable, "-m", "worldsim"]
    _run(ws + ["train", "autoencoder", "--data", str(train), "--val-data", str(val), "--out", str(tmp_path / "ae"),
               "--preset", "tiny", "--steps", "6", "--no-progress", "--threads", "1"], tmp_path)
    ae = tmp_path / "ae" / "autoencoder.safetensors"
    # the tile-class loss reads the recording's semantic maps (AEConfig.tile_loss)
    _run(ws + ["train", "autoencoder", "--data", str(train), "--val-data", str(val), "--out", str(tmp_path / "ae-tiles"),
               "--preset", "tiny", "--set", "model=tiny-tiles", "--steps", "6", "--no-progress", "--threads", "1"], tmp_path)
    assert '"tile_ce"' in (tmp_path / "ae-tiles" / "log.jsonl").read_text()
    dit_args = ["train", "dit", "--data", str(train), "--val-data", str(val), "--ae", str(ae), "--out", str(tmp_path / "dit"),
                "--preset", "tiny", "--no-progress", "--threads", "1"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "worldsim"]
    _run(ddp + dit_args + ["--steps", "4"], tmp_path)
    _, meta = load_checkpoint(tmp_path / "dit" / "last.safetensors", kind="dit")
    assert meta["step"] == 4
    # resuming continues from the checkpoint instead of starting over; step 5 trains on a 6-frame clip
    p = _run(ddp + dit_args + ["--steps", "6", "--set", "long_clip_len=6", "--set", "long_clip_every=2"], tmp_path)
    assert "resumed dit" in p.stdout + p.stderr
    _, meta = load_checkpoint(tmp_path / "dit" / "last.safetensors", kind="dit")
    assert meta["step"] == 6
    # both ranks trained one model: the log has one line per logged step (rank 0 writes alone)
    steps = [line for line in (tmp_path / "dit" / "log.jsonl").read_text().splitlines() if '"val"' not in line]
    assert len(steps) == len(set(steps))
    world = tmp_path / "world"
    _run(ws + ["train", "package", "--ae", str(ae), "--dit", str(tmp_path / "dit" / "dit.safetensors"),
               "--opening-data", str(val), "--out", str(world)], tmp_path)
    from engine import World

    import json

    assert json.loads((world / "world.json").read_text())["max_window"] == 5  # the long clips set the window
    w = World.load(world, backend="torch", threads=1)
    frame = w.new_session(seed=0).step("move_left")
    assert frame.shape == w.frame_shape and frame.dtype == np.uint8
