"""CPU speed options for an exported bundle, measured rather than guessed.

- int8 dynamic quantization of the DiT graph (onnxruntime: int8 weights, activations quantized per call;
  MatMul only: the attention products are activation x activation and stay float32).
- A graph already optimized by onnxruntime and saved offline (skips the optimizer at load time).
- fp16 weights are not offered: onnxruntime's CPU kernels compute fp16 by converting back (slower).

`python -m export.quantize --random small` prints speed and quality of every variant on one world.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.graphs import quantize_dit_int8  # re-exported: bundles and this module's measurements use it

QUANTIZE_CHOICES = ("none", "int8")


def optimize_offline(src: str | os.PathLike, dst: str | os.PathLike, level: str = "extended") -> Path:
    """Run onnxruntime's graph optimizer once and save the result (`extended` stays portable across CPUs)."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return Path(dst)


# -- measurement -------------------------------------------------------------------------------------


def _steady_feed(dit_cfg, window: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    d = dit_cfg
    rng = np.random.default_rng(seed)
    kv = (d.n_layers, batch, d.n_heads, window * d.tokens_per_frame, d.head_dim)
    return {"x": rng.standard_normal((batch, 1, d.latent_channels, d.grid, d.grid), dtype=np.float32),
            "sigma": np.full((batch, 1), 0.7, np.float32), "actions": np.full((batch, 1), 3, np.int64),
            "past_k": rng.standard_normal(kv, dtype=np.float32), "past_v": rng.standard_normal(kv, dtype=np.float32),
            "past_t": np.tile(-np.arange(1, window + 1, dtype=np.float32), (batch, 1)),
            "past_valid": np.ones((batch, window), np.float32), "past_shift": np.zeros((batch, window, 2), np.float32)}


def _session(path: Path, threads: int, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_dit_variants(graphs: dict[str, Path], dit_cfg, window: int, threads: int = 1, calls: int = 20, repeats: int = 5,
                      batch: int = 1) -> dict[str, dict[str, float]]:
    """Median ms per DiT call at steady-state shapes for each graph; variants are interleaved per repeat so
    that load from other processes hits them alike. Also the session creation time."""
    feed = _steady_feed(dit_cfg, window, batch)
    sessions, create = {}, {}
    for name, path in graphs.items():
        t0 = time.perf_counter()
        sessions[name] = _session(path, threads, "none" if name.endswith("offline") else "all")
        create[name] = (time.perf_counter() - t0) * 1e3
        for _ in range(3):
            sessions[name].run(None, feed)
    samples: dict[str, list[float]] = {n: [] for n in graphs}
    for _ in range(repeats):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, feed)
            samples[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {n: {"ms_per_call": statistics.median(v), "min_ms": min(v), "load_ms": create[n], "bytes": graphs[n].stat().st_size}
            for n, v in samples.items()}


def rollout_quality(reference_world, candidate_world, frames: int = 32, seeds: int = 2) -> dict[str, Any]:
    """Free rollouts of both worlds with the same seeds and actions: PSNR and tile agreement of the candidate
    against the reference, per frame (mean over seeds)."""
    from export.parity import play, rollout_actions

    acts = rollout_actions(frames)
    psnr = np.zeros(frames)
    tile_agree = np.zeros(frames)
    mean_abs = np.zeros(frames)
    use_tiles = reference_world.frame_shape[0] % 9 == 0
    for seed in range(seeds):
        a = play(reference_world, frames, seed, acts)
        b = play(candidate_world, frames, seed, acts)
        d = a.astype(np.float64) - b.astype(np.float64)
        mse = (d ** 2).reshape(frames, -1).mean(1)
        psnr += np.where(mse == 0, 99.0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))) / seeds
        mean_abs += np.abs(d).reshape(frames, -1).mean(1) / seeds
        if use_tiles:
            from worldsim.eval.tiles import classify_tiles

            ta, tb = classify_tiles(a), classify_tiles(b)
            tile_agree += (ta == tb).reshape(frames, -1).mean(1) / seeds
    out = {"frames": frames, "seeds": seeds, "psnr_db_mean": float(np.minimum(psnr, 99.0).mean()), "psnr_db_min": float(psnr.min()),
           "psnr_db_by_frame": [round(float(x), 2) for x in psnr], "mean_abs_levels": float(mean_abs.mean())}
    if use_tiles:
        out.update(tile_agreement_mean=float(tile_agree.mean()), tile_agreement_min=float(tile_agree.min()))
    return out


def measure(world_dir: Path, threads: int = 1, frames: int = 32, calls: int = 20, repeats: int = 5, preset: str = "fast",
            batch: int = 1) -> dict[str, Any]:
    """Speed (ms per DiT call, fps of a session) and quality (vs float32) of every CPU variant of a world."""
    from engine.backends import OrtBackend
    from engine.world import World

    base = World.load(world_dir, backend="onnxruntime", preset=preset, threads=threads)
    src = base.backend.graph_dir
    with tempfile.TemporaryDirectory(prefix="worldsim-quant-") as tmp:
        tmp = Path(tmp)
        dirs = {}
        for name in ("fp32", "int8", "int8-per-channel"):
            d = tmp / name
            d.mkdir()
            for g in ("encoder", "decoder", "dit"):
                shutil.copy(src / f"{g}.onnx", d / f"{g}.onnx")
            dirs[name] = d
        quantize_dit_int8(src / "dit.onnx", dirs["int8"] / "dit.onnx", per_channel=False)
        quantize_dit_int8(src / "dit.onnx", dirs["int8-per-channel"] / "dit.onnx", per_channel=True)
        optimize_offline(src / "dit.onnx", tmp / "dit-offline.onnx")
        graphs = {name: d / "dit.onnx" for name, d in dirs.items()}
        graphs["fp32-offline"] = tmp / "dit-offline.onnx"
        speed = time_dit_variants(graphs, base.dit_cfg, base.preset.window, threads, calls, repeats, batch)
        result: dict[str, Any] = {"threads": threads, "preset": preset, "window": base.preset.window, "batch": batch, "dit_call": speed}
        worlds = {}
        for name, d in dirs.items():
            w = World.load(world_dir, backend="onnxruntime", preset=preset, threads=threads)
            w.backend = OrtBackend(d, threads=threads)
            worlds[name] = w
        from engine.bench import bench_cached

        fps = {n: [] for n in worlds}
        for _ in range(max(1, repeats // 2)):
            for n, w in worlds.items():  # interleaved, like the call timings
                fps[n].append(bench_cached(w, frames=30, warmup=base.preset.window + 2, repeats=1).fps)
        result["session_fps"] = {n: statistics.median(v) for n, v in fps.items()}
        result["quality_vs_fp32"] = {n: rollout_quality(worlds["fp32"], w, frames) for n, w in worlds.items() if n != "fp32"}
    f32 = speed["fp32"]["ms_per_call"]
    result["speedup_vs_fp32"] = {n: f32 / v["ms_per_call"] for n, v in speed.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: measure int8 / offline-optimized variants against float32 on one world."""
    p = argparse.ArgumentParser(prog="python -m export.quantize", description="measure CPU speed options of a world's graphs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--world", type=Path, help="a world directory")
    g.add_argument("--random", choices=("tiny", "small", "base"), default=None, help="a random-weight world of this DiT preset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=32, help="rollout length for the quality comparison")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1, help="sessions per DiT call for the call timings")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="worldsim-quant-world-") as tmp:
        path = args.world
        if path is None:
            from engine.testing import make_random_world

            path = make_random_world(Path(tmp) / "w", dit=args.random or "small")
        r = measure(path, threads=args.threads, frames=args.frames, repeats=args.repeats, batch=args.batch)
    print(f"world {args.world or 'random-' + (args.random or 'small')}, {r['threads']} thread(s), window {r['window']}, batch {r['batch']}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<18} {'ms/DiT call':>11} {'speed-up':>8} {'load ms':>8} {'MB':>6} {'session fps':>11} {'PSNR vs fp32':>12} {'tiles equal':>11}")
    for n, s in r["dit_call"].items():
        q = r["quality_vs_fp32"].get(n, {})
        fps = r["session_fps"].get(n)
        print(f"{n:<18} {s['ms_per_call']:>11.2f} {r['speedup_vs_fp32'][n]:>7.2f}x {s['load_ms']:>8.0f} {s['bytes'] / 1e6:>6.1f} "
              f"{'-' if fps is None else f'{fps:.1f}':>11} {q.get('psnr_db_mean', float('nan')):>12.1f} "
              f"{100 * q.get('tile_agreement_mean', float('nan')):>10.1f}%")
    if args.json:
        from worldsim.io import atomic_write_json

        atomic_write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
