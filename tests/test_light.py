"""Crafter's lighting as a tensor function (worldsim.light), the recorder's unlit views, the texture model's unlit
hint, and the lit autoencoder that draws an unlit view and lights it as the game does."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from worldsim.autoencoder import Autoencoder, ae_preset, frames_to_tensor
from worldsim.crafter_env import CrafterEnv
from worldsim.light import decoder_noise, game_light, unlit_hint


def _light(env: CrafterEnv, unlit: np.ndarray, sleeping: bool) -> np.ndarray:
    h = unlit.shape[0] * 7 // 9
    out = game_light(torch.from_numpy(unlit[None, :h]).double(), torch.tensor([env._env._world.daylight], dtype=torch.float64),
                     torch.tensor([sleeping]), torch.from_numpy(env.night_noise()[None]))
    return out[0].numpy()


def _episode(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n real frames of a short walk: frames, unlit views (n,72,72,3) uint8, daylight (n,), sleeping (n,)."""
    env = CrafterEnv(seed=seed)
    frame, info = env.reset()
    frames, unlits, days, asleep = [], [], [], []
    for t in range(n):
        frames.append(frame)
        unlits.append(env.render_unlit())
        days.append(info["daylight"])
        asleep.append(info["sleeping"])
        frame, info = env.step(int(t % 5))
    return np.stack(frames), np.stack(unlits), np.array(days), np.array(asleep)


def test_game_light_draws_the_games_own_frames_by_day_at_night_and_asleep():
    """The game's frame == game_light(its unlit view, daylight, sleep, the night noise it drew), pixel for pixel,
    over a day into the night and with the player asleep; the inventory rows are not lit."""
    env = CrafterEnv(seed=3)
    env.reset()
    rng = np.random.default_rng(0)
    seen = {"day": 0, "night": 0, "asleep": 0}
    for t in range(230):
        frame, info = env.step(int(rng.integers(0, 5)))
        if t % 9:
            continue
        unlit = env.render_unlit()
        assert np.array_equal(unlit[56:], frame[56:])
        assert np.array_equal(_light(env, unlit, False), frame[:56])
        seen["night" if info["daylight"] < 0.5 else "day"] += 1
        if t % 27 == 0:  # the sleeping view (grey, tinted) of the same state
            env._env._player.sleeping = True
            try:
                assert np.array_equal(_light(env, env.render_unlit(), True), env.render()[:56])
            finally:
                env._env._player.sleeping = False
            seen["asleep"] += 1
    assert min(seen.values()) >= 3, seen
    # float32 is within a level (a few truncation edges), the smooth night (no noise) is the noise's mean
    unlit = torch.from_numpy(env.render_unlit()[None, :56]).float()
    d = torch.tensor([0.05])
    smooth = game_light(unlit, d, torch.tensor([False]))
    mean = game_light(unlit, d, torch.tensor([False]), torch.full((1, 56, 72), 79.5))
    assert torch.equal(smooth, mean)
    with pytest.raises(ValueError, match="noise"):
        game_light(unlit, d, torch.tensor([False]), torch.zeros(1, 72, 56))
    with pytest.raises(ValueError, match="view"):
        game_light(unlit[0], d, torch.tensor([False]))


def test_recorded_unlit_views_and_a_dataset_without_them(tmp_path):
    """`worldsim record --unlit` stores each frame's unlit view (lit again it is the frame, within a level: the
    stored daylight is float32); a dataset recorded without it says so when asked for it, and its manifest
    config is what it was before the option existed."""
    from worldsim.data.dataset import DatasetError, open_dataset
    from worldsim.data.record import record_dataset

    record_dataset(tmp_path / "u", frames=40, seed=5, workers=1, episode_len=40, progress=False, unlit=True)
    store = open_dataset(tmp_path / "u").load("train", fields=("frames", "unlit", "daylight", "sleeping"))
    frames, unlit, day = store.array("frames"), store.array("unlit"), store.array("daylight")
    assert unlit.shape == frames.shape and unlit.dtype == np.uint8 and not np.array_equal(unlit, frames)
    lit = game_light(torch.from_numpy(unlit[:, :56]).double(), torch.from_numpy(day).double(),
                     torch.from_numpy(store.array("sleeping")))
    diff = np.abs(lit.numpy().astype(int) - frames[:, :56].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # recorded by day: no noise
    record_dataset(tmp_path / "plain", frames=20, seed=5, workers=1, episode_len=20, progress=False)
    plain = open_dataset(tmp_path / "plain")
    assert "unlit" not in plain.manifest["config"]
    with pytest.raises(DatasetError, match="--unlit"):
        plain.load("train", fields=("frames", "unlit"))
    assert np.array_equal(plain.load("train", fields=("frames",)).array("frames"), frames[:20])  # same game


def test_unlit_hint_reads_the_unlit_view():
    """The texture model's unlit reading of real frames: by day every view tile is the unlit view's, the
    inventory rows are the frame's, the light estimate is the game's; bad input is a clear error."""
    frames, unlits, days, _ = _episode(1, 24)
    view, light = unlit_hint(frames)
    tiles = (view == unlits)[:, :56].reshape(24, 7, 8, 9, 8, 3).all(axis=(2, 4, 5))
    assert tiles.mean() == 1.0
    assert np.array_equal(view[:, 56:], frames[:, 56:])
    assert np.abs(light[:, 0] - days).max() < 0.03 and not light[:, 1].any()
    with pytest.raises(ValueError, match="uint8"):
        unlit_hint(frames.astype(np.float32))


def test_lit_autoencoder_trains_on_unlit_views_and_lights_its_frames(tmp_path, tiny_world_dir):
    """AEConfig.lit: the loss needs the unlit targets (clear error), falls on a fixed batch (pixels and the light
    head); decode lights the unlit view with the given noise (deterministic), the night noisy and the day not;
    the checkpoint round trip decodes the same; the engine runs it (torch, onnxruntime, an exported bundle)."""
    from worldsim.train import load_autoencoder, save_model

    frames, unlits, days, asleep = _episode(2, 8)
    x = frames_to_tensor(torch.from_numpy(frames))
    torch.manual_seed(0)
    ae = Autoencoder(ae_preset("tiny-lit"))
    with pytest.raises(ValueError, match="unlit"):
        ae.loss(x)
    hint = tuple(torch.as_tensor(a) for a in unlit_hint(frames))
    with pytest.raises(ValueError, match="hint"):
        ae.encode(x, (hint[0][:, :, :64], hint[1]))
    lit = (frames_to_tensor(hint[0]), hint[1], frames_to_tensor(torch.from_numpy(unlits)),
           torch.from_numpy(np.stack([days, asleep], 1).astype(np.float32)))
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    losses, light_mse = [], []
    for _ in range(120):
        loss, parts = ae(x, None, lit)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        light_mse.append(parts["light_mse"])
    assert losses[-1] < 0.3 * losses[0] and light_mse[-1] < 0.1 * light_mse[0], (losses[0], losses[-1], light_mse[0], light_mse[-1])
    ae.eval()
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (8, 8, 9, 9)
        noise = 32 + 95 * torch.rand(8, 56, 72, generator=torch.Generator().manual_seed(1))
        y = ae.decode(z, noise)
        assert torch.equal(y, ae.decode(z, noise)) and y.shape == x.shape
        assert torch.equal(y * 255, torch.round(y * 255))  # whole pixel levels, as the game draws
        other = 32 + 95 * torch.rand(8, 56, 72, generator=torch.Generator().manual_seed(2))
        for bias, noisy in ((20.0, False), (-20.0, True)):  # the light head says full day / deep night
            dark = copy.deepcopy(ae)
            dark.light_head.bias[0] = bias
            dark.light_head.weight.zero_()
            assert torch.equal(dark.decode(z, noise), dark.decode(z, other)) != noisy
        with pytest.raises(ValueError, match="noise"):
            ae.decode(z, noise[:, :, :56])
        # without noise it draws the engine's: a pure function of the latents (worldsim.light.decoder_noise)
        assert torch.equal(ae.decode(z), ae.decode(z, torch.from_numpy(decoder_noise(z.numpy(), (56, 72)))))
        assert torch.equal(ae.decode(z[:3]), ae.decode(z)[:3])
    save_model(tmp_path / "ae.safetensors", "autoencoder", ae, ae.cfg)
    ae2 = load_autoencoder(tmp_path / "ae.safetensors").eval()
    with torch.no_grad():
        assert ae2.cfg.lit and torch.equal(ae2.decode(ae2.encode(x), noise), y)
    from engine import World

    world = tmp_path / "world"
    shutil.copytree(tiny_world_dir, world)
    save_model(world / "autoencoder.safetensors", "autoencoder", ae, ae.cfg)
    # the engine runs it: hints computed on the host, the decoder's noise a pure function of the latents
    frames = {}
    for backend in ("torch", "onnxruntime"):
        w = World.load(world, backend=backend, threads=1)
        runs = []
        for _ in range(2):
            sess = w.new_session(seed=0)
            runs.append(np.stack([sess.step(a) for a in ("move_left", "noop", "do")]))
        assert np.array_equal(runs[0], runs[1])  # deterministic
        frames[backend] = runs[0]
    assert np.abs(frames["torch"].astype(int) - frames["onnxruntime"].astype(int)).max() <= 2
    # and so does its exported bundle (the graphs take the hint and the noise; the same frames as its float32 world)
    from export.bundle import export_bundle

    export_bundle(world, tmp_path / "bundle", parity_frames=4, log=lambda msg: None)
    played = []
    for w in (World.load(tmp_path / "bundle", threads=1), World.load(world, backend="onnxruntime", threads=1, precision="fp32")):
        assert w.backend.lit
        sess = w.new_session(seed=0)
        played.append(np.stack([sess.step(a) for a in ("move_left", "noop", "do")]))
    assert np.array_equal(played[0], played[1])
    # TensorRT gets the DiT graph only: a lit world's frames are decoded on the host, where its noise is drawn
    from export.tensorrt import engine_plan, export_trt_onnx
    from worldsim.train import load_dit

    dit = load_dit(world / "dit.safetensors")
    assert set(export_trt_onnx(ae, dit, tmp_path / "trt", "fp32")) == {"dit"}
    assert {e["graph"] for e in engine_plan(dit.cfg, [8], (1,), decoder=False)} == {"dit"}
