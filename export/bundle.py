"""Write a self-contained bundle from a world directory (the reader/validator is `engine.bundle`).

Every export is checked before it is written: the graphs are replayed against the torch reference over a
multi-frame rollout (`export.parity`); a failure is an error and nothing is left at the destination. The
bundle is assembled in a temporary directory beside the destination and renamed into place at the end.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

from engine.bundle import (BUNDLE_FORMAT, BUNDLE_KINDS, BUNDLE_VERSION, MANIFEST, BundleError, action_schema, expected_specs,
                           read_manifest, sha256_file)
from engine.graphs import GRAPH_NAMES, OPSET
from worldsim.io import atomic_write_json, read_json


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the graphs."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    import worldsim

    out = {"worldsim": getattr(worldsim, "__version__", "0.1.0"), "python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        from importlib.metadata import version

        out["worldsim"] = version("worldsim")
    except Exception:
        pass
    return out


def _entry(root: Path, path: Path) -> dict[str, Any]:
    return {"file": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _source_world(world_dir: Path) -> tuple[dict, Path, Path, Path]:
    if (world_dir / MANIFEST).is_file():
        raise BundleError(f"{world_dir} is already an exported bundle; export from the world directory that holds the torch weights")
    meta = read_json(world_dir / "world.json", "world description")
    return (meta, world_dir / meta.get("autoencoder", "autoencoder.safetensors"), world_dir / meta.get("dit", "dit.safetensors"),
            world_dir / meta.get("opening", "opening.npz"))


def export_bundle(world_dir: str | os.PathLike, out: str | os.PathLike, kind: str = "onnx", quantize: str = "none",
                  parity_frames: int = 10, preset: str = "quality", force: bool = False, threads: int = 1,
                  trt_precision: str = "fp16", trt_sessions: tuple[int, ...] = (1,), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export world_dir as a bundle at `out`; -> the manifest. Raises ParityError/BundleError/ValueError on failure.

    quantize: "none" or "int8" (the DiT graph, onnxruntime dynamic quantization). kind "tensorrt" also
    builds fp16 (strongly typed) graphs and TensorRT engines for `trt_sessions` players per call.
    """
    from engine.world import World, _file_digest
    from export.parity import check_parity
    from export.quantize import QUANTIZE_CHOICES, quantize_dit_int8

    world_dir, out = Path(world_dir), Path(out)
    if kind not in BUNDLE_KINDS:
        raise ValueError(f"unknown bundle format {kind!r}; choose from {', '.join(BUNDLE_KINDS)}")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {quantize!r}; choose from {', '.join(QUANTIZE_CHOICES)}")
    if kind == "tensorrt":
        from engine.backends import BackendUnavailable, tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendUnavailable(f"--format tensorrt needs TensorRT and a CUDA GPU: {reason}")
    if out.resolve() == world_dir.resolve():
        raise ValueError(f"the bundle cannot replace its source world directory {world_dir}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    meta, ae_path, dit_path, opening_path = _source_world(world_dir)
    ae_digest, dit_digest = _file_digest(ae_path), _file_digest(dit_path)  # the source's id and files, the ground head's check

    log(f"loading {world_dir} (torch reference, {threads} thread(s))")
    ref = World.load(world_dir, backend="torch", preset=preset, threads=threads)
    from worldsim.train import load_autoencoder, load_dit

    ae, dit = load_autoencoder(ae_path), load_dit(dit_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        from engine.backends import OrtBackend
        from engine.graphs import export_onnx

        graphs = tmp / "graphs"
        export_onnx(ae, dit, graphs)
        precision = {g: "fp32" for g in GRAPH_NAMES}
        if quantize == "int8":
            quantize_dit_int8(graphs / "dit.onnx", graphs / "dit.onnx")
            precision["dit"] = "int8-dynamic"
        log(f"exported {', '.join(f'{g}.onnx ({precision[g]})' for g in GRAPH_NAMES)}")
        cand = copy.copy(ref)  # the same weights, preset and opening; only the backend differs
        cand.backend = OrtBackend(graphs, threads=threads)
        report = check_parity(ref, cand, precision, frames=parity_frames, raise_on_fail=False)
        for line in report.lines():
            log(line)
        if not report.ok:
            from export.parity import ParityError

            raise ParityError(f"export of {world_dir} failed its parity check against the torch reference, nothing was written: "
                              f"{report.failures()}\n" + "\n".join(report.lines()))
        shutil.copy(opening_path, tmp / "opening.npz")
        if meta.get("reader"):
            from worldsim.eval.reader import load_reader, save_reader_npz

            # trained on this autoencoder, or a clear error; a numpy archive in the bundle (no torch to load it)
            save_reader_npz(tmp / "reader.npz", load_reader(world_dir / meta["reader"], autoencoder=ae_path))
        if meta.get("ground"):
            from engine.ground import load_ground

            # fitted on these weights' tokens, or a clear error (engine.ground); plain JSON, as in the world
            atomic_write_json(tmp / "ground.json", load_ground(world_dir / meta["ground"], ae_digest, dit_digest).to_dict())
        atomic_write_json(tmp / "actions.json", action_schema())
        source_id = hashlib.sha256((ae_digest + dit_digest).encode()).hexdigest()[:16]
        config_json = json.dumps({"autoencoder": _cfg(ae.cfg), "dit": _cfg(dit.cfg)}, sort_keys=True)
        graph_entries = {}
        specs = expected_specs(ae.cfg, dit.cfg)
        for g in GRAPH_NAMES:
            graph_entries[g] = {**_entry(tmp, graphs / f"{g}.onnx"), "precision": precision[g], "opset": OPSET, **specs[g]}
        # sessions saved from the source world replay identically only where the graphs are the exact float32 export
        world_id = source_id if all(p == "fp32" for p in precision.values()) else hashlib.sha256(
            (source_id + graph_entries["dit"]["sha256"]).encode()).hexdigest()[:16]
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "kind": kind,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "world": {"name": meta.get("name", world_dir.name), "id": world_id, "tick_hz": float(meta.get("tick_hz", 8.0)),
                      "max_window": int(meta.get("max_window", 8)), "frame_shape": [ae.cfg.image_size, ae.cfg.image_size, 3]},
            "source": {"world_id": source_id, "path": str(world_dir),
                       "files": {ae_path.name: ae_digest, dit_path.name: dit_digest},
                       "config_sha256": hashlib.sha256(config_json.encode()).hexdigest()},
            "configs": json.loads(config_json),
            "opset": OPSET,
            "precision": precision,
            "graphs": graph_entries,
            "files": {"opening": _entry(tmp, tmp / "opening.npz"), "actions": _entry(tmp, tmp / "actions.json"),
                      **({"reader": _entry(tmp, tmp / "reader.npz")} if meta.get("reader") else {}),
                      **({"ground": _entry(tmp, tmp / "ground.json")} if meta.get("ground") else {})},
            "runtime": {"default_preset": "fast", "parity_preset": preset},
            "parity": {"onnxruntime": report.to_json()},
            "tools": tool_versions(),
        }
        if kind == "tensorrt":
            from export.tensorrt import add_tensorrt_to_bundle

            add_tensorrt_to_bundle(tmp, manifest, ae, dit, ref, precision=trt_precision, sessions=trt_sessions,
                                   parity_frames=parity_frames, log=log)
        atomic_write_json(tmp / MANIFEST, manifest)
        read_manifest(tmp)  # what we wrote must pass the loader's validation
        for f in tmp.rglob("*"):  # a bundle is for others to read (the atomic writers create 0600 files)
            f.chmod(0o755 if f.is_dir() else 0o644)
        tmp.chmod(0o755)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return manifest


def _cfg(cfg) -> dict:
    from worldsim.config import config_to_dict

    return config_to_dict(cfg)
