"""Rectified-flow noising and the few-step sampler. The network never sees the schedule; only this file does.

Convention: x_t = (1 - t) * x0 + t * eps, t in [0, 1]; t = 1 is pure noise. The network predicts x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def add_noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 (B,F,...), t (B,F), eps like x0 -> x_t."""
    t = t.reshape(*t.shape, *([1] * (x0.dim() - t.dim())))
    return (1 - t) * x0 + t * eps


def sample_target_levels(shape: tuple[int, ...], generator: torch.Generator | None = None, p_pure: float = 0.25) -> torch.Tensor:
    """Noise levels for target frames: a fraction at exactly 1 (predict from context alone, the regime the
    first sampling step is in), the rest logit-normal shifted toward high noise."""
    u = torch.randn(shape, generator=generator) * 1.0 + 0.5
    t = torch.sigmoid(u)
    pure = torch.rand(shape, generator=generator) < p_pure
    return torch.where(pure, torch.ones_like(t), t)


def sample_context_levels(shape: tuple[int, ...], max_level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise levels for context frames: uniform in [0, max_level] (the model sees the level)."""
    return torch.rand(shape, generator=generator) * max_level


def _f32(x):
    """float32 view of a torch tensor or numpy array."""
    return x.float() if isinstance(x, torch.Tensor) else x.astype("float32", copy=False)


@dataclass(frozen=True)
class FlowSampler:
    """Few-step sampler: from t=1 down to 0 along a shifted schedule.

    ``stochastic`` re-noises the x0 estimate with fresh noise at each level (ancestral, robust with few
    steps); otherwise a deterministic Euler/DDIM step along the predicted velocity.
    """

    steps: int = 2
    shift: float = 1.0  # > 1 spends more steps at high noise
    stochastic: bool = False

    def timesteps(self) -> list[float]:
        """The levels visited: [1, ..., 0], length steps + 1."""
        if self.steps < 1:
            raise ValueError(f"sampler needs >= 1 step, got {self.steps}")
        ts = []
        for i in range(self.steps + 1):
            u = 1 - i / self.steps
            ts.append(self.shift * u / (1 + (self.shift - 1) * u))
        return ts

    def step(self, x_t, x0_hat, t: float, t_next: float, noise=None):
        """One update from level t to t_next given the network's x0 estimate (float32 math; torch or numpy)."""
        x_t, x0_hat = _f32(x_t), _f32(x0_hat)
        if t_next <= 0:
            return x0_hat
        if self.stochastic:
            if noise is None:
                raise ValueError("stochastic sampler step needs noise")
            return (1 - t_next) * x0_hat + t_next * _f32(noise)
        eps_hat = (x_t - (1 - t) * x0_hat) / max(t, 1e-6)
        return (1 - t_next) * x0_hat + t_next * eps_hat
