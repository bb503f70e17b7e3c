"""The action schema shared by the recorder, the model, the engine and every controller.

Alignment (used everywhere): action ``a_t`` is taken on frame ``t`` and produces frame ``t+1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Crafter 1.8.3's action order (crafter/data.yaml); the index is what the game and the model use.
ACTION_NAMES: tuple[str, ...] = (
    "noop",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "do",
    "sleep",
    "place_stone",
    "place_table",
    "place_furnace",
    "place_plant",
    "make_wood_pickaxe",
    "make_stone_pickaxe",
    "make_iron_pickaxe",
    "make_wood_sword",
    "make_stone_sword",
    "make_iron_sword",
)
NUM_ACTIONS: int = len(ACTION_NAMES)
# The null action ("no action given"): used for action dropout in training (guidance) and for the
# first context frame, whose producing action is unknown. It is never sent to the game.
NULL_ACTION: int = NUM_ACTIONS
NUM_ACTION_EMBEDDINGS: int = NUM_ACTIONS + 1

MOVES: dict[str, tuple[int, int]] = {
    # (dx, dy) in world cells; x grows to the right, y grows downwards (Crafter's convention).
    "move_left": (-1, 0),
    "move_right": (1, 0),
    "move_up": (0, -1),
    "move_down": (0, 1),
}

# Default key bindings, as DOM `KeyboardEvent.code` names so that the browser client and pygame
# share one table (controllers translate pygame key codes to these names). Crafter's own GUI
# uses the same letters.
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "move_left": ("KeyA", "ArrowLeft"),
    "move_right": ("KeyD", "ArrowRight"),
    "move_up": ("KeyW", "ArrowUp"),
    "move_down": ("KeyS", "ArrowDown"),
    "do": ("Space",),
    "sleep": ("Tab",),
    "place_stone": ("KeyR",),
    "place_table": ("KeyT",),
    "place_furnace": ("KeyF",),
    "place_plant": ("KeyP",),
    "make_wood_pickaxe": ("Digit1",),
    "make_stone_pickaxe": ("Digit2",),
    "make_iron_pickaxe": ("Digit3",),
    "make_wood_sword": ("Digit5",),
    "make_stone_sword": ("Digit6",),
    "make_iron_sword": ("Digit7",),
}


def action_index(action: str | int) -> int:
    """Map an action name (or a valid index) to its index; raise ValueError listing the valid names."""
    if isinstance(action, (bool, np.bool_)):  # bool is an int subclass; never a valid action
        raise ValueError(f"invalid action {action!r}; valid actions: {', '.join(ACTION_NAMES)}")
    if isinstance(action, np.integer):  # an index read from recorded data (int16 arrays)
        action = int(action)
    if isinstance(action, int):
        if 0 <= action < NUM_ACTIONS:
            return action
        raise ValueError(f"action index {action} out of range 0..{NUM_ACTIONS - 1}; valid actions: {', '.join(ACTION_NAMES)}")
    if isinstance(action, str):
        try:
            return ACTION_NAMES.index(action)
        except ValueError:
            pass
    raise ValueError(f"unknown action {action!r}; valid actions: {', '.join(ACTION_NAMES)}")


def action_indices(actions: Iterable[str | int | None]) -> list[int]:
    """Map names/indices to indices; None maps to NULL_ACTION (unknown producing action)."""
    return [NULL_ACTION if a is None else action_index(a) for a in actions]


def action_name(index: int) -> str:
    """The name of an action index (NULL_ACTION is 'null')."""
    if index == NULL_ACTION:
        return "null"
    return ACTION_NAMES[action_index(int(index))]


def key_to_action(bindings: dict[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Invert a bindings table (action -> key codes) into key code -> action; reject duplicate keys."""
    bindings = DEFAULT_KEYS if bindings is None else bindings
    out: dict[str, str] = {}
    for act, keys in bindings.items():
        action_index(act)
        for k in keys:
            if k in out and out[k] != act:
                raise ValueError(f"key {k!r} bound to both {out[k]!r} and {act!r}")
            out[k] = act
    return out
