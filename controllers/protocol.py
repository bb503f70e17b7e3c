"""The browser protocol, version 1: msgpack maps over binary WebSocket messages (docs/protocol.md).

Every message is a map with a ``type``. Client messages are validated against ``CLIENT_SCHEMA``:
unknown types, missing or mistyped fields and unknown fields raise :class:`ProtocolError`, whose
``code`` and message go back to the client in an ``error`` message (the connection stays up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
# Application limit on one client message; the server replies `too_large` and keeps the connection.
# Real client messages are < 200 bytes.
MAX_CLIENT_MESSAGE = 4096
MAX_KEYS = 16
MAX_NAME_LEN = 64

# Error codes (stable strings the client can switch on).
BAD_MESSAGE = "bad_message"  # not binary msgpack, or not a map with a string `type`
UNKNOWN_TYPE = "unknown_type"
BAD_FIELD = "bad_field"  # missing, mistyped, out-of-range or unknown field
TOO_LARGE = "too_large"
RATE_LIMITED = "rate_limited"
VERSION_MISMATCH = "version_mismatch"
HELLO_REQUIRED = "hello_required"
UNAUTHORIZED = "unauthorized"
SERVER_FULL = "server_full"
IDLE_TIMEOUT = "idle_timeout"
UNKNOWN_SNAPSHOT = "unknown_snapshot"
INTERNAL = "internal"
ERROR_CODES = (
    BAD_MESSAGE, UNKNOWN_TYPE, BAD_FIELD, TOO_LARGE, RATE_LIMITED, VERSION_MISMATCH, HELLO_REQUIRED,
    UNAUTHORIZED, SERVER_FULL, IDLE_TIMEOUT, UNKNOWN_SNAPSHOT, INTERNAL,
)


class ProtocolError(Exception):
    """A client message was rejected: ``code`` is one of ERROR_CODES, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_msg(self) -> dict[str, Any]:
        """The error as a server message."""
        return error(self.code, self.message)


@dataclass(frozen=True)
class Field:
    """One field of a message: a checker (value -> error text or None) and whether it is required."""

    check: Callable[[Any], str | None]
    required: bool = True
    doc: str = ""


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be an integer"
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def _str(max_len: int = MAX_NAME_LEN, choices: tuple[str, ...] | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "must be a string"
        if len(v) > max_len:
            return f"must be at most {max_len} characters"
        if choices is not None and v not in choices:
            return f"must be one of {', '.join(choices)}"
        return None

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _number(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) else "must be a number"


def _keys(v: Any) -> str | None:
    if not isinstance(v, list):
        return "must be a list of key codes"
    if len(v) > MAX_KEYS:
        return f"must hold at most {MAX_KEYS} keys"
    if not all(isinstance(k, str) and 0 < len(k) <= 32 for k in v):
        return "must be a list of key code strings (e.g. 'KeyA'), each 1-32 characters"
    return None


FRAME_FORMATS = ("png", "jpeg")
SEED_MAX = 2**31 - 1

# type -> field name -> Field. `type` itself is implicit.
CLIENT_SCHEMA: dict[str, dict[str, Field]] = {
    "hello": {
        "version": Field(_int(), doc="protocol version; must be 1"),
        "token": Field(_str(256), required=False, doc="the server's --token, if it has one"),
        "seed": Field(_int(0, SEED_MAX), required=False, doc="seed of the first session (default 0)"),
        "format": Field(_str(8, FRAME_FORMATS), required=False, doc="frame encoding: png (default) or jpeg"),
    },
    "input": {
        "seq": Field(_int(0, 2**53), doc="increasing input number; echoed as input_seq"),
        "action": Field(_str(), required=False, doc="hold this action (noop releases)"),
        "keys": Field(_keys, required=False, doc="key codes held now, oldest press first"),
    },
    "reset": {"seed": Field(_int(0, SEED_MAX), required=False, doc="new session seed (default: next)")},
    "pause": {"paused": Field(_bool, doc="true pauses generation, false resumes")},
    "rewind": {"steps": Field(_int(1, 10_000), required=False, doc="steps back (default 1)")},
    "snapshot": {"name": Field(_str(), doc="name to keep the current state under")},
    "restore": {"name": Field(_str(), doc="a name given to an earlier snapshot")},
    "ping": {"t": Field(_number, required=False, doc="any number; echoed in pong")},
}


def encode(msg: dict[str, Any]) -> bytes:
    """Pack a message map as msgpack (bytes stay bin, str stays str)."""
    return msgpack.packb(msg, use_bin_type=True)


def decode(data: bytes | str, max_size: int = MAX_CLIENT_MESSAGE) -> dict[str, Any]:
    """Unpack and validate one client message; raise ProtocolError with a code on any problem."""
    if isinstance(data, str):
        raise ProtocolError(BAD_MESSAGE, "text messages are not accepted; send binary msgpack")
    if len(data) > max_size:
        raise ProtocolError(TOO_LARGE, f"message is {len(data)} bytes; the limit is {max_size}")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_size, max_str_len=max_size,
                              max_array_len=256, max_map_len=64, max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise ProtocolError(BAD_MESSAGE, f"not a valid msgpack message ({type(e).__name__}: {e})") from None
    return validate(msg)


def validate(msg: Any) -> dict[str, Any]:
    """Check a decoded client message against CLIENT_SCHEMA; return it or raise ProtocolError."""
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_MESSAGE, f"a message must be a map with a 'type', got {type(msg).__name__}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "a message must have a string field 'type'")
    schema = CLIENT_SCHEMA.get(kind)
    if schema is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:MAX_NAME_LEN]!r}; known types: {', '.join(CLIENT_SCHEMA)}")
    for name in msg:
        if name != "type" and name not in schema:
            raise ProtocolError(BAD_FIELD, f"{kind}: unknown field {str(name)[:MAX_NAME_LEN]!r}; fields: {', '.join(schema) or 'none'}")
    for name, field in schema.items():
        if name not in msg:
            if field.required:
                raise ProtocolError(BAD_FIELD, f"{kind}: missing field {name!r} ({field.doc})")
            continue
        problem = field.check(msg[name])
        if problem is not None:
            raise ProtocolError(BAD_FIELD, f"{kind}: field {name!r} {problem}")
    if kind == "input" and ("action" in msg) == ("keys" in msg):
        raise ProtocolError(BAD_FIELD, "input: give exactly one of 'action' (a name) or 'keys' (held key codes)")
    return msg


# ---- server messages ---------------------------------------------------------------------------
def welcome(session: str, actions: list[str], frame_shape: tuple[int, ...], tick_hz: float, bindings: dict[str, list[str]],
            limits: dict[str, Any], frame_format: str, seed: int) -> dict[str, Any]:
    """The reply to a valid hello."""
    return {
        "type": "welcome", "version": PROTOCOL_VERSION, "session": session, "actions": list(actions),
        "frame_shape": [int(s) for s in frame_shape], "tick_hz": float(tick_hz), "bindings": bindings,
        "limits": limits, "format": frame_format, "seed": int(seed),
    }


def frame(seq: int, input_seq: int | None, tick: int, fmt: str, data: bytes, latency_ms: float, fps: float, action: str) -> dict[str, Any]:
    """One encoded frame; ``input_seq`` is the latest input seq the server had read for it."""
    return {
        "type": "frame", "seq": seq, "input_seq": input_seq, "tick": tick, "format": fmt, "data": data,
        "latency_ms": round(float(latency_ms), 3), "fps": round(float(fps), 2), "action": action,
    }


def error(code: str, message: str) -> dict[str, Any]:
    """An error reply."""
    return {"type": "error", "code": code, "message": message}


def ack(of: str, **fields: Any) -> dict[str, Any]:
    """Confirms a control message (pause, snapshot, restore, reset, rewind)."""
    return {"type": "ack", "of": of, **fields}
