"""The `tensorrt` backend: TensorRT engines from a bundle, the KV cache and every buffer on the GPU, and
the per-frame work (denoising steps, sampler updates, commit, ring write, decode) replayed as one CUDA
graph per session.

Engines are built by `export.tensorrt` (strongly typed fp16 graphs, static shapes for the real-time path)
and stored in the bundle and in a local engine cache keyed by `engine_cache_key` (ONNX hash + TensorRT
version + GPU model + precision + shapes); an engine built elsewhere is never loaded here.

Two ways in, one backend:
- the ordinary `Backend` calls on numpy arrays (session start, batched sessions, parity replays): a static
  engine when the shapes match one, otherwise the bundle's float32 graphs on onnxruntime (CPU);
- `step_chunk(session, actions)`: the real-time path. Session._step_chunk hands it the chunk; the session's
  cache lives on the device and is copied back to the host only for snapshot/save (`sync_session`).

tensorrt and torch.cuda are imported lazily: this module imports on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ENGINE_PRECISIONS = ("fp32", "fp16", "fp8")


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, precision: str, shapes: dict[str, Any]) -> str:
    """Key of a built engine: everything that makes an engine valid or not. Pure; order of `shapes` is irrelevant.

    shapes: input name -> static shape (the real-time path builds one engine per shape set).
    """
    if not (isinstance(onnx_sha256, str) and len(onnx_sha256) == 64 and all(c in "0123456789abcdef" for c in onnx_sha256)):
        raise ValueError(f"onnx_sha256 must be a 64-digit lowercase hex digest, got {onnx_sha256!r}")
    if not trt_version or not gpu_name:
        raise ValueError("the TensorRT version and the GPU name are part of the key and must not be empty")
    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"unknown engine precision {precision!r}; choose from {', '.join(ENGINE_PRECISIONS)}")
    norm = {}
    for name, shape in shapes.items():
        dims = tuple(int(d) for d in shape)
        if any(d < 1 for d in dims):
            raise ValueError(f"engine shapes must be static and positive: {name} {dims}")
        norm[str(name)] = list(dims)
    blob = json.dumps({"onnx": onnx_sha256, "trt": str(trt_version), "gpu": str(gpu_name), "precision": precision,
                       "shapes": norm}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def engine_cache_dir() -> Path:
    """Where engines built on this machine are kept (WORLDSIM_CACHE or ~/.cache/worldsim, then tensorrt/)."""
    return Path(os.environ.get("WORLDSIM_CACHE", Path.home() / ".cache" / "worldsim")) / "tensorrt"


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string ("10.3.0" -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None


def device_identity() -> dict[str, str]:
    """The TensorRT version and GPU that engines built or loaded here are keyed on."""
    import tensorrt as trt
    import torch

    cc = ".".join(map(str, torch.cuda.get_device_capability()))
    return {"trt": trt.__version__, "gpu": f"{torch.cuda.get_device_name()} (sm {cc})"}


def dit_shapes(dit_cfg, sessions: int, chunk: int, window: int) -> dict[str, tuple[int, ...]]:
    """Static input shapes of the DiT engine for `sessions` players, `chunk` frames, `window` cache slots."""
    d = dit_cfg
    B, k, P = sessions, chunk, window
    kv = (d.n_layers, B, d.n_heads, P * d.tokens_per_frame, d.head_dim)
    return {"x": (B, k, d.latent_channels, d.grid, d.grid), "sigma": (B, k), "actions": (B, k), "past_k": kv, "past_v": kv,
            "past_t": (B, P), "past_valid": (B, P), "past_shift": (B, P, 2)}


def decoder_shapes(dit_cfg, frames: int) -> dict[str, tuple[int, ...]]:
    """Static input shape of the decoder engine for `frames` latents per call."""
    return {"latents": (frames, dit_cfg.latent_channels, dit_cfg.grid, dit_cfg.grid)}


# -- running engines ------------------------------------------------------------------------------------


def _torch_dtype(trt_dtype):
    import tensorrt as trt
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.UINT8: torch.uint8, trt.DataType.BOOL: torch.bool}
    if trt_dtype not in table:
        raise ValueError(f"engine I/O dtype {trt_dtype} is not supported by the worldsim tensorrt backend")
    return table[trt_dtype]


class TRTEngine:
    """One deserialized engine with static shapes; contexts bind caller-owned device tensors once."""

    def __init__(self, plan: bytes, runtime, logger, what: str):
        import tensorrt as trt

        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine {what} (built by another TensorRT version or GPU?)")
        self.what = what
        self.inputs, self.outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            (self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(name)

    def dtype(self, name: str):
        """torch dtype of an I/O tensor."""
        return _torch_dtype(self.engine.get_tensor_dtype(name))

    def output_shapes(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes."""
        ctx = self.engine.create_execution_context()
        for name in self.inputs:
            ctx.set_input_shape(name, tuple(input_shapes[name]))
        return {name: tuple(ctx.get_tensor_shape(name)) for name in self.outputs}

    def context(self, tensors: dict[str, Any]):
        """A new execution context with input shapes set and every I/O tensor bound (torch CUDA tensors)."""
        ctx = self.engine.create_execution_context()
        for name in self.inputs:
            ctx.set_input_shape(name, tuple(tensors[name].shape))
        for name in self.inputs + self.outputs:
            t = tensors[name]
            if not t.is_contiguous():
                raise ValueError(f"{self.what}: tensor {name} must be contiguous to bind it")
            if t.dtype != self.dtype(name):
                raise ValueError(f"{self.what}: tensor {name} is {t.dtype}, the engine wants {self.dtype(name)}")
            ctx.set_tensor_address(name, t.data_ptr())
        for name in self.outputs:
            want = tuple(ctx.get_tensor_shape(name))
            if want != tuple(tensors[name].shape):
                raise ValueError(f"{self.what}: output {name} is {want}, buffer is {tuple(tensors[name].shape)}")
        return ctx


@dataclass
class _DeviceSession:
    """One session's device state: ring cache, bound buffers, contexts and the captured CUDA graph."""

    host_cache: Any  # the RingKVCache object this state mirrors (identity)
    host_frames: np.ndarray  # its frame-index array when the device copy was last known equal
    buf: dict
    dit_ctx: Any
    dec_ctx: Any
    graph: Any
    pinned: dict


class TensorRTBackend:
    """TensorRT engines + device-resident KV cache + CUDA-graph replay; see the module docstring."""

    name = "tensorrt"

    def __init__(self, engines: dict[tuple, Any], graph_dir: Path, dit_cfg, ae_cfg, preset, threads: int | None = None,
                 device: str = "cuda"):
        """engines: ("dit", sessions, chunk, window) or ("decoder", frames) -> a TRTEngine (or an object with the
        same interface: inputs, outputs, dtype(), output_shapes(), context()). device="cpu" runs the same
        device code eagerly on the CPU without CUDA streams or graphs (for tests with stand-in engines)."""
        import torch

        from engine.backends import OrtBackend

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dit_cfg, self.ae_cfg, self.preset = dit_cfg, ae_cfg, preset
        self.engines = dict(engines)
        self.cpu = OrtBackend(graph_dir, threads=threads)  # the encoder and any shape without a static engine
        self.stream = torch.cuda.Stream() if self.cuda else None
        self._numpy_ctx: dict[tuple, tuple] = {}
        self._sessions: dict[int, _DeviceSession] = {}
        self.threads = self.cpu.threads

    @classmethod
    def from_plans(cls, plans: dict[tuple, bytes], graph_dir: Path, dit_cfg, ae_cfg, preset, threads: int | None = None) -> "TensorRTBackend":
        """Deserialize engine plans (same keys as `engines`) on this GPU."""
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engines = {key: TRTEngine(plan, runtime, logger, "/".join(map(str, key))) for key, plan in plans.items()}
        backend = cls(engines, graph_dir, dit_cfg, ae_cfg, preset, threads=threads)
        backend._trt = (logger, runtime)  # keep the runtime alive as long as its engines
        return backend

    def _on_stream(self):
        return self.torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()

    def _handle(self) -> int:
        return self.torch.cuda.current_stream().cuda_stream if self.cuda else 0

    def _sync(self) -> None:
        if self.cuda:
            self.stream.synchronize()

    def _pinned(self, t):
        return t.pin_memory() if self.cuda else t

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_bundle(cls, path: Path, manifest: dict, preset, threads: int | None = None) -> "TensorRTBackend":
        """Load the bundle's engines that were built for this TensorRT version and GPU (else the local cache)."""
        from engine.backends import BackendUnavailable
        from engine.bundle import bundle_configs

        ae_cfg, dit_cfg = bundle_configs(manifest)
        ident = device_identity()
        engines: dict[tuple, bytes] = {}
        missing = []
        for e in manifest["tensorrt"]["engines"]:
            key = engine_cache_key(e["onnx"]["sha256"], ident["trt"], ident["gpu"], e["precision"], e["shapes"])
            plan = None
            if e.get("key") == key and "plan" in e:
                plan = (path / e["plan"]["file"]).read_bytes()
            elif (engine_cache_dir() / f"{key}.plan").is_file():
                plan = (engine_cache_dir() / f"{key}.plan").read_bytes()
            if plan is None:
                missing.append(f"{e['graph']} {e['shapes']}")
                continue
            tag = ("dit", e["sessions"], e["chunk"], e["window"]) if e["graph"] == "dit" else ("decoder", e["frames"])
            engines[tag] = plan
        if missing:
            built_on = {(e.get("key_fields", {}).get("trt"), e.get("key_fields", {}).get("gpu")) for e in manifest["tensorrt"]["engines"]}
            raise BackendUnavailable(f"the TensorRT engines in {path} were built for {sorted(built_on)}, this machine is "
                                     f"({ident['trt']}, {ident['gpu']}); build them here with `python -m export.tensorrt {path}` "
                                     f"(missing: {'; '.join(missing)})")
        graph_dir = (path / manifest["graphs"]["encoder"]["file"]).parent
        return cls.from_plans(engines, graph_dir, dit_cfg, ae_cfg, preset, threads=threads)

    # -- the Backend protocol (numpy) ------------------------------------------------------------------

    def _numpy_run(self, tag: tuple, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        eng = self.engines[tag]
        if tag not in self._numpy_ctx:
            bufs = {n: torch.empty(tuple(feeds[n].shape), dtype=eng.dtype(n), device=self.device) for n in eng.inputs}
            for n, shape in eng.output_shapes({n: tuple(feeds[n].shape) for n in eng.inputs}).items():
                bufs[n] = torch.empty(shape, dtype=eng.dtype(n), device=self.device)
            self._numpy_ctx[tag] = (bufs, eng.context(bufs))
        bufs, ctx = self._numpy_ctx[tag]
        with self._on_stream():
            for n in eng.inputs:
                bufs[n].copy_(torch.from_numpy(np.ascontiguousarray(feeds[n])).to(bufs[n].dtype))
            if not ctx.execute_async_v3(self._handle()):
                raise RuntimeError(f"TensorRT failed to run {tag}")
            out = {n: bufs[n].cpu().numpy() for n in eng.outputs}
        self._sync()
        return out

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B,H,W,3) -> float32 (B,C,g,g) (onnxruntime: runs only when a session starts)."""
        return self.cpu.encode(frames)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 (B,C,g,g) -> uint8 (B,H,W,3)."""
        tag = ("decoder", latents.shape[0])
        if tag not in self.engines:
            return self.cpu.decode(latents)
        pix = self._numpy_run(tag, {"latents": latents.astype(np.float32)})["pixels"]
        return pix.astype(np.uint8)  # the graph already added 0.5 and clamped: truncation = the ONNX graph's Cast

    def dit(self, x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift):
        """One chunk: -> (x0, k, v); a static engine when the shapes match one, else onnxruntime."""
        tag = ("dit", x.shape[0], x.shape[1], past_t.shape[1])
        if tag not in self.engines:
            return self.cpu.dit(x, sigma, actions, past_k, past_v, past_t, past_valid, past_shift)
        out = self._numpy_run(tag, {"x": x, "sigma": sigma, "actions": actions, "past_k": past_k, "past_v": past_v,
                                    "past_t": past_t, "past_valid": past_valid, "past_shift": past_shift})
        return out["x0"], out["k"], out["v"]

    # -- the real-time path: device-resident cache + CUDA graph -----------------------------------------

    def _new_device_session(self, session) -> _DeviceSession:
        torch = self.torch
        w, d = session.world, self.dit_cfg
        st = session._state
        k, P, N = w.preset.chunk, st.cache.slots, d.tokens_per_frame
        dit = self.engines[("dit", 1, k, P)]
        dec = self.engines[("decoder", k)]
        dev = self.device
        steps = w.sampler.timesteps()
        n_step_noise = sum(1 for t_next in steps[1:] if w.sampler.stochastic and t_next > 0)
        lat = (1, k, d.latent_channels, d.grid, d.grid)
        kv_out = (d.n_layers, 1, d.n_heads, k * N, d.head_dim)
        S = w.frame_shape[0]
        buf = {
            "x": torch.zeros(lat, device=dev), "sigma": torch.zeros(1, k, device=dev),
            "actions": torch.zeros(1, k, dtype=torch.int64, device=dev),
            "past_k": torch.tensor(st.cache.k, device=dev), "past_v": torch.tensor(st.cache.v, device=dev),  # copies, never aliases
            "past_t": torch.zeros(1, P, device=dev), "past_valid": torch.zeros(1, P, device=dev), "past_shift": torch.zeros(1, P, 2, device=dev),
            "x0": torch.zeros(lat, device=dev), "k": torch.zeros(kv_out, device=dev), "v": torch.zeros(kv_out, device=dev),
            "noise": torch.zeros((2 + n_step_noise, *lat), device=dev), "z": torch.zeros(lat, device=dev),
            "tok": torch.zeros(k * N, dtype=torch.int64, device=dev),
            "pixels": torch.zeros(k, S, S, 3, device=dev), "frames": torch.zeros(k, S, S, 3, dtype=torch.uint8, device=dev),
        }
        dit_ctx = dit.context({n: buf[n] for n in dit.inputs + dit.outputs})
        dec_ctx = dec.context({"latents": buf["z"].view(k, *lat[2:]), "pixels": buf["pixels"]})
        pin = self._pinned
        pinned = {"noise": pin(torch.zeros(buf["noise"].shape)), "actions": pin(torch.zeros(1, k, dtype=torch.int64)),
                  "past_t": pin(torch.zeros(1, P)), "past_valid": pin(torch.zeros(1, P)), "tok": pin(torch.zeros(k * N, dtype=torch.int64)),
                  "frames": pin(torch.zeros(k, S, S, 3, dtype=torch.uint8)), "z": pin(torch.zeros(lat))}
        c = w.preset.ctx_noise
        stream = self.stream

        def work():
            """The per-frame work, all on the device; mirrors Session._step_chunk + _commit exactly."""
            h = self._handle()
            buf["x"].copy_(buf["noise"][0])
            j = 1
            for t, t_next in zip(steps[:-1], steps[1:]):
                buf["sigma"].fill_(t)
                dit_ctx.execute_async_v3(h)
                if t_next <= 0:
                    buf["x"].copy_(buf["x0"])
                elif w.sampler.stochastic:
                    buf["x"].copy_((1 - t_next) * buf["x0"] + t_next * buf["noise"][j])
                    j += 1
                else:
                    eps = (buf["x"] - (1 - t) * buf["x0"]) / max(t, 1e-6)
                    buf["x"].copy_((1 - t_next) * buf["x0"] + t_next * eps)
            buf["z"].copy_(buf["x"])
            buf["x"].copy_((1 - c) * buf["z"] + c * buf["noise"][-1])  # commit: lightly re-noised clean frame
            buf["sigma"].fill_(c)
            dit_ctx.execute_async_v3(h)
            buf["past_k"].index_copy_(3, buf["tok"], buf["k"])  # ring write: slot tokens from a device index
            buf["past_v"].index_copy_(3, buf["tok"], buf["v"])
            dec_ctx.execute_async_v3(h)
            buf["frames"].copy_(buf["pixels"].to(torch.uint8))

        if not self.cuda:  # stand-in engines on the CPU: run the same work eagerly
            return _DeviceSession(st.cache, st.cache.frame.copy(), buf, dit_ctx, dec_ctx, SimpleNamespace(replay=work), pinned)
        # TensorRT needs one enqueue after binding before capture; torch wants warm-up on the capture stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            saved_k, saved_v = buf["past_k"].clone(), buf["past_v"].clone()
            work()
            buf["past_k"].copy_(saved_k)
            buf["past_v"].copy_(saved_v)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            work()
        return _DeviceSession(st.cache, st.cache.frame.copy(), buf, dit_ctx, dec_ctx, graph, pinned)

    def _device_state(self, session) -> _DeviceSession:
        st = session._state
        ds = self._sessions.get(id(session))
        if ds is None or ds.buf["past_k"].shape != tuple(st.cache.k.shape):
            ds = self._sessions[id(session)] = self._new_device_session(session)
            weakref.finalize(session, self._sessions.pop, id(session), None)  # free the device state with the session
        elif ds.host_cache is not st.cache or not np.array_equal(ds.host_frames, st.cache.frame):
            # the host cache changed outside this path (restore, a new start, a generic step): upload it
            ds.buf["past_k"].copy_(self.torch.from_numpy(st.cache.k))
            ds.buf["past_v"].copy_(self.torch.from_numpy(st.cache.v))
            ds.host_cache, ds.host_frames = st.cache, st.cache.frame.copy()
        return ds

    def step_chunk(self, session, acts: list[int]) -> np.ndarray | None:
        """Session._step_chunk on the device: -> uint8 (k,H,W,3), or None to let the session take the generic path."""
        import time

        w, d, st = session.world, self.dit_cfg, session._state
        k = len(acts)
        if k != w.preset.chunk or ("dit", 1, k, st.cache.slots) not in self.engines or ("decoder", k) not in self.engines:
            self.sync_session(session)  # the generic path reads the host cache
            return None
        t0 = time.perf_counter()
        ds = self._device_state(session)
        p = ds.pinned
        first = st.frame_index + 1
        shape = (1, k, d.latent_channels, d.grid, d.grid)
        # the session's RNG, in Session._step_chunk's order: start noise, stochastic step noise, commit noise
        draws = [session._rng.standard_normal(shape, dtype=np.float32)]
        for t_next in w.sampler.timesteps()[1:]:
            if w.sampler.stochastic and t_next > 0:
                draws.append(session._rng.standard_normal(shape, dtype=np.float32))
        draws.append(session._rng.standard_normal(shape, dtype=np.float32))
        p["noise"].numpy()[:] = np.stack(draws)
        p["actions"].numpy()[:] = np.asarray([acts], np.int64)
        past_t, past_valid = st.cache.inputs(first)
        p["past_t"].numpy()[:] = past_t
        p["past_valid"].numpy()[:] = past_valid
        N, slots, s0 = st.cache.tokens_per_frame, st.cache.slots, st.cache.next_slot
        p["tok"].numpy()[:] = np.concatenate([np.arange(((s0 + i) % slots) * N, ((s0 + i) % slots + 1) * N) for i in range(k)])
        with self._on_stream():
            for name in ("noise", "actions", "past_t", "past_valid", "tok"):
                ds.buf[name].copy_(p[name], non_blocking=self.cuda)
            ds.graph.replay()
            p["frames"].copy_(ds.buf["frames"], non_blocking=self.cuda)
            p["z"].copy_(ds.buf["z"], non_blocking=self.cuda)
        self._sync()
        # host bookkeeping of the ring (frame indices, next slot); its k/v arrays stay stale until sync_session
        for i in range(k):
            st.cache.frame[:, (s0 + i) % slots] = first + i
        st.cache.next_slot = (s0 + k) % slots
        ds.host_frames = st.cache.frame.copy()
        frames = p["frames"].numpy().copy()
        st.frame_index += k
        st.frame = frames[-1].copy()
        st.latent = p["z"].numpy()[0, -1].copy()
        ms = (time.perf_counter() - t0) * 1e3
        session.timings = {"denoise_ms": float("nan"), "commit_ms": float("nan"), "decode_ms": float("nan"), "total_ms": ms}
        return frames

    def sync_session(self, session) -> None:
        """Copy a session's device cache back into its host RingKVCache (for snapshot/save/the generic path)."""
        ds = self._sessions.get(id(session))
        st = session._state
        if ds is None or ds.host_cache is not st.cache or not np.array_equal(ds.host_frames, st.cache.frame):
            return  # the host copy is the current one
        self._sync()
        st.cache.k[...] = ds.buf["past_k"].cpu().numpy()
        st.cache.v[...] = ds.buf["past_v"].cpu().numpy()

    def forget(self, session) -> None:
        """Free a session's device state (buffers, contexts, graph)."""
        self._sessions.pop(id(session), None)


def ort_tensorrt_backend(graph_dir: str | os.PathLike, fp16: bool = True, cache_dir: str | os.PathLike | None = None,
                         threads: int | None = None):
    """The second, simpler GPU path: the bundle's ONNX graphs on onnxruntime's TensorRT execution provider
    (engines and timing cache cached by onnxruntime), falling back to CUDA, then CPU, per node."""
    import onnxruntime as ort

    from engine.backends import BackendUnavailable, OrtBackend

    have = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in have:
        raise BackendUnavailable(f"onnxruntime has no TensorRT execution provider here (available: {', '.join(have)}); "
                                 "install onnxruntime-gpu with TensorRT")
    cache = Path(cache_dir) if cache_dir else engine_cache_dir() / "ort-trt"
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                   "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
    # the dynamic-shape graphs only: TensorRT builds its own engines per shape profile (fixed-shape ONNX graphs are a
    # CPU optimisation, and each would cost an engine build here)
    be = OrtBackend(graph_dir, threads=threads, providers=[("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider",
                                                          "CPUExecutionProvider"], static=False)
    be.name = "onnxruntime-trt"
    return be
