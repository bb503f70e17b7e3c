"""The model: shapes, the cache invariant, learning on a fixed batch, checkpoints and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.actions import NULL_ACTION, NUM_ACTION_EMBEDDINGS
from worldsim.autoencoder import Autoencoder, ae_preset, frames_to_tensor, tensor_to_frames
from worldsim.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from worldsim.config import config_to_dict
from worldsim.diffusion import FlowSampler, add_noise
from worldsim.dit import CausalDiT, DiTConfig, dit_preset
from worldsim.train import TrainConfig, dit_loss, load_autoencoder, load_dit, save_model


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised layers random values so that every input matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if float(p.abs().sum()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_autoencoder_shapes_and_pixel_roundtrip():
    ae = Autoencoder(ae_preset("tiny"))
    frames = torch.randint(0, 256, (3, 72, 72, 3), dtype=torch.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 3, 72, 72) and x.max() <= 1
    z = ae.encode(x)
    assert z.shape == (3, ae.cfg.latent_channels, 9, 9)
    y = ae.decode(z)
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    assert torch.equal(tensor_to_frames(frames_to_tensor(frames)), frames)


def test_dit_chunk_shapes():
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    B, k, P = 2, 3, 4
    pk, pv, pt, pvalid = m.empty_cache(B, P)
    x = torch.randn(B, k, cfg.latent_channels, cfg.grid, cfg.grid)
    x0, kk, vv = m(x, torch.rand(B, k), torch.randint(0, NUM_ACTION_EMBEDDINGS, (B, k)), pk, pv, pt, pvalid)
    N = cfg.tokens_per_frame
    assert x0.shape == x.shape
    assert kk.shape == vv.shape == (cfg.n_layers, B, cfg.n_heads, k * N, cfg.head_dim)


@pytest.mark.parametrize("chunk", [1, 2])
def test_cache_invariant_chunked_equals_full_causal_forward(chunk):
    """Stepping chunk by chunk against a ring cache (slots in scrambled order) == one teacher forward."""
    torch.manual_seed(0)
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    B, T, C, g, N = 2, 6, cfg.latent_channels, cfg.grid, cfg.tokens_per_frame
    xc, xt = torch.randn(B, T, C, g, g), torch.randn(B, T, C, g, g)
    sc, st = torch.rand(B, T) * 0.1, torch.rand(B, T)
    a = torch.randint(0, NUM_ACTION_EMBEDDINGS, (B, T))
    with torch.no_grad():
        full = m.forward_teacher(xc, sc, xt, st, a)
        P = 8
        pk, pv, _, pvalid = m.empty_cache(B, P)
        slot_frame = torch.full((P,), -1)
        order = [5, 2, 7, 0, 3, 6]  # ring slots need not be in time order: positions are explicit
        out = []
        for i in range(0, T, chunk):
            past_t = torch.where(slot_frame >= 0, slot_frame - i, 0).float().expand(B, P)
            # targets of a chunk are generated one frame at a time (each sees only clean frames before it)
            for j in range(i, i + chunk):
                # the clean frames of this chunk before j enter as extra cache entries
                pred, _, _ = m(xt[:, j:j + 1], st[:, j:j + 1], a[:, j:j + 1], pk, pv,
                               torch.where(slot_frame >= 0, slot_frame - j, 0).float().expand(B, P), pvalid)
                out.append(pred)
                _, kk, vv = m(xc[:, j:j + 1], sc[:, j:j + 1], a[:, j:j + 1], pk, pv,
                              torch.where(slot_frame >= 0, slot_frame - j, 0).float().expand(B, P), pvalid)
                s = order[j]
                pk[:, :, :, s * N:(s + 1) * N], pv[:, :, :, s * N:(s + 1) * N] = kk, vv
                pvalid[:, s] = 1
                slot_frame[s] = j
            del past_t
        stepped = torch.cat(out, 1)
    assert (full - stepped).abs().max() < 1e-4


def test_chunk_commit_equals_sequential_commits():
    """Committing k frames in one block-causal pass writes the same keys as k single-frame commits."""
    torch.manual_seed(1)
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    B, k, P, N = 1, 3, 4, cfg.tokens_per_frame
    x = torch.randn(B, k, cfg.latent_channels, cfg.grid, cfg.grid)
    sig, a = torch.full((B, k), 0.02), torch.randint(0, 17, (B, k))
    with torch.no_grad():
        pk, pv, pt, pvalid = m.empty_cache(B, P)
        _, k_chunk, v_chunk = m(x, sig, a, pk, pv, pt, pvalid)
        for i in range(k):
            past_t = torch.tensor([[j - i if j < i else 0 for j in range(P)]]).float()
            _, kk, vv = m(x[:, i:i + 1], sig[:, i:i + 1], a[:, i:i + 1], pk, pv, past_t, pvalid)
            assert (kk - k_chunk[:, :, :, i * N:(i + 1) * N]).abs().max() < 1e-4
            pk[:, :, :, i * N:(i + 1) * N], pv[:, :, :, i * N:(i + 1) * N] = kk, vv
            pvalid[:, i] = 1


def test_time_is_relative():
    """Shifting every frame time by a constant changes nothing (so a window of any age works)."""
    torch.manual_seed(2)
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    B, P = 1, 3
    pk, pv, _, _ = m.empty_cache(B, P)
    pk.normal_(), pv.normal_()
    x = torch.randn(B, 1, cfg.latent_channels, cfg.grid, cfg.grid)
    args = (torch.rand(B, 1), torch.zeros(B, 1, dtype=torch.long), pk, pv)
    with torch.no_grad():
        y1 = m(x, *args, torch.tensor([[-1.0, -2.0, -3.0]]), torch.ones(B, P))[0]
        y2 = m(x, *args, torch.tensor([[-2.0, -1.0, -3.0]]), torch.ones(B, P))[0]
    assert (y1 - y2).abs().max() > 1e-4  # times matter ...
    # ... but only relative ones: memory frames far in the past get finite, well-defined angles
    with torch.no_grad():
        y3 = m(x, *args, torch.tensor([[-1001.0, -1002.0, -1003.0]]), torch.ones(B, P))[0]
    assert torch.isfinite(y3).all()


def test_empty_slots_are_ignored():
    torch.manual_seed(3)
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    pk, pv, pt, pvalid = m.empty_cache(1, 4)
    x = torch.randn(1, 1, cfg.latent_channels, cfg.grid, cfg.grid)
    args = (torch.rand(1, 1), torch.zeros(1, 1, dtype=torch.long))
    with torch.no_grad():
        y_empty = m(x, *args, pk, pv, pt, pvalid)[0]
        pk2, pv2 = pk.clone().normal_(), pv.clone().normal_()  # garbage in masked slots
        y_garbage = m(x, *args, pk2, pv2, pt, pvalid)[0]
        y_none = m(x, *args, pk[:, :, :, :0], pv[:, :, :, :0], pt[:, :0], pvalid[:, :0])[0]
    assert torch.allclose(y_empty, y_garbage, atol=1e-5)
    assert torch.allclose(y_empty, y_none, atol=1e-5)


def test_actions_change_the_prediction():
    torch.manual_seed(4)
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg))
    pk, pv, pt, pvalid = m.empty_cache(1, 2)
    x = torch.randn(1, 1, cfg.latent_channels, cfg.grid, cfg.grid)
    s = torch.ones(1, 1)
    with torch.no_grad():
        ya = m(x, s, torch.tensor([[1]]), pk, pv, pt, pvalid)[0]
        yb = m(x, s, torch.tensor([[NULL_ACTION]]), pk, pv, pt, pvalid)[0]
    assert (ya - yb).abs().max() > 1e-4


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = dit_preset("tiny")
    m = CausalDiT(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    z = torch.randn(4, 4, cfg.latent_channels, cfg.grid, cfg.grid)
    z[:, 1:] = z[:, :1]  # a predictable clip: every frame repeats the first
    a = torch.randint(0, 17, (4, 4))
    tcfg = TrainConfig(model="tiny", action_dropout=0.0)

    def loss_at(seed):
        return dit_loss(m, z, a, tcfg, generator=torch.Generator().manual_seed(seed))[0]

    with torch.no_grad():
        before = sum(loss_at(s).item() for s in range(4))
    for step in range(100):
        loss = loss_at(100 + step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = sum(loss_at(s).item() for s in range(4))
    assert after < 0.8 * before, (before, after)


def test_sampler_contract():
    for sampler in (FlowSampler(1), FlowSampler(4, shift=3.0), FlowSampler(2, stochastic=True)):
        ts = sampler.timesteps()
        assert ts[0] == pytest.approx(1.0) and ts[-1] == pytest.approx(0.0)
        assert all(a > b for a, b in zip(ts, ts[1:]))
        x0 = torch.randn(2, 3)
        x = torch.randn(2, 3)
        for t, tn in zip(ts[:-1], ts[1:]):
            x = sampler.step(x, x0, t, tn, torch.randn(2, 3))
        assert torch.allclose(x, x0)  # an exact x0 oracle lands exactly on x0
        xn = sampler.step(np.ones(3, np.float32), np.zeros(3, np.float32), 1.0, 0.0, None)
        assert np.allclose(xn, 0)
    with pytest.raises(ValueError):
        FlowSampler(0).timesteps()
    # the deterministic step follows the straight path of a known x0/eps pair
    x0, eps = torch.randn(5), torch.randn(5)
    xt = add_noise(x0[None], torch.tensor([0.8]), eps[None])[0]
    assert torch.allclose(FlowSampler(2).step(xt, x0, 0.8, 0.3, None), 0.7 * x0 + 0.3 * eps, atol=1e-6)


def test_checkpoint_roundtrip_identical_outputs(tmp_path):
    cfg = dit_preset("tiny")
    m = _randomized(CausalDiT(cfg), seed=5)
    save_model(tmp_path / "dit.safetensors", "dit", m, cfg)
    m2 = load_dit(tmp_path / "dit.safetensors")
    assert m2.cfg == cfg
    pk, pv, pt, pvalid = m.empty_cache(1, 2)
    x = torch.randn(1, 1, cfg.latent_channels, cfg.grid, cfg.grid)
    args = (x, torch.rand(1, 1), torch.zeros(1, 1, dtype=torch.long), pk, pv, pt, pvalid)
    with torch.no_grad():
        for a, b in zip(m(*args), m2(*args)):
            assert torch.equal(a, b)
    ae = _randomized(Autoencoder(ae_preset("tiny")), seed=6)
    save_model(tmp_path / "ae.safetensors", "autoencoder", ae, ae.cfg)
    ae2 = load_autoencoder(tmp_path / "ae.safetensors")
    x = torch.rand(2, 3, 72, 72)
    assert torch.equal(ae.decode(ae.encode(x)), ae2.decode(ae2.encode(x)))


def test_tile_loss_teaches_the_latents_the_tiles_and_stays_out_of_the_graphs(tmp_path):
    """AEConfig.tile_loss: a head on the noisy latents learns the view's tile ids (its cross-entropy falls on a
    fixed batch); training without the tiles is a clear error; the head travels in the checkpoint and never
    enters encode/decode (the exported graphs are those of the plain design)."""
    from worldsim.autoencoder import AEConfig

    with pytest.raises(ValueError, match="tile_classes"):
        AEConfig(tile_loss=0.1).validate()
    assert not hasattr(Autoencoder(ae_preset("tiny")), "tile_head")
    torch.manual_seed(0)
    ae = Autoencoder(ae_preset("tiny-tiles"))
    x = torch.rand(4, 3, 72, 72)
    tiles = torch.randint(0, ae.cfg.tile_classes, (4, 7, ae.cfg.grid))
    with pytest.raises(ValueError, match="semantic tiles"):
        ae.loss(x)
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    ce = []
    for _ in range(150):
        loss, parts = ae(x, tiles)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ce.append(parts["tile_ce"])
    assert ce[-1] < 0.5 * ce[0], (ce[0], ce[-1])
    save_model(tmp_path / "ae.safetensors", "autoencoder", ae, ae.cfg)
    ae2 = load_autoencoder(tmp_path / "ae.safetensors")
    assert ae2.cfg.tile_loss == 0.1 and torch.equal(ae2.tile_head[0].weight, ae.tile_head[0].weight)
    with torch.no_grad():  # the head reads the latents; it never writes them
        ae2.tile_head[0].weight.zero_()
        ae.eval(), ae2.eval()
        assert torch.equal(ae.decode(ae.encode(x)), ae2.decode(ae2.encode(x)))


def test_corrupt_and_mismatched_checkpoints_give_clear_errors(tmp_path):
    cfg = dit_preset("tiny")
    m = CausalDiT(cfg)
    path = tmp_path / "dit.safetensors"
    save_model(path, "dit", m, cfg)
    # truncated file
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_dit(bad)
    # garbage
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_dit(tmp_path / "garbage.safetensors")
    # missing
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "missing.safetensors")
    # wrong kind
    with pytest.raises(CheckpointError, match="expected 'autoencoder'"):
        load_autoencoder(path)
    # config that does not match the weights
    tensors, meta = load_checkpoint(path)
    meta["config"] = config_to_dict(DiTConfig(**{**config_to_dict(cfg), "d_model": 64, "n_heads": 2}))
    save_checkpoint(tmp_path / "mismatch.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="does not match the model config"):
        load_dit(tmp_path / "mismatch.safetensors")
    # unknown config key (a checkpoint from another version)
    meta["config"] = {**config_to_dict(cfg), "new_knob": 1}
    save_checkpoint(tmp_path / "future.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="unknown config keys"):
        load_dit(tmp_path / "future.safetensors")


def test_prev_mix_starts_from_older_weights_as_the_same_model(tmp_path):
    """A run started (--init) from weights trained before the previous-frame mix existed gives exactly the
    old model's outputs; weights missing any other tensor are refused."""
    from dataclasses import replace

    from worldsim.train import init_dit_from

    cfg = dit_preset("tiny")
    old_cfg = replace(cfg, prev_mix=False)
    old = _randomized(CausalDiT(old_cfg), seed=3)
    save_model(tmp_path / "old.safetensors", "dit", old, old_cfg)
    new = CausalDiT(cfg)
    init_dit_from(new, tmp_path / "old.safetensors")
    assert float(new.prev_mix.kernel.detach().abs().sum()) == 0.0
    torch.manual_seed(0)
    B, T, C, g = 2, 4, cfg.latent_channels, cfg.grid
    args = (torch.randn(B, T, C, g, g), torch.rand(B, T) * 0.1, torch.randn(B, T, C, g, g), torch.rand(B, T),
            torch.randint(0, NUM_ACTION_EMBEDDINGS, (B, T)))
    with torch.no_grad():
        assert torch.allclose(old.forward_teacher(*args), new.eval().forward_teacher(*args), atol=1e-6)
        # with a kernel the previous frame is read by the action: the same inputs now give other outputs
        new.prev_mix.kernel.normal_()
        assert (old.forward_teacher(*args) - new.forward_teacher(*args)).abs().max() > 1e-3
    tensors, meta = load_checkpoint(tmp_path / "old.safetensors")
    del tensors["out.weight"]
    save_checkpoint(tmp_path / "broken.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match="out.weight"):
        init_dit_from(CausalDiT(cfg), tmp_path / "broken.safetensors")


def test_prev_mix_table_gives_the_same_matrices():
    """The inference path reads the previous-frame mix from a table of every action's matrices (folded into a
    constant on export): exactly the matrices the training path scatters per call."""
    from worldsim.dit import PrevFrameMix

    cfg = dit_preset("tiny")
    mix = PrevFrameMix(cfg)
    with torch.no_grad():
        mix.kernel.normal_()
    actions = torch.randint(0, cfg.num_actions, (3, 2))
    a, b = mix.matrices(actions), mix.matrices_from_table(actions)
    assert a.shape == b.shape == (cfg.n_layers, 3, cfg.n_heads, 2, cfg.tokens_per_frame, cfg.tokens_per_frame)
    assert torch.equal(a, b)
