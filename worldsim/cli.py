"""The `worldsim` command line: one entry point, one module per subcommand.

Subcommand modules are imported lazily by name so that `worldsim --help` stays fast and heavy
optional dependencies (pygame, onnxruntime, websockets) load only for the command that needs them.
Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. This is the one place that
names modules across packages; it dispatches by string and imports nothing at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "record": ("worldsim.data.record", "record the real Crafter game into a training dataset"),
    "train": ("worldsim.train", "train the autoencoder or the dynamics DiT"),
    "train-reader": ("worldsim.eval.reader", "train a world's tile reader (reads its decoded frames for the rules and the eval)"),
    "train-ground": ("engine.ground", "fit a world's ground head (new ground is sampled from it, not averaged into grass)"),
    "eval": ("engine.eval_cli", "measure a world against the real game"),
    "export": ("export.cli", "export a world as an ONNX / TensorRT bundle"),
    "bench": ("engine.bench", "benchmark frames/s and latency per backend and preset"),
    "play": ("controllers.play", "play a world with the keyboard in a pygame window"),
    "serve": ("controllers.serve", "serve a world to the browser over WebSocket"),
    "replay": ("controllers.replay", "re-render a recorded action log to a video"),
}


def build_parser(load: bool = True, only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; with ``only`` set, load just that subcommand's module."""
    parser = argparse.ArgumentParser(prog="worldsim", description="Neural worlds you can play, stream and export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load and (only is None or only == name):
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `worldsim` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        # top-level help or an unknown command: no subcommand module needs importing
        parser = build_parser(load=False)
        if command is not None:
            parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
        args = parser.parse_args(argv)
        parser.print_help()
        return 0
    parser = build_parser(only=command)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
