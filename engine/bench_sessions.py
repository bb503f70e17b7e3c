"""Many players on one machine: total and per-player frames/s and tick latency for N sessions of one world
stepped together (engine.batch.SessionBatch: one network call per denoising step, one per commit, one per
decode; the batch dimension is sessions) against the same N sessions stepped one after another.

    worldsim bench --random small --sessions 1,2,4,8 --threads 1
    worldsim bench --tiny --sessions 1,2,4,8 --json build/sessions.json

`bench_sessions()` measures; `HEADER` and `format_row()` print its rows (`worldsim bench --sessions`,
`python -m export.bench_sessions` and demos/gpu_path.py use them).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

from engine.bench import _BENCH_ACTIONS


def parse_counts(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8]; ValueError naming --sessions for anything but a list of integers >= 1."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sessions must be a comma list of integers like 1,2,4,8, got {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"--sessions needs counts >= 1, got {text!r}")
    return counts


def _frames(out: Any) -> int:
    """Frames in what a tick returned: a uint8 (H,W,3) frame, a (k,H,W,3) chunk, or a list of those."""
    if isinstance(out, np.ndarray):
        return 1 if out.ndim == 3 else int(out.shape[0])
    return sum(_frames(o) for o in out)


def _time_ticks(tick: Callable[[int], Any], n_sessions: int, ticks: int, warmup: int, repeats: int) -> dict[str, float]:
    """Run tick(i) `warmup` times, then `repeats` loops of `ticks` timed ticks; medians over loops.

    fps counts the frames the ticks returned (not the frames they should have returned)."""
    for i in range(warmup):
        tick(i)
    loops = []
    for _ in range(repeats):
        lat = np.empty(ticks)
        frames = 0
        for i in range(ticks):
            t0 = time.perf_counter()
            out = tick(i)
            lat[i] = time.perf_counter() - t0
            frames += _frames(out)
        total = float(lat.sum())
        loops.append({"total_fps": frames / total, "per_player_fps": frames / n_sessions / total,
                      "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                      "frames_per_tick": frames / ticks})
    return {k: statistics.median(r[k] for r in loops) for k in loops[0]}


def bench_sessions(world, counts: Sequence[int] = (1, 2, 4, 8), ticks: int = 20, warmup: int | None = None, repeats: int = 3,
                   sequential: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """For each N in counts: N sessions of `world` stepped together (engine.batch) and, if asked, one after
    another. Latency = wall time of one tick (every player gets one frame), i.e. action-to-frame latency.
    warmup: untimed ticks first (default window+2: steady state, the ring is full)."""
    from engine.batch import SessionBatch

    if ticks < 1 or repeats < 1:
        raise ValueError(f"ticks and repeats must be >= 1, got ticks={ticks}, repeats={repeats}")
    warm = warmup if warmup is not None else world.preset.window + 2
    rows = []
    for n in counts:
        if n < 1:
            raise ValueError(f"session counts must be >= 1, got {n}")
        row: dict[str, Any] = {"sessions": n, "ticks": ticks, "warmup_ticks": warm, "repeats": repeats}

        def actions(i: int, n: int = n) -> list[str]:
            return [_BENCH_ACTIONS[(i + j) % len(_BENCH_ACTIONS)] for j in range(n)]

        batch = SessionBatch([world.new_session(seed=seed + i) for i in range(n)])
        row["batched"] = _time_ticks(lambda i, batch=batch: batch.step(actions(i)), n, ticks, warm, repeats)
        if sequential:
            alone = [world.new_session(seed=seed + i) for i in range(n)]

            def tick(i: int, alone: list = alone) -> list[np.ndarray]:
                return [s.step(a) for s, a in zip(alone, actions(i, len(alone)))]

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
