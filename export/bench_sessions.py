"""Many players on one machine: total and per-player frames/s and tick latency for N sessions stepped
together (one network call per denoising step, the batch dimension is sessions) against the same N
sessions stepped one after another.

    python -m export.bench_sessions --tiny --sessions 1,2,4,8
    python -m export.bench_sessions --random small --sessions 1,2,4,8 --threads 1

`bench_sessions()` is the function `worldsim bench --sessions` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

_ACTIONS = ("move_left", "move_left", "move_up", "do", "move_right", "noop", "move_down", "do", "place_stone", "move_up")


def _time_ticks(tick, n_sessions: int, ticks: int, warmup: int, repeats: int) -> dict[str, float]:
    """Run tick(i) `warmup` times, then `repeats` loops of `ticks` timed ticks; medians over loops."""
    for i in range(warmup):
        tick(i)
    loops = []
    for _ in range(repeats):
        lat = np.empty(ticks)
        for i in range(ticks):
            t0 = time.perf_counter()
            tick(i)
            lat[i] = time.perf_counter() - t0
        loops.append({"total_fps": n_sessions * ticks / float(lat.sum()), "per_player_fps": ticks / float(lat.sum()),
                      "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3)})
    return {k: statistics.median(r[k] for r in loops) for k in loops[0]}


def bench_sessions(world, counts: Sequence[int] = (1, 2, 4, 8), ticks: int = 20, warmup: int | None = None, repeats: int = 3,
                   sequential: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """For each N in counts: N sessions of `world` stepped together (engine.batch) and, if asked, one after
    another. Latency = wall time of one tick (every player gets one frame), i.e. action-to-frame latency."""
    from engine.batch import SessionBatch

    warm = warmup if warmup is not None else world.preset.window + 2  # steady state: the ring is full
    rows = []
    for n in counts:
        if n < 1:
            raise ValueError(f"session counts must be >= 1, got {n}")
        row: dict[str, Any] = {"sessions": n}

        def actions(i: int, n: int = n) -> list[str]:
            return [_ACTIONS[(i + j) % len(_ACTIONS)] for j in range(n)]

        batch = SessionBatch([world.new_session(seed=seed + i) for i in range(n)])
        row["batched"] = _time_ticks(lambda i, batch=batch: batch.step(actions(i)), n, ticks, warm, repeats)
        if sequential:
            alone = [world.new_session(seed=seed + i) for i in range(n)]

            def tick(i: int, alone: list = alone) -> None:
                for s, a in zip(alone, actions(i, len(alone))):
                    s.step(a)

            row["sequential"] = _time_ticks(tick, n, ticks, warm, repeats)
            row["speedup"] = row["batched"]["total_fps"] / row["sequential"]["total_fps"]
        rows.append(row)
    return rows


HEADER = (f"{'sessions':>8} {'total fps':>10} {'fps/player':>10} {'p50 ms':>8} {'p99 ms':>8}   "
          f"{'seq total':>9} {'seq p50':>8} {'batched/seq':>11}")


def format_row(r: dict[str, Any]) -> str:
    """One table line for a bench_sessions row."""
    b = r["batched"]
    line = f"{r['sessions']:>8} {b['total_fps']:>10.1f} {b['per_player_fps']:>10.1f} {b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f}"
    if "sequential" in r:
        s = r["sequential"]
        line += f"   {s['total_fps']:>9.1f} {s['p50_ms']:>8.1f} {r['speedup']:>10.2f}x"
    return line


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sessions must be a comma list of integers like 1,2,4,8, got {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"--sessions needs counts >= 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """CLI: print total and per-player fps and latency for N = --sessions."""
    p = argparse.ArgumentParser(prog="python -m export.bench_sessions", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--world", type=Path, help="a world directory or an exported bundle")
    g.add_argument("--tiny", action="store_true", help="a random-weight tiny world (built in a temp dir)")
    g.add_argument("--random", choices=("tiny", "small", "base"), help="a random-weight world of this DiT preset")
    p.add_argument("--sessions", default="1,2,4,8", help="comma list of session counts (default 1,2,4,8)")
    p.add_argument("--backend", default="onnxruntime", help="backend (default onnxruntime)")
    p.add_argument("--preset", default="fast", help="runtime preset (default fast)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the backend")
    p.add_argument("--ticks", type=int, default=20, help="timed ticks per repeat (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed loops; medians are reported (default 3)")
    p.add_argument("--no-sequential", action="store_true", help="skip the one-after-another baseline")
    p.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    try:
        counts = _counts(args.sessions)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from engine.world import World

    with tempfile.TemporaryDirectory(prefix="worldsim-bench-sessions-") as tmp:
        path = args.world
        if path is None:
            from engine.testing import make_random_world

            preset = "tiny" if args.tiny or not args.random else args.random
            path = make_random_world(Path(tmp) / preset, dit=preset)
        try:
            world = World.load(path, backend=args.backend, preset=args.preset, threads=args.threads)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"error: cannot load {path}: {e}", file=sys.stderr)
            return 1
        print(f"world: {path.name}  backend: {world.backend_name} ({getattr(world.backend, 'threads', '?')} threads)  preset: "
              f"{world.preset.name} (steps {world.preset.steps}, window {world.preset.window})  cpus: {os.cpu_count()}  "
              f"load average: {os.getloadavg()[0]:.2f}")
        print(HEADER)
        rows = []
        for n in counts:
            row = bench_sessions(world, [n], ticks=args.ticks, repeats=args.repeats, sequential=not args.no_sequential)[0]
            rows.append(row)
            print(format_row(row), flush=True)
        print("latency = wall time of one tick (every player gets its next frame); seq = the same sessions stepped one after another")
        if args.json:
            from worldsim.io import atomic_write_json

            atomic_write_json(args.json, {"world": str(path), "backend": world.backend_name, "preset": world.preset.name, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
