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
    enc_hidden: int = 256
    dec_hidden: int = 256
    latent_noise: float = 0.1  # training-time noise on latents: a smooth, diffusion-friendly code
    latent_l2: float = 1e-3  # keeps the raw latent scale near 1
    # a tile-class loss on the (noisy) latents of the view's tiles, through a small head used in training only: keeps
    # what a tile is where its pixels barely show it (deep night: a level under the game's noise, which pixel MSE
    # averages away; session 13). 0 = off (no head). tile_classes: the game's semantic ids.
    tile_loss: float = 0.0
    tile_classes: int = 0
    # lit: the decoder draws the frame's unlit view and the frame's light (daylight, sleep), then lights the view
    # as the game does (worldsim.light.game_light, with the night's noise); the encoder reads each tile with its
    # unlit reading by the texture model (a hint, worldsim.light.unlit_hint). The latents hold what the tiles
    # are, not the night's noise: deep-night tiles survive (session 14). Training needs the dataset's unlit views.
    lit: bool = False
    light_weight: float = 10.0  # weight of the light head's loss (daylight MSE + sleep cross-entropy)

    @property
    def grid(self) -> int:
        """Latent grid side (tokens per row)."""
        return self.image_size // self.patch

    def validate(self) -> None:
        """Raise ValueError for inconsistent sizes."""
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.tile_loss < 0 or (self.tile_loss > 0) != (self.tile_classes > 0):
            raise ValueError(f"tile_loss ({self.tile_loss}) needs tile_classes > 0 and the reverse (got {self.tile_classes})")
        if self.lit and self.image_size % 9:
            raise ValueError(f"a lit autoencoder draws Crafter's 9-tile view: image_size must be a multiple of 9, got {self.image_size}")


AE_PRESETS: dict[str, AEConfig] = {
    "tiny": AEConfig(latent_channels=8, enc_hidden=32, dec_hidden=32),
    "tiny-tiles": AEConfig(latent_channels=8, enc_hidden=32, dec_hidden=32, tile_loss=0.1, tile_classes=19),
    "small": AEConfig(),
    # the shipped size with the tile-class loss (19 = len(worldsim.crafter_env.SEMANTIC_NAMES))
    "small-tiles": AEConfig(tile_loss=0.1, tile_classes=19),
    # the lit autoencoder (unlit view + light, lit as the game does): tests / the candidate for the next world
    "tiny-lit": AEConfig(latent_channels=8, enc_hidden=32, dec_hidden=32, lit=True),
    "small-lit": AEConfig(lit=True),
}


class Autoencoder(nn.Module):
    """Frames (B,3,S,S) in [0,1] <-> latents (B,C,g,g), normalized per channel.

    Both directions are per-tile MLPs (patch = tile): Crafter tiles are drawn independently, so a tile's
    token needs only its own pixels. Per-token matmuls are what CPUs do fastest. A learned per-position
    embedding covers the screen-position effects (the night vignette, the inventory rows).
    """

    def __init__(self, cfg: AEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        p, g = cfg.patch, cfg.grid
        pix = 3 * p * p
        e, d = cfg.enc_hidden, cfg.dec_hidden
        # lit: each tile's pixels, its unlit hint's pixels, the frame's estimated light (daylight, sleeping)
        self.enc_in = nn.Linear(2 * pix + 2 if cfg.lit else pix, e)
        self.enc_pos = nn.Parameter(torch.zeros(g * g, e))
        self.encoder = nn.Sequential(nn.GELU(), nn.Linear(e, e), nn.GELU(), nn.Linear(e, cfg.latent_channels))
        self.dec_in = nn.Linear(cfg.latent_channels, d)
        self.dec_pos = nn.Parameter(torch.zeros(g * g, d))
        self.decoder = nn.Sequential(nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, pix))
        if cfg.tile_loss > 0:  # training only: encode/decode (and the exported graphs) never use it
            self.tile_head = nn.Sequential(nn.Linear(cfg.latent_channels, 64), nn.GELU(), nn.Linear(64, cfg.tile_classes))
        if cfg.lit:  # the frame's light from its tokens: per token, averaged (daylight logit, sleep logit)
            self.light_head = nn.Linear(cfg.latent_channels, 2)
        # Latent statistics over the training data, set after training (used to normalize for the DiT).
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def _tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> (B,g*g,3*p*p) in [-1,1], one row per tile."""
        return F.pixel_unshuffle(x * 2 - 1, self.cfg.patch).flatten(2).transpose(1, 2)

    def encode_raw(self, x: torch.Tensor, hint: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> raw latents (B,C,g,g). A lit autoencoder also reads ``hint``: (the unlit reading
        (B,3,S,S) in [0,1], the estimated light (B,2)); computed from x when None (numpy, ~ms per frame)."""
        B, g = x.shape[0], self.cfg.grid
        t = self._tiles(x)  # (B,g*g,3*p*p)
        if self.cfg.lit:
            if hint is None:
                hint = lit_hint(x)
            view, light = hint
            if view.shape != x.shape or light.shape != (B, 2):
                raise ValueError(f"hint must be ((B,3,S,S), (B,2)) = ({tuple(x.shape)}, {(B, 2)}), "
                                 f"got ({tuple(view.shape)}, {tuple(light.shape)})")
            t = torch.cat([t, self._tiles(view.to(t.dtype)), light.to(t.dtype)[:, None].expand(B, t.shape[1], 2)], -1)
        z = self.encoder(self.enc_in(t) + self.enc_pos)  # (B,g*g,C)
        return z.transpose(1, 2).reshape(B, -1, g, g)

    def light_logits_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B,C,g,g) -> (B,2) logits of (daylight, sleeping), averaged over the tokens."""
        return self.light_head(z.flatten(2).transpose(1, 2)).mean(1)

    def decode_light(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized latents (B,C,g,g) of a lit autoencoder -> daylight (B,) in [0,1], sleeping (B,) bool."""
        logits = self.light_logits_raw(z * self.latent_std[:, None, None] + self.latent_mean[:, None, None])
        return torch.sigmoid(logits[:, 0]), logits[:, 1] > 0

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B,C,g,g) -> (B,3,S,S) in ~[0,1] (not clamped)."""
        B, g = z.shape[0], self.cfg.grid
        h = self.dec_in(z.flatten(2).transpose(1, 2)) + self.dec_pos  # (B,g*g,d)
        y = self.decoder(h)  # (B,g*g,3*p*p)
        return F.pixel_shuffle(y.transpose(1, 2).reshape(B, -1, g, g), self.cfg.patch) + 0.5

    def encode(self, x: torch.Tensor, hint: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B,3,S,S) in [0,1] -> normalized latents (B,C,g,g) (~zero mean, unit std per channel); ``hint``: see
        ``encode_raw`` (lit autoencoders)."""
        z = self.encode_raw(x, hint)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized latents (B,C,g,g) -> (B,3,S,S) in [0,1]. A lit autoencoder lights its unlit view with the
        night's ``noise`` (B,7u,9u) uniform in [32,127) (None: worldsim.light.decoder_noise, a pure function of
        each frame's latents, as the engine draws it) and draws whole pixel levels, as the game does."""
        raw = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        y = self.decode_raw(raw).clamp(0, 1)
        if not self.cfg.lit:
            return y
        from worldsim.light import decoder_noise, light_channels_first

        S = self.cfg.image_size
        u = S // 9
        h = 7 * u  # the view's rows (the two inventory rows below are not lit)
        if noise is None:  # the engine's noise: the same latents decode to the same frame here and in the engine
            noise = torch.from_numpy(decoder_noise(z.detach().float().cpu().numpy(), (h, S))).to(y.device)
        day, asleep = self.decode_light(z)
        unlit = torch.round(y * 255)  # the game lights a uint8 canvas
        view = light_channels_first(unlit[:, :, :h], day, asleep, noise.to(y.dtype))
        return torch.cat([view, unlit[:, :, h:]], 2) / 255

    def forward(self, x: torch.Tensor, tiles: torch.Tensor | None = None, lit: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (so that DDP's forward computes it): see ``loss``."""
        return self.loss(x, tiles, lit)

    def loss(self, x: torch.Tensor, tiles: torch.Tensor | None = None, lit: tuple | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch (B,3,S,S) in [0,1]: MSE + L1 on pixels, small L2 on latents, and with
        cfg.tile_loss the tile-class cross-entropy of the noisy latents against ``tiles`` (B,R,g) int64 semantic
        ids of the top R rows (the game's view; the inventory rows below are not scored). A lit autoencoder takes
        ``lit`` = (hint view (B,3,S,S), estimated light (B,2), unlit view (B,3,S,S), true light (B,2) = daylight,
        sleeping): its pixels target the unlit view, and its light head the true light."""
        if self.cfg.lit:
            if lit is None:
                raise ValueError("a lit autoencoder trains on (hint, estimated light, unlit view, light): pass lit=")
            hint_view, est, target, light = lit
            z = self.encode_raw(x, (hint_view, est))
        else:
            z, target = self.encode_raw(x), x
        zn = z + self.cfg.latent_noise * torch.randn_like(z)
        y = self.decode_raw(zn)
        mse = F.mse_loss(y.float(), target.float())
        l1 = F.l1_loss(y.float(), target.float())
        reg = z.float().pow(2).mean()
        loss = mse + 0.1 * l1 + self.cfg.latent_l2 * reg
        parts = {"mse": mse.item(), "l1": l1.item(), "z2": reg.item()}
        if self.cfg.lit:
            logits = self.light_logits_raw(zn).float()
            day = F.mse_loss(torch.sigmoid(logits[:, 0]), light[:, 0].float())
            sleep = F.binary_cross_entropy_with_logits(logits[:, 1], light[:, 1].float())
            loss = loss + self.cfg.light_weight * (day + 0.01 * sleep)
            parts.update(light_mse=day.item(), sleep_ce=sleep.item())
        if self.cfg.tile_loss > 0:
            if tiles is None:
                raise ValueError("this autoencoder trains with a tile-class loss: pass the frames' semantic tiles (B,R,g)")
            R = tiles.shape[1]
            logits = self.tile_head(zn[:, :, :R].permute(0, 2, 3, 1).float())  # (B,R,g,classes)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tiles.reshape(-1))
            loss = loss + self.cfg.tile_loss * ce
            parts["tile_ce"] = ce.item()
        return loss, parts


def lit_hint(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A lit autoencoder's hint of frames (B,3,S,S) in [0,1]: (unlit reading (B,3,S,S) in [0,1], light (B,2))."""
    from worldsim.light import unlit_hint

    frames = tensor_to_frames(x.detach().float().cpu()).numpy()
    view, light = unlit_hint(frames)
    return frames_to_tensor(torch.from_numpy(view)).to(x.device), torch.from_numpy(light).to(x.device)


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

