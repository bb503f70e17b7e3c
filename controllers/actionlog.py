"""Action logs: record what a player did, tick by tick, so the world can re-render it exactly.

File format (msgpack, one object after another; see docs/protocol.md):

1. a header map: ``{"format": "worldsim-actionlog", "version": 1, "world_id", "backend", "preset",
   "tick_hz", "seed", "context", "start_session", "rewind_capacity", "action_names", "created"}``;
   ``context`` is None or ``{"frames": bytes, "shape": [k, H, W, 3], "actions": [name | None, ...]}``;
   ``start_session`` is None or a file name (beside the log) written by ``Session.save``.
2. one event per tick or control:
   - an int ``a``: the session stepped with action index ``a`` (the common case, one byte);
   - ``{"rewind": n}``: the state of n steps ago was restored (from a ring of ``rewind_capacity``
     snapshots taken before each step; resets and restores empty the ring);
   - ``{"reset": seed}``: a new session from the world's opening frames with that seed;
   - ``{"snapshot": name}`` / ``{"restore": name}``: a named snapshot was taken / restored.

Events are appended and flushed as they happen, so a crash loses at most the last event; the reader
accepts a truncated tail and says so.
"""

from __future__ import annotations

import collections
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from worldsim.actions import ACTION_NAMES, action_index

LOG_FORMAT = "worldsim-actionlog"
LOG_VERSION = 1
LOG_SUFFIX = ".wslog"

# An event as held in memory: ("step", action_name) | ("rewind", n) | ("reset", seed)
# | ("snapshot", name) | ("restore", name).
Event = tuple[str, Any]


class ActionLogError(ValueError):
    """An action log is missing, malformed, or does not match the world."""


@dataclass(frozen=True)
class LogHeader:
    """What a replay needs to rebuild the same session on the same world."""

    world_id: str
    backend: str
    preset: str
    tick_hz: float
    seed: int | None = 0
    context: dict[str, Any] | None = None  # {"frames": bytes, "shape": [k,H,W,3], "actions": [...]}
    start_session: str | None = None  # a Session.save file beside the log
    rewind_capacity: int = 0
    action_names: tuple[str, ...] = ACTION_NAMES
    created: str = ""
    version: int = LOG_VERSION

    def to_msg(self) -> dict[str, Any]:
        """The header as a msgpack-ready map."""
        return {
            "format": LOG_FORMAT,
            "version": self.version,
            "world_id": self.world_id,
            "backend": self.backend,
            "preset": self.preset,
            "tick_hz": float(self.tick_hz),
            "seed": self.seed,
            "context": self.context,
            "start_session": self.start_session,
            "rewind_capacity": int(self.rewind_capacity),
            "action_names": list(self.action_names),
            "created": self.created or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_msg(cls, msg: Any, where: str) -> LogHeader:
        """Validate a decoded header map; ActionLogError names the field that is wrong."""
        if not isinstance(msg, dict) or msg.get("format") != LOG_FORMAT:
            raise ActionLogError(f"{where}: not a worldsim action log (the first object must be a header with format={LOG_FORMAT!r})")
        if msg.get("version") != LOG_VERSION:
            raise ActionLogError(f"{where}: action log version {msg.get('version')!r} is not supported (this build reads version {LOG_VERSION})")

        def get(name: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
            v = msg.get(name)
            if v is None and optional:
                return None
            if not isinstance(v, types) or isinstance(v, bool):
                raise ActionLogError(f"{where}: header field {name!r} must be {_type_names(types)}, got {v!r}")
            return v

        names = get("action_names", list)
        if tuple(names) != ACTION_NAMES:
            raise ActionLogError(f"{where}: header field 'action_names' {names!r} does not match this build's actions {list(ACTION_NAMES)!r}")
        context = get("context", dict, optional=True)
        if context is not None:
            _check_context(context, where)
        return cls(
            world_id=get("world_id", str),
            backend=get("backend", str),
            preset=get("preset", str),
            tick_hz=float(get("tick_hz", (int, float))),
            seed=get("seed", int, optional=True),
            context=context,
            start_session=get("start_session", str, optional=True),
            rewind_capacity=get("rewind_capacity", int),
            action_names=tuple(names),
            created=get("created", str, optional=True) or "",
        )


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    words = {"int": "an integer", "float": "a number", "str": "a string", "list": "a list", "dict": "a map"}
    return " or ".join(words.get(t.__name__, t.__name__) for t in types)


def _check_context(ctx: dict[str, Any], where: str) -> None:
    shape = ctx.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape) and shape[3] == 3):
        raise ActionLogError(f"{where}: header context 'shape' must be [k, H, W, 3], got {shape!r}")
    data = ctx.get("frames")
    if not isinstance(data, bytes) or len(data) != int(np.prod(shape)):
        raise ActionLogError(f"{where}: header context 'frames' must be {int(np.prod(shape))} bytes of uint8 pixels for shape {shape}")
    acts = ctx.get("actions")
    if acts is not None and not (isinstance(acts, list) and len(acts) == shape[0]):
        raise ActionLogError(f"{where}: header context 'actions' must be a list of {shape[0]} names (or null)")


def encode_context(frames: np.ndarray, actions: list[str | None] | None = None) -> dict[str, Any]:
    """Pack context frames (k,H,W,3) uint8 and their producing actions for a log header."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"context frames must have shape (k, H, W, 3), got {frames.shape}")
    return {"frames": frames.tobytes(), "shape": list(frames.shape), "actions": None if actions is None else list(actions)}


def decode_context(ctx: dict[str, Any]) -> tuple[np.ndarray, list[str | None] | None]:
    """Unpack a header context into frames (k,H,W,3) uint8 and actions."""
    frames = np.frombuffer(ctx["frames"], dtype=np.uint8).reshape(ctx["shape"]).copy()
    return frames, ctx.get("actions")


@dataclass
class ActionLog:
    """A decoded log: the header and the events in order."""

    header: LogHeader
    events: list[Event] = field(default_factory=list)
    path: Path | None = None
    truncated: bool = False  # the file ended inside an event (a crash while writing)

    @property
    def actions(self) -> list[str]:
        """The stepped actions in order (controls such as rewind are not included)."""
        return [v for k, v in self.events if k == "step"]


class ActionLogWriter:
    """Appends events to a log file, flushing each so a crash loses at most the last one."""

    def __init__(self, path: str | os.PathLike, header: LogHeader) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.header = header
        self._packer = msgpack.Packer(use_bin_type=True)
        self._f: BinaryIO | None = open(self.path, "wb")
        self.events = 0
        self._write(header.to_msg())

    def _write(self, obj: Any) -> None:
        if self._f is None:
            raise ValueError(f"action log {self.path} is closed")
        self._f.write(self._packer.pack(obj))
        self._f.flush()

    def step(self, action: str | int) -> None:
        """Record one stepped action."""
        self._write(action_index(action))
        self.events += 1

    def rewind(self, steps: int = 1) -> None:
        """Record that the state of ``steps`` steps ago was restored."""
        self._write({"rewind": int(steps)})
        self.events += 1

    def reset(self, seed: int) -> None:
        """Record a reset to the world's opening frames with ``seed``."""
        self._write({"reset": int(seed)})
        self.events += 1

    def snapshot(self, name: str) -> None:
        """Record a named snapshot."""
        self._write({"snapshot": str(name)})
        self.events += 1

    def restore(self, name: str) -> None:
        """Record a restore of a named snapshot."""
        self._write({"restore": str(name)})
        self.events += 1

    def close(self) -> None:
        """Flush to disk and close."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._f is None

    def __enter__(self) -> ActionLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: str | os.PathLike) -> ActionLog:
    """Read and validate an action log; ActionLogError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ActionLogError(f"action log not found: {path}")
    data = path.read_bytes()
    # Feed mode: a partial trailing object simply ends iteration; bytes after the last complete
    # object mean the file was cut mid-write.
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    where = str(path)
    try:
        header_msg = next(unpacker)
    except StopIteration:
        raise ActionLogError(f"{where}: empty or truncated file (no complete header)") from None
    except (msgpack.FormatError, msgpack.StackError, ValueError) as e:
        raise ActionLogError(f"{where}: not a msgpack action log ({e or type(e).__name__})") from None
    log = ActionLog(LogHeader.from_msg(header_msg, where), path=path)
    end = unpacker.tell()  # the end of the last complete object
    n_actions = len(ACTION_NAMES)
    i = 0
    while True:
        try:
            obj = next(unpacker)
        except StopIteration:
            break
        except (msgpack.FormatError, msgpack.StackError, ValueError) as e:
            raise ActionLogError(f"{where}: event #{i} is not valid msgpack ({e or type(e).__name__})") from None
        end = unpacker.tell()
        log.events.append(_parse_event(obj, i, n_actions, where))
        i += 1
    log.truncated = end < len(data)
    return log


def _parse_event(obj: Any, i: int, n_actions: int, where: str) -> Event:
    if isinstance(obj, int) and not isinstance(obj, bool):
        if 0 <= obj < n_actions:
            return ("step", ACTION_NAMES[obj])
        raise ActionLogError(f"{where}: event #{i}: action index {obj} out of range 0..{n_actions - 1}")
    if isinstance(obj, dict) and len(obj) == 1:
        (k, v), = obj.items()
        if k in ("rewind", "reset") and isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or k == "reset"):
            return (k, v)
        if k in ("snapshot", "restore") and isinstance(v, str):
            return (k, v)
    raise ActionLogError(f"{where}: event #{i} must be an action index or one of {{rewind: n>=1}}, {{reset: seed}}, "
                         f"{{snapshot: name}}, {{restore: name}}; got {obj!r}")


class Timeline:
    """Applies log events to a session the same way live controllers do (one implementation for both).

    Keeps the rewind ring (a snapshot before each step) and the named snapshots; ``session`` may be
    replaced by ``reset``. ``new_session(seed)`` builds the session for a reset.
    """

    def __init__(self, session: Any, new_session: Callable[[int], Any], rewind_capacity: int = 0, max_named: int | None = None) -> None:
        self.session = session
        self._new_session = new_session
        self.rewind_capacity = int(rewind_capacity)
        self._ring: collections.deque = collections.deque(maxlen=max(1, self.rewind_capacity))
        self.named: dict[str, Any] = {}
        self.max_named = max_named
        self.steps = 0  # steps since the session was created or reset

    def step(self, action: str) -> np.ndarray:
        """Advance one frame with ``action``; return the frame (H,W,3)."""
        if self.rewind_capacity > 0:
            self._ring.append(self.session.snapshot())
        frame = self.session.step(action)
        self.steps += 1
        return frame

    def can_rewind(self) -> bool:
        """True when a rewind snapshot is available."""
        return self.rewind_capacity > 0 and len(self._ring) > 0

    def rewind(self, steps: int = 1) -> np.ndarray | None:
        """Restore the state of ``steps`` steps ago; None (nothing changed) if the ring holds fewer."""
        if steps < 1 or len(self._ring) < steps or self.rewind_capacity == 0:
            return None
        for _ in range(steps - 1):
            self._ring.pop()
        self.session.restore(self._ring.pop())
        self.steps = max(0, self.steps - steps)
        return self.session.frame

    def reset(self, seed: int) -> np.ndarray:
        """Start a new session with ``seed``; empties the rewind ring."""
        self.session = self._new_session(seed)
        self._ring.clear()
        self.steps = 0
        return self.session.frame

    def replace_session(self, session: Any) -> np.ndarray:
        """Continue from another session (a loaded save); empties the rewind ring."""
        self.session = session
        self._ring.clear()
        self.steps = 0
        return self.session.frame

    def snapshot(self, name: str) -> None:
        """Keep a named snapshot of the current state."""
        if self.max_named is not None and name not in self.named and len(self.named) >= self.max_named:
            raise ValueError(f"too many named snapshots (limit {self.max_named}); reuse a name")
        self.named[name] = self.session.snapshot()

    def restore(self, name: str) -> np.ndarray:
        """Restore a named snapshot (KeyError if unknown); empties the rewind ring."""
        state = self.named[name]
        self.session.restore(state)
        self._ring.clear()
        return self.session.frame

    def apply(self, event: Event) -> np.ndarray | None:
        """Apply one logged event; return the frame it shows (None for a snapshot or a refused rewind)."""
        kind, value = event
        if kind == "step":
            return self.step(value)
        if kind == "rewind":
            return self.rewind(value)
        if kind == "reset":
            return self.reset(value)
        if kind == "snapshot":
            self.snapshot(value)
            return None
        if kind == "restore":
            return self.restore(value)
        raise ValueError(f"unknown event kind {kind!r}")


def start_session(world: Any, log: ActionLog) -> Any:
    """Build the session a log starts from (its saved start, context or seed)."""
    h = log.header
    if h.start_session is not None:
        base = log.path.parent if log.path is not None else Path(".")
        p = base / h.start_session
        if not p.exists():
            raise ActionLogError(f"{log.path}: its start state {p} is missing (it is written beside the log)")
        return world.load_session(p)
    if h.context is not None:
        frames, actions = decode_context(h.context)
        return world.new_session(context=frames, actions=actions, seed=h.seed or 0)
    return world.new_session(seed=h.seed or 0)


def check_world(world: Any, log: ActionLog, *, strict: bool = True) -> list[str]:
    """Compare the log's header with ``world``; return the mismatches (raise ActionLogError if strict)."""
    h = log.header
    problems = []
    if h.world_id != world.id:
        problems.append(f"world id {world.id!r} != the log's {h.world_id!r} (a different world or weights)")
    if tuple(world.frame_shape) and h.context is not None and list(h.context["shape"][1:]) != list(world.frame_shape):
        problems.append(f"context frames {h.context['shape'][1:]} do not match the world's frame shape {list(world.frame_shape)}")
    if problems and strict:
        raise ActionLogError(f"{log.path}: " + "; ".join(problems))
    return problems


def replay_frames(world: Any, log: ActionLog) -> Iterator[np.ndarray]:
    """Re-render a log: yield the opening frame, then the frame after each event that shows one."""
    session = start_session(world, log)
    timeline = Timeline(session, lambda seed: world.new_session(seed=seed), log.header.rewind_capacity)
    yield np.asarray(session.frame)
    for i, ev in enumerate(log.events):
        try:
            frame = timeline.apply(ev)
        except KeyError:
            raise ActionLogError(f"{log.path}: event #{i} restores snapshot {ev[1]!r}, which the log never took") from None
        if frame is not None:
            yield np.asarray(frame)
