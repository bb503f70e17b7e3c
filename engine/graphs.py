"""The three networks the engine runs per frame, as exportable modules, and one description of their
inputs/outputs (names, shapes, dtypes) that the backends and `export` share.

- encoder: uint8 frames (B,H,W,3) -> normalized latents (B,C,g,g)
- dit:     one chunk against the cache (see worldsim.dit.CausalDiT.forward)
- decoder: normalized latents (B,C,g,g) -> uint8 frames (B,H,W,3)

Pixel conversion lives inside the graphs so a deployed bundle needs no Python pre/post-processing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from worldsim.autoencoder import Autoencoder
from worldsim.dit import CausalDiT

GRAPH_NAMES = ("encoder", "dit", "decoder")
OPSET = 17
# input and output names of each graph (graph_specs gives their shapes); a backend checks a loaded graph against them
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("frames",), ("latents",)),
    "dit": (("x", "sigma", "actions", "past_k", "past_v", "past_t", "past_valid", "past_shift"), ("x0", "k", "v")),
    "decoder": (("latents",), ("frames",)),
}
# a lit autoencoder's graphs (AEConfig.lit): the encoder also reads the texture model's unlit hint and light estimate
# (computed on the host: worldsim.light.unlit_hint), the decoder the night's noise (worldsim.light.decoder_noise)
LIT_GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **GRAPH_IO,
    "encoder": (("frames", "hint", "light"), ("latents",)),
    "decoder": (("latents", "noise"), ("frames",)),
}


def graph_io(name: str, lit: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and output names of graph ``name`` for a plain or a lit autoencoder."""
    return (LIT_GRAPH_IO if lit else GRAPH_IO)[name]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a name, a shape (str = a dynamic axis) and a numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


class EncoderGraph(nn.Module):
    """uint8 (B,H,W,3) -> normalized latents (B,C,g,g)."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.ae = ae

    def forward(self, frames: torch.Tensor, hint: torch.Tensor | None = None, light: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B,H,W,3) [+ lit: hint uint8 (B,H,W,3), light float32 (B,2)] -> float32 (B,C,g,g)."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        if self.ae.cfg.lit:
            return self.ae.encode(x, (hint.permute(0, 3, 1, 2).float() / 255.0, light))
        return self.ae.encode(x)


class DecoderGraph(nn.Module):
    """Normalized latents (B,C,g,g) -> uint8 (B,H,W,3)."""

    def __init__(self, ae: Autoencoder):
        super().__init__()
        self.ae = ae

    def forward(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (B,C,g,g) [+ lit: the night's noise float32 (B,7u,9u)] -> uint8 (B,H,W,3)."""
        x = self.ae.decode(z, noise) if self.ae.cfg.lit else self.ae.decode(z)  # (B,3,H,W) in [0,1]
        return (x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def graph_specs(ae: Autoencoder, dit: CausalDiT) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """Inputs and outputs of each graph. Dynamic axes: B (sessions), k (chunk frames), P (cache slots)."""
    S, C, g = ae.cfg.image_size, ae.cfg.latent_channels, ae.cfg.grid
    enc_in, dec_in = [TensorSpec("frames", ("B", S, S, 3), "uint8")], [TensorSpec("latents", ("B", C, g, g), "float32")]
    if ae.cfg.lit:
        u = S // 9
        enc_in += [TensorSpec("hint", ("B", S, S, 3), "uint8"), TensorSpec("light", ("B", 2), "float32")]
        dec_in += [TensorSpec("noise", ("B", 7 * u, 9 * u), "float32")]
    return {
        "encoder": (enc_in, [TensorSpec("latents", ("B", C, g, g), "float32")]),
        "dit": graph_specs_dit(dit),
        "decoder": (dec_in, [TensorSpec("frames", ("B", S, S, 3), "uint8")]),
    }


def graph_specs_dit(dit: CausalDiT) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the DiT graph (dynamic axes B, k, P)."""
    d = dit.cfg
    C, g = d.latent_channels, d.grid
    L, H, dh = d.n_layers, d.n_heads, d.head_dim
    return (
        [
            TensorSpec("x", ("B", "k", C, g, g), "float32"),
            TensorSpec("sigma", ("B", "k"), "float32"),
            TensorSpec("actions", ("B", "k"), "int64"),
            TensorSpec("past_k", (L, "B", H, "PN", dh), "float32"),
            TensorSpec("past_v", (L, "B", H, "PN", dh), "float32"),
            TensorSpec("past_t", ("B", "P"), "float32"),
            TensorSpec("past_valid", ("B", "P"), "float32"),
            TensorSpec("past_shift", ("B", "P", 2), "float32"),
        ],
        [
            TensorSpec("x0", ("B", "k", C, g, g), "float32"),
            TensorSpec("k", (L, "B", H, "kN", dh), "float32"),
            TensorSpec("v", (L, "B", H, "kN", dh), "float32"),
        ],
    )


def _example(spec: TensorSpec, sizes: dict[str, int]) -> torch.Tensor:
    shape = [sizes[s] if isinstance(s, str) else s for s in spec.shape]
    if spec.dtype == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    if spec.dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    return torch.randn(shape)


class _OrtRotary(torch.autograd.Function):
    """rotate(x, ang) in torch; exported as one onnxruntime RotaryEmbedding node (com.microsoft contrib op).

    Why: the cached keys are rotated by their time at every read (time is relative), 6 layers x P*N tokens per DiT
    call; as Split/Mul/Sub/Add/Concat nodes that is ~6 passes over the keys per layer, ~10% of a fused per-frame
    call on a 2-core CPU (session 13), where the fused node makes one. The node indexes its cos/sin rows by
    position id, so each token gets its own row: ids b*S + s over (B*S, dh/2) tables."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:  # x (B,H,S,dh), ang (B,1,S,dh/2)
        from worldsim.dit import rotate

        return rotate(x, ang)

    @staticmethod
    def symbolic(g, x, ang):
        # cos/sin tables (B*S, dh/2) and ids (B,S) built from ang's runtime shape (dynamic B and S work too)
        shape = g.op("Shape", ang)  # (B,1,S,dh/2)
        b = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([1])))
        s = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([2])), g.op("Constant", value_t=torch.tensor([3])))
        rows = g.op("Flatten", ang, axis_i=3)  # (B*S, dh/2)
        count = g.op("Squeeze", g.op("Mul", b, s), g.op("Constant", value_t=torch.tensor([0])))
        ids = g.op("Range", g.op("Constant", value_t=torch.tensor(0)), count, g.op("Constant", value_t=torch.tensor(1)))
        ids = g.op("Reshape", ids, g.op("Concat", b, s, axis_i=0), allowzero_i=1)  # S may be 0 (an empty cache)
        out = g.op("com.microsoft::RotaryEmbedding", x, ids, g.op("Cos", rows), g.op("Sin", rows), interleaved_i=0)
        out.setType(x.type())  # the exporter cannot infer a contrib op's output: the same type and shape as x
        return out


def _ort_rotate_past(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    return _OrtRotary.apply(x, ang)


@contextlib.contextmanager
def fused_past_rotation(dit: CausalDiT) -> Iterator[None]:
    """Within the block, the DiT's read-time rotation of cached keys exports as one onnxruntime RotaryEmbedding
    node per layer (the same math: outputs agree to ~1e-6). onnxruntime graphs only: TensorRT graphs keep the plain
    nodes (export.tensorrt)."""
    saved = [b.rotate_past for b in dit.blocks]
    for b in dit.blocks:
        b.rotate_past = _ort_rotate_past
    try:
        yield
    finally:
        for b, f in zip(dit.blocks, saved):
            b.rotate_past = f


def export_onnx(ae: Autoencoder, dit: CausalDiT, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Export the three graphs to out_dir/{encoder,dit,decoder}.onnx (float32); -> their paths."""
    import warnings

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    N = dit.cfg.tokens_per_frame
    sizes = {"B": 1, "k": 2, "P": 3, "PN": 3 * N, "kN": 2 * N}
    specs = graph_specs(ae, dit)
    modules = {"encoder": EncoderGraph(ae), "dit": dit, "decoder": DecoderGraph(ae)}
    paths = {}
    for name in GRAPH_NAMES:
        ins, outs = specs[name]
        args = tuple(_example(s, sizes) for s in ins)
        dyn = {s.name: {i: a for i, a in enumerate(s.shape) if isinstance(a, str)} for s in (*ins, *outs)}
        path = out_dir / f"{name}.onnx"
        tmp = out_dir / f".{name}.onnx.{os.getpid()}.tmp"  # per process: two builders never share a temp file
        with warnings.catch_warnings(), torch.no_grad(), fused_past_rotation(dit):
            warnings.simplefilter("ignore")
            torch.onnx.export(modules[name].eval(), args, str(tmp), input_names=[s.name for s in ins],
                              output_names=[s.name for s in outs], dynamic_axes=dyn, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
        paths[name] = path
    return paths


# precisions of the DiT graph on onnxruntime: fp32, or int8 (its MatMul weights quantized, activations quantized per
# call: 1.26x faster per call on a 2-core AVX2 CPU, quantize_dit_int8). The encoder and decoder stay fp32.
DIT_PRECISIONS = ("fp32", "int8")


def _precision_suffix(precision: str) -> str:
    if precision not in DIT_PRECISIONS:
        raise ValueError(f"unknown DiT precision {precision!r}; choose from {', '.join(DIT_PRECISIONS)}")
    return "" if precision == "fp32" else f"-{precision}"


def dit_graph_name(precision: str = "fp32") -> str:
    """File name of the dynamic-shape DiT graph at a precision: dit.onnx (fp32) or dit-int8.onnx."""
    return f"dit{_precision_suffix(precision)}.onnx"


def static_dit_name(k: int, P: int, precision: str = "fp32") -> str:
    """File name of the DiT graph fixed to one session (B=1), k chunk frames and P cache slots, at a precision."""
    return f"dit-b1-k{int(k)}-p{int(P)}{_precision_suffix(precision)}.onnx"


def quantize_dit_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True, reduce_range: bool = True) -> Path:
    """Write an int8 dynamically quantized copy of a DiT graph (MatMul weights int8, activations per call); -> dst.

    Only MatMul: the attention products are activation x activation and stay float32. ``per_channel`` weights by
    default: on the shipped world's 32-frame rollouts they read the same tiles as fp32 in 100.0% of tiles (per
    tensor 98.9%) at 1.26x (per tensor 1.32x) the speed of a DiT call (session 13).
    ``reduce_range`` (7-bit weights) by default: on x86 CPUs without VNNI (AVX2 only) onnxruntime's u8 x s8
    kernels add pairs of products in int16 and saturate; full-range weights gave a tiny world's DiT outputs
    errors of 0.57 there (0.03 with VNNI or reduced range). A graph may be built on one CPU and run on another."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs a pre-processing hint through the root logger
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range)
        os.replace(tmp, dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return dst


def export_static_dit(dit: CausalDiT, out_dir: str | os.PathLike, k: int, P: int) -> Path:
    """Export the DiT with every shape fixed (B=1, k chunk frames, P cache slots) to out_dir/static_dit_name(k, P).

    Why: with dynamic axes about half of the optimised graph's ~1,500 nodes compute shapes at run time;
    fixed shapes fold them away and the per-frame step runs ~10% faster on a 2-core CPU (the same
    inputs and outputs as dit.onnx, so a backend swaps it in where the shapes match)."""
    if k < 1 or P < 0:
        raise ValueError(f"a static DiT graph needs k >= 1 chunk frames and P >= 0 cache slots, got k={k}, P={P}")
    import warnings

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ins, outs = graph_specs_dit(dit)
    sizes = {"B": 1, "k": k, "P": P, "PN": P * dit.cfg.tokens_per_frame, "kN": k * dit.cfg.tokens_per_frame}
    args = tuple(_example(s, sizes) for s in ins)
    path = out_dir / static_dit_name(k, P)
    tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"
    with warnings.catch_warnings(), torch.no_grad(), fused_past_rotation(dit):
        warnings.simplefilter("ignore")
        torch.onnx.export(dit.eval(), args, str(tmp), input_names=[s.name for s in ins], output_names=[s.name for s in outs],
                          opset_version=OPSET, dynamo=False)
    os.replace(tmp, path)
    return path


def weights_hash(*files: str | os.PathLike, extra: str = "") -> str:
    """sha256 over files' bytes plus a string (configs, tool versions): a cache key."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    h.update(extra.encode())
    return h.hexdigest()
