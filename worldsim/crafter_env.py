"""A deterministic wrapper around Crafter 1.8.3 (`crafter.Env`) for recording and evaluation.

Upstream Crafter is not deterministic (danijar/crafter#31, #36; see /work/shared/CRAFTER.md):

1. ``Env._balance_object`` picks the creature to despawn from a list built from a Python ``set``
   (a chunk's objects), whose order follows memory addresses. Two runs with the same seed and
   actions therefore diverge, and so does an env after ``copy.deepcopy``/``pickle``. We sort each
   chunk's objects by position (unique: one object per cell) before the game sees them.
2. Night rendering draws its noise from ``world.random``, the game's own RNG, so every render (its
   number and its size) changes the game. We never let a render touch the game RNG: the noise comes
   from a separate generator seeded by (world seed, step), so a frame is a pure function of the state,
   any number of renders at any size has no side effect, and the dynamics do not depend on the frame
   size.

With both fixed, the same seed + actions give bit-identical frames and infos across envs, processes
and ``deepcopy``/``pickle`` of a running env.

Screen layout (``size`` = S, tile = S // 9 pixels): the top 7 rows of 9 tiles show the world with the
player at column 4, row 3; the bottom 2 rows show the inventory. ``semantic_view()`` returns the
world part as a (7, 9) array [row, col] of Crafter semantic ids (0 outside the world).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import crafter
import numpy as np

# Crafter's inventory order (data.yaml `items`), the order the screen draws them in.
INVENTORY_NAMES: tuple[str, ...] = (
    "health", "food", "drink", "energy", "sapling", "wood", "stone", "coal", "iron", "diamond",
    "wood_pickaxe", "stone_pickaxe", "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword",
)
VITALS: tuple[str, ...] = ("health", "food", "drink", "energy")
# Crafter's semantic ids: 0 = outside the world, 1-12 materials, 13-18 objects.
SEMANTIC_NAMES: tuple[str, ...] = (
    "none", "water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond",
    "table", "furnace", "player", "cow", "zombie", "skeleton", "arrow", "plant",
)
SEMANTIC_IDS: dict[str, int] = {name: i for i, name in enumerate(SEMANTIC_NAMES)}
VIEW_COLS, VIEW_ROWS = 9, 7  # the world part of the screen, in tiles
PLAYER_COL, PLAYER_ROW = VIEW_COLS // 2, VIEW_ROWS // 2  # (4, 3)
GRID = 9  # the whole screen is GRID x GRID tiles
DEFAULT_SIZE = 72  # 8-px tiles: 72 = 9 * 8 tiles the screen exactly
STARTING_MATERIALS: dict[str, int] = {"wood": 9, "stone": 9, "sapling": 9}


class DeterministicCrafterEnv(crafter.Env):
    """``crafter.Env`` with a stable despawn order and no render inside ``step`` (see the module doc)."""

    def _balance_chunk(self, chunk, objs):
        # The set's iteration order follows memory addresses; positions are unique and stable.
        ordered = sorted(objs, key=lambda obj: (int(obj.pos[0]), int(obj.pos[1])))
        super()._balance_chunk(chunk, ordered)

    def _obs(self):
        # The wrapper renders (with its own noise RNG) after the step; skip the game's render.
        return None


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 9 * 2:
        raise ValueError(f"frame size must be an int >= 18 (2-px tiles), got {size!r}")
    return int(size)


def _check_inventory(items: Mapping[str, int] | None) -> dict[str, int]:
    items = dict(items or {})
    for name, count in items.items():
        if name not in INVENTORY_NAMES:
            raise ValueError(f"unknown inventory item {name!r}; valid items: {', '.join(INVENTORY_NAMES)}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 <= count <= 9:
            raise ValueError(f"inventory count for {name!r} must be an int in 0..9, got {count!r}")
    return {k: int(v) for k, v in items.items()}


class CrafterEnv:
    """Deterministic Crafter: ``reset(seed)`` and ``step(action)`` return (frame (S,S,3) uint8, info).

    ``start_inventory`` (e.g. ``STARTING_MATERIALS``) is given to the player at every reset.
    ``keep_alive`` refills a vital (health, food, drink, energy) to 9 when it falls below
    ``keep_alive_min``, so long episodes never end in death (the refill shows in the next frame).
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = DEFAULT_SIZE,
        start_inventory: Mapping[str, int] | None = None,
        keep_alive: bool = False,
        keep_alive_min: int = 3,
        area: tuple[int, int] = (64, 64),
    ) -> None:
        self.size = _check_size(size)
        self.start_inventory = _check_inventory(start_inventory)
        self.keep_alive = bool(keep_alive)
        if not 1 <= int(keep_alive_min) <= 9:
            raise ValueError(f"keep_alive_min must be in 1..9, got {keep_alive_min!r}")
        self.keep_alive_min = int(keep_alive_min)
        self.area = (int(area[0]), int(area[1]))
        # length=None: the wrapper's user decides when an episode ends (no 10000-step cutoff).
        self._env = DeterministicCrafterEnv(area=self.area, size=(self.size, self.size), length=None, seed=int(seed))
        self.seed = int(seed)
        self._world_seed: int | None = None
        self._ready = False

    # -- episode control -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Make the world of ``seed`` (default: this env's seed) exactly as ``crafter.Env(seed=seed)`` would."""
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise ValueError(f"seed must be an int, got {seed!r}")
            self.seed = int(seed)
        env = self._env
        env._seed = self.seed
        env._episode = 0  # the next reset is episode 1: a fresh Env(seed=seed)'s first world
        env.reset()
        # Crafter seeds the world with hash((seed, episode)); tuples of ints hash the same in every process.
        self._world_seed = hash((self.seed, env._episode)) % (2**31 - 1)
        for name, count in self.start_inventory.items():
            env._player.inventory[name] = count
        self._ready = True
        return self.render(), self._info(reward=0.0, dead=False)

    def step(self, action: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Take ``action`` (0..16) on the current frame; return the next frame and its info."""
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < 17:
            raise ValueError(f"action must be an int in 0..16 (NULL_ACTION is never sent to the game), got {action!r}")
        _, reward, _, _ = self._env.step(int(action))
        player = self._env._player
        dead = player.health <= 0
        if self.keep_alive:
            for name in VITALS:
                if player.inventory[name] < self.keep_alive_min:
                    player.inventory[name] = 9
            # keep the game's "was I hurt" bookkeeping consistent with the refill
            player._last_health = player.health
            self._env._last_health = player.health
        return self.render(), self._info(reward=float(reward), dead=dead)

    # -- rendering -------------------------------------------------------------------------
    def render(self, size: int | None = None) -> np.ndarray:
        """The current frame (size, size, 3) uint8; no side effect on the game (own noise RNG)."""
        if not self._ready:
            raise RuntimeError("call reset() before render()")
        size = self.size if size is None else _check_size(size)
        env = self._env
        world = env._world
        game_rng = world.random
        # Night noise is drawn from world.random inside LocalView; give it a throwaway generator whose
        # seed depends only on (world, step), so the frame is a pure function of the state.
        world.random = self._noise_rng()
        try:
            frame = env.render((size, size))
        finally:
            world.random = game_rng
        return frame

    def render_unlit(self, size: int | None = None) -> np.ndarray:
        """The current frame with the view unlit (size, size, 3) uint8: the tiles as drawn before crafter lights
        them (no night, no sleep; ``worldsim.light.game_light`` lights it back); no side effect on the game."""
        if not self._ready:
            raise RuntimeError("call reset() before render_unlit()")
        view = self._env._local_view
        # instance attributes shadow LocalView's methods for this one render
        view._light = lambda canvas, daylight: canvas
        view._sleep = lambda canvas: canvas
        try:
            return self._env.render((self.size if size is None else _check_size(size),) * 2)
        finally:
            del view._light, view._sleep

    def night_noise(self, size: int | None = None) -> np.ndarray:
        """(7u, 9u) float64: the night noise ``render`` draws into the current view (row/col order, uniform in
        [32, 127); drawn only while daylight < 0.5), from the same per-(world, step) generator."""
        u = (self.size if size is None else _check_size(size)) // 9
        return self._noise_rng().uniform(32, 127, (9 * u, 7 * u)).T

    def _noise_rng(self) -> np.random.Generator:
        """The render noise's generator: seeded by (world, step) only, so a frame is a pure function of the state."""
        return np.random.Generator(np.random.PCG64([self._world_seed, self._env._step, 0x6E6F6973]))

    # -- state accessors -------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        """Steps taken since reset (drives daylight)."""
        return int(self._env._step)

    @property
    def pos(self) -> tuple[int, int]:
        """Player position (x, y) in world cells; x grows right, y grows down."""
        p = self._env._player.pos
        return int(p[0]), int(p[1])

    @property
    def facing(self) -> tuple[int, int]:
        """Player facing direction (dx, dy)."""
        f = self._env._player.facing
        return int(f[0]), int(f[1])

    @property
    def sleeping(self) -> bool:
        """Whether the player sleeps (actions are ignored until energy is full or it is hurt)."""
        return bool(self._env._player.sleeping)

    @property
    def daylight(self) -> float:
        """Daylight in [0, 1] (night < 0.5 draws noise)."""
        return float(self._env._world.daylight)

    @property
    def inventory(self) -> np.ndarray:
        """(16,) uint8 counts in ``INVENTORY_NAMES`` order."""
        inv = self._env._player.inventory
        return np.array([inv[name] for name in INVENTORY_NAMES], np.uint8)

    @property
    def achievements(self) -> dict[str, int]:
        """Achievement counts of this episode."""
        return dict(self._env._player.achievements)

    def world_semantic(self) -> np.ndarray:
        """(W, H) uint8 semantic ids of the whole world, indexed [x, y]."""
        return self._env._sem_view().astype(np.uint8)

    def material(self, pos: tuple[int, int]) -> str | None:
        """Material name at world cell (x, y) (None outside the world)."""
        return self._env._world[np.asarray(pos)][0]

    def semantic_view(self, world_semantic: np.ndarray | None = None) -> np.ndarray:
        """(7, 9) uint8 semantic ids of the visible world [row, col]; player at (3, 4); 0 outside."""
        sem = self.world_semantic() if world_semantic is None else world_semantic
        return view_of(sem, self.pos)

    def state(self) -> dict[str, Any]:
        """The per-frame record: pos, facing, daylight, sleeping, semantic (7,9), inventory (16,), step."""
        return {
            "pos": self.pos,
            "facing": self.facing,
            "daylight": self.daylight,
            "sleeping": self.sleeping,
            "semantic": self.semantic_view(),
            "inventory": self.inventory,
            "step": self.step_count,
        }

    def _info(self, reward: float, dead: bool) -> dict[str, Any]:
        info = self.state()
        info["reward"] = reward
        info["dead"] = dead
        info["achievements"] = self.achievements
        return info


def view_of(world_semantic: np.ndarray, pos: tuple[int, int]) -> np.ndarray:
    """Cut the (7, 9) [row, col] view centred on ``pos`` out of a (W, H) [x, y] map; 0 outside."""
    w, h = world_semantic.shape
    x0, y0 = pos[0] - PLAYER_COL, pos[1] - PLAYER_ROW
    out = np.zeros((VIEW_ROWS, VIEW_COLS), np.uint8)
    xa, xb = max(x0, 0), min(x0 + VIEW_COLS, w)
    ya, yb = max(y0, 0), min(y0 + VIEW_ROWS, h)
    if xa < xb and ya < yb:
        out[ya - y0: yb - y0, xa - x0: xb - x0] = world_semantic[xa:xb, ya:yb].T
    return out


def in_view(player: tuple[int, int], cell: tuple[int, int]) -> bool:
    """Whether world cell (x, y) is on screen when the player stands at ``player``."""
    return abs(cell[0] - player[0]) <= PLAYER_COL and abs(cell[1] - player[1]) <= PLAYER_ROW
