"""The whole GPU path in one command: export a TensorRT bundle (strongly typed fp16 engines, engine and
timing caches), check it against torch and onnxruntime, and benchmark one player and many players.

    python demos/gpu_path.py                       # the shipped world (or a random small one if not installed)
    python demos/gpu_path.py --world DIR --sessions 1,2,4,8,16 --out build/gpu

Prints a markdown table for the README: fps and latency at one player per backend, and total / per-player
fps with many players. Needs an NVIDIA GPU and `pip install 'worldsim[tensorrt]'`; without them it says
what is missing and exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _world_dir(args, tmp: Path) -> Path:
    from engine.world import default_world_dir

    if args.world:
        return Path(args.world)
    if not args.random and (default_world_dir() / "world.json").is_file():
        return default_world_dir()
    from engine.testing import make_random_world

    preset = args.random or "small"
    print(f"(no --world and no shipped world: timing a random-weight '{preset}' world)")
    return make_random_world(tmp / f"random-{preset}", dit=preset)


def main(argv: list[str] | None = None) -> int:
    """Build, check, benchmark; -> exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default=None, help="world directory (default: the shipped world)")
    ap.add_argument("--random", choices=("tiny", "small", "base"), default=None, help="time a random-weight world of this preset")
    ap.add_argument("--out", default=None, help="where to write the bundle (default: a temp dir)")
    ap.add_argument("--sessions", default="1,2,4,8,16", help="player counts for the many-player benchmark")
    ap.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    ap.add_argument("--frames", type=int, default=200, help="timed frames per repeat at one player")
    ap.add_argument("--ticks", type=int, default=50, help="timed ticks per repeat with many players")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from engine.backends import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"the GPU path cannot run here: {reason}", file=sys.stderr)
        return 2
    import tensorrt as trt
    import torch

    from engine.bench import bench_cached
    from engine.world import World
    from export.bench_sessions import bench_sessions
    from export.bundle import export_bundle
    from export.parity import play

    sessions = tuple(int(s) for s in args.sessions.split(","))
    results: dict = {"gpu": torch.cuda.get_device_name(), "tensorrt": trt.__version__, "torch": torch.__version__, "rows": []}
    with tempfile.TemporaryDirectory(prefix="worldsim-gpu-") as tmp:
        tmp = Path(tmp)
        world_dir = _world_dir(args, tmp)
        out = Path(args.out) if args.out else tmp / "bundle-trt"
        t0 = time.time()
        export_bundle(world_dir, out, kind="tensorrt", trt_precision=args.precision, trt_sessions=sessions, force=True,
                      log=lambda s: print(s, flush=True))
        results["export_s"] = time.time() - t0
        manifest = json.loads((out / "manifest.json").read_text())
        results["parity"] = manifest["parity"]

        # rules, warm start and fill off: the CUDA-graph path (they read frames on the host between the passes, so with
        # them on the tensorrt backend steps through the generic path, one engine call per pass)
        from engine.world import MODEL_ONLY

        bare = dict(MODEL_ONLY)
        trt_world = World.load(out, backend="tensorrt", preset="fast", **bare)
        ort_world = World.load(out, backend="onnxruntime", preset="fast", **bare)
        # parity against onnxruntime (CPU, float32 graphs): the same seeds and actions, free rollouts
        a, b = play(ort_world, 64, seed=0), play(trt_world, 64, seed=0)
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        results["vs_onnxruntime"] = {"frames": 64, "psnr_db": 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse),
                                     "max_levels": int(np.abs(a.astype(int) - b.astype(int)).max())}
        print(f"tensorrt vs onnxruntime over 64 frames: PSNR {results['vs_onnxruntime']['psnr_db']:.1f} dB, "
              f"max {results['vs_onnxruntime']['max_levels']} levels")

        def one_player(name, world):
            t = bench_cached(world, frames=args.frames, warmup=20, repeats=3)
            results["rows"].append({"backend": name, "fps": t.fps, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms})
            print(f"{name:<22} 1 player: {t.fps:8.1f} fps, p50 {t.p50_ms:.2f} ms, p99 {t.p99_ms:.2f} ms", flush=True)

        one_player("tensorrt (CUDA graph)", trt_world)
        from engine.backends import TorchBackend
        from worldsim.train import load_autoencoder, load_dit

        meta = json.loads((world_dir / "world.json").read_text())
        torch_world = copy.copy(trt_world)
        torch_world.backend = TorchBackend(load_autoencoder(world_dir / meta.get("autoencoder", "autoencoder.safetensors")),
                                           load_dit(world_dir / meta.get("dit", "dit.safetensors")), device="cuda")
        one_player("torch eager (CUDA)", torch_world)
        try:
            from engine.tensorrt_backend import ort_tensorrt_backend

            ort_trt = copy.copy(ort_world)
            ort_trt.backend = ort_tensorrt_backend(out / "graphs", fp16=args.precision == "fp16")
            one_player("onnxruntime TensorRT EP", ort_trt)
        except Exception as e:  # the EP is optional (onnxruntime-gpu); report and go on
            print(f"onnxruntime TensorRT EP skipped: {e}")
        one_player("onnxruntime (CPU)", ort_world)

        print("many players (tensorrt; batched = one engine call per step for all players):")
        rows = bench_sessions(trt_world, [s for s in sessions], ticks=args.ticks, repeats=3)
        results["sessions"] = rows
        from export.bench_sessions import HEADER, format_row

        print(HEADER)
        for r in rows:
            print(format_row(r))

    print("\n| backend (1 player) | fps | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['backend']} | {r['fps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    print(f"\n| players (tensorrt, {results['gpu']}) | total fps | fps/player | tick p50 ms | tick p99 ms |\n|---:|---:|---:|---:|---:|")
    for r in results["sessions"]:
        b = r["batched"]
        print(f"| {r['sessions']} | {b['total_fps']:.0f} | {b['per_player_fps']:.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} |")
    if args.json:
        from worldsim.io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
