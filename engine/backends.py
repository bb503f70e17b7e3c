"""Backends: one narrow interface (numpy in, numpy out) over torch eager, onnxruntime and TensorRT.

A backend runs three networks: ``encode`` (uint8 frames -> latents), ``dit`` (one chunk against the
cache) and ``decode`` (latents -> uint8 frames). It holds no session state; the engine owns the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.graphs import GRAPH_IO, GRAPH_NAMES, OPSET, dit_graph_name, graph_io, static_dit_name, weights_hash
from worldsim.light import decoder_noise, unlit_hint

BACKENDS = ("onnxruntime", "torch", "tensorrt")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package or GPU)."""


class Backend(Protocol):
    """What the engine needs from a backend."""

    name: str

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W,3) -> float32 (B,C,g,g)."""

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 (B,C,g,g) -> uint8 (B,H,W,3)."""

    def dit(self, x: np.ndarray, sigma: np.ndarray, actions: np.ndarray, past_k: np.ndarray, past_v: np.ndarray,
            past_t: np.ndarray, past_valid: np.ndarray, past_shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk: -> (x0 (B,k,C,g,g), k (L,B,H,kN,dh), v (L,B,H,kN,dh))."""


class TorchBackend:
    """torch eager on the CPU (or CUDA when asked); `compile=True` wraps the DiT step in torch.compile."""

    name = "torch"

    def __init__(self, ae, dit, device: str = "cpu", compile: bool = False, threads: int | None = None):
        import torch

        from engine.graphs import DecoderGraph, EncoderGraph

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        self.threads = torch.get_num_threads()
        self.torch = torch
        self.device = torch.device(device)
        self.encoder = EncoderGraph(ae).to(self.device).eval()
        self.lit = ae.cfg.lit  # a lit autoencoder: hints in, the night's noise into the decoder (worldsim.light)
        self.view_shape = (7 * (ae.cfg.image_size // 9), 9 * (ae.cfg.image_size // 9))
        self.decoder = DecoderGraph(ae).to(self.device).eval()
        self.dit_module = dit.to(self.device).eval()
        self._dit = torch.compile(self.dit_module, dynamic=True) if compile else self.dit_module

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W,3) -> float32 (B,C,g,g)."""
        with self.torch.inference_mode():
            if self.lit:
                hint, light = unlit_hint(np.asarray(frames, np.uint8))
                return self.encoder(self._t(frames), self._t(hint), self._t(light)).cpu().numpy()
            return self.encoder(self._t(frames)).cpu().numpy()

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 (B,C,g,g) -> uint8 (B,H,W,3)."""
        latents = latents.astype(np.float32)
        with self.torch.inference_mode():
            if self.lit:
                return self.decoder(self._t(latents), self._t(decoder_noise(latents, self.view_shape))).cpu().numpy()
            return self.decoder(self._t(latents)).cpu().numpy()

    def dit(self, x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift):
        """One chunk: -> (x0, k, v) as numpy float32."""
        with self.torch.inference_mode():
            out = self._dit(*(self._t(a) for a in (x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift)))
        return tuple(o.float().cpu().numpy() for o in out)


class OrtBackend:
    """onnxruntime on the CPU: the default. Graphs are built from the weights on first use and cached; fixed-shape
    DiT graphs in the same directory (engine.graphs.static_dit_name; ``static=True``) run the calls they fit.
    ``precision`` picks the DiT graphs: fp32 (dit.onnx) or int8 (dit-int8.onnx, engine.graphs.quantize_dit_int8)."""

    name = "onnxruntime"

    def __init__(self, graph_dir: str | os.PathLike, threads: int | None = None, spinning: bool = False,
                 providers: list[str] | None = None, static: bool = True, precision: str = "fp32"):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailable(f"onnxruntime is not installed: {e}") from None
        graph_dir = Path(graph_dir)
        self.graph_dir = graph_dir
        self.precision = precision
        dit_file = dit_graph_name(precision)  # an unknown precision: a ValueError naming the choices
        self.threads = threads or min(os.cpu_count() or 1, 4)
        self.spinning = spinning
        self._providers = providers or ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # spinning threads burn the cores between calls; measured faster with it off when sessions alternate
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self._options = so
        self.sessions = {}
        for name in GRAPH_NAMES:
            path = graph_dir / (dit_file if name == "dit" else f"{name}.onnx")
            if not path.is_file():
                raise FileNotFoundError(f"ONNX graph missing: {path}")
            self.sessions[name] = self._open(path, name)
        enc = self.sessions["encoder"]
        self.lit = len(enc.get_inputs()) > 1  # a lit autoencoder's graphs (engine.graphs.LIT_GRAPH_IO)
        noise = [i for i in self.sessions["decoder"].get_inputs() if i.name == "noise"]
        self.view_shape = tuple(noise[0].shape[1:]) if noise else None
        # DiT graphs fixed to one shape (engine.graphs.export_static_dit) at this precision: used where a call's shapes match
        self.static: dict[tuple[int, int], object] = {}
        if static:
            for path in sorted(graph_dir.glob("dit-b1-k*-p*.onnx")):
                m = _STATIC_NAME.fullmatch(path.name)
                if m and (m[3] or "fp32") == precision:
                    self.static[(int(m[1]), int(m[2]))] = self._open(path, "dit")

    def _open(self, path: Path, name: str):
        """An InferenceSession on one graph, checked against GRAPH_IO[name]; a clear ValueError where it is corrupt."""
        import onnxruntime as ort

        try:
            sess = ort.InferenceSession(str(path), self._options, providers=self._providers)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt graphs
            raise ValueError(f"ONNX graph {path} is corrupt or invalid: {e}") from None
        io_names = (tuple(i.name for i in sess.get_inputs()), tuple(o.name for o in sess.get_outputs()))
        if io_names not in (graph_io(name), graph_io(name, lit=True)):
            raise ValueError(f"ONNX graph {path} has inputs/outputs {io_names}, expected {GRAPH_IO[name]} "
                             f"(or a lit autoencoder's {graph_io(name, lit=True)})")
        return sess

    def add_static(self, path: str | os.PathLike) -> None:
        """Use one more fixed-shape DiT graph (a file named engine.graphs.static_dit_name(k, P))."""
        path = Path(path)
        m = _STATIC_NAME.fullmatch(path.name)
        if not m:
            raise ValueError(f"{path.name} is not a static DiT graph name (dit-b1-k<K>-p<P>[-int8].onnx)")
        if (m[3] or "fp32") != self.precision:
            raise ValueError(f"{path.name} is a {m[3] or 'fp32'} DiT graph; this backend runs {self.precision}")
        self.static[(int(m[1]), int(m[2]))] = self._open(path, "dit")

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W,3) -> float32 (B,C,g,g)."""
        feed = {"frames": np.ascontiguousarray(frames, dtype=np.uint8)}
        if self.lit:
            feed["hint"], feed["light"] = unlit_hint(feed["frames"])
        return self.sessions["encoder"].run(None, feed)[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 (B,C,g,g) -> uint8 (B,H,W,3)."""
        feed = {"latents": np.ascontiguousarray(latents, dtype=np.float32)}
        if self.lit:
            feed["noise"] = decoder_noise(feed["latents"], self.view_shape)
        return self.sessions["decoder"].run(None, feed)[0]

    def dit(self, x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift):
        """One chunk: -> (x0, k, v)."""
        feed = {"x": x.astype(np.float32, copy=False), "sigma": sigma.astype(np.float32, copy=False),
                "actions": actions.astype(np.int64, copy=False), "past_k": past_k, "past_v": past_v,
                "past_t": past_t.astype(np.float32, copy=False), "past_valid": past_valid.astype(np.float32, copy=False),
                "past_shift": past_shift.astype(np.float32, copy=False)}
        sess = self.static.get((x.shape[1], past_t.shape[1])) if x.shape[0] == 1 else None
        return tuple((sess or self.sessions["dit"]).run(None, feed))


_STATIC_NAME = re.compile(r"dit-b1-k(\d+)-p(\d+)(?:-(int8))?\.onnx")


def _valid_graph(path: Path) -> bool:
    """Whether an ONNX file exists and onnx can read it; a corrupt one is deleted (every graph here is a cache)."""
    import onnx

    if not path.is_file():
        return False
    try:
        onnx.checker.check_model(str(path))
        return True
    except Exception:
        path.unlink(missing_ok=True)
        return False


def ensure_dit_precision(graph_dir: Path, precision: str) -> Path:
    """The dynamic-shape DiT graph at ``precision`` in a cache directory from ensure_onnx_graphs (int8: quantized
    from dit.onnx where missing or unreadable); -> its path."""
    from engine.graphs import quantize_dit_int8

    path = graph_dir / dit_graph_name(precision)
    if precision != "fp32" and not _valid_graph(path):
        quantize_dit_int8(graph_dir / dit_graph_name("fp32"), path)
    return path


def ensure_static_dit(graph_dir: Path, shapes, load_models, precision: str = "fp32") -> list[Path]:
    """Fixed-shape DiT graphs for (k, P) ``shapes`` at ``precision`` in a cache directory from ensure_onnx_graphs,
    exported (and quantized) where missing (load_models() -> (ae, dit) is called only then); -> their paths. A file
    that onnx cannot read is exported again: it is only a cache."""
    from engine.graphs import export_static_dit, quantize_dit_int8

    ensure_dit_precision(graph_dir, precision)
    paths, dit = [], None
    for k, P in sorted(set((int(k), int(P)) for k, P in shapes)):
        path = graph_dir / static_dit_name(k, P, precision)
        if _valid_graph(path):
            paths.append(path)
            continue
        fp32 = graph_dir / static_dit_name(k, P)
        if not _valid_graph(fp32):
            if dit is None:
                dit = load_models()[1]
            export_static_dit(dit, graph_dir, k, P)
        if precision != "fp32":
            quantize_dit_int8(fp32, path)
        paths.append(path)
    return paths


def onnx_cache_key(ae_path: Path, dit_path: Path) -> str:
    """Key of the cached graphs: weights + configs (inside the files) + exporter versions + the source of
    the modules that define the graphs (a model code change must never reuse graphs exported from old code)."""
    import onnx
    import onnxruntime
    import torch

    # onnxruntime's version: its quantization tool writes the int8 graphs
    return weights_hash(ae_path, dit_path, extra=f"torch={torch.__version__};onnx={onnx.__version__};ort={onnxruntime.__version__};"
                                                 f"opset={OPSET};graphs=1;"
                                                 f"src={_graph_source_digest()}")[:20]


def _graph_source_digest() -> str:
    import hashlib

    import engine.graphs
    import worldsim.autoencoder
    import worldsim.dit

    h = hashlib.sha256()
    for mod in (worldsim.dit, worldsim.autoencoder, engine.graphs):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def ensure_onnx_graphs(world_dir: Path, ae_path: Path, dit_path: Path, load_models) -> Path:
    """Return a directory holding valid graphs for these weights, exporting them when missing or stale.

    The cache lives beside the weights (world_dir/.cache/onnx-KEY); if that is not writable, under
    ~/.cache/worldsim. A half-written or corrupt cache entry is rebuilt: `done.json` is written last.
    """
    key = onnx_cache_key(ae_path, dit_path)
    candidates = [world_dir / ".cache" / f"onnx-{key}", Path(os.environ.get("WORLDSIM_CACHE", Path.home() / ".cache" / "worldsim")) / f"onnx-{key}"]
    for d in candidates:
        if _graphs_valid(d, key):
            return d
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".write-probe"
            probe.write_text("")
            probe.unlink()
        except OSError:
            continue
        from engine.graphs import export_onnx

        for name in GRAPH_NAMES:
            (d / f"{name}.onnx").unlink(missing_ok=True)
        (d / "done.json").unlink(missing_ok=True)
        try:
            ae, dit = load_models()  # clear CheckpointErrors for bad weights
            export_onnx(ae, dit, d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)  # leave no half-built entry behind
            raise
        from worldsim.io import atomic_write_json

        atomic_write_json(d / "done.json", {"key": key, "graphs": list(GRAPH_NAMES)})
        return d
    raise PermissionError(f"no writable place for the ONNX cache (tried {', '.join(map(str, candidates))})")


def _graphs_valid(d: Path, key: str) -> bool:
    try:
        done = json.loads((d / "done.json").read_text())
    except (OSError, ValueError):
        return False
    if done.get("key") != key:
        return False
    if not all(_valid_graph(d / f"{name}.onnx") for name in GRAPH_NAMES):
        shutil.rmtree(d, ignore_errors=True)  # corrupt cache: rebuild it
        return False
    return True


def tensorrt_unavailable_reason() -> str | None:
    """Why the tensorrt backend cannot run here, or None if it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (pip install 'worldsim[tensorrt]' on a machine with an NVIDIA GPU)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    except ImportError:
        return "torch is not installed"
    return None
