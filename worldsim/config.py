"""Frozen dataclass configs with named presets, and their JSON round trip."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass config as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config; unknown keys are an error (a checkpoint from another version), missing keys take defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls, name, None) if fields[name].default is not dataclasses.MISSING else None
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def preset(presets: dict[str, T], name: str, kind: str = "config") -> T:
    """Look up a named preset with a clear error listing the valid names."""
    try:
        return presets[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; choose from {', '.join(presets)}") from None
