"""Check an exported backend against the torch reference over a multi-frame rollout.

The reference world (torch backend) plays a rollout while every network call (encode, DiT step, commit,
decode) is recorded; each recorded call is replayed on the candidate backend with the same inputs, and the
max difference of every output is compared with a tolerance that depends on the graph's precision. The
candidate then plays the same rollout on its own (its errors compound), and the frames are compared too.
A failed check raises ParityError listing the max difference per output; it is never a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

# max |candidate - reference| allowed per output, relative to max(1, max |reference|) for float outputs and
# in 8-bit levels for frames. fp32: rounding only. int8-dynamic: measured ~2% of the output range on the
# small preset; 8% still fails a broken quantization (wrong scales give errors of the order of the range).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"latents": 1e-3, "x0": 1e-3, "k": 1e-3, "v": 1e-3, "frames": 2},
    "fp16": {"latents": 2e-2, "x0": 3e-2, "k": 3e-2, "v": 3e-2, "frames": 6},
    "int8-dynamic": {"latents": 8e-2, "x0": 8e-2, "k": 8e-2, "v": 8e-2, "frames": 24},
}
# free-running rollout frames (errors compound): checked only for exact-precision graphs
ROLLOUT_FP32 = {"max_levels": 2, "min_equal": 0.99}

_ACTIONS = ("move_left", "do", "noop", "move_up", "place_stone", "move_right", "move_down", "do", "move_left", "sleep")


class ParityError(ValueError):
    """An exported graph does not reproduce the torch reference within tolerance."""


@dataclass
class ParityReport:
    """Max differences per output (graph/output), their tolerances, and the free-rollout comparison."""

    frames: int
    calls: dict[str, int]
    max_diff: dict[str, float]
    tolerance: dict[str, float]
    rollout: dict[str, float]
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every output is within tolerance."""
        return not self.failed

    def lines(self) -> list[str]:
        """Human-readable log lines, one per output."""
        out = [f"parity over a {self.frames}-frame rollout ({', '.join(f'{k}: {v} calls' for k, v in self.calls.items())}):"]
        for key, d in self.max_diff.items():
            unit = " levels" if key.endswith("frames") else " (relative to max(1,|ref|))"
            flag = "FAIL" if key in self.failed else "ok"
            out.append(f"  {key:<16} max diff {d:.3g}{unit}, tolerance {self.tolerance[key]:.3g}  {flag}")
        r = self.rollout
        out.append(f"  free rollout: {100 * r['equal']:.2f}% pixels equal, max {r['max_levels']:.0f} levels, mean {r['mean_levels']:.3f}, "
                   f"PSNR {r['psnr_db']:.1f} dB  {'FAIL' if 'rollout/frames' in self.failed else 'ok'}")
        return out

    def failures(self) -> str:
        """One line naming every failed output with its max difference and tolerance."""
        r = self.rollout
        return "; ".join(f"{k} max diff {self.max_diff[k]:.3g} > tolerance {self.tolerance[k]:.3g}" if k in self.max_diff else
                         f"{k}: free rollout max {r['max_levels']:.0f} levels, {100 * r['equal']:.2f}% pixels equal" for k in self.failed)

    def to_json(self) -> dict[str, Any]:
        """The manifest's `parity` entry."""
        return {"frames": self.frames, "calls": self.calls, "max_diff": self.max_diff, "tolerance": self.tolerance,
                "rollout": self.rollout, "ok": self.ok}


def rollout_actions(n: int) -> list[str]:
    """A fixed, varied action sequence."""
    return [_ACTIONS[i % len(_ACTIONS)] for i in range(n)]


def record_calls(backend) -> tuple[dict[str, list], Callable[[], None]]:
    """Wrap a backend's encode/dit/decode to record (inputs, outputs) of every call; -> (calls, undo)."""
    calls: dict[str, list] = {"encoder": [], "dit": [], "decoder": []}
    originals = {name: getattr(backend, name) for name in ("encode", "dit", "decode")}

    def wrap(graph: str, fn):
        def call(*args):
            out = fn(*args)
            calls[graph].append(([np.array(a, copy=True) for a in args], [np.array(o, copy=True) for o in (out if isinstance(out, tuple) else (out,))]))
            return out
        return call

    backend.encode = wrap("encoder", originals["encode"])
    backend.dit = wrap("dit", originals["dit"])
    backend.decode = wrap("decoder", originals["decode"])

    def undo():
        for name in originals:
            backend.__dict__.pop(name, None)  # back to the class methods
    return calls, undo


def play(world, frames: int, seed: int = 0, actions: Sequence[str] | None = None) -> np.ndarray:
    """Roll a new session forward; -> uint8 (frames,H,W,3)."""
    s = world.new_session(seed=seed)
    return np.stack([s.step(a) for a in (actions or rollout_actions(frames))[:frames]])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def check_parity(reference_world, candidate_world, precision: dict[str, str], frames: int = 10, seed: int = 0,
                 raise_on_fail: bool = True) -> ParityReport:
    """Compare candidate_world's backend with reference_world's (torch) over a `frames`-frame rollout.

    Both worlds must hold the same weights and preset. precision: graph name -> "fp32" | "fp16" | "int8-dynamic".
    """
    if frames < 2:
        raise ValueError(f"parity needs a multi-frame rollout (>= 2 frames), got {frames}")
    actions = rollout_actions(frames)
    calls, undo = record_calls(reference_world.backend)
    try:
        ref_frames = play(reference_world, frames, seed, actions)
    finally:
        undo()
    cand = candidate_world.backend
    run = {"encoder": cand.encode, "dit": cand.dit, "decoder": cand.decode}
    names = {"encoder": ("latents",), "dit": ("x0", "k", "v"), "decoder": ("frames",)}
    max_diff: dict[str, float] = {}
    tolerance: dict[str, float] = {}
    failed: list[str] = []
    for graph, recorded in calls.items():
        tol = TOLERANCES[precision.get(graph, "fp32")]
        worst = {n: 0.0 for n in names[graph]}
        for args, ref_outs in recorded:
            outs = run[graph](*args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            for n, a, b in zip(names[graph], outs, ref_outs):
                if a.shape != b.shape:
                    raise ParityError(f"{graph}/{n}: candidate output shape {a.shape} differs from the reference {b.shape}")
                if n == "frames":
                    d = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
                else:
                    if not np.isfinite(a).all():
                        d = float("inf")
                    else:
                        d = float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
                worst[n] = max(worst[n], d)
        for n, d in worst.items():
            key = f"{graph}/{n}"
            max_diff[key], tolerance[key] = d, float(tol[n])
            if not d <= tol[n]:
                failed.append(key)
    cand_frames = play(candidate_world, frames, seed, actions)
    diff = np.abs(cand_frames.astype(np.int16) - ref_frames.astype(np.int16))
    rollout = {"equal": float((diff == 0).mean()), "max_levels": float(diff.max()), "mean_levels": float(diff.mean()),
               "psnr_db": min(_psnr(cand_frames, ref_frames), 99.0)}
    exact = all(precision.get(g, "fp32") == "fp32" for g in names)
    if exact and (rollout["max_levels"] > ROLLOUT_FP32["max_levels"] or rollout["equal"] < ROLLOUT_FP32["min_equal"]):
        failed.append("rollout/frames")
    report = ParityReport(frames, {g: len(c) for g, c in calls.items()}, max_diff, tolerance, rollout, failed)
    if failed and raise_on_fail:
        raise ParityError(f"exported graphs do not match the torch reference: {report.failures()}\n" + "\n".join(report.lines()))
    return report
