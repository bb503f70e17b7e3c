"""Controllers: where each tick's action comes from.

A controller is a callable that returns the input for *this* tick and never blocks:
- :class:`HeldInput` tracks the keys held right now (pygame or browser). Each read returns the
  latest input: the most recent key pressed since the last tick (so a quick tap between two ticks
  still counts once), else the most recently pressed key still held, else ``noop``. There is no queue
  of stale events: ten presses between two ticks yield one action, the last.
- :class:`ScriptedController` plays a list or a generator of actions (demos, tests).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from engine.loop import Input
from worldsim.actions import ACTION_NAMES, DEFAULT_KEYS, action_index
from worldsim.io import read_json

NOOP = ACTION_NAMES[0]

# Controller commands (not world actions), as DOM KeyboardEvent.code names like DEFAULT_KEYS.
# "rewind" is a per-tick command (held = keep rewinding); the others act once per press.
DEFAULT_COMMAND_KEYS: dict[str, tuple[str, ...]] = {
    "help": ("KeyH",),
    "rewind": ("Backspace",),
    "pause": ("Escape",),
    "reset": ("KeyN",),
    "screenshot": ("F2",),
    "record": ("F3",),
    "save": ("F5",),
    "load": ("F9",),
    "quit": ("KeyQ",),
}


def make_keymap(
    bindings: Mapping[str, Sequence[str]] | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """Invert bindings (name -> key codes) into key code -> name; names are actions or ``extra`` commands.

    Raises ValueError naming the key when one key is bound twice, or the name when it is unknown.
    """
    bindings = DEFAULT_KEYS if bindings is None else bindings
    out: dict[str, str] = {}
    for table, is_action in ((bindings, True), (extra or {}, False)):
        for name, keys in table.items():
            if is_action:
                action_index(name)  # ValueError listing the valid actions
            if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(f"bindings for {name!r} must be a list of key codes (e.g. ['KeyA']), got {keys!r}")
            for k in keys:
                if k in out and out[k] != name:
                    raise ValueError(f"key {k!r} is bound to both {out[k]!r} and {name!r}")
                out[k] = name
    return out


def load_bindings(path: str | os.PathLike | None) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Read a bindings JSON file ``{"actions": {name: [codes]}, "commands": {name: [codes]}}``.

    Entries replace the defaults for the names they give; the rest keep their default keys.
    Returns (action bindings, command bindings); ValueError names the file and the problem.
    """
    actions = dict(DEFAULT_KEYS)
    commands = dict(DEFAULT_COMMAND_KEYS)
    if path is None:
        return actions, commands
    data = read_json(path, "key bindings file")
    where = f"key bindings file {path}"
    if not isinstance(data, dict) or set(data) - {"actions", "commands"}:
        raise ValueError(f"{where}: expected an object with 'actions' and/or 'commands' maps")
    for section, table, known in (("actions", actions, ACTION_NAMES), ("commands", commands, tuple(DEFAULT_COMMAND_KEYS))):
        given = data.get(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{where}: '{section}' must map names to lists of key codes")
        for name, keys in given.items():
            if name not in known:
                raise ValueError(f"{where}: unknown {section[:-1]} {name!r}; valid: {', '.join(known)}")
            if isinstance(keys, str) or not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(f"{where}: {section}.{name} must be a list of key codes like [\"KeyA\"], got {keys!r}")
            table[name] = tuple(keys)
    try:
        make_keymap(actions, commands)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return actions, commands


class HeldInput:
    """Thread-safe held-keys state -> the input for the next tick (latest input wins).

    Writers (an event pump, a WebSocket handler) call ``press``/``release``/``set_keys``/
    ``set_action``; the loop thread calls ``read`` once per tick.
    """

    def __init__(self, keymap: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.keymap = dict(make_keymap() if keymap is None else keymap)
        self.clock = clock
        self._lock = threading.Lock()
        self._held: list[str] = []  # bound key codes (or pseudo-codes for actions), oldest press first
        self._latched: str | None = None  # name of the latest press since the last read
        self._seq: int | None = None
        self._changed: float | None = None  # clock time of the latest change not yet read

    # ---- writers -------------------------------------------------------------------------------
    def press(self, code: str, seq: int | None = None) -> bool:
        """Key ``code`` went down; return False (and change nothing) when the key is unbound."""
        name = self.keymap.get(code)
        with self._lock:
            if name is None:
                if seq is not None:
                    self._seq = seq
                return False
            self._note(seq)
            if code in self._held:
                self._held.remove(code)
            self._held.append(code)
            self._latched = name
            return True

    def release(self, code: str, seq: int | None = None) -> None:
        """Key ``code`` went up."""
        with self._lock:
            self._note(seq)
            if code in self._held:
                self._held.remove(code)

    def set_keys(self, codes: Sequence[str], seq: int | None = None) -> None:
        """Replace the held set with ``codes`` (oldest press first); keys new to the set count as presses."""
        bound = [c for c in dict.fromkeys(codes) if c in self.keymap]
        with self._lock:
            self._note(seq)
            new = [c for c in bound if c not in self._held]
            self._held = bound
            if new:
                self._latched = self.keymap[new[-1]]

    def set_action(self, name: str, seq: int | None = None) -> None:
        """Hold one action directly (``noop`` releases everything); unknown names raise ValueError."""
        action_index(name)
        with self._lock:
            self._note(seq)
            if name == NOOP:
                self._held = []
            else:
                code = f"action:{name}"
                self.keymap.setdefault(code, name)
                self._held = [code]
                self._latched = name

    def clear(self, seq: int | None = None) -> None:
        """Release every key (focus lost, window hidden)."""
        with self._lock:
            self._note(seq)
            self._held = []

    def _note(self, seq: int | None) -> None:
        if seq is not None:
            self._seq = seq
        self._changed = self.clock()

    # ---- readers -------------------------------------------------------------------------------
    def current(self) -> str:
        """The name the next read would return, without consuming a latched tap."""
        with self._lock:
            return self._current()

    def _current(self) -> str:
        if self._latched is not None:
            return self._latched
        return self.keymap[self._held[-1]] if self._held else NOOP

    def held(self) -> list[str]:
        """Names of the held keys, oldest press first."""
        with self._lock:
            return [self.keymap[c] for c in self._held]

    def is_held(self, name: str) -> bool:
        """True while a key bound to ``name`` is held."""
        with self._lock:
            return any(self.keymap[c] == name for c in self._held)

    def read(self) -> Input:
        """The input for this tick; consumes the latched tap."""
        with self._lock:
            name = self._current()
            self._latched = None
            since, self._changed = self._changed, None
            return Input(name, self._seq, since)

    __call__ = read


class ScriptedController:
    """Plays a list or generator of actions, one per read; then stops (``StopIteration``) or repeats ``then``.

    Names are checked as they are read (ValueError naming the position and the valid actions);
    ``extra`` names (commands such as ``"rewind"``) are allowed too.
    """

    def __init__(self, actions: Iterable[str | int], *, then: str | None = None, extra: Iterable[str] = ()) -> None:
        self._extra = frozenset(extra)
        if then is not None:
            self._check(then, "then")
        self._it: Iterator[str | int] = iter(actions)
        self.then = then
        self.count = 0

    def _check(self, name: str | int, where: str) -> str:
        if isinstance(name, str) and name in self._extra:
            return name
        try:
            return ACTION_NAMES[action_index(name)]
        except ValueError as e:
            raise ValueError(f"scripted action {where}: {e}") from None

    def read(self) -> Input:
        """The next scripted input; raises StopIteration at the end unless ``then`` is set."""
        try:
            item = next(self._it)
        except StopIteration:
            if self.then is None:
                raise
            return Input(self.then, self.count)
        name = self._check(item, f"#{self.count}")
        self.count += 1
        return Input(name, self.count)

    __call__ = read
