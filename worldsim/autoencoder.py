"""The frame autoencoder: a 72x72 frame <-> a 9x9 grid of latent tokens (one token per Crafter tile).

Crafter draws every view tile from a texture atlas, so a tile's pixels depend on little more than that
tile's content and the global lighting. The decoder is therefore mostly per-token (cheap: it runs every
frame at play time) with one 3x3 layer of tile context and a learned per-position bias (the night
vignette depends on where the tile is on screen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.config import config_from_dict, preset


@dataclass(frozen=True)
class AEConfig:
    """Autoencoder hyper-parameters."""

    image_size: int = 72
    patch: int = 8  # stride: 72 / 8 = a 9x9 latent grid, one token per tile
    latent_channels: int = 16
    enc_channels: tuple[int, ...] = (32, 64, 128)  # widths of the three stride-2 stages
    dec_channels: int = 192
    latent_noise: float = 0.1  # training-time noise on latents: a smooth, diffusion-friendly code
    latent_l2: float = 1e-3  # keeps the raw latent scale near 1

    @property
    def grid(self) -> int:
        """Latent grid side (tokens per row)."""
        return self.image_size // self.patch

    def validate(self) -> None:
        """Raise ValueError for inconsistent sizes."""
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if 2 ** len(self.enc_channels) != self.patch:
            raise ValueError(f"{len(self.enc_channels)} stride-2 stages give stride {2 ** len(self.enc_channels)}, not patch {self.patch}")


AE_PRESETS: dict[str, AEConfig] = {
    "tiny": AEConfig(latent_channels=8, enc_channels=(8, 16, 16), dec_channels=32),
    "small": AEConfig(),
}


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8 if cout % 8 == 0 else 1, cout), nn.GELU())


class Autoencoder(nn.Module):
    """Frames uint8-range float (B,3,S,S) in [0,1] <-> latents (B,C,g,g), normalized per channel."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        layers: list[nn.Module] = [_conv_block(3, cfg.enc_channels[0], 1)]
        cin = cfg.enc_channels[0]
        for c in cfg.enc_channels:
            layers += [_conv_block(cin, c, 2), _conv_block(c, c, 1)]
            cin = c
        layers.append(nn.Conv2d(cin, cfg.latent_channels, 1))
        self.encoder = nn.Sequential(*layers)
        g, d, p = cfg.grid, cfg.dec_channels, cfg.patch
        self.dec_in = nn.Conv2d(cfg.latent_channels, d, 1)
        self.dec_pos = nn.Parameter(torch.zeros(1, d, g, g))
        self.dec_ctx = nn.Conv2d(d, d, 3, padding=1)
        self.dec_mid = nn.Conv2d(d, d, 1)
        self.dec_out = nn.Conv2d(d, 3 * p * p, 1)
        # Latent statistics over the training data, set after training (used to normalize for the DiT).
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> raw latents (B,C,g,g)."""
        return self.encoder(x * 2 - 1)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B,C,g,g) -> (B,3,S,S) in ~[0,1] (not clamped)."""
        h = F.gelu(self.dec_in(z) + self.dec_pos)  # (B,d,g,g)
        h = h + F.gelu(self.dec_ctx(h))
        h = F.gelu(self.dec_mid(h))
        return F.pixel_shuffle(self.dec_out(h), self.cfg.patch) + 0.5  # (B,3,S,S)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> normalized latents (B,C,g,g) (~zero mean, unit std per channel)."""
        z = self.encode_raw(x)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents (B,C,g,g) -> (B,3,S,S) in [0,1]."""
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return self.decode_raw(z).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (so that DDP's forward computes it): see ``loss``."""
        return self.loss(x)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch (B,3,S,S) in [0,1]: MSE + L1 on pixels, small L2 on latents."""
        z = self.encode_raw(x)
        zn = z + self.cfg.latent_noise * torch.randn_like(z)
        y = self.decode_raw(zn)
        mse = F.mse_loss(y.float(), x.float())
        l1 = F.l1_loss(y.float(), x.float())
        reg = z.float().pow(2).mean()
        loss = mse + 0.1 * l1 + self.cfg.latent_l2 * reg
        return loss, {"mse": mse.item(), "l1": l1.item(), "z2": reg.item()}


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (...,H,W,3) -> float (...,3,H,W) in [0,1]."""
    return frames.movedim(-1, -3).float() / 255.0


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (...,3,H,W) in [0,1] -> uint8 (...,H,W,3), rounded."""
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).movedim(-3, -1)


def ae_config_from_dict(d: dict) -> AEConfig:
    """AEConfig from its JSON dict."""
    return config_from_dict(AEConfig, d)


def ae_preset(name: str) -> AEConfig:
    """A named AE preset."""
    return preset(AE_PRESETS, name, "autoencoder")

