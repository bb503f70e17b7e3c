"""Training-recipe knobs: --set overrides, blocked-move weighting, weighted loss, deep self-rollout context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.actions import ACTION_NAMES
from worldsim.diffusion import FlowSampler
from worldsim.dit import CausalDiT, dit_preset
from worldsim.train import LatentClips, TrainConfig, _parse_sets, _self_rollout_context, clip_for_step, dit_loss, trained_window


def test_set_overrides_parse_each_field_as_its_type():
    out = _parse_sets(["clip_len=16", "blocked_weight=3", "bf16=false", "max_train_episodes=4", "max_val_episodes=none"])
    assert out == {"clip_len": 16, "blocked_weight": 3.0, "bf16": False, "max_train_episodes": 4, "max_val_episodes": None}
    assert isinstance(out["blocked_weight"], float) and isinstance(out["clip_len"], int)
    with pytest.raises(SystemExit, match="KEY one of"):
        _parse_sets(["clip_length=16"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _parse_sets(["clip_len"])
    with pytest.raises(SystemExit, match="cannot read 'x'"):
        _parse_sets(["clip_len=x"])
    with pytest.raises(SystemExit, match="clip_len must be >= 2"):
        _parse_sets(["clip_len=1"])


def test_long_clips_every_nth_step_and_the_window_they_train():
    cfg = TrainConfig(clip_len=16, batch=4, long_clip_len=32, long_clip_every=3, long_clip_batch=2)
    assert [clip_for_step(s, cfg) for s in range(6)] == [(16, 4), (16, 4), (32, 2), (16, 4), (16, 4), (32, 2)]
    assert clip_for_step(2, TrainConfig(clip_len=16, batch=4)) == (16, 4)  # off by default
    assert trained_window({"clip_len": 16, "long_clip_len": 32}) == 31
    assert trained_window({"clip_len": 16}) == 15


def test_blocked_marks_moves_that_did_not_move_the_player():
    clips = LatentClips.__new__(LatentClips)
    right, noop, do = ACTION_NAMES.index("move_right"), ACTION_NAMES.index("noop"), ACTION_NAMES.index("do")
    # action i produces frame i + 1: right moves, right blocked, noop, do, right moves
    clips.act = [np.array([right, right, noop, do, right, noop])]
    clips.pos = [np.array([[0, 0], [1, 0], [1, 0], [1, 0], [1, 0], [2, 0]])]
    moved, got = clips.moves([(0, 1)], 5)  # clip frames 1..5, produced by actions 0..4
    assert got.tolist() == [[False, True, False, False, False]]
    assert moved.tolist() == [[True, False, False, False, True]]
    clips.pos = None
    with pytest.raises(ValueError, match="pos"):
        clips.moves([(0, 1)], 5)


def test_weighted_loss_is_the_weighted_mean_of_per_frame_errors():
    torch.manual_seed(0)
    m = CausalDiT(dit_preset("tiny"))
    cfg = dit_preset("tiny")
    z = torch.randn(2, 4, cfg.latent_channels, cfg.grid, cfg.grid)
    a = torch.randint(0, 17, (2, 4))
    tcfg = TrainConfig(model="tiny")

    def loss(weight=None):
        with torch.no_grad():
            return dit_loss(m, z, a, tcfg, generator=torch.Generator().manual_seed(3), weight=weight)[0].item()

    plain = loss()
    assert loss(torch.full((2, 4), 2.5)) == pytest.approx(plain, rel=1e-5)  # a constant weight changes nothing
    per_frame = [loss(torch.nn.functional.one_hot(torch.full((2,), j), 4).float()) for j in range(4)]
    assert np.mean(per_frame) == pytest.approx(plain, rel=1e-5)
    assert max(per_frame) > 1.05 * min(per_frame)  # the frames' errors differ, so the weight matters
    heavy = torch.ones(2, 4)
    heavy[:, int(np.argmax(per_frame))] = 5.0
    assert loss(heavy) > plain


class _ShiftModel:
    """Predicts frame i as context frame i - 1 plus one (frame 0: its own context plus one)."""

    def forward_teacher(self, x_ctx, sigma_ctx, x_tgt, sigma_tgt, actions, **kw):
        prev = torch.cat([x_ctx[:, :1], x_ctx[:, :-1]], 1)
        return prev + 1.0


def test_self_rollout_depth_compounds_generations():
    z = torch.arange(5.0).view(1, 5, 1, 1, 1).expand(1, 5, 2, 3, 3).clone() * 10
    one = _self_rollout_context(_ShiftModel(), z, torch.zeros(1, 5, dtype=torch.long), FlowSampler(1), depth=1)
    two = _self_rollout_context(_ShiftModel(), z, torch.zeros(1, 5, dtype=torch.long), FlowSampler(1), depth=2)
    assert torch.equal(one[:, 0], z[:, 0]) and torch.equal(two[:, 0], z[:, 0])  # the first frame stays real
    assert torch.equal(one[:, 1:], z[:, :-1] + 1)  # one generation from the real frame before
    assert torch.equal(two[:, 1], z[:, 0] + 1)  # its context is the real first frame
    assert torch.equal(two[:, 2:], z[:, :-2] + 2)  # predicted from a prediction: two generations
