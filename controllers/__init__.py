"""Controllers: how people meet a world (pygame play, browser serve, record/replay, scripted input).

Controllers use only the public engine API (``engine.World``/``Session``, ``engine.loop``) and the
shared ``worldsim`` schema (actions, io). See docs/protocol.md for the browser protocol.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """--world, --backend and --preset of a live command (play, serve); load_world() reads them."""
    parser.add_argument("--world", default=None, help="world directory (default: the default world)")
    parser.add_argument("--backend", default=None, help="engine backend: onnxruntime or torch (default: the engine's best available)")
    parser.add_argument("--preset", default="fast", help="runtime preset: fast or quality (default: fast)")


def load_world(path: str | None, backend: str | None, preset: str | None) -> Any:
    """Load a world for a CLI command; print a one-line error and return None when it cannot be loaded."""
    from engine import World

    try:
        return World.load(path, backend=backend, preset=preset or "fast")
    except (OSError, ValueError, RuntimeError) as e:  # missing dir/files, bad format, checkpoint errors
        where = path or "the default world"
        print(f"error: cannot load {where}: {e}", file=sys.stderr)
        return None
