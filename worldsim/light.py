"""Crafter's lighting, as a tensor function: the unlit view + daylight + sleep flag + the night's noise -> the frame.

crafter.engine.LocalView draws the view's tiles unlit, then lights them (``_light``): at night (daylight < 0.5)
it mixes uniform grey noise (32..127) into a copy, weighted by a vignette that is ~0 at the centre and ~1 at the
corners; desaturates that copy (PIL's Color enhance, 0.4), tints it blue, and blends it with the unlit view by
(1 - daylight). A sleeping player sees the result in grey, tinted (``_sleep``). ``game_light`` repeats each step,
uint8 truncations included, so a decoder that draws the unlit view can light it exactly as the game does (with
its own noise): the night's noise dithers contrast under one pixel level, which a decoder that draws the
night's mean rounds away (issue #3, session 13). Only the view (the top 7 tile rows) is lit; the inventory
rows below are not.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

NOISE_LOW, NOISE_HIGH = 32.0, 127.0  # crafter's night noise: uniform in [32, 127)
_NIGHT_TINT = (0.0, 16.0, 64.0)
_SLEEP_TINT = (0.0, 0.0, 16.0)
_NOISE_STDDEV = 0.5


@functools.lru_cache(8)
def vignette(height: int, width: int) -> np.ndarray:
    """(height, width) float64: crafter's night-noise weight per view pixel (row/col order)."""
    xs, ys = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    return 1 - np.exp(-0.5 * (xs**2 + ys**2) / _NOISE_STDDEV**2)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L (ITU-R 601-2, integer arithmetic) of uint8-valued (B,3,H,W) -> (B,1,H,W)."""
    return torch.floor((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 32768) / 65536)


def _blend(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """PIL's Image.blend of uint8-valued images: a + alpha (b - a) in float32, truncated, clipped to 0..255."""
    out = (a.float() + np.float32(alpha) * (b.float() - a.float())).clamp(0, 255)
    return torch.floor(out).to(b.dtype)


def light_channels_first(view: torch.Tensor, daylight: torch.Tensor, sleeping: torch.Tensor,
                         noise: torch.Tensor | None = None) -> torch.Tensor:
    """``game_light`` on a channels-first view (B,3,H,W): the same pixels. Channels first, every broadcast runs
    along whole rows (onnxruntime's elementwise ops with a size-3 inner axis measured ~3x slower)."""
    B, _, H, W = view.shape
    d = daylight.to(view.dtype).reshape(B, 1, 1, 1)
    if noise is None:
        noise = torch.full((B, H, W), (NOISE_LOW + NOISE_HIGH) / 2, dtype=view.dtype, device=view.device)
    elif noise.shape != (B, H, W):
        raise ValueError(f"noise must be (B,H,W) = {(B, H, W)}, got {tuple(noise.shape)}")
    vig = torch.as_tensor(vignette(H, W), dtype=view.dtype, device=view.device)
    mask = (2 * (0.5 - d)).clamp_min(0) * vig  # (B,1,H,W); 0 by day: the noise step is skipped
    night = torch.floor((1 - mask) * view + mask * noise.to(view.dtype)[:, None])  # .astype(np.uint8)
    night = _blend(_grey(night), night, 0.4)  # ImageEnhance.Color(.).enhance(0.4)
    tint = torch.tensor(_NIGHT_TINT, dtype=view.dtype, device=view.device).reshape(1, 3, 1, 1)
    lit = d * view + (1 - d) * (0.5 * night + 0.5 * tint)
    sleep_tint = torch.tensor(_SLEEP_TINT, dtype=view.dtype, device=view.device).reshape(1, 3, 1, 1)
    asleep = 0.5 * _grey(torch.floor(lit)) + 0.5 * sleep_tint  # _sleep: .astype(np.uint8), grey (enhance 0.0), tint
    s = sleeping.to(view.dtype).reshape(B, 1, 1, 1)
    return torch.floor(s * asleep + (1 - s) * lit)  # the view is written into the uint8 canvas: truncation


def game_light(view: torch.Tensor, daylight: torch.Tensor, sleeping: torch.Tensor,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """Light an unlit view as crafter does: view (B,H,W,3) uint8-valued floats, daylight (B,), sleeping (B,)
    bool/0-1, noise (B,H,W) uniform in [32,127) (None: its mean, a smooth night) -> (B,H,W,3) uint8-valued.

    Use float64 for the game's exact pixels (float32 differs by a level at a few truncation edges). Every value
    is >= 0, so numpy's truncations are floors here (ONNX opset 17 has Floor, not Trunc)."""
    if view.ndim != 4 or view.shape[-1] != 3:
        raise ValueError(f"view must be (B,H,W,3), got {tuple(view.shape)}")
    return light_channels_first(view.permute(0, 3, 1, 2), daylight, sleeping, noise).permute(0, 2, 3, 1)


def unlit_hint(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The texture model's unlit reading of frames uint8 (N,S,S,3): (N,S,S,3) uint8, each view tile redrawn as
    the unlit template it reads as (the inventory rows as they are), and the estimated light (N,2) float32 =
    (daylight, sleeping). What the lit autoencoder's encoder reads beside the pixels: the texture model weighs
    the night's bounded noise exactly (99.2% of deep-night tiles), which a per-tile network does not learn
    (89-91%, session 14)."""
    from worldsim.eval.tiles import VIEW_COLS, VIEW_ROWS, get_classifier

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N,S,S,3), got {frames.dtype} {frames.shape}")
    clf = get_classifier(frames.shape[1])
    u, b = clf.unit, clf.border
    out = frames.copy()
    light = np.zeros((len(frames), 2), np.float32)
    for i in range(0, len(frames), 512):
        reading = clf.classify(frames[i:i + 512])  # lighting estimated from the player tile
        tiles = clf.atlas[reading.template]  # (n,7,9,u,u,3)
        n = len(tiles)
        out[i:i + n, b:b + VIEW_ROWS * u, b:b + VIEW_COLS * u] = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, VIEW_ROWS * u, VIEW_COLS * u, 3)
        light[i:i + n, 0] = reading.daylight
        light[i:i + n, 1] = reading.sleeping
    return out, light


def decoder_noise(latents: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The night's noise for decoding latents float32 (B,C,g,g): (B,*shape) float32 uniform in [32,127), a pure
    function of each frame's latents (the same latents draw the same frame: the engine's backends hold no session
    state and stay deterministic), fresh for every new frame as the game's is."""
    import hashlib

    latents = np.ascontiguousarray(latents, np.float32)
    out = np.empty((len(latents), *shape), np.float32)
    for i, z in enumerate(latents):
        seed = int.from_bytes(hashlib.blake2b(z.tobytes(), digest_size=8).digest(), "little")
        out[i] = np.random.default_rng(seed).uniform(NOISE_LOW, NOISE_HIGH, shape)
    return out
