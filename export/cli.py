"""`worldsim export`: write a world as a self-contained ONNX (or TensorRT) bundle, checked against torch first.

    worldsim export --world worlds/crafter --format onnx --out build/crafter-onnx
    worldsim export --format onnx --quantize int8 --out build/crafter-int8
    worldsim export --format tensorrt --out build/crafter-trt        # on a machine with a GPU and TensorRT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `worldsim export`."""
    parser.add_argument("--world", type=Path, default=None, help="world directory (default: the shipped world)")
    parser.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx", help="bundle format (default: onnx)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="int8: dynamic int8 quantization of the DiT graph for CPUs (default: none; see docs/deployment.md)")
    parser.add_argument("--precision", choices=("fp16", "fp32", "fp8"), default="fp16",
                        help="TensorRT engine precision, carried by the graph (strongly typed; default fp16)")
    parser.add_argument("--sessions", default="1", help="TensorRT: comma list of players per call to build static engines for (default 1)")
    parser.add_argument("--parity-frames", type=int, default=10, help="rollout length of the parity check against torch (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the export and the check (default 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing, non-empty --out directory")


def run(args: argparse.Namespace) -> int:
    """Export; -> exit code (0 ok, 1 failed check or load error, 2 bad arguments/missing GPU)."""
    from engine.backends import BackendUnavailable
    from engine.bundle import BundleError
    from export.bundle import export_bundle
    from export.parity import ParityError

    world = args.world
    if world is None:
        from engine.world import default_world_dir

        world = default_world_dir()
        if not (world / "world.json").is_file():
            print(f"error: the shipped world is not installed yet ({world} has no world.json); pass --world PATH", file=sys.stderr)
            return 2
    if args.parity_frames < 2:
        print("error: --parity-frames must be >= 2 (the check runs a multi-frame rollout)", file=sys.stderr)
        return 2
    try:
        sessions = tuple(int(s) for s in args.sessions.split(",") if s.strip())
        if not sessions or min(sessions) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --sessions must be a comma list of positive integers, got {args.sessions!r}", file=sys.stderr)
        return 2
    try:
        export_bundle(world, args.out, kind=args.format, quantize=args.quantize, parity_frames=args.parity_frames,
                      force=args.force, threads=args.threads, trt_precision=args.precision, trt_sessions=sessions,
                      log=lambda s: print(s, flush=True))
    except BackendUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (BundleError, FileExistsError, FileNotFoundError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if not isinstance(e, FileExistsError) else 2
    return 0
