"""Training-recipe knobs: --set overrides, blocked-move weighting, weighted loss, deep self-rollout context,
long clips, warm-started targets."""

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


def test_moved_previous_is_the_engine_s_warm_start_of_each_clip_frame(monkeypatch):
    """Frame i of moved_previous is frame i-1 moved as the player moved: for a free move exactly what the
    engine's warm start (engine.rules.warm_start) makes of that frame; no move keeps it."""
    import engine.rules as rules
    from worldsim.memory import MOVE_DELTAS
    from worldsim.train import moved_previous

    z = torch.randn(1, 4, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    left, up = ACTION_NAMES.index("move_left"), ACTION_NAMES.index("move_up")
    shifts = torch.tensor([[[0, 0], list(MOVE_DELTAS[left]), [0, 0], list(MOVE_DELTAS[up])]])
    got = moved_previous(z, shifts)
    assert torch.equal(got[:, 0], z[:, 0]) and torch.equal(got[:, 2], z[:, 1])  # no move: the frame before
    # the engine reads light and walkability from the frame (tested in test_rules): here, an awake day and free moves
    monkeypatch.setattr(rules, "frame_lighting", lambda frame: (1.0, False))
    monkeypatch.setattr(rules, "target_walkable", lambda *args, **kw: True)
    frame = np.zeros((72, 72, 3), np.uint8)
    for i, act in ((1, left), (3, up)):
        np.testing.assert_array_equal(got[0, i].numpy(), rules.warm_start(z[0, i - 1].numpy(), frame, act))
        assert not torch.equal(got[0, i], z[0, i - 1])


class _Recorder:
    """Records what the loss feeds the network; predicts zeros."""

    def __init__(self):
        self.calls = []

    def forward_teacher(self, x_ctx, sigma_ctx, x_tgt, sigma_tgt, actions, **kw):
        self.calls.append((x_ctx.clone(), x_tgt.clone(), sigma_tgt.clone()))
        return torch.zeros_like(x_tgt)


def test_warm_targets_start_from_the_moved_frame_before_at_the_warm_level():
    """warm_target_prob = 1: every target after the first (but after sleep) is the moved frame before noised to
    warm_level; 0: the loss's inputs are exactly those of a config without the option."""
    from worldsim.train import moved_previous

    z = torch.randn(2, 6, 3, 9, 9, generator=torch.Generator().manual_seed(1)) * 3
    sleep, right = ACTION_NAMES.index("sleep"), ACTION_NAMES.index("move_right")
    a = torch.full((2, 6), right)
    a[1, 3] = sleep
    shifts = torch.tensor([[1, 0]]).repeat(2, 6, 1)
    rec = _Recorder()
    dit_loss(rec, z, a, TrainConfig(model="tiny", warm_target_prob=1.0, warm_level=0.4), generator=torch.Generator().manual_seed(2), shifts=shifts)
    _, x_tgt, s_tgt = rec.calls[0]
    warm = torch.ones(2, 6, dtype=torch.bool)
    warm[:, 0] = False
    warm[1, 3] = False
    assert torch.all(s_tgt[warm] == 0.4) and not torch.any(s_tgt[~warm] == 0.4)
    noise = (x_tgt - 0.6 * moved_previous(z, shifts)) / 0.4  # what is left must be unit noise
    assert noise[warm].std().item() == pytest.approx(1.0, abs=0.1)
    assert (x_tgt[0, 1] - 0.4 * noise[0, 1] - 0.6 * z[0, 1]).abs().max() > 1  # not the frame itself
    base = _Recorder()
    dit_loss(base, z, a, TrainConfig(model="tiny"), generator=torch.Generator().manual_seed(2), shifts=shifts)
    off = _Recorder()
    dit_loss(off, z, a, TrainConfig(model="tiny", warm_target_prob=0.0), generator=torch.Generator().manual_seed(2), shifts=shifts)
    assert all(torch.equal(p, q) for p, q in zip(base.calls[0], off.calls[0]))


def test_warm_self_rollout_starts_each_generation_from_the_moved_context():
    """With a warm level the self-rollout's targets enter at that level, built from the context's frame before."""
    rec = _Recorder()
    z = torch.randn(1, 5, 2, 9, 9)
    a = torch.full((1, 5), ACTION_NAMES.index("noop"))
    _self_rollout_context(rec, z, a, FlowSampler(1), depth=1, shifts=torch.zeros(1, 5, 2, dtype=torch.long), warm=0.5)
    _, x_tgt, s_tgt = rec.calls[0]
    assert s_tgt[0, 0] == 1.0 and torch.all(s_tgt[0, 1:] == 0.5)
    left = (x_tgt[0, 1:] - 0.5 * z[0, :-1]) / 0.5
    assert left.std().item() == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="one sampler step"):
        _self_rollout_context(rec, z, a, FlowSampler(2), shifts=torch.zeros(1, 5, 2, dtype=torch.long), warm=0.5)


def test_sleep_clips_hold_a_frame_where_the_player_falls_asleep_or_wakes():
    """sleep_clip_frac = 1: every clip (of an episode that has one) holds a sleep change; 0: uniform starts with
    no extra random draw (a run without the option samples the same clips)."""
    clips = LatentClips.__new__(LatentClips)
    sleeping = np.zeros(300, bool)
    sleeping[100:160] = True  # falls asleep at frame 100, wakes at 160
    clips.lat = [torch.zeros(300, 2, 3, 3), torch.zeros(50, 2, 3, 3)]
    clips.act = [np.zeros(300, np.int64), np.zeros(50, np.int64)]
    clips.sleep_changes = [np.array([100, 160]), np.array([], np.int64)]
    T = 8
    for seed in range(20):
        _, _, origins = clips.sample(np.random.default_rng(seed), 16, T, sleep_frac=1.0)
        for e, s in origins:
            assert 1 <= s <= len(clips.lat[e]) - T
            if e == 0:
                assert any(s <= t < s + T for t in (100, 160)), s
    # off: uniform starts, one draw each after the episode draws (the clips a run without the option got)
    rng = np.random.default_rng(3)
    lens = np.array([300, 50])
    eps = rng.choice(2, 16, p=lens / lens.sum())
    want = [(int(e), int(rng.integers(1, lens[e] - T + 1))) for e in eps]
    assert clips.sample(np.random.default_rng(3), 16, T, sleep_frac=0.0)[2] == want
    clips.sleep_changes = None
    with pytest.raises(ValueError, match="sleeping"):
        clips.sample(np.random.default_rng(0), 4, T, sleep_frac=0.5)
