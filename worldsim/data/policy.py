"""The exploration policy that decides what the world model sees: varied play plus deliberate revisits.

It reads the (privileged) game state through the public ``CrafterEnv`` accessors and draws every random
choice from one seeded ``numpy`` Generator, so an episode is a pure function of (env seed, policy seed).

Free play holds an action for a run of 2-8 steps: mostly movement with momentum, ``do`` on whatever the
player faces (trees, water, stone, cows, zombies...), placing stone/table/plant, crafting next to a
table, some noop and sleep at night. Reflexes override runs: hit an adjacent zombie or skeleton, never
step into lava. Every ``revisit_gap`` steps a revisit starts: place a block at A (segment label 1), walk
away until A has been out of view for ``out_of_view`` steps (2), walk back along a BFS path on the world
map, replanned every step because creatures move (3), and once A is on screen again stand next to it
facing it for a few steps (4). Labels are per frame; each revisit that gets A back on screen becomes one
event (t_place, t_leave_view, t_back_in_view, x, y, placed semantic id), all frame indices.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from worldsim.actions import ACTION_NAMES, MOVES
from worldsim.crafter_env import INVENTORY_NAMES, SEMANTIC_IDS, CrafterEnv, in_view

FREE, PLACING, WALKING_AWAY, RETURNING, LOOKING = 0, 1, 2, 3, 4
SEGMENT_NAMES: tuple[str, ...] = ("free", "placing", "walking_away", "returning", "looking")
POLICY_VERSION = 1  # bump when behaviour changes: recorded datasets store it in their config

A = {name: i for i, name in enumerate(ACTION_NAMES)}
DIRS: tuple[tuple[int, int], ...] = tuple(MOVES.values())  # left, right, up, down
MOVE_OF_DIR: dict[tuple[int, int], int] = {d: A[name] for name, d in MOVES.items()}
S = SEMANTIC_IDS
WALKABLE = np.zeros(256, bool)
WALKABLE[[S["grass"], S["sand"], S["path"]]] = True
CREATURES = (S["zombie"], S["skeleton"])
# where each revisit block may go (a subset of Crafter's rules: always somewhere one can stand beside)
PLACE_ON = {
    "stone": (S["grass"], S["sand"], S["path"]),
    "table": (S["grass"], S["sand"], S["path"]),
    "plant": (S["grass"],),
}
PLACED_ID = {"stone": S["stone"], "table": S["table"], "plant": S["plant"]}
RECIPES = {  # make_* -> (inventory needs, needs furnace)
    "make_wood_pickaxe": ({"wood": 1}, False),
    "make_stone_pickaxe": ({"wood": 1, "stone": 1}, False),
    "make_iron_pickaxe": ({"wood": 1, "coal": 1, "iron": 1}, True),
    "make_wood_sword": ({"wood": 1}, False),
    "make_stone_sword": ({"wood": 1, "stone": 1}, False),
    "make_iron_sword": ({"wood": 1, "coal": 1, "iron": 1}, True),
}
INV = {name: i for i, name in enumerate(INVENTORY_NAMES)}


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the explorer; ranges are inclusive (low, high) in steps."""

    run: tuple[int, int] = (2, 8)
    revisit_gap: tuple[int, int] = (60, 140)  # free-play steps before the next revisit starts
    out_of_view: tuple[int, int] = (20, 60)
    look: tuple[int, int] = (3, 8)  # steps spent next to the block, facing it
    place_tries: int = 12
    leave_timeout: int = 200
    return_timeout: int = 200
    look_timeout: int = 30
    night_sleep: float = 0.5  # weight of sleeping when it is dark and energy is not full


def _sample(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def bfs_first_step(
    passable: list[bool], width: int, height: int, start: tuple[int, int], goals: set[int]
) -> tuple[int, int] | None:
    """First move (dx, dy) of a shortest 4-connected path from ``start`` to any goal cell, or None.

    ``passable`` is the flattened (width, height) [x, y] map (index x * height + y); the start cell
    need not be passable; goal cells must be. Returns (0, 0) when the start is a goal.
    """
    s = start[0] * height + start[1]
    if s in goals:
        return (0, 0)
    parent = {s: -1}
    queue = deque([s])
    while queue:
        cur = queue.popleft()
        x, y = divmod(cur, height)
        for nx, ny in ((x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)):
            if 0 <= nx < width and 0 <= ny < height:
                n = nx * height + ny
                if n in parent or not passable[n]:
                    continue
                parent[n] = cur
                if n in goals:
                    while parent[n] != s:
                        n = parent[n]
                    fx, fy = divmod(n, height)
                    return (fx - start[0], fy - start[1])
                queue.append(n)
    return None


class ExplorerPolicy:
    """Seeded exploration policy; call ``act(env)`` once per frame, read ``label`` and ``events``."""

    def __init__(self, seed: int, config: PolicyConfig = PolicyConfig()) -> None:
        self.config = config
        self.rng = np.random.default_rng([int(seed), 0x706F6C])
        self.t = 0  # index of the frame the next act() decides on
        self.mode = FREE
        self.label = FREE
        self.events: list[tuple[int, int, int, int, int, int]] = []
        self.attempts = 0
        self.failures = {name: 0 for name in SEGMENT_NAMES[1:]}  # revisits abandoned, by phase
        self._run_action = A["noop"]
        self._run_left = 0
        self._last_dir: tuple[int, int] = (0, 1)
        self._last_pos: tuple[int, int] | None = None
        self._next_revisit = _sample(self.rng, config.revisit_gap)
        self._free_steps = 0
        self._reset_revisit()

    def _reset_revisit(self) -> None:
        self._target: tuple[int, int] | None = None
        self._material = "stone"
        self._pending_place: tuple[int, int] | None = None
        self._phase_start = self.t
        self._tries = 0
        self._t_place = self._t_leave = -1
        self._out_count = 0
        self._out_needed = 0
        self._look_left = 0

    # -- public -------------------------------------------------------------------------------
    def act(self, env: CrafterEnv) -> int:
        """Choose the action for the current frame (index ``self.t``); sets ``self.label``."""
        sem = env.world_semantic()
        pos, facing = env.pos, env.facing
        inv = env.inventory
        moved = self._last_pos is not None and pos != self._last_pos
        self._last_pos = pos
        self._update_phase(env, sem, pos, inv)
        self.label = self.mode
        action = self._reflex(env, sem, pos, facing)
        if action is None:
            if self.mode == FREE:
                action = self._free(env, sem, pos, facing, inv, moved)
            elif self.mode == PLACING:
                action = self._placing(sem, pos, facing)
            elif self.mode == WALKING_AWAY:
                action = self._leaving(sem, pos, moved)
            else:
                action = self._approach(sem, pos, facing)
        action = self._avoid_lava(sem, pos, action)
        if action in MOVE_OF_DIR.values():
            self._last_dir = DIRS[action - A["move_left"]]
        self.t += 1
        return int(action)

    # -- revisit bookkeeping (runs on the state of frame t, before choosing action t) ------------
    def _update_phase(self, env: CrafterEnv, sem: np.ndarray, pos: tuple[int, int], inv: np.ndarray) -> None:
        cfg, t = self.config, self.t
        if self.mode == FREE:
            self._free_steps += 1
            if self._free_steps >= self._next_revisit and not env.sleeping:
                material = self._pick_material(inv)
                if material is not None:
                    self.attempts += 1
                    self._reset_revisit()
                    self._material = material
                    self.mode = PLACING
                    self._run_left = 0
            return
        if self.mode == PLACING:
            if self._pending_place is not None:
                target, self._pending_place = self._pending_place, None
                if sem[target] == PLACED_ID[self._material]:
                    self._target, self._t_place = target, t
                    self._out_needed = _sample(self.rng, cfg.out_of_view)
                    self._enter(WALKING_AWAY)
                    return
            if self._tries >= cfg.place_tries:
                self._fail()
            return
        target = self._target
        assert target is not None
        visible = in_view(pos, target)
        if self.mode == WALKING_AWAY:
            if visible:
                self._out_count = 0
            else:
                if self._out_count == 0:
                    self._t_leave = t
                self._out_count += 1
                if self._out_count >= self._out_needed:
                    self._enter(RETURNING)
                    return
            if t - self._phase_start > cfg.leave_timeout:
                self._fail()
        elif self.mode == RETURNING:
            if visible:
                self.events.append((self._t_place, self._t_leave, t, target[0], target[1], PLACED_ID[self._material]))
                self._look_left = _sample(self.rng, cfg.look)
                self._enter(LOOKING)
            elif t - self._phase_start > cfg.return_timeout:
                self._fail()
        elif self.mode == LOOKING:
            if self._look_left <= 0 or t - self._phase_start > cfg.look_timeout:
                self._finish()

    def _enter(self, mode: int) -> None:
        self.mode = mode
        self._phase_start = self.t
        self._run_left = 0

    def _fail(self) -> None:
        self.failures[SEGMENT_NAMES[self.mode]] += 1
        self._finish()

    def _finish(self) -> None:
        self.mode = FREE
        self._free_steps = 0
        self._next_revisit = _sample(self.rng, self.config.revisit_gap)
        self._run_left = 0
        self._target = None

    @staticmethod
    def _pick_material(inv: np.ndarray) -> str | None:
        if inv[INV["stone"]] >= 1:
            return "stone"
        if inv[INV["wood"]] >= 2:
            return "table"
        if inv[INV["sapling"]] >= 1:
            return "plant"
        return None

    # -- behaviours -----------------------------------------------------------------------------
    def _reflex(self, env: CrafterEnv, sem: np.ndarray, pos: tuple[int, int], facing: tuple[int, int]) -> int | None:
        """Survival first: sleeping ignores actions; hit an adjacent zombie or skeleton."""
        if env.sleeping:
            self._run_left = 0
            # the game ignores actions while asleep; mostly noop, sometimes a move (also ignored)
            return A["noop"] if self.rng.random() < 0.8 else int(self.rng.integers(1, 5))
        fx, fy = pos[0] + facing[0], pos[1] + facing[1]
        if self._inside(sem, (fx, fy)) and sem[fx, fy] in CREATURES:
            self._run_left = 0
            return A["do"]
        for d in DIRS:
            c = (pos[0] + d[0], pos[1] + d[1])
            if self._inside(sem, c) and sem[c] in CREATURES:
                self._run_left = 0
                return MOVE_OF_DIR[d]  # blocked by the creature: only turns to face it
        return None

    def _free(self, env: CrafterEnv, sem: np.ndarray, pos: tuple[int, int], facing: tuple[int, int],
              inv: np.ndarray, moved: bool) -> int:
        """Free play: continue the current run, or pick a new one from what the player faces and owns."""
        if self._run_left > 0:
            self._run_left -= 1
            # a move run that hits a wall stops early most of the time (a few blocked moves are fine)
            if not (self._run_action in MOVE_OF_DIR.values() and not moved and self.rng.random() < 0.7):
                return self._run_action
        rng = self.rng
        faced = self._faced(sem, pos, facing)
        options: dict[str, float] = {"move": 0.5, "noop": 0.04, "random": 0.03}
        if faced == S["grass"]:
            options["do"] = 0.05  # 10% chance of a sapling
        elif self._interesting(faced, inv):
            options["do"] = 0.3
        else:
            options["do"] = 0.03  # no effect: still worth seeing
        if self._adjacent_interesting(sem, pos, facing, inv) is not None:
            options["face"] = 0.12
        if faced in PLACE_ON["stone"] and inv[INV["stone"]] >= 1:
            options["place_stone"] = 0.03
        if faced in PLACE_ON["table"] and inv[INV["wood"]] >= 2 and not self._near(sem, pos, S["table"], 6):
            options["place_table"] = 0.04
        if faced == S["grass"] and inv[INV["sapling"]] >= 1:
            options["place_plant"] = 0.03
        if faced in PLACE_ON["table"] and inv[INV["stone"]] >= 4 and self._near(sem, pos, S["table"], 2):
            options["place_furnace"] = 0.01
        if self._near(sem, pos, S["table"], 1):
            options["craft"] = 0.1
        if inv[INV["energy"]] < 9:
            options["sleep"] = self.config.night_sleep if env.daylight < 0.35 else 0.005
        names = list(options)
        p = np.array([options[n] for n in names])
        choice = names[int(rng.choice(len(names), p=p / p.sum()))]
        length = _sample(rng, self.config.run)
        if choice == "move":
            d = self._last_dir if (moved and rng.random() < 0.6) else DIRS[int(rng.integers(4))]
            action = MOVE_OF_DIR[d]
        elif choice == "do":
            action = A["do"]
        elif choice == "face":
            d = self._adjacent_interesting(sem, pos, facing, inv)
            self._run_action, self._run_left = A["do"], length  # turn now, then hit it for a run
            return MOVE_OF_DIR[d]
        elif choice.startswith("place_"):
            action, length = A[choice], int(rng.integers(1, 3))
        elif choice == "craft":
            action, length = self._recipe(sem, pos, inv), int(rng.integers(1, 4))
        elif choice == "random":
            action, length = int(rng.integers(0, 17)), int(rng.integers(1, 3))
        else:
            action = A[choice]
        self._run_action, self._run_left = action, length - 1
        return action

    def _placing(self, sem, pos, facing) -> int:
        self._tries += 1
        target = (pos[0] + facing[0], pos[1] + facing[1])
        if self._inside(sem, target) and sem[target] in PLACE_ON[self._material]:
            self._pending_place = target
            return A[f"place_{self._material}"]
        # step somewhere free (a free tile cannot be faced without stepping onto it)
        free = [d for d in DIRS if self._walkable(sem, (pos[0] + d[0], pos[1] + d[1]))]
        if not free:
            return MOVE_OF_DIR[DIRS[int(self.rng.integers(4))]]
        return MOVE_OF_DIR[free[int(self.rng.integers(len(free)))]]

    def _leaving(self, sem, pos, moved) -> int:
        if self._run_left > 0 and moved:
            self._run_left -= 1
            return self._run_action
        target = self._target
        weights = []
        for d in DIRS:
            c = (pos[0] + d[0], pos[1] + d[1])
            w = 1.0 if self._walkable(sem, c) else 0.15
            away = abs(c[0] - target[0]) + abs(c[1] - target[1]) > abs(pos[0] - target[0]) + abs(pos[1] - target[1])
            if in_view(pos, target) or self._out_count < self._out_needed // 2:
                # head away until well out of view, so that coming back is a real trip
                w *= 4.0 if away else 1.0
            elif in_view(c, target):
                w *= 0.1  # then wander, but do not look back yet
            if d == self._last_dir:
                w *= 1.5
            weights.append(w)
        p = np.array(weights)
        d = DIRS[int(self.rng.choice(4, p=p / p.sum()))]
        self._run_action, self._run_left = MOVE_OF_DIR[d], _sample(self.rng, self.config.run) - 1
        return MOVE_OF_DIR[d]

    def _approach(self, sem, pos, facing) -> int:
        """Returning and looking: BFS to a free cell beside A (replanned every step), then face A."""
        target = self._target
        beside = abs(pos[0] - target[0]) + abs(pos[1] - target[1]) == 1
        if beside:
            d = (target[0] - pos[0], target[1] - pos[1])
            if self.mode == LOOKING:
                self._look_left -= 1
            if facing != d:
                return MOVE_OF_DIR[d]  # A is not walkable (or holds a plant): this only turns
            return A["noop"]
        w, h = sem.shape
        goals = {
            (target[0] + d[0]) * h + target[1] + d[1]
            for d in DIRS
            if self._inside(sem, (target[0] + d[0], target[1] + d[1])) and WALKABLE[sem[target[0] + d[0], target[1] + d[1]]]
        }
        step = None
        if goals:
            passable = WALKABLE[sem].ravel().tolist()
            step = bfs_first_step(passable, w, h, pos, goals)
            if step is None:
                # creatures may be in the way: plan through them and let the replanning sort it out
                mats = sem.copy()
                mats[(sem >= S["player"])] = S["grass"]
                step = bfs_first_step(WALKABLE[mats].ravel().tolist(), w, h, pos, goals)
        if step is None or step == (0, 0):
            # no path: greedy along the longer axis
            dx, dy = target[0] - pos[0], target[1] - pos[1]
            step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
            if step == (0, 0):
                return A["noop"]
        return MOVE_OF_DIR[step]

    # -- helpers --------------------------------------------------------------------------------
    def _avoid_lava(self, sem, pos, action: int) -> int:
        """Replace a move into lava by a turn-free noop (stepping on lava kills the player)."""
        if action in MOVE_OF_DIR.values():
            d = DIRS[action - A["move_left"]]
            c = (pos[0] + d[0], pos[1] + d[1])
            if self._inside(sem, c) and sem[c] == S["lava"]:
                self._run_left = 0
                return A["noop"]
        return action

    @staticmethod
    def _inside(sem: np.ndarray, c: tuple[int, int]) -> bool:
        return 0 <= c[0] < sem.shape[0] and 0 <= c[1] < sem.shape[1]

    def _walkable(self, sem, c) -> bool:
        return self._inside(sem, c) and bool(WALKABLE[sem[c]])

    def _faced(self, sem, pos, facing) -> int:
        c = (pos[0] + facing[0], pos[1] + facing[1])
        return int(sem[c]) if self._inside(sem, c) else 0

    @staticmethod
    def _interesting(sid: int, inv: np.ndarray) -> bool:
        """Whether ``do`` on this semantic id does something visible or useful."""
        if sid in (S["tree"], S["water"], S["cow"], S["zombie"], S["skeleton"], S["plant"], S["grass"]):
            return True
        if sid in (S["stone"], S["coal"]):
            return inv[INV["wood_pickaxe"]] >= 1
        if sid == S["iron"]:
            return inv[INV["stone_pickaxe"]] >= 1
        if sid == S["diamond"]:
            return inv[INV["iron_pickaxe"]] >= 1
        return False

    def _adjacent_interesting(self, sem, pos, facing, inv) -> tuple[int, int] | None:
        """A direction to a non-walkable interesting neighbour (turning to face it does not move)."""
        for d in DIRS:
            if d == facing:
                continue
            c = (pos[0] + d[0], pos[1] + d[1])
            if self._inside(sem, c) and not WALKABLE[sem[c]] and sem[c] != S["grass"] and self._interesting(int(sem[c]), inv):
                return d
        return None

    def _near(self, sem, pos, sid: int, radius: int) -> bool:
        x0, y0 = max(pos[0] - radius, 0), max(pos[1] - radius, 0)
        return bool((sem[x0: pos[0] + radius + 1, y0: pos[1] + radius + 1] == sid).any())

    def _recipe(self, sem, pos, inv) -> int:
        furnace = self._near(sem, pos, S["furnace"], 1)
        feasible = [
            name for name, (needs, needs_furnace) in RECIPES.items()
            if (furnace or not needs_furnace) and all(inv[INV[k]] >= v for k, v in needs.items())
        ]
        names = feasible if feasible and self.rng.random() < 0.85 else list(RECIPES)
        return A[names[int(self.rng.integers(len(names)))]]
