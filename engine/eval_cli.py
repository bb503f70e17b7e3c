"""`worldsim eval`: the evaluation harness (worldsim.eval) run on an engine world.

The harness itself needs only the session API; this module is where an engine world gets loaded for it,
so that imports keep flowing one way (worldsim <- engine).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worldsim.eval import cli as _cli

add_arguments = _cli.add_arguments


def load_world(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Load an engine world directory (the default world when --world is not given) -> (world, description)."""
    from engine.world import World, parse_preset_options

    kwargs: dict[str, Any] = {}
    if args.backend:
        kwargs["backend"] = args.backend
    if args.preset:
        kwargs["preset"] = args.preset
    for key in ("window", "steps"):  # preset overrides
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    kwargs.update(parse_preset_options(getattr(args, "option", None) or []))
    world = World.load(args.world, **kwargs)
    desc = {"name": world.meta.get("name") or Path(str(world.path)).name, "path": str(world.path), "kind": "engine",
            "id": world.id, "backend": world.backend_name, "preset": world.preset_name,
            "window": world.preset.window, "steps": world.preset.steps,
            "preset_fields": {k: v for k, v in world.preset.__dict__.items() if k != "name"}}
    return world, desc


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim eval`."""
    return _cli.run(args, load_world=load_world)
