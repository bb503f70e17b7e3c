"""Read a Crafter frame back into its 7x9 grid of semantic tiles and its inventory counts.

Crafter draws every view tile from a 16x16 texture atlas (a material, maybe with a creature drawn
over it with alpha), then lights the whole view: by day it blends toward a desaturated, blue-tinted
copy by (1 - daylight); at night it first mixes per-pixel grey noise into that copy (uniform 32..127,
weighted by a vignette that is ~0 at the centre and ~1 at the corners); a sleeping player sees the
result in grey. Each step of that pipeline is affine in the texture colour, so a tile's expected
pixels are ``alpha * c + beta * luma(c) * 1 + gamma`` with per-pixel scalars that depend only on
the daylight, the sleep flag and the pixel's place in the view, and the noise lies along the grey
axis (1, 1, 1) with a known per-pixel variance. Classification picks the most likely template
(with a class prior) under that model: by day (no noise) and, at night, with a Gaussian stand-in for
the noise, it is one matrix product per batch of tiles; the few night tiles left in doubt are settled
with the exact uniform-noise likelihood plus their neighbours' labels. ~1 ms per frame on a 2-core
CPU; measured on held-out frames: 100% of tiles by day, ~99.8% at night (~99.4% while asleep).

Semantic ids are those of ``info['semantic']`` (see ``SEMANTIC_NAMES``); every player sprite
(facing, sleeping) maps to 13 "player". Daylight and sleep are estimated from the player tile
(always at row 3, col 4, where the night noise is weakest) when not given.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

SEMANTIC_NAMES: tuple[str, ...] = (
    "outside", "water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond",
    "table", "furnace", "player", "cow", "zombie", "skeleton", "arrow", "plant",
)
NUM_CLASSES = len(SEMANTIC_NAMES)
OUTSIDE, WATER, GRASS, STONE, PATH, SAND, TREE, LAVA = 0, 1, 2, 3, 4, 5, 6, 7
COAL, IRON, DIAMOND, TABLE, FURNACE, PLAYER, COW, ZOMBIE, SKELETON, ARROW, PLANT = 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
# Classes that never move by themselves (materials); creatures, arrows and plants are objects.
STATIC_CLASSES: tuple[int, ...] = tuple(range(0, 13))
OBJECT_CLASSES: tuple[int, ...] = tuple(range(13, 19))

VIEW_ROWS, VIEW_COLS = 7, 9          # world tiles on screen; the player is at (PLAYER_ROW, PLAYER_COL)
PLAYER_ROW, PLAYER_COL = 3, 4
GRID = 9                             # the screen is a 9x9 grid of tiles; the bottom 2 rows are the inventory
INVENTORY_ITEMS: tuple[str, ...] = (
    "health", "food", "drink", "energy", "sapling", "wood", "stone", "coal", "iron", "diamond",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)

_MATERIALS = ("water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond", "table", "furnace")
# Which objects can stand on which materials (crafter/objects.py: walkable sets, where things spawn).
_OBJECTS: tuple[tuple[int, tuple[str, ...], tuple[str, ...]], ...] = (
    (PLAYER, ("player-down", "player-up", "player-left", "player-right", "player-sleep"), ("grass", "sand", "path", "lava")),
    (COW, ("cow",), ("grass", "sand", "path")),
    (ZOMBIE, ("zombie",), ("grass", "sand", "path")),
    (SKELETON, ("skeleton",), ("path", "grass", "sand")),
    (ARROW, ("arrow-left", "arrow-right", "arrow-up", "arrow-down"), ("grass", "sand", "path", "water", "lava")),
    (PLANT, ("plant", "plant-ripe"), ("grass",)),
)

_LUMA = np.array([0.299, 0.587, 0.114], np.float64)   # PIL's RGB -> L weights (ImageEnhance.Color)
_NIGHT_TINT = np.array([0.0, 16.0, 64.0])
_SLEEP_TINT = np.array([0.0, 0.0, 16.0])
_NOISE_MEAN = (32.0 + 127.0) / 2
_NOISE_VAR = (127.0 - 32.0) ** 2 / 12
_SIGMA2 = 1.0          # variance of rounding / truncation error per channel (pixel units^2)
# Rough share of each class among view tiles of an exploring player (a prior for night-time ties).
_CLASS_PRIOR = {
    OUTSIDE: 0.005, WATER: 0.05, GRASS: 0.6, STONE: 0.1, PATH: 0.02, SAND: 0.02, TREE: 0.04, LAVA: 0.005,
    8: 0.003, 9: 0.001, 10: 0.0005, TABLE: 0.01, FURNACE: 0.005, PLAYER: 0.016, COW: 0.01, ZOMBIE: 0.01,
    SKELETON: 0.003, ARROW: 0.002, PLANT: 0.005,
}
# A tile is "unexplained" when its best template is both far (mean whitened squared error per
# pixel-channel above the floor; a true match scores ~0.5, the closest two textures of different
# classes are ~220 apart) and not clearly nearer than the best template of any other class: more
# than a third of the way towards another texture (distance ratio (1/3 / 2/3)^2 = 0.25).
UNEXPLAINED_FLOOR = 25.0
LIGHTING_TOLERANCE = 3.0      # see TileClassifier.choose_lighting
UNEXPLAINED_RATIO = 0.25


def daylight_at(step: int | np.ndarray) -> np.ndarray:
    """Crafter's daylight for an env step count (crafter.Env._update_time)."""
    progress = (np.asarray(step, np.float64) / 300) % 1 + 0.3
    return 1 - np.abs(np.cos(np.pi * progress)) ** 3


# the way the player faces (dx, dy), by its sprite
SPRITE_FACING: dict[str, tuple[int, int]] = {"player-left": (-1, 0), "player-right": (1, 0), "player-up": (0, -1),
                                             "player-down": (0, 1)}


@dataclasses.dataclass(frozen=True)
class Template:
    """One tile appearance: a material, optionally with an object sprite drawn over it."""

    label: int        # semantic id the tile reads as
    material: str     # the material underneath
    sprite: str | None  # the object texture drawn with alpha, if any


@dataclasses.dataclass
class TileReading:
    """The classifier's output for frames of shape (..., H, W, 3)."""

    labels: np.ndarray      # uint8 (..., 7, 9) semantic ids
    distance: np.ndarray    # float32 (..., 7, 9) mean whitened squared error of the best template (~0.5 for a true match)
    runner_up: np.ndarray   # float32 (..., 7, 9) the same for the best template of any other class
    template: np.ndarray    # int16 (..., 7, 9) index into TileClassifier.templates (sprite variants: facing, ripe...)
    daylight: np.ndarray    # float32 (...,) daylight used (given or estimated)
    sleeping: np.ndarray    # bool (...,) sleep rendering used (given or estimated)

    @property
    def unexplained(self) -> np.ndarray:
        """bool (..., 7, 9): tiles that no texture explains (far from all, and not clearly one class)."""
        return (self.distance > UNEXPLAINED_FLOOR) & (self.distance > UNEXPLAINED_RATIO * self.runner_up)


def _tile_layout(size: int) -> tuple[int, int]:
    """(unit, border) in pixels for a square frame of ``size``, as crafter.Env.render lays it out."""
    unit = size // GRID
    if unit < 2:
        raise ValueError(f"frame size {size} is too small: Crafter tiles are size // 9 = {unit} px")
    return unit, (size - unit * GRID) // 2


class TileClassifier:
    """Nearest-texture classifier for square Crafter frames of one size (build once, reuse)."""

    def __init__(self, size: int = 72) -> None:
        import crafter
        import crafter.constants
        import crafter.engine

        self.size = int(size)
        self.unit, self.border = _tile_layout(self.size)
        u = self.unit
        self._textures = crafter.engine.Textures(crafter.constants.root / "assets")
        self._crafter_engine = crafter.engine
        temps: list[Template] = [Template(OUTSIDE, "", None)]
        temps += [Template(i + 1, m, None) for i, m in enumerate(_MATERIALS)]
        for label, sprites, grounds in _OBJECTS:
            temps += [Template(label, g, s) for s in sprites for g in grounds]
        self.templates: tuple[Template, ...] = tuple(temps)
        self.template_labels = np.array([t.label for t in temps], np.uint8)
        self.atlas = np.stack([self._draw(t) for t in temps])                     # (K, u, u, 3) uint8, unlit
        self._player_templates = np.flatnonzero(self.template_labels == PLAYER)
        self._features = self._template_features(self.atlas.reshape(len(temps), u * u, 3))   # (9P, K)
        c = self.atlas.reshape(len(temps), u * u, 3).astype(np.float64)
        g = c.mean(-1)
        cc = c - g[..., None]
        lum = (c @ _LUMA).astype(np.float32)
        cf = c.astype(np.float32)
        self._day_tables = {                  # per-template tables for the day distances
            "c": cf.reshape(len(temps), -1).T.copy(), "l": lum.T.copy(),            # (3P, K), (P, K)
            "cc": (cf**2).sum((1, 2)), "cl": (cf.sum(-1) * lum).sum(1), "ll": (lum**2).sum(1),   # (K,)
        }
        starts = np.flatnonzero(np.r_[True, np.diff(self.template_labels) != 0])
        if np.unique(self.template_labels[starts]).size != starts.size:
            raise AssertionError("templates must be grouped by label")
        self._class_starts = starts                                                 # first template of each class
        self._class_index = np.cumsum(np.r_[True, np.diff(self.template_labels) != 0]) - 1   # template -> class slot
        self._tables = {                      # per-template tables for the exact night model
            "g": g.astype(np.float32), "l": (c @ _LUMA).astype(np.float32),          # (K, P)
            "cc": cc.reshape(len(temps), -1).T.astype(np.float32).copy(),            # (3P, K)
            "cc2": (cc**2).sum(-1).T.astype(np.float32).copy(),                      # (P, K)
        }
        # Per-pixel vignette of the 7x9 local view, cut into tiles: (63, P).
        h, w = VIEW_ROWS * u, VIEW_COLS * u
        xs, ys = np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h))
        vig = 1 - np.exp(-0.5 * (xs**2 + ys**2) / 0.5**2)                          # (h, w) in row/col order
        self._vignette = vig.reshape(VIEW_ROWS, u, VIEW_COLS, u).transpose(0, 2, 1, 3).reshape(VIEW_ROWS * VIEW_COLS, u * u)
        self._item_atlas = self._render_items()                                   # (16, 10, u, u, 3)
        self._penalty = self._prior_penalty()                                     # (63, K)
        self.lighting_block = max(1, self.unit // 4)
        self.prior_weight = 0.3          # weight of the class prior in the exact night decision
        self.neighbour_penalty = 4.0     # -2 log-odds per disagreeing neighbour in that decision
        self._bank = None                                                          # lighting hypotheses, built on first use

    # ----- the atlas, drawn exactly as crafter.engine.LocalView / ItemView draw it -----
    def _draw(self, t: Template) -> np.ndarray:
        """The unlit (u, u, 3) uint8 tile of a template, composited by crafter's own draw functions."""
        eng, u = self._crafter_engine, self.unit
        canvas = np.zeros((u, u, 3), np.uint8) + 127      # the view's background: tiles outside the world
        if t.material:
            eng._draw(canvas, np.array([0, 0]), self._textures.get(t.material, (u, u)))
        if t.sprite:
            eng._draw_alpha(canvas, np.array([0, 0]), self._textures.get(t.sprite, (u, u)))
        return canvas.transpose(1, 0, 2).copy()          # crafter draws in (x, y); frames are (row, col)

    def _render_items(self) -> np.ndarray:
        """(16, 10, u, u, 3) uint8: each inventory slot drawn with count 0 (empty) .. 9."""
        eng, u = self._crafter_engine, self.unit
        view = eng.ItemView(self._textures, [GRID, 2])
        out = np.zeros((len(INVENTORY_ITEMS), 10, u, u, 3), np.uint8)
        for i, item in enumerate(INVENTORY_ITEMS):
            for n in range(1, 10):
                inv = {name: (n if name == item else 0) for name in INVENTORY_ITEMS}
                canvas = view(inv, np.array([u, u])).transpose(1, 0, 2)            # (2u, 9u, 3) row/col
                r, c = divmod(i, GRID)
                out[i, n] = canvas[r * u:(r + 1) * u, c * u:(c + 1) * u]
        return out

    def _prior_penalty(self) -> np.ndarray:
        """(63, K) float32 -2 log prior of each template at each view tile (the player is drawn only at the centre).

        Negligible by day (a few units against distances in the thousands between textures); at
        night it breaks ties that the noise makes, e.g. a corner grass tile against a rare arrow.
        """
        counts = np.bincount(self.template_labels, minlength=NUM_CLASSES)
        per_template = np.array([_CLASS_PRIOR[t.label] for t in self.templates]) / counts[self.template_labels]
        n = VIEW_ROWS * VIEW_COLS
        prior = np.tile(per_template, (n, 1))
        is_player = self.template_labels == PLAYER
        centre = PLAYER_ROW * VIEW_COLS + PLAYER_COL
        prior[:, is_player] *= 1e-3
        prior[centre, ~is_player] *= 1e-3
        pen = -2 * np.log(prior)
        return (pen - pen.min(1, keepdims=True)).astype(np.float32)

    @staticmethod
    def _template_features(c: np.ndarray) -> np.ndarray:
        """(9P, K) float32 per-pixel features of unlit templates c (K, P, 3) used by the distance expansion."""
        c = c.astype(np.float64)
        g = c.mean(-1)
        lum = c @ _LUMA
        cc = c - g[..., None]
        feats = np.stack([cc[..., 0], cc[..., 1], cc[..., 2], (cc**2).sum(-1), g, lum, g * g, g * lum, lum * lum], -1)
        return feats.reshape(len(c), -1).T.astype(np.float32).copy()            # (P*9, K)

    # ----- the lighting model -----
    def _light_coefficients(self, daylight: np.ndarray, sleeping: np.ndarray, tiles: np.ndarray, paired: bool = False):
        """Per-pixel affine model of the renderer for frames (F,) at tile positions ``tiles`` (n,).

        Returns float32 alpha, beta, k (F, n, P) and gamma (F, n, P, 3): expected pixel =
        alpha*c + beta*luma(c)*(1,1,1) + gamma, plus grey noise k*(U(32,127) - mean) on every channel.
        With ``paired`` the i-th frame goes with the i-th tile only: shapes (F, P) and (F, P, 3).
        """
        vig = self._vignette[tiles].astype(np.float32)
        if paired:
            d = np.asarray(daylight, np.float32)[:, None]
            s = np.asarray(sleeping, bool)[:, None]
        else:
            d = np.asarray(daylight, np.float32)[:, None, None]
            s = np.asarray(sleeping, bool)[:, None, None]
            vig = vig[None]
        m = np.clip(2 * (0.5 - d), 0, None) * vig          # noise weight per pixel
        alpha = d + 0.2 * (1 - d) * (1 - m)                 # colour kept (0.4 saturation in the night copy)
        beta = 0.3 * (1 - d) * (1 - m)                      # grey added by the desaturation
        k = 0.5 * (1 - d) * m                               # noise weight after the blend
        # Constant part: the night tint and the noise mean; -0.5 for the final float -> uint8 truncation.
        gamma = (0.5 * (1 - d))[..., None] * _NIGHT_TINT.astype(np.float32) + (k * _NOISE_MEAN - 0.5)[..., None]
        if s.any():
            # Sleeping: the lit view is made grey (luma) and tinted: x -> 0.5 * luma(x) + (0, 0, 8).
            s_gamma = (0.5 * (gamma + 0.5) @ _LUMA.astype(np.float32))[..., None] + (0.5 * _SLEEP_TINT - 0.75).astype(np.float32)
            beta = np.where(s, 0.5 * (alpha + beta), beta)
            alpha = np.where(s, np.float32(0), alpha)
            k = np.where(s, 0.5 * k, k)
            gamma = np.where(s[..., None], s_gamma, gamma)
        return alpha, beta, k, gamma

    def _day_distances(self, obs: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray) -> np.ndarray:
        """(F, n, K) the same distances as ``_gaussian_distances`` for daylight >= 0.5 (no noise, no vignette).

        Every pixel then shares one affine map alpha*c + beta*luma(c) + gamma, so the distance splits
        into two small matmuls against fixed template matrices and per-frame scalars.
        """
        zero = np.zeros(1, np.int64)
        alpha, beta, _, gamma = (x[:, 0, 0] for x in self._light_coefficients(daylight, sleeping, zero))  # (F,), (F, 3)
        F, n, P, _ = obs.shape
        o = obs.astype(np.float32) - gamma[:, None, None, :]                         # (F, n, P, 3)
        tab = self._day_tables
        dot_c = (o.reshape(F * n, 3 * P) @ tab["c"]).reshape(F, n, -1)              # sum o.c
        dot_l = (o.sum(-1).reshape(F * n, P) @ tab["l"]).reshape(F, n, -1)          # sum (o.1) luma(c)
        a, b = alpha[:, None, None], beta[:, None, None]
        dist = ((o * o).sum((-1, -2))[..., None] - 2 * a * dot_c - 2 * b * dot_l
                + a * a * tab["cc"] + 2 * a * b * tab["cl"] + 3 * b * b * tab["ll"])
        return np.maximum(dist, 0) / _SIGMA2

    def _gaussian_distances(self, obs: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray,
                            tiles: np.ndarray, templates: np.ndarray | None = None) -> np.ndarray:
        """(F, n, K') summed whitened squared error of obs tiles uint8 (F, n, P, 3) against templates.

        The noise is treated as Gaussian along the grey axis; expanding the square makes the
        template side a fixed feature matrix, so all tiles x templates is one matmul.
        """
        alpha, beta, k, gamma = self._light_coefficients(daylight, sleeping, tiles)
        a = obs.astype(np.float32) - gamma
        b = a.mean(-1)                                      # grey component of the residual
        a -= b[..., None]                                   # chroma component
        w = 3.0 / (_SIGMA2 + 3.0 * _NOISE_VAR * k * k)      # grey-axis precision: the noise lives there
        inv = np.float32(1.0 / _SIGMA2)
        F, n, P = b.shape
        coef = np.empty((F, n, P, 9), np.float32)
        coef[..., :3] = (-2 * inv) * alpha[..., None] * a
        coef[..., 3] = inv * alpha * alpha
        wb = -2 * w * b
        coef[..., 4] = wb * alpha
        coef[..., 5] = wb * beta
        coef[..., 6] = w * alpha * alpha
        coef[..., 7] = 2 * w * alpha * beta
        coef[..., 8] = w * beta * beta
        const = (inv * (a * a).sum(-1) + w * b * b).sum(-1)
        feats = self._features if templates is None else self._features[:, templates]
        dist = coef.reshape(F * n, P * 9) @ feats + const.reshape(F * n, 1)
        return np.maximum(dist, 0).reshape(F, n, -1)

    def _exact_distances(self, obs: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray,
                         tiles: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """(N, M) -2 log-likelihood of obs tiles (N, P, 3) at tiles (N,) for candidate templates (N, M).

        Models the night noise exactly (uniform on [32, 127] along the grey axis, plus rounding);
        used to settle the few tiles where the Gaussian approximation leaves doubt.
        """
        alpha, beta, k, gamma = self._light_coefficients(daylight, sleeping, tiles, paired=True)   # (N, P)
        gamma = gamma - (k * _NOISE_MEAN)[..., None]        # the noise term below carries its own mean
        a = obs.astype(np.float32) - gamma
        b = a.mean(-1)                                      # grey component (N, P)
        a -= b[..., None]                                   # chroma component (N, P, 3)
        N, P = b.shape
        # Chroma (no noise there): Gaussian, one matmul against every template, then gathered.
        tab = self._tables
        chroma = (-2 / _SIGMA2) * ((alpha[..., None] * a).reshape(N, 3 * P) @ tab["cc"]) \
            + (alpha * alpha / _SIGMA2) @ tab["cc2"] + ((a * a).sum((-1, -2)) / _SIGMA2)[:, None]
        chroma = np.take_along_axis(chroma, cand, 1)                                 # (N, M)
        # Grey: what the noise must explain, k * U(32, 127) plus rounding, per pixel and candidate:
        # -2 log[(Phi((r - 32k)/sg) - Phi((r - 127k)/sg)) / (95k/sg)]. The soft edges of this density
        # are where a dark tile's evidence lies; a hard-edged stand-in loses ~0.5% of night tiles.
        r = (b[:, None] - alpha[:, None] * tab["g"][cand] - beta[:, None] * tab["l"][cand]).astype(np.float64)
        sg = (_SIGMA2 / 3) ** 0.5
        kk = np.maximum(k[:, None], 1e-3).astype(np.float64)
        nll = -2 * _log_phi_diff((r - 32 * kk) / sg, (r - 127 * kk) / sg) + 2 * np.log(95 * kk / sg)
        return chroma + nll.sum(-1)

    # ----- public API -----
    def view_tiles(self, frames: np.ndarray) -> np.ndarray:
        """Cut frames (F, H, W, 3) into their world tiles: (F, 63, P, 3) uint8."""
        u, b = self.unit, self.border
        v = frames[:, b:b + VIEW_ROWS * u, b:b + VIEW_COLS * u]
        F = len(frames)
        return v.reshape(F, VIEW_ROWS, u, VIEW_COLS, u, 3).transpose(0, 1, 3, 2, 4, 5).reshape(F, VIEW_ROWS * VIEW_COLS, u * u, 3)

    def _lighting_bank(self):
        """Player-tile predictions for every (daylight, sleep) hypothesis, as matrices for one matmul."""
        if self._bank is None:
            grid = np.linspace(0, 1, 201)
            d = np.concatenate([grid, grid])
            s = np.repeat([False, True], len(grid))
            centre = np.array([PLAYER_ROW * VIEW_COLS + PLAYER_COL])
            alpha, beta, k, gamma = (x[:, 0].astype(np.float64) for x in self._light_coefficients(d, s, centre))
            c = self.atlas[self._player_templates].reshape(len(self._player_templates), -1, 3).astype(np.float64)  # (J, P, 3)
            lum = c @ _LUMA
            pred = alpha[:, None, :, None] * c[None] + (beta[:, None] * lum[None])[..., None] + gamma[:, None]  # (H, J, P, 3)
            g = pred.mean(-1)
            ch = pred - g[..., None]
            # Plain squared error, not whitened by the night noise: whitening would let a degraded
            # (generated) frame fit "night" better than "day"; at the centre the noise is small anyway.
            w = np.full(k.shape, 3.0 / _SIGMA2)                                       # (H, P)
            pred = self._pool(pred)                  # blocks: blur in a generated frame barely moves block means
            g = pred.mean(-1)
            ch = pred - g[..., None]
            w = w[:, :g.shape[-1]]
            H, J, P = g.shape
            self._bank = dict(
                d=d, s=s, J=J,
                chroma=(ch / _SIGMA2).reshape(H * J, P * 3).T.astype(np.float32),       # (3P, HJ)
                w=w.T.astype(np.float32),                                               # (P, H)
                wg=(w[:, None] * g).reshape(H * J, P).T.astype(np.float32),             # (P, HJ)
                const=((ch**2).sum((-1, -2)) / _SIGMA2 + (w[:, None] * g * g).sum(-1)).reshape(H * J).astype(np.float32),
            )
        return self._bank

    def _pool(self, x: np.ndarray) -> np.ndarray:
        """Average tile pixels (..., P, 3) over blocks of LIGHTING_BLOCK x LIGHTING_BLOCK: (..., P/b^2, 3)."""
        u = self.unit
        b = max(1, min(self.lighting_block, u))
        n = u // b
        x = x.reshape(x.shape[:-2] + (u, u, 3))[..., :n * b, :n * b, :]
        x = x.reshape(x.shape[:-3] + (n, b, n, b, 3)).mean((-4, -2))
        return x.reshape(x.shape[:-3] + (n * n, 3))

    def _lighting_errors(self, frames: np.ndarray) -> np.ndarray:
        """(F, 402) squared error of the player tile under each (daylight, sleep) hypothesis of the bank."""
        frames = self._check(frames)
        bank = self._lighting_bank()
        centre = PLAYER_ROW * VIEW_COLS + PLAYER_COL
        o = self._pool(self.view_tiles(frames)[:, centre].astype(np.float32))       # (F, blocks, 3)
        g = o.mean(-1)
        ch = (o - g[..., None]).reshape(len(o), -1)
        H, J = len(bank["d"]), bank["J"]
        err = (-2 * ch @ bank["chroma"] - 2 * g @ bank["wg"] + bank["const"]).reshape(len(o), H, J)
        err = err.min(-1) + (g * g) @ bank["w"] + (ch * ch).sum(-1, keepdims=True) / _SIGMA2
        return np.maximum(err, 0) / (3 * o.shape[1])

    def estimate_lighting(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit (daylight float32 (F,), sleeping bool (F,)) to frames uint8 (F, H, W, 3) from the player tile.

        The player is always drawn at the centre, where the night noise is weakest; each of 402
        hypotheses (daylight in steps of 0.005, awake or asleep) is scored against the player's
        sprites on their grounds, all in one matmul.
        """
        bank = self._lighting_bank()
        h = self._lighting_errors(frames).argmin(-1)
        return bank["d"][h].astype(np.float32), bank["s"][h]

    def choose_lighting(self, frames: np.ndarray, daylight: np.ndarray, sleeping: np.ndarray,
                        tolerance: float = LIGHTING_TOLERANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lighting to read generated frames (F, H, W, 3) with: the expected one (the real game's at the
        same step) unless the frame is clearly lit otherwise (a world that lost track of time, the
        copy-last baseline); then the estimate. -> (daylight (F,), sleeping (F,), used_expected (F,) bool).

        "Clearly": the player tile fits the expected lighting worse than ``tolerance`` times (plus 4 units)
        the best hypothesis; for real frames that is a daylight off by more than ~0.03. Reading a blurry
        frame with its true lighting beats re-estimating it (blur looks like dusk to the estimator).
        """
        bank = self._lighting_bank()
        err = self._lighting_errors(frames)
        daylight = np.asarray(daylight, np.float32).reshape(-1)
        sleeping = np.asarray(sleeping, bool).reshape(-1)
        grid = len(bank["d"]) // 2
        h_exp = np.clip(np.rint(daylight * (grid - 1)).astype(int), 0, grid - 1) + grid * sleeping
        e_exp = err[np.arange(len(err)), h_exp]
        h_best = err.argmin(-1)
        keep = e_exp <= tolerance * err[np.arange(len(err)), h_best] + 4.0
        d = np.where(keep, daylight, bank["d"][h_best]).astype(np.float32)
        s = np.where(keep, sleeping, bank["s"][h_best])
        return d, s, keep

    def classify(self, frames: np.ndarray, daylight: float | np.ndarray | None = None,
                 sleeping: bool | np.ndarray | None = None, chunk: int = 128) -> TileReading:
        """Classify frames uint8 (..., H, W, 3) into a TileReading of (..., 7, 9) tiles."""
        frames = np.asarray(frames)
        lead = frames.shape[:-3]
        flat = self._check(frames.reshape((-1,) + frames.shape[-3:]))
        F = len(flat)
        if daylight is not None:
            d = _broadcast(daylight, lead, "daylight", np.float32)
            if np.any(~np.isfinite(d)) or np.any(d < 0) or np.any(d > 1):
                raise ValueError(f"daylight must lie in [0, 1], got values in [{np.nanmin(d):.3f}, {np.nanmax(d):.3f}]")
        if daylight is None or sleeping is None:
            est_d, est_s = self.estimate_lighting(flat)
            d = est_d if daylight is None else d
        s = est_s if sleeping is None else _broadcast(sleeping, lead, "sleeping", bool)
        n_tiles = VIEW_ROWS * VIEW_COLS
        tiles = np.arange(n_tiles)
        labels = np.zeros((F, n_tiles), np.uint8)
        dist = np.zeros((F, n_tiles), np.float32)
        other = np.zeros((F, n_tiles), np.float32)
        tmpl = np.zeros((F, n_tiles), np.int16)
        dims = 3 * self.unit * self.unit
        for i in range(0, F, chunk):
            sl = slice(i, i + chunk)
            obs = self.view_tiles(flat[sl])
            night = d[sl] < 0.5
            raw = np.empty((len(obs), n_tiles, len(self.templates)), np.float32)   # (f, 63, K)
            if (~night).any():     # no noise by day: a cheaper, exact special case
                raw[~night] = self._day_distances(obs[~night], d[sl][~night], s[sl][~night])
            if night.any():
                raw[night] = self._gaussian_distances(obs[night], d[sl][night], s[sl][night], tiles)
            score = raw + self._penalty[None]
            j = score.argmin(-1)
            if night.any():
                j = self._settle(obs, d[sl], s[sl], score, j, night)
            tmpl[sl] = j
            labels[sl] = self.template_labels[j]
            dist[sl] = np.take_along_axis(raw, j[..., None], -1)[..., 0] / dims
            # nearest template of another class: per-class minima (templates are grouped by label)
            per_class = np.minimum.reduceat(raw, self._class_starts, axis=-1)       # (f, 63, classes)
            np.put_along_axis(per_class, self._class_index[j][..., None], np.inf, -1)
            other[sl] = per_class.min(-1) / dims
        shape = lead + (VIEW_ROWS, VIEW_COLS)
        return TileReading(labels.reshape(shape), dist.reshape(shape), other.reshape(shape), tmpl.reshape(shape),
                           np.asarray(d, np.float32).reshape(lead), np.asarray(s, bool).reshape(lead))

    def read_generated(self, frames: np.ndarray, daylight: float | np.ndarray | None = None,
                       sleeping: bool | np.ndarray | None = None) -> TileReading:
        """``classify`` for frames a world drew (uint8 (..., H, W, 3)): the labels come from the world's tile
        reader when one is in force (``worldsim.eval.reader.reading_with``); distances, templates and so the
        unexplained tiles stay the texture model's (how far the pixels are from any game texture)."""
        from worldsim.eval.reader import active_reader

        reading = self.classify(frames, daylight, sleeping)
        reader = active_reader(self.size)
        if reader is None:
            return reading
        lead = np.asarray(frames).shape[:-3]
        flat = np.asarray(frames).reshape((-1,) + np.asarray(frames).shape[-3:])
        labels = reader.read(flat, reading.daylight.reshape(-1), reading.sleeping.reshape(-1))
        return dataclasses.replace(reading, labels=labels.reshape(lead + (VIEW_ROWS, VIEW_COLS)))

    def _settle(self, obs, d, s, score, j, night, top: int = 12, margin: float = 25.0) -> np.ndarray:
        """Re-decide doubtful night tiles (Gaussian runner-up within ``margin``) with the exact noise model.

        Deep in the night the vignette noise all but hides the corner tiles (and a sleeping player
        sees only luma, where the noise lives), so the decision there also leans on the neighbours:
        a few sweeps of iterated conditional modes with a Potts penalty per disagreeing neighbour.
        """
        part = np.partition(score, 1, axis=-1)
        doubt = night[:, None] & (part[..., 1] - part[..., 0] < margin)
        if not doubt.any():
            return j
        f, t = np.nonzero(doubt)
        cand = np.argsort(score[f, t], -1)[:, :top]                                 # (N, top)
        ex = (self._exact_distances(obs[f, t], d[f], s[f], t, cand)
              + self.prior_weight * self._penalty[t[:, None], cand])
        cand_lab = self.template_labels[cand].astype(np.int16)                      # (N, top)
        j = j.copy()
        j[f, t] = cand[np.arange(len(f)), ex.argmin(-1)]
        if self.neighbour_penalty > 0:
            # neighbours of each view tile (-1 outside the view)
            r, c = np.divmod(np.arange(VIEW_ROWS * VIEW_COLS), VIEW_COLS)
            nb = np.full((VIEW_ROWS * VIEW_COLS, 4), -1)
            for k, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
                ok = (0 <= r + dr) & (r + dr < VIEW_ROWS) & (0 <= c + dc) & (c + dc < VIEW_COLS)
                nb[ok, k] = (r + dr)[ok] * VIEW_COLS + (c + dc)[ok]
            nbt = nb[t]                                                              # (N, 4)
            for _ in range(3):
                labels = self.template_labels[j].astype(np.int16)                   # (F, 63)
                nl = np.where(nbt >= 0, labels[f[:, None], np.maximum(nbt, 0)], -1)  # (N, 4)
                dis = ((nl[:, None, :] != cand_lab[:, :, None]) & (nl[:, None, :] >= 0)).sum(-1)
                j[f, t] = cand[np.arange(len(f)), (ex + self.neighbour_penalty * dis).argmin(-1)]
        return j

    def read_inventory(self, frames: np.ndarray) -> np.ndarray:
        """Read the 16 inventory counts (0..9) from frames uint8 (..., H, W, 3): int64 (..., 16)."""
        frames = np.asarray(frames)
        lead = frames.shape[:-3]
        flat = self._check(frames.reshape((-1,) + frames.shape[-3:]))
        u, b = self.unit, self.border
        inv = flat[:, b + VIEW_ROWS * u:b + GRID * u, b:b + GRID * u].astype(np.float32)   # (F, 2u, 9u, 3)
        slots = inv.reshape(len(flat), 2, u, GRID, u, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(flat), 2 * GRID, -1)
        slots = slots[:, :len(INVENTORY_ITEMS)]                                    # (F, 16, u*u*3)
        atlas = self._item_atlas.reshape(len(INVENTORY_ITEMS), 10, -1).astype(np.float32)
        d = (np.einsum("fid,fid->fi", slots, slots)[..., None] - 2 * np.einsum("fid,ind->fin", slots, atlas)
             + np.einsum("ind,ind->in", atlas, atlas)[None])
        return d.argmin(-1).reshape(lead + (len(INVENTORY_ITEMS),))

    def tile_pixels(self, row: int, col: int) -> tuple[slice, slice]:
        """The pixel (rows, cols) of screen tile (row, col) of the 9x9 grid (world view above, inventory below)."""
        u, b = self.unit, self.border
        return slice(b + row * u, b + (row + 1) * u), slice(b + col * u, b + (col + 1) * u)

    @staticmethod
    def inventory_tile(item: int) -> tuple[int, int]:
        """The screen tile (row, col) where the game draws inventory slot ``item`` (INVENTORY_ITEMS index)."""
        r, c = divmod(int(item), GRID)
        return VIEW_ROWS + r, c

    def draw_inventory_count(self, frame: np.ndarray, item: int, count: int) -> np.ndarray:
        """A copy of frame uint8 (H, W, 3) whose inventory slot of ``item`` (INVENTORY_ITEMS index) shows
        ``count`` (0 = empty), drawn as the game draws it (the inventory is never lit)."""
        if not 0 <= int(count) <= 9 or not 0 <= int(item) < len(INVENTORY_ITEMS):
            raise ValueError(f"inventory item {item} / count {count} out of range")
        self._check(np.asarray(frame)[None])
        out = np.array(frame, copy=True)
        out[self.tile_pixels(*self.inventory_tile(item))] = self._item_atlas[int(item), int(count)]
        return out

    def render(self, labels: np.ndarray, daylight: float = 1.0, inventory: Sequence[int] | None = None) -> np.ndarray:
        """Draw a frame uint8 (H, W, 3) from semantic ids (7, 9) by day (objects stand on grass/path)."""
        labels = np.asarray(labels)
        if labels.shape != (VIEW_ROWS, VIEW_COLS):
            raise ValueError(f"labels must have shape (7, 9), got {labels.shape}")
        u, b = self.unit, self.border
        first = {}
        for idx, t in enumerate(self.templates):
            first.setdefault(t.label, idx)
        view = np.zeros((VIEW_ROWS * u, VIEW_COLS * u, 3), np.float64)
        for r in range(VIEW_ROWS):
            for c in range(VIEW_COLS):
                lab = int(labels[r, c])
                if lab not in first:
                    raise ValueError(f"unknown semantic id {lab} at tile ({r}, {c}); valid: 0..{NUM_CLASSES - 1}")
                view[r * u:(r + 1) * u, c * u:(c + 1) * u] = self.atlas[first[lab]]
        if daylight < 1:
            if daylight < 0.5:
                raise ValueError("render() draws day frames only (night adds random noise)")
            lum = view @ _LUMA
            night = 0.5 * (0.4 * view + 0.6 * lum[..., None]) + 0.5 * _NIGHT_TINT
            view = daylight * view + (1 - daylight) * night
        frame = np.zeros((self.size, self.size, 3), np.uint8)
        frame[b:b + VIEW_ROWS * u, b:b + VIEW_COLS * u] = view.astype(np.uint8)
        if inventory is not None:
            for i, n in enumerate(inventory):
                if not 0 <= int(n) <= 9:
                    raise ValueError(f"inventory count {n} for {INVENTORY_ITEMS[i]} must lie in 0..9")
                frame[self.tile_pixels(*self.inventory_tile(i))] = self._item_atlas[i, int(n)]
        return frame

    def _check(self, frames: np.ndarray) -> np.ndarray:
        """Validate a (F, H, W, 3) uint8 batch of this classifier's frame size."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must have shape (..., H, W, 3), got {frames.shape}")
        if frames.shape[1:3] != (self.size, self.size):
            raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]}, this classifier reads {self.size}x{self.size}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        return frames


def _broadcast(value, lead: tuple[int, ...], name: str, dtype) -> np.ndarray:
    """Broadcast a scalar or per-frame ``value`` to the frames' leading shape, flattened."""
    arr = np.asarray(value, dtype)
    try:
        return np.broadcast_to(arr, lead).reshape(-1)
    except ValueError:
        raise ValueError(f"{name} has shape {arr.shape}, frames have leading shape {lead}") from None


# Numerical Recipes' erfc (Chebyshev fit, fractional error < 1.2e-7), in log form so tails never underflow.
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
         -0.82215223, 0.17087277)


def _log_erfc(z: np.ndarray) -> np.ndarray:
    """log erfc(z) for z >= 0."""
    t = 1.0 / (1.0 + 0.5 * z)
    poly = _ERFC[-1]
    for c in _ERFC[-2::-1]:
        poly = poly * t + c
    return np.log(t) - z * z + poly


def _log_phi(x: np.ndarray) -> np.ndarray:
    """log of the standard normal CDF."""
    le = _log_erfc(np.abs(x) / np.sqrt(2))
    return np.where(x < 0, np.log(0.5) + le, np.log1p(-0.5 * np.exp(le)))


def _log_phi_diff(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """log(Phi(u) - Phi(v)) for u >= v, stable in both tails (the upper side is reflected)."""
    upper = (u + v) > 0
    a, b = np.where(upper, -v, u), np.where(upper, -u, v)
    la, lb = _log_phi(a), _log_phi(b)
    return la + np.log1p(-np.exp(np.minimum(lb - la, -1e-12)))


@functools.lru_cache(maxsize=8)
def get_classifier(size: int = 72) -> TileClassifier:
    """A cached classifier for square frames of ``size`` pixels."""
    return TileClassifier(size)


def _frame_size(frames: np.ndarray) -> int:
    frames = np.asarray(frames)
    if frames.ndim < 3 or frames.shape[-1] != 3 or frames.shape[-2] != frames.shape[-3]:
        raise ValueError(f"frames must have shape (..., S, S, 3) with square frames, got {frames.shape}")
    return int(frames.shape[-2])


def classify_tiles(frames: np.ndarray, daylight: float | np.ndarray | None = None,
                   sleeping: bool | np.ndarray | None = None) -> np.ndarray:
    """Semantic ids uint8 (..., 7, 9) of frames uint8 (..., S, S, 3); daylight/sleep estimated when None."""
    return get_classifier(_frame_size(frames)).classify(frames, daylight, sleeping).labels


def read_tiles(frames: np.ndarray, daylight: float | np.ndarray | None = None,
               sleeping: bool | np.ndarray | None = None) -> TileReading:
    """Full TileReading (labels, distances, template ids, lighting) of frames uint8 (..., S, S, 3)."""
    return get_classifier(_frame_size(frames)).classify(frames, daylight, sleeping)


def read_inventory(frames: np.ndarray) -> np.ndarray:
    """Inventory counts int (..., 16) in INVENTORY_ITEMS order, read from frames uint8 (..., S, S, 3)."""
    return get_classifier(_frame_size(frames)).read_inventory(frames)
