"""The game's rules applied to generated frames: what the world model does not always get right.

The warm start (``warm_start``, preset field ``warm``) uses one of them before denoising: a frame starts
from the previous one moved as Crafter moves the view, not from pure noise (see Session._warm_start).

Two rules, each a preset switch (on by default), applied after denoising and before the commit, so the
model continues from the corrected frame (Session._finish):

- **Blocked moves** (``block_rule``). A Crafter move onto a tile the player cannot enter (water, stone, a
  tree, a table, a creature...) does not move the player: it only turns it to face that way. The model
  learned this from data where it is rare (a few percent of moves) and moved the view anyway in 57% of
  cases (session-3 world). The rule is cheap to read from the frame the move starts from (the faced tile,
  by the nearest-texture classifier of worldsim.eval.tiles, ~0.3 ms): when it says blocked and the new
  frame's view moved, the new frame becomes the previous frame with the model's new player tile (the
  player turned), nothing else changed. It is trusted only where it is sure: an unreadable frame or a
  non-move leaves the model's frame as it is, and a move the rule allows is never forced.
- **The day clock** (``day_clock``). Crafter's daylight is a fixed function of the step count; the model's
  window (1-2 s) cannot tell the time, and in free play a generated night never ended. The session fits
  the clock to its context once (``fit_clock``) and relights each generated frame whose daylight strays
  from it (``relight``: Crafter's lighting is linear per pixel, so it inverts exactly by day; at night the
  game's random noise enters through its mean).
"""

from __future__ import annotations

import functools

import numpy as np

from worldsim.eval.tiles import daylight_at
from worldsim.actions import ACTION_NAMES
from worldsim.memory import (PLAYER_COL, PLAYER_ROW, estimate_move, frame_lighting, move_delta, moved_view,
                             target_walkable)


_READ = object()  # enforce_blocked_move's default: read the rule here


def enforce_blocked_move(prev_frame: np.ndarray, prev_latent: np.ndarray, latent: np.ndarray, frame: np.ndarray, action: int,
                         walkable: bool | None | object = _READ) -> tuple[np.ndarray, bool]:
    """Crafter's blocked-move rule on one generated frame: -> (latent (C,g,g) to keep, whether it was fixed).

    prev_frame uint8 (H,W,3) / prev_latent (C,g,g): the frame the action was taken on; latent / frame: what
    the model made of it. ``walkable``: ``target_walkable(prev_frame, action, frame)`` when the caller has
    it (read here otherwise). A fixed latent is ``prev_latent`` with the new player tile's token.
    """
    if walkable is _READ:
        walkable = target_walkable(prev_frame, action, frame)
    if walkable is not False:  # a non-move, an allowed move, or a frame the classifier cannot read
        return latent, False
    if estimate_move(prev_frame, frame, action) == (0, 0):  # the model kept the view still: nothing to fix
        return latent, False
    out = np.array(prev_latent, np.float32, copy=True)
    out[:, PLAYER_ROW, PLAYER_COL] = latent[:, PLAYER_ROW, PLAYER_COL]
    return out, True


def warm_start(prev_latent: np.ndarray, prev_frame: np.ndarray, action: int) -> np.ndarray | None:
    """The latent (C,g,g) the frame an action produces starts denoising from (Session._warm_start): the previous
    latent, its world view shifted one tile when the action is a move onto a free tile (Crafter's rule, read
    from the previous frame uint8 (H,W,3)); the tiles the move uncovers repeat their neighbours (terrain tends
    to go on), the player tile and the inventory stay. None (start from pure noise) where the light cannot be
    read, the player sleeps or the action is sleep: falling asleep or waking changes the whole view."""
    lit = frame_lighting(prev_frame)
    if lit is None or lit[1] or ACTION_NAMES[action] == "sleep":  # falling asleep/waking changes the whole view
        return None
    dx, dy = move_delta(action)
    out = np.array(prev_latent, np.float32, copy=True)
    if (dx, dy) == (0, 0) or not target_walkable(prev_frame, action):
        return out
    return moved_view(out, dx, dy)


# ---------------------------------------------------------------------------------------------------
# the day clock (see the module docstring)

NIGHT_NOISE_MEAN = 79.5  # Crafter's night noise is uniform(32, 127), grey
DAY_CLOCK_TOLERANCE = 0.03  # daylight a generated frame may stray from the clock's before it is relit
_LUMA = np.array([0.299, 0.587, 0.114])  # PIL's convert("L"), used by ImageEnhance.Color
_TINT = np.array([0.0, 16.0, 64.0])


@functools.lru_cache(maxsize=4)  # one view size per world: computed once, not per relit frame (read-only)
def _vignette(h: int, w: int) -> np.ndarray:
    """Crafter's night-noise weight over the world view (h, w) (LocalView._vignette, stddev 0.5)."""
    x, y = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
    return 1 - np.exp(-0.5 * (x ** 2 + y ** 2) / 0.25)


def _light_terms(daylight: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, lit = a * C + c * luma(C) + b for the unlit view C: -> a, c (h,w,1), b (h,w,3)."""
    d = float(daylight)
    m = (2 * (0.5 - d) * _vignette(h, w))[..., None] if d < 0.5 else np.zeros((h, w, 1))
    a = d + 0.2 * (1 - d) * (1 - m)
    c = 0.3 * (1 - d) * (1 - m)
    b = (1 - d) * (0.5 * m * NIGHT_NOISE_MEAN + 0.5 * _TINT)
    return a, c, b


def relight(frame: np.ndarray, daylight_from: float, daylight_to: float, view_rows: int = 7) -> np.ndarray:
    """A frame uint8 (S,S,3) lit at ``daylight_from`` as Crafter would light it at ``daylight_to``: the world
    view (the top ``view_rows`` of 9 tile rows) is unlit and lit again; the inventory rows are not lit."""
    S = frame.shape[0]
    h = view_rows * (S // 9)
    v = frame[:h].astype(np.float64)
    a, c, b = _light_terms(daylight_from, h, frame.shape[1])
    y = v - b
    luma = (y @ _LUMA)[..., None] / (a + c)
    unlit = np.clip((y - c * luma) / a, 0, 255)
    a, c, b = _light_terms(daylight_to, h, frame.shape[1])
    out = frame.copy()
    out[:h] = np.clip(np.rint(a * unlit + c * (unlit @ _LUMA)[..., None] + b), 0, 255).astype(np.uint8)
    return out


def fit_clock(daylights: np.ndarray) -> int | None:
    """The step count (mod 300) of the last of consecutive frames whose daylights (T,) were read (NaN:
    unreadable): the phase whose daylight curve fits them best. None when nothing was readable."""
    d = np.asarray(daylights, np.float64)
    ok = np.isfinite(d)
    if not ok.any():
        return None
    back = np.arange(len(d))[::-1][ok]  # frames before the last one
    phases = np.arange(300)
    err = ((daylight_at(phases[:, None] - back[None]) - d[ok][None]) ** 2).sum(1)
    return int(phases[err.argmin()])
