"""`worldsim bench`: frames/s and per-frame latency of a world, per backend x runtime preset.

For every row it reports fps, p50/p99 latency per frame, the denoise/commit/decode split (from
``Session.timings``; with fused commits, RuntimePreset.fuse_commit, the commit rides in the first denoising
pass and counts as denoise), the model's GFLOP per frame and the achieved GFLOP/s next to a float32 GEMM peak
measured in the same run, and the same weights stepped the naive way (open-oasis: every denoising step
recomputes the whole window with no cache) with the cached/naive speed ratio.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the world's networks at the
steady-state shapes (full window): matmuls, linear layers, convolutions and attention (a formula for the
CPU attention kernel is registered; torch's counter lacks one), 2 FLOPs per multiply-add; elementwise work
is not counted. The count is the model's, the same for every backend.

With ``--sessions 1,2,4,8`` it measures many players instead (engine/bench_sessions.py): for each N, N
sessions stepped together in one network call per denoising step/commit/decode, against the same N stepped
one after another: total and per-player fps, tick latency p50/p99.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import NULL_ACTION, action_index

# A fixed, game-like action mix for the timed frames (mostly moves; the model's cost does not depend on it).
_BENCH_ACTIONS = ("move_left", "move_left", "move_up", "do", "move_right", "noop", "move_down", "do", "place_stone", "move_up")


# -- FLOP counting -----------------------------------------------------------------------------------


def _sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q_shape, k_shape, v_shape)


def count_flops(fn) -> float:
    """FLOPs of the torch ops run by fn() (matmuls, linear layers, convolutions and attention; 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # the CPU attention kernel has no formula in torch's counter: count it like the other attention kernels
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    custom = {op: _sdpa_flops} if op is not None else {}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=custom) as fc:
        fn()
    return float(fc.get_total_flops())


@functools.lru_cache(maxsize=8)
def _dit_module(cfg):
    from worldsim.dit import CausalDiT

    return CausalDiT(cfg).eval()  # FLOPs do not depend on the weights


@functools.lru_cache(maxsize=8)
def _decoder_module(ae_cfg):
    from engine.graphs import DecoderGraph
    from worldsim.autoencoder import Autoencoder

    return DecoderGraph(Autoencoder(ae_cfg)).eval()


@functools.lru_cache(maxsize=64)
def dit_flops(cfg, k: int, past_frames: int) -> float:
    """FLOPs of one CausalDiT.forward call: a chunk of k frames against past_frames cached frames (batch 1)."""
    import torch

    dit = _dit_module(cfg)
    C, g, N = cfg.latent_channels, cfg.grid, cfg.tokens_per_frame
    kv = torch.zeros(cfg.n_layers, 1, cfg.n_heads, past_frames * N, cfg.head_dim)
    return count_flops(lambda: dit(torch.zeros(1, k, C, g, g), torch.ones(1, k), torch.zeros(1, k, dtype=torch.long), kv, kv,
                                   -torch.arange(1.0, past_frames + 1)[None], torch.ones(1, past_frames), torch.zeros(1, past_frames, 2)))


@functools.lru_cache(maxsize=8)
def decoder_flops(ae_cfg) -> float:
    """FLOPs of decoding one frame (latents -> uint8 pixels)."""
    import torch

    dec = _decoder_module(ae_cfg)
    return count_flops(lambda: dec(torch.zeros(1, ae_cfg.latent_channels, ae_cfg.grid, ae_cfg.grid)))


def frame_gflops(world, naive: bool = False) -> dict[str, float]:
    """Model GFLOP per generated frame at steady state (full window): denoise, commit, decode, total."""
    p, d = world.preset, world.dit_cfg
    dec = decoder_flops(world.ae_cfg)
    if naive:
        # one frame at a time; every denoising step runs the window's frames + the new one with no cache
        den = p.steps * dit_flops(d, p.window + 1, 0)
        out = {"denoise": den, "commit": 0.0, "decode": dec}
    elif world.fuses_commit:
        # the first pass carries the previous chunk's commit (RuntimePreset.fuse_commit): counted in denoise
        k, R = p.chunk, world.ring_slots
        out = {"denoise": (dit_flops(d, 2 * k, R) + (p.steps - 1) * dit_flops(d, k, R)) / k, "commit": 0.0, "decode": dec}
    else:
        k = p.chunk
        out = {"denoise": p.steps * dit_flops(d, k, p.window) / k, "commit": dit_flops(d, k, p.window) / k, "decode": dec}
    out["total"] = sum(out.values())
    return {key: v / 1e9 for key, v in out.items()}


# -- matmul peak -------------------------------------------------------------------------------------


def matmul_gflops(m: int, k: int, n: int, threads: int, seconds: float = 0.25) -> float:
    """Best achieved GFLOP/s of a float32 torch GEMM (m,k)@(k,n) on `threads` threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm up
        best = 0.0
        for _ in range(3):
            reps, t0 = 0, time.perf_counter()
            while True:
                torch.mm(a, b, out=out)
                reps += 1
                dt = time.perf_counter() - t0
                if dt >= seconds / 3:
                    break
            best = max(best, 2.0 * m * k * n * reps / dt / 1e9)
        return best
    finally:
        torch.set_num_threads(old)


def matmul_peak(dit_cfg, threads: int) -> dict[str, float]:
    """GEMM GFLOP/s on `threads` threads: a model-shaped one (one frame's tokens through the widest
    linear layer) and a large square one; `peak` is the best of them."""
    N, d = dit_cfg.tokens_per_frame, dit_cfg.d_model
    wide = max(6 * d, int(d * dit_cfg.mlp_ratio))
    model = matmul_gflops(N, d, wide, threads)
    square = matmul_gflops(1024, 1024, 1024, threads)
    return {"threads": threads, "model_shape": [N, d, wide], "model_gflops": model, "square_1024_gflops": square,
            "peak_gflops": max(model, square)}


# -- the naive loop ----------------------------------------------------------------------------------


class NaiveStepper:
    """The open-oasis loop on the same weights and backend: at every denoising step the whole window
    (its clean frames + the new noisy one) goes through the DiT as one block-causal chunk, no cache."""

    def __init__(self, world, seed: int = 0):
        self.world = world
        self.rng = np.random.Generator(np.random.PCG64(seed))
        d, p = world.dit_cfg, world.preset
        W = p.window
        frames, acts = world.opening_frames, [int(a) for a in world.opening_actions]
        first = max(0, len(frames) - W)
        z = world.backend.encode(frames[first:])  # (T',C,g,g)
        self.ctx = [self._noised(zi) for zi in z]
        # the model's action of frame i is the action taken on frame i-1
        self.ctx_acts = [acts[i - 1] if i > 0 else NULL_ACTION for i in range(first, len(frames))]
        self.empty_k = np.zeros((d.n_layers, 1, d.n_heads, 0, d.head_dim), np.float32)
        self.empty_p = np.zeros((1, 0), np.float32)
        self.empty_shift = np.zeros((1, 0, 2), np.float32)
        self.timings: dict[str, float] = {}

    def _noised(self, z: np.ndarray) -> np.ndarray:
        c = self.world.preset.ctx_noise
        return ((1 - c) * z + c * self.rng.standard_normal(z.shape, dtype=np.float32)).astype(np.float32)

    def step(self, action: str | int) -> np.ndarray:
        """Advance one frame -> uint8 (H,W,3)."""
        w, d = self.world, self.world.dit_cfg
        a = action_index(action)
        c = w.preset.ctx_noise
        t0 = time.perf_counter()
        ctx = np.stack(self.ctx)[None]  # (1,W,C,g,g)
        n = ctx.shape[1]
        acts = np.array([self.ctx_acts + [a]], np.int64)
        x = self.rng.standard_normal((1, 1, d.latent_channels, d.grid, d.grid), dtype=np.float32)
        ts = w.sampler.timesteps()
        for t, t_next in zip(ts[:-1], ts[1:]):
            sigma = np.array([[c] * n + [t]], np.float32)
            x0, _, _ = w.backend.dit(np.concatenate([ctx, x], 1), sigma, acts, self.empty_k, self.empty_k,
                                     self.empty_p, self.empty_p, self.empty_shift)
            noise = self.rng.standard_normal(x.shape, dtype=np.float32) if (w.sampler.stochastic and t_next > 0) else None
            x = np.asarray(w.sampler.step(x, x0[:, -1:], t, t_next, noise), np.float32)
        t1 = time.perf_counter()
        frame = w.backend.decode(x[0])[0]
        t2 = time.perf_counter()
        self.ctx = (self.ctx + [self._noised(x[0, 0])])[-w.preset.window:]
        self.ctx_acts = (self.ctx_acts + [a])[-w.preset.window:]
        self.timings = {"denoise_ms": (t1 - t0) * 1e3, "commit_ms": 0.0, "decode_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
        return frame


# -- timing ------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Medians over repeats of one timed loop."""

    fps: float
    p50_ms: float
    p99_ms: float
    denoise_ms: float
    commit_ms: float
    decode_ms: float
    frames: int
    repeats: int
    fps_repeats: list[float] = field(default_factory=list)


def _time_loop(step, get_timings, calls: int, frames_per_call: int, warmup_calls: int, repeats: int, actions: list) -> Timing:
    """Run step(actions[i]) warmup_calls times, then `repeats` timed loops of `calls` calls; only the call is timed."""
    for i in range(warmup_calls):
        step(actions[i % len(actions)])
    per = []
    for _ in range(repeats):
        lat = np.empty(calls)
        split = np.empty((calls, 3))
        for i in range(calls):
            a = actions[i % len(actions)]
            t0 = time.perf_counter()
            step(a)
            lat[i] = time.perf_counter() - t0
            tm = get_timings()
            split[i] = (tm["denoise_ms"], tm["commit_ms"], tm["decode_ms"])
        lat_ms = lat * 1e3 / frames_per_call
        split /= frames_per_call
        per.append({"fps": calls * frames_per_call / float(lat.sum()), "p50_ms": float(np.percentile(lat_ms, 50)),
                    "p99_ms": float(np.percentile(lat_ms, 99)), "denoise_ms": float(np.median(split[:, 0])),
                    "commit_ms": float(np.median(split[:, 1])), "decode_ms": float(np.median(split[:, 2]))})
    med = {k: statistics.median(r[k] for r in per) for k in per[0]}
    return Timing(**med, frames=calls * frames_per_call, repeats=repeats, fps_repeats=[r["fps"] for r in per])


def bench_cached(world, frames: int, warmup: int, repeats: int, seed: int = 0) -> Timing:
    """Time Session.step on `world` (its preset), after a warm-up that also fills the window."""
    session = world.new_session(seed=seed)
    k = world.preset.chunk
    names = list(_BENCH_ACTIONS)
    if k == 1:
        actions: list = names
    else:
        actions = [[names[(i * k + j) % len(names)] for j in range(k)] for i in range(len(names))]
    warm_calls = math.ceil(max(warmup, world.preset.window + 1) / k)  # steady state: the ring is full
    return _time_loop(session.step, lambda: session.timings, max(1, math.ceil(frames / k)), k, warm_calls, repeats, actions)


def bench_naive(world, frames: int, warmup: int, repeats: int, seed: int = 0) -> Timing:
    """Time the naive loop (NaiveStepper) on the same world and backend."""
    # the same fixed-shape graph treatment as the cached loop's (W+1 frames, no cache): a like-for-like ratio
    world.prepare_shapes([(world.preset.window + 1, 0)])
    st = NaiveStepper(world, seed=seed)
    warm = max(warmup, world.preset.window + 1)
    return _time_loop(st.step, lambda: st.timings, max(1, frames), 1, warm, repeats, list(_BENCH_ACTIONS))


# -- the command -------------------------------------------------------------------------------------


def _split_list(text: str | None, what: str, valid: tuple[str, ...] | None = None) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise ValueError(f"--{what} needs at least one value")
    if valid is not None:
        bad = [s for s in items if s not in valid]
        if bad:
            raise ValueError(f"--{what}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(valid)}")
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `worldsim bench`."""
    parser.add_argument("--world", type=Path, default=None, help="world directory (default: the shipped world)")
    parser.add_argument("--tiny", action="store_true", help="bench a random-weight tiny world (a smoke test; built in a temp dir)")
    parser.add_argument("--random", choices=("tiny", "small", "base"), default=None,
                        help="bench a random-weight world of this DiT preset (timing only; built in a temp dir)")
    parser.add_argument("--backends", "--backend", default="onnxruntime,torch", help="comma list of backends (default: onnxruntime,torch)")
    parser.add_argument("--presets", "--preset", default="fast,quality", help="comma list of runtime presets (default: fast,quality)")
    parser.add_argument("--window", type=int, default=None, help="override the presets' cache window (frames; capped by the world's)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="override any runtime preset field, e.g. block_rule=false or day_clock=false (repeatable)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per repeat (default: 200)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed frames first (at least window+1: the ring fills up; default 20), or with --sessions "
                             "untimed ticks (default window+2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed loops; the report gives medians over them (default: 3)")
    parser.add_argument("--naive-frames", type=int, default=None, help="timed frames per repeat of the naive loop (default: min(frames, 30))")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive (recompute-the-window) loop")
    parser.add_argument("--threads", default=None, help="comma list of intra-op thread counts to compare, e.g. 1,2 (default: the backend's)")
    parser.add_argument("--spinning", default=None, help="onnxruntime thread spinning to compare: off, on or off,on (default: the backend's)")
    parser.add_argument("--sessions", default=None,
                        help="comma list of player counts, e.g. 1,2,4,8: measure N sessions stepped together (one network call "
                             "per denoising step) instead of the per-frame table")
    parser.add_argument("--ticks", type=int, default=20, help="with --sessions: timed ticks per repeat (default: 20)")
    parser.add_argument("--no-sequential", action="store_true", help="with --sessions: skip the one-after-another baseline")
    parser.add_argument("--seed", type=int, default=0, help="session seed")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")


def _resolve_world(args, tmp: Path) -> Path | None:
    from engine.world import default_world_dir

    random_preset = "tiny" if args.tiny else args.random
    if random_preset and args.world:
        raise ValueError("give either --world or --tiny/--random, not both")
    if random_preset:
        from engine.testing import make_random_world

        return make_random_world(tmp / f"{random_preset}-world", dit=random_preset)
    if args.world is not None:
        if not (args.world / "world.json").is_file() and not (args.world / "manifest.json").is_file():
            raise ValueError(f"--world {args.world}: not a world directory or bundle (no world.json or manifest.json there)")
        return args.world
    path = default_world_dir()
    if not (path / "world.json").is_file():
        print(f"error: the shipped world is not installed yet ({path} has no world.json: the model may still be training).\n"
              "Bench a world directory with --world PATH, or a random-weight world with --tiny (or --random small).", file=sys.stderr)
        return None
    return path


def _load(path: Path, backend: str, preset: str, threads: int | None, spinning: bool | None, window: int | None = None,
          options: dict[str, Any] | None = None):
    from engine.backends import OrtBackend
    from engine.world import World

    over = {**(options or {}), **({"window": window} if window else {})}
    world = World.load(path, backend=backend, preset=preset, threads=threads, **over)
    if backend == "onnxruntime" and spinning is not None and spinning != world.backend.spinning:
        world.backend = OrtBackend(world.backend.graph_dir, threads=threads, spinning=spinning, precision=world.backend.precision)
    return world


def _fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['backend']:<12} {r['preset']:<14} {r['threads']!s:>3} {r['spinning']:<4}  unavailable: {r['error']}"
    c = r["cached"]
    naive = r.get("naive")
    nv = f"{naive['fps']:8.2f} {r['speedup_vs_naive']:6.1f}x" if naive else f"{'-':>8} {'-':>7}"
    label = f"{r['preset']}/w{r['preset_config']['window']}"  # the window decides the naive loop's work
    if r.get("precision", "fp32") != "fp32":  # what the backend runs (torch: fp32 whatever the preset asks)
        label += f"/{r['precision']}"
    return (f"{r['backend']:<12} {label:<14} {r['threads']!s:>3} {r['spinning']:<4} {c['fps']:7.1f} {c['p50_ms']:7.2f} {c['p99_ms']:7.2f}"
            f" {c['denoise_ms']:7.2f} {c['commit_ms']:7.2f} {c['decode_ms']:7.2f} {r['gflop_per_frame']:8.3f} {r['gflops']:7.1f}"
            f" {100 * r['gflops'] / r['peak_gflops']:5.1f}% {nv}")


_HEADER = (f"{'backend':<12} {'preset/win':<14} {'thr':>3} {'spin':<4} {'fps':>7} {'p50ms':>7} {'p99ms':>7} {'denoise':>7} {'commit':>7}"
           f" {'decode':>7} {'GFLOP/f':>8} {'GFLOP/s':>7} {'%peak':>6} {'naivefps':>8} {'speedup':>7}")


def _configs(backends: list[str], presets: list[str], threads_list: list, spin_list: list):
    """Every (backend, preset, threads, spinning) to bench; spinning only varies on onnxruntime."""
    for backend in backends:
        for preset in presets:
            for threads in threads_list:
                for spinning in (spin_list if backend == "onnxruntime" else [None]):
                    yield backend, preset, threads, spinning


def _bench_frames(world, row: dict[str, Any], args: argparse.Namespace, warmup: int, naive_frames: int, peaks: dict[int, dict]) -> None:
    """The per-frame row: one session's fps/latency/split, GFLOP/s against the GEMM peak, the naive loop."""
    used_threads = row["threads"]
    for t in range(1, used_threads + 1):
        if t not in peaks:
            peaks[t] = matmul_peak(world.dit_cfg, t)
    # a GEMM on t threads can always use fewer: under machine load the t-thread run can
    # measure lower than a 1-thread one, so the peak is the best over 1..t threads
    peak = max(peaks[t]["peak_gflops"] for t in range(1, used_threads + 1))
    cached = bench_cached(world, args.frames, warmup, args.repeats, seed=args.seed)
    gf = frame_gflops(world)
    row.update(preset_config=asdict(world.preset), precision=world.precision, cached=asdict(cached), gflop_per_frame=gf["total"],
               gflop_split=gf, gflops=gf["total"] * cached.fps, peak_gflops=peak)
    if not args.no_naive:
        naive = bench_naive(world, naive_frames, min(warmup, 3), args.repeats, seed=args.seed)
        ngf = frame_gflops(world, naive=True)
        row.update(naive=asdict(naive), naive_gflop_per_frame=ngf["total"], naive_gflops=ngf["total"] * naive.fps,
                   speedup_vs_naive=cached.fps / naive.fps)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table (per frame, or per player count with --sessions); -> exit code."""
    import torch

    from engine.backends import BACKENDS, BackendUnavailable
    from engine.bench_sessions import HEADER as SESSIONS_HEADER, bench_sessions, format_row as format_sessions_row, parse_counts
    from engine.world import RUNTIME_PRESETS

    try:
        backends = _split_list(args.backends, "backends", BACKENDS)
        presets = _split_list(args.presets, "presets", tuple(RUNTIME_PRESETS))
        threads_list: list[int | None] = [None]
        if args.threads:
            items = _split_list(args.threads, "threads")
            if not all(t.isdigit() and int(t) >= 1 for t in items):
                raise ValueError(f"--threads takes whole numbers >= 1 (e.g. 1,2), got {args.threads!r}")
            threads_list = [int(t) for t in items]
        spin_list: list[bool | None] = ([{"off": False, "on": True}[s] for s in _split_list(args.spinning, "spinning", ("off", "on"))]
                                        if args.spinning else [None])
        counts = parse_counts(args.sessions) if args.sessions is not None else None
        for n, what in ((args.frames, "frames"), (args.repeats, "repeats"), (args.ticks, "ticks")):
            if n < 1:
                raise ValueError(f"--{what} must be >= 1, got {n}")
        if args.naive_frames is not None and args.naive_frames < 1:
            raise ValueError(f"--naive-frames must be >= 1, got {args.naive_frames}")
        if args.warmup is not None and args.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
        from engine.world import parse_preset_options

        options = parse_preset_options(getattr(args, "option", None) or [])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    naive_frames = args.naive_frames if args.naive_frames is not None else min(args.frames, 30)
    warmup = args.warmup if args.warmup is not None else 20
    default_torch_threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory(prefix="worldsim-bench-") as tmp:
        try:
            path = _resolve_world(args, Path(tmp))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if path is None:
            return 2
        t_start = time.time()
        load_before = os.getloadavg()
        rows: list[dict[str, Any]] = []
        peaks: dict[int, dict] = {}
        dit_cfg = None
        print(f"world: {path}   cpus: {os.cpu_count()}   load average: {load_before[0]:.2f} (other work on the machine skews timings)")
        if counts is None:
            print(_HEADER)
        for backend, preset, threads, spinning in _configs(backends, presets, threads_list, spin_list):
            row: dict[str, Any] = {"backend": backend, "preset": preset, "threads": threads,
                                   "spinning": "-" if spinning is None and backend != "onnxruntime" else ""}
            try:
                world = _load(path, backend, preset, threads if threads or backend != "torch" else default_torch_threads, spinning,
                              args.window, options)
            except (BackendUnavailable, ImportError) as e:
                row.update(spinning="-", error=str(e))
                rows.append(row)
                print(_fmt_row(row), flush=True)
                continue
            except (OSError, ValueError) as e:
                print(f"error: cannot load {path} on {backend}: {e}", file=sys.stderr)
                return 1
            dit_cfg = world.dit_cfg
            row["threads"] = int(getattr(world.backend, "threads", threads or default_torch_threads))
            if backend == "onnxruntime":
                row["spinning"] = "on" if world.backend.spinning else "off"
            if counts is None:
                _bench_frames(world, row, args, warmup, naive_frames, peaks)
                rows.append(row)
                print(_fmt_row(row), flush=True)
                continue
            p = world.preset
            print(f"\n{backend} ({row['threads']} thread{'' if row['threads'] == 1 else 's'}{', spinning ' + row['spinning'] if backend == 'onnxruntime' else ''})  "
                  f"preset {p.name} (steps {p.steps}, window {p.window}, chunk {p.chunk})")
            print(SESSIONS_HEADER)
            row.update(preset_config=asdict(p), sessions=[])
            for n in counts:  # one count at a time, so that each line prints as soon as it is measured
                r = bench_sessions(world, [n], ticks=args.ticks, warmup=args.warmup, repeats=args.repeats,
                                   sequential=not args.no_sequential, seed=args.seed)[0]
                row["sessions"].append(r)
                print(format_sessions_row(r), flush=True)
            rows.append(row)
        torch.set_num_threads(default_torch_threads)
        load_after = os.getloadavg()
        for t, pk in sorted(peaks.items()):
            print(f"float32 GEMM on {t} thread(s): model-shaped {pk['model_shape']} {pk['model_gflops']:.1f} GFLOP/s, "
                  f"1024^3 {pk['square_1024_gflops']:.1f} GFLOP/s")
        if counts is None:
            print("latency = time per frame (a chunk's time / its frames); split = medians from Session.timings; GFLOP counted "
                  "with torch's FLOP counter (matmuls, convs, attention); naive = recompute the whole window at every denoising step (no cache)")
        else:
            print("latency = wall time of one tick (every player gets its next frame); batched = one network call per denoising "
                  "step for all players; seq = the same sessions stepped one after another")
        report = {"world": str(path) if not (args.tiny or args.random) else f"random-{'tiny' if args.tiny else args.random}",
                  "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                  "seconds": time.time() - t_start, "repeats": args.repeats, "results": rows}
        if counts is None:
            report.update(frames=args.frames, warmup=warmup, naive_frames=naive_frames, matmul={str(t): pk for t, pk in peaks.items()},
                          flops_method="torch.utils.flop_counter on the networks at steady-state shapes: matmuls, linear, conv, "
                                       "attention; 2 FLOPs per MAC")
        else:
            report.update(session_counts=counts, ticks=args.ticks, sequential=not args.no_sequential)
        if dit_cfg is not None:
            from worldsim.config import config_to_dict

            report["dit_config"] = config_to_dict(dit_cfg)
        if args.json:
            from worldsim.io import atomic_write_json

            atomic_write_json(args.json, report)
            print(f"wrote {args.json}")
    return 0 if any("cached" in r or "sessions" in r for r in rows) else 1
