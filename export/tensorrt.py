"""TensorRT engines for a bundle, built with the TensorRT Python API.

- Strongly typed networks: the precision comes from the graph, not from builder flags. The fp16 graphs are
  exported from torch under fp16 autocast (matmuls in fp16, norms and softmax inputs as torch keeps them),
  with float32 inputs/outputs so the engine, onnxruntime and the host code share one interface.
  TensorRT 10: STRONGLY_TYPED is a network creation flag. TensorRT 11: networks are always strongly typed
  (the flag is deprecated) and the precision builder flags (FP16, INT8, ...) are gone; no code here sets them.
- Static shapes for the real-time path: one engine per (players, chunk, window) from one ONNX graph with
  dynamic axes, through an optimization profile with min = opt = max.
- A persisted timing cache per (TensorRT version, GPU), and an engine cache keyed by
  `engine.tensorrt_backend.engine_cache_key` (ONNX hash + TensorRT version + GPU + precision + shapes).

tensorrt is imported inside the functions: this module imports (and its pure parts are tested) without it.

    python -m export.tensorrt BUNDLE     # build a bundle's engines for this machine into the local engine cache
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from engine.tensorrt_backend import (ENGINE_PRECISIONS, decoder_shapes, device_identity, dit_shapes, engine_cache_dir, engine_cache_key,
                                     trt_major)

TRT_GRAPHS = {"dit": "dit-{precision}.onnx", "decoder": "decoder-{precision}.onnx"}


def _fp8_unsupported_reason() -> str:
    import torch

    cc = torch.cuda.get_device_capability()
    if cc < (8, 9):
        return f"this GPU (sm {cc[0]}.{cc[1]}) has no fp8 tensor cores (fp8 needs sm 8.9+: Ada, Hopper, Blackwell)"
    return ("fp8 in a strongly typed network needs FP8 Q/DQ nodes with calibrated scales in the ONNX graph, which this version "
            "does not produce yet (NVIDIA TensorRT Model Optimizer can insert them); use --precision fp16")


# -- graphs ---------------------------------------------------------------------------------------------


def export_trt_onnx(ae, dit, out_dir: str | os.PathLike, precision: str = "fp16") -> dict[str, Path]:
    """Export the DiT and decoder graphs for TensorRT: precision carried by the graph, float32 I/O.

    The decoder ends at float pixels (B,H,W,3), already +0.5 and clamped to [0,255]; the backend truncates
    to uint8 on the device (TensorRT restricts uint8 tensors), which equals the ONNX graph's Cast. A lit
    autoencoder (AEConfig.lit) gets no decoder graph: its night noise is drawn on the host from each frame's
    latents (worldsim.light.decoder_noise), so its frames are decoded by the backend's onnxruntime graphs.
    """
    import warnings

    import torch
    from torch import nn

    from engine.graphs import OPSET, graph_specs

    if precision not in ("fp16", "fp32"):
        raise ValueError(f"TensorRT graph precision must be fp16 or fp32 here, got {precision!r}")
    half = precision == "fp16"

    class DiT(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift):
            with torch.autocast("cpu", dtype=torch.float16, enabled=half):
                out = self.m(x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift)
            return tuple(o.float() for o in out)

    class Decoder(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            with torch.autocast("cpu", dtype=torch.float16, enabled=half):
                x = self.m.decode(z)
            return (x.float() * 255.0 + 0.5).clamp(0, 255).permute(0, 2, 3, 1)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(ae, dit)
    N = dit.cfg.tokens_per_frame
    sizes = {"B": 1, "k": 2, "P": 3, "PN": 3 * N, "kN": 2 * N}

    def example(s):
        shape = [sizes[a] if isinstance(a, str) else a for a in s.shape]
        return torch.zeros(shape, dtype=torch.int64) if s.dtype == "int64" else torch.randn(shape)

    paths = {}
    S = ae.cfg.image_size
    for name, module, ins, outs in (
        ("dit", DiT(dit), specs["dit"][0], [(s.name, s.shape) for s in specs["dit"][1]]),
        ("decoder", Decoder(ae), specs["decoder"][0], [("pixels", ("B", S, S, 3))]),
    ):
        if name == "decoder" and ae.cfg.lit:
            continue
        path = out_dir / TRT_GRAPHS[name].format(precision=precision)
        tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"
        dyn = {s.name: {i: a for i, a in enumerate(s.shape) if isinstance(a, str)} for s in ins}
        dyn.update({n: {i: a for i, a in enumerate(shape) if isinstance(a, str)} for n, shape in outs})
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(example(s) for s in ins), str(tmp), input_names=[s.name for s in ins],
                              output_names=[n for n, _ in outs], dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
        paths[name] = path
    return paths


# -- building ---------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def timing_cache_path(cache_dir: Path, ident: dict[str, str]) -> Path:
    """The persisted timing cache of one (TensorRT version, GPU)."""
    return cache_dir / f"timing-{_safe(ident['trt'])}-{_safe(ident['gpu'])}.cache"


def build_engine(onnx_path: str | os.PathLike, shapes: dict[str, tuple[int, ...]], timing_cache: Path | None = None,
                 workspace_gib: float = 4.0, log: Callable[[str], None] = print) -> bytes:
    """Build a serialized engine (strongly typed; static shapes via a min=opt=max profile); -> plan bytes.
    Reads and updates the timing cache file when given."""
    import tensorrt as trt

    from worldsim.io import atomic_write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if trt_major(trt.__version__) < 11:  # TensorRT 11: always strongly typed (the flag is deprecated and ignored)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # no precision flags on purpose: a strongly typed network takes its precision from the graph
    profile = builder.create_optimization_profile()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(shapes):
        raise ValueError(f"{onnx_path}: engine shapes given for {sorted(shapes)}, the graph's inputs are {sorted(names)}")
    for name in names:
        shape = tuple(int(d) for d in shapes[name])
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building TensorRT engine for {Path(onnx_path).name} {dict((n, tuple(shapes[n])) for n in names)}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def build_cached(onnx_path: Path, onnx_sha256: str, shapes: dict[str, tuple[int, ...]], precision: str,
                 cache_dir: Path | None = None, log: Callable[[str], None] = print) -> tuple[str, Path]:
    """The engine for (graph, shapes, precision) on this machine: from the engine cache, or built into it; -> (key, plan path)."""
    from worldsim.io import atomic_write_bytes

    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(ENGINE_PRECISIONS)}")
    if precision == "fp8":
        raise NotImplementedError(_fp8_unsupported_reason())
    ident = device_identity()
    cache_dir = cache_dir or engine_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = engine_cache_key(onnx_sha256, ident["trt"], ident["gpu"], precision, shapes)
    plan_path = cache_dir / f"{key}.plan"
    if plan_path.is_file():
        log(f"engine cache hit {plan_path.name} ({onnx_path.name})")
        return key, plan_path
    plan = build_engine(onnx_path, shapes, timing_cache_path(cache_dir, ident), log=log)
    atomic_write_bytes(plan_path, plan)
    return key, plan_path


def engine_plan(dit_cfg, windows: list[int], sessions: tuple[int, ...], chunk: int = 1, decoder: bool = True) -> list[dict[str, Any]]:
    """The static engines a bundle holds: a DiT engine per (players, window) and (``decoder``) a decoder per players."""
    out = []
    for s in sorted(set(sessions)):
        for w in sorted(set(windows)):
            out.append({"graph": "dit", "sessions": s, "chunk": chunk, "window": w, "shapes": dit_shapes(dit_cfg, s, chunk, w)})
        if decoder:
            out.append({"graph": "decoder", "sessions": s, "frames": s * chunk, "shapes": decoder_shapes(dit_cfg, s * chunk)})
    return out


def add_tensorrt_to_bundle(root: Path, manifest: dict, ae, dit, reference_world, precision: str = "fp16",
                           sessions: tuple[int, ...] = (1,), parity_frames: int = 10, log: Callable[[str], None] = print) -> None:
    """Export the TensorRT graphs into root/tensorrt, build (or reuse) their engines, check them against torch,
    and describe them in manifest["tensorrt"]. Raises ParityError when the engines do not match the reference."""
    import copy

    from engine.bundle import sha256_file
    from engine.tensorrt_backend import TensorRTBackend
    from engine.world import RUNTIME_PRESETS
    from export.parity import ParityError, check_parity

    if precision == "fp8":
        raise NotImplementedError(_fp8_unsupported_reason())
    trt_dir = root / "tensorrt"
    graphs = export_trt_onnx(ae, dit, trt_dir, precision)
    hashes = {g: sha256_file(p) for g, p in graphs.items()}
    max_window = int(manifest["world"]["max_window"])
    windows = [min(p.window, max_window) for p in RUNTIME_PRESETS.values()]
    chunks = {p.chunk for p in RUNTIME_PRESETS.values()}
    if chunks != {1}:
        raise ValueError(f"the TensorRT real-time path is built for chunk 1; presets use {sorted(chunks)}")
    ident = device_identity()
    entries, engines = [], {}
    for e in engine_plan(dit.cfg, windows, sessions, decoder="decoder" in graphs):
        key, plan = build_cached(graphs[e["graph"]], hashes[e["graph"]], e["shapes"], precision, log=log)
        dst = trt_dir / f"{e['graph']}-{key}.plan"
        shutil.copy(plan, dst)
        entry = {**e, "shapes": {n: list(s) for n, s in e["shapes"].items()}, "precision": precision, "key": key,
                 "key_fields": {"onnx_sha256": hashes[e["graph"]], **ident, "precision": precision},
                 "onnx": {"file": graphs[e["graph"]].relative_to(root).as_posix(), "sha256": hashes[e["graph"]]},
                 "plan": {"file": dst.relative_to(root).as_posix(), "sha256": sha256_file(dst)}}
        entries.append(entry)
        tag = ("dit", e["sessions"], e["chunk"], e["window"]) if e["graph"] == "dit" else ("decoder", e["frames"])
        engines[tag] = dst.read_bytes()
    tc = timing_cache_path(engine_cache_dir(), ident)
    tc_entry = None
    if tc.is_file():
        shutil.copy(tc, trt_dir / "timing.cache")
        tc_entry = {"file": "tensorrt/timing.cache", "sha256": sha256_file(trt_dir / "timing.cache")}
    manifest["tensorrt"] = {"precision": precision, **ident, "engines": entries, "timing_cache": tc_entry,
                            "graphs": {g: {"file": p.relative_to(root).as_posix(), "sha256": hashes[g]} for g, p in graphs.items()}}
    cand = copy.copy(reference_world)
    cand.backend = TensorRTBackend.from_plans(engines, root / "graphs", dit.cfg, ae.cfg, reference_world.preset)
    # a lit world's frames are decoded on the host (onnxruntime, float32): see export_trt_onnx
    report = check_parity(reference_world, cand, {"encoder": "fp32", "dit": precision, "decoder": precision if "decoder" in graphs else "fp32"},
                          frames=parity_frames,
                          raise_on_fail=False)
    for line in report.lines():
        log("tensorrt " + line)
    if not report.ok:
        raise ParityError(f"TensorRT engines do not match the torch reference, nothing was written: {report.failures()}\n"
                          + "\n".join(report.lines()))
    manifest["parity"]["tensorrt"] = report.to_json()


def build_for_this_machine(bundle: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Build a TensorRT bundle's engines for this TensorRT version and GPU into the local engine cache."""
    from engine.backends import BackendUnavailable, tensorrt_unavailable_reason
    from engine.bundle import read_manifest

    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendUnavailable(f"building TensorRT engines needs TensorRT and a CUDA GPU: {reason}")
    m = read_manifest(bundle)
    if m["kind"] != "tensorrt":
        raise ValueError(f"{bundle} is an ONNX bundle; export a TensorRT one with `worldsim export --format tensorrt`")
    out = []
    for e in m["tensorrt"]["engines"]:
        _, plan = build_cached(bundle / e["onnx"]["file"], e["onnx"]["sha256"], {n: tuple(s) for n, s in e["shapes"].items()},
                               e["precision"], log=log)
        out.append(plan)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build a bundle's engines for this machine."""
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description="build a TensorRT bundle's engines for this machine")
    p.add_argument("bundle", type=Path)
    args = p.parse_args(argv)
    try:
        plans = build_for_this_machine(args.bundle)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(plans)} engine(s) ready in {engine_cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
