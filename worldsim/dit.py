"""The action-conditioned, frame-causal video DiT.

Tokens: one per latent cell (a 9x9 grid = 81 tokens per frame). Positions: 3-axis rotary embeddings
(time, row, column). Keys are *stored* with only their spatial rotation; the time rotation (and an
optional spatial shift, for memory frames seen from another pose) is applied when a key is read, from
the relative offsets the caller passes. So time is relative: a sliding window of any length, or a memory
frame from far in the past, needs no retraining and no absolute frame index.

The model is a pure function used in two ways:
- ``forward``: one chunk of k frames against a cache of past keys/values (inference, ONNX export):
  (noisy latents, noise levels, actions, past K/V, past offsets, past mask) -> (x0 prediction, chunk K/V).
  It never mutates the cache; the engine decides what to write and evict.
- ``forward_teacher``: training on a clip of T frames with a clean-context stream and a noisy-target
  stream in one sequence; noisy frame i attends to clean frames < i and to itself, exactly the attention
  pattern of inference (commit passes write the clean frames; denoising reads them).

Conditioning: per-frame adaLN from (noise-level embedding + action embedding). ``actions[:, i]`` is the
action that *produced* frame i (a_{i-1} in the recorder's alignment); NULL_ACTION when unknown/dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.actions import NULL_ACTION, NUM_ACTION_EMBEDDINGS
from worldsim.config import config_from_dict, preset


@dataclass(frozen=True)
class DiTConfig:
    """DiT hyper-parameters."""

    latent_channels: int = 16
    grid: int = 9  # latent grid side: tokens per frame = grid * grid
    d_model: int = 192
    n_layers: int = 6
    n_heads: int = 3
    mlp_ratio: float = 3.0
    num_actions: int = NUM_ACTION_EMBEDDINGS  # 17 game actions + the null action
    time_pairs: int = 8  # rotary pairs (per head) given to the time axis; the rest split between rows/cols
    rope_base_space: float = 100.0
    rope_base_time: float = 1000.0
    # a learned per-action spatial kernel that mixes the previous frame's attention values into each frame's
    # attention output (False: checkpoints from before it load unchanged); see PrevFrameMix
    prev_mix: bool = False

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.d_model // self.n_heads

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame (grid * grid)."""
        return self.grid * self.grid

    def validate(self) -> None:
        """Raise ValueError for inconsistent sizes."""
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        pairs = self.head_dim // 2
        if self.head_dim % 2 or pairs - self.time_pairs < 2:
            raise ValueError(f"head_dim {self.head_dim} too small for {self.time_pairs} time rotary pairs")


DIT_PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(latent_channels=8, d_model=32, n_layers=2, n_heads=2, mlp_ratio=2.0, time_pairs=2, prev_mix=True),
    "small": DiTConfig(prev_mix=True),
    "base": DiTConfig(d_model=256, n_layers=8, n_heads=4, mlp_ratio=4.0, prev_mix=True),
}


def dit_preset(name: str) -> DiTConfig:
    """A named DiT preset."""
    return preset(DIT_PRESETS, name, "DiT")


def dit_config_from_dict(d: dict) -> DiTConfig:
    """DiTConfig from its JSON dict."""
    return config_from_dict(DiTConfig, d)


# ---------------------------------------------------------------------------------------------------
# Rotary positions


class Rotary(nn.Module):
    """3-axis rotary embedding: angles for (time, row, col) positions; rotate-half layout."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        pairs = cfg.head_dim // 2
        n_t = cfg.time_pairs
        n_y = (pairs - n_t) // 2
        n_x = pairs - n_t - n_y
        ft = cfg.rope_base_time ** (-torch.arange(n_t).float() / max(n_t, 1))
        fy = cfg.rope_base_space ** (-torch.arange(n_y).float() / n_y)
        fx = cfg.rope_base_space ** (-torch.arange(n_x).float() / n_x)
        # freqs[axis] is zero outside that axis's pairs, so angles = t*ft + y*fy + x*fx is one matmul
        freqs = torch.zeros(3, pairs)
        freqs[0, :n_t] = ft
        freqs[1, n_t:n_t + n_y] = fy
        freqs[2, n_t + n_y:] = fx
        self.register_buffer("freqs", freqs, persistent=False)
        g = cfg.grid
        yy, xx = torch.meshgrid(torch.arange(g).float(), torch.arange(g).float(), indexing="ij")
        self.register_buffer("grid_yx", torch.stack([yy.flatten(), xx.flatten()], -1), persistent=False)  # (N,2)

    def angles(self, tyx: torch.Tensor) -> torch.Tensor:
        """Positions (..., 3) as (t, y, x) -> angles (..., pairs)."""
        return tyx @ self.freqs

    def spatial(self) -> torch.Tensor:
        """Angles of the N in-frame positions at time 0: (N, pairs)."""
        zeros = torch.zeros_like(self.grid_yx[:, :1])
        return self.angles(torch.cat([zeros, self.grid_yx], -1))


def rotate(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """Rotate (B,H,S,dh) by angles broadcastable to (B,1,S,dh/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = ang.cos(), ang.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


# ---------------------------------------------------------------------------------------------------
# Blocks


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of noise levels t in [0,1]: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device).float() / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], -1)


class RMSNorm(nn.Module):
    """RMS normalisation written out (aten::rms_norm has no ONNX export at opset 17)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """adaLN: x (B,F*N,d) with per-frame shift/scale (B,F,1,d) -> (B,F*N,d)."""
    B, S, d = x.shape
    return (x.view(B, frames, S // frames, d) * (1 + scale) + shift).view(B, S, d)


def _per_frame(gate: torch.Tensor, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Multiply tokens (B,F*N,d) by a per-frame gate (B,F,1,d)."""
    B, S, d = x.shape
    return (x.view(B, frames, S // frames, d) * gate).view(B, S, d)


@dataclass
class TeacherLayout:
    """A training pass's token layout: frames [memory M, context T, target T] of N tokens each; mem_valid (B,M)
    1 = present; mem_ang (B,T*M*N,pairs) the read rotation of memory frame j's tokens by clip frame i."""

    frames: int
    memory: int = 0
    mem_valid: torch.Tensor | None = None
    mem_ang: torch.Tensor | None = None


def teacher_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, T: int, M: int = 0,
                      mem_keys: torch.Tensor | None = None, mem_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of the training pass, block by block: q, k, v (B,H,(M+2T)N,dh) over frames [memory M,
    context T, target T]; mem_keys (B,H,T,M*N,dh) memory keys as target frame i reads them -> (B,H,(M+2T)N,dh).

    A memory frame sees itself; context i sees context <= i; target i sees the present memory frames, context
    < i and itself. Why blocks: one dense masked attention over the clip computes every (query, key) pair,
    ~2x the needed work without memory and ~3.5x with two memory frames (16-frame clips).
    """
    B, H, S, dh = q.shape
    N = S // (M + 2 * T)
    dev = q.device
    out = []
    if M:  # each memory frame alone
        sl = slice(0, M * N)
        qm, km, vm = (x[:, :, sl].reshape(B, H * M, N, dh) for x in (q, k, v))
        out.append(F.scaled_dot_product_attention(qm, km, vm).reshape(B, H, M * N, dh))
    fi = torch.arange(T, device=dev).repeat_interleave(N)
    sl = slice(M * N, (M + T) * N)
    kc, vc = k[:, :, sl], v[:, :, sl]
    out.append(F.scaled_dot_product_attention(q[:, :, sl], kc, vc, attn_mask=fi[:, None] >= fi[None, :]))
    # target frame i: its memory keys, the whole context (masked to < i) and itself, batched over (B, T)
    sl = slice((M + T) * N, S)
    qt, kt, vt = (x[:, :, sl].reshape(B, H, T, N, dh).transpose(1, 2) for x in (q, k, v))  # (B,T,H,N,dh)
    ctx_k = kc[:, None].expand(B, T, H, T * N, dh)
    ctx_v = vc[:, None].expand(B, T, H, T * N, dh)
    allow_ctx = (torch.arange(T, device=dev)[None, :] < torch.arange(T, device=dev)[:, None]).repeat_interleave(N, 1)  # (T,T*N)
    keys, vals, allow = [ctx_k, kt], [ctx_v, vt], [allow_ctx[None].expand(B, T, T * N), torch.ones(B, T, N, dtype=torch.bool, device=dev)]
    if M:
        valid = torch.ones(B, M, device=dev) if mem_valid is None else mem_valid
        mem_v = v[:, :, :M * N].reshape(B, 1, H, M * N, dh).expand(B, T, H, M * N, dh)
        keys.insert(0, mem_keys.transpose(1, 2))
        vals.insert(0, mem_v)
        allow.insert(0, (valid > 0).repeat_interleave(N, 1)[:, None].expand(B, T, M * N))
    L = sum(x.shape[-2] for x in keys)
    kk = torch.cat(keys, -2).reshape(B * T, H, L, dh)
    vv = torch.cat(vals, -2).reshape(B * T, H, L, dh)
    mask = torch.cat(allow, -1).reshape(B * T, 1, 1, L)
    at = F.scaled_dot_product_attention(qt.reshape(B * T, H, N, dh), kk, vv, attn_mask=mask)
    out.append(at.view(B, T, H, N, dh).transpose(1, 2).reshape(B, H, T * N, dh))
    return torch.cat(out, 2)


class Block(nn.Module):
    """Pre-norm transformer block with per-frame adaLN modulation (shift, scale, gate) x2."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = RMSNorm(cfg.head_dim)  # qk-norm: stable attention logits in bf16
        self.k_norm = RMSNorm(cfg.head_dim)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        # the read-time rotation of the cached keys (B,H,Sp,dh) by angles (B,1,Sp,dh/2): the same math as rotate;
        # an ONNX export may swap in one fused node (engine.graphs.fused_past_rotation), never the weights
        self.rotate_past = rotate

    def forward(
        self,
        h: torch.Tensor,  # (B,S,d) tokens of the frames being computed
        c: torch.Tensor,  # (B,F,d) per-frame conditioning; S = F * N tokens
        ang_space: torch.Tensor,  # (S,pairs) spatial angles of these tokens (stored in keys)
        ang_time: torch.Tensor,  # (B or 1,S,pairs) time angles of these tokens (applied at use)
        past_k: torch.Tensor | None,  # (B,H,Sp,dh) spatially rotated past keys
        past_v: torch.Tensor | None,  # (B,H,Sp,dh)
        past_ang: torch.Tensor | None,  # (B,Sp,pairs) read-time rotation of past keys (time + shift)
        mask: torch.Tensor | None,  # (B or 1,1,S,Sp+S) additive attention bias (None with ``teacher``)
        teacher: "TeacherLayout | None" = None,  # training: the frame layout the block-sparse attention follows
        prev: tuple[torch.Tensor, torch.Tensor] | None = None,  # PrevFrameMix: (B,H,F,N,N) matrices, (B or 1,F,G) one-hot
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (h (B,S,d), keys (B,H,S,dh) with spatial rotation only, values (B,H,S,dh)).

        With ``teacher`` the tokens are the frames [memory M, context T, target T] of a training clip and the
        attention is computed block by block (``teacher_attention``): what the inference path computes for
        each frame, without the dense mask's wasted work. The memory frames' own keys are read by target frame
        i rotated by that frame's (time, shift) (one copy per clip frame, because frames seen from different
        poses read memory shifted differently), exactly what a cache slot read with past_shift gives at
        inference. (Rotating the queries instead needs a second query per token: measured slower on CPU.)
        """
        B, S, d = h.shape
        Fn = c.shape[1]
        # modulation is computed once per frame and broadcast over its tokens (it is the same for all)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, :, None].chunk(6, -1)  # 6 x (B,F,1,d)
        x = _modulate(self.norm1(h), shift1, scale1, Fn)
        q, k, v = self.qkv(x).view(B, S, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B,H,S,dh)
        q, k = self.q_norm(q), self.k_norm(k)
        k_store = rotate(k, ang_space[None, None])  # what a cache keeps
        ang_t = ang_time[:, None]
        q = rotate(rotate(q, ang_space[None, None]), ang_t)
        k_cur = rotate(k_store, ang_t)
        if past_k is not None:
            k_all = torch.cat([self.rotate_past(past_k, past_ang[:, None]), k_cur], 2)
            v_all = torch.cat([past_v, v], 2)
        else:
            k_all, v_all = k_cur, v
        if teacher is not None:
            T, M = teacher.frames, teacher.memory
            N = S // (M + 2 * T)
            copies = None
            if M:
                copies = rotate(k_store[:, :, :M * N].repeat(1, 1, T, 1), teacher.mem_ang[:, None])  # (B,H,T*M*N,dh)
                copies = copies.view(B, -1, T, M * N, copies.shape[-1])
            a = teacher_attention(q, k_cur, v, T, M, copies, teacher.mem_valid)
        else:
            a = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask.to(q.dtype))  # (B,H,S,dh)
        if prev is not None:
            # each frame's previous frame among the G value frames, mixed by the action's kernel (see PrevFrameMix)
            mix, sel = prev
            H, N = v_all.shape[1], S // Fn
            frames = v_all.reshape(B, H, -1, N * v_all.shape[-1])  # (B,H,G,N*dh)
            pv = (sel[:, None].to(frames.dtype) @ frames).view(B, H, Fn, N, -1)  # (B,H,F,N,dh)
            a = a + (mix.to(pv.dtype) @ pv).view(B, H, S, -1)
        a = a.transpose(1, 2).reshape(B, S, d)
        h = h + _per_frame(gate1, self.proj(a), Fn)
        h = h + _per_frame(gate2, self.mlp(_modulate(self.norm2(h), shift2, scale2, Fn)), Fn)
        return h, k_store, v


class PrevFrameMix(nn.Module):
    """A learned kernel per (layer, action, head) over (dy, dx) offsets that mixes the attention *values* of the
    frame before each frame into that frame's attention output: out[n] += sum_m K[a, m - n] v_prev[m].

    Why: a move shifts the whole view by one tile, so frame t is mostly frame t-1 read at an offset the action
    picks. Through rotary positions alone the model must discover that pattern from content; here the
    shifted copy is one kernel entry, learned directly, and is there for every layer from the first steps.
    It is a small matmul beside the attention: no attention-bias gradient (measured 2.7x slower on this
    CPU). The kernel starts at zero (exactly the model without it) and is stored divided by GAIN, because
    Adam moves a parameter by about lr per step and a useful entry is about 1.
    """

    GAIN = 16.0

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        g = cfg.grid
        side = 2 * g - 1  # offsets -(g-1) .. g-1 on each axis
        self.kernel = nn.Parameter(torch.zeros(cfg.n_layers, cfg.num_actions, cfg.n_heads, side * side))
        yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        y, x = yy.flatten(), xx.flatten()
        idx = (y[None, :] - y[:, None] + g - 1) * side + (x[None, :] - x[:, None] + g - 1)  # (N query, N key)
        self.register_buffer("idx", idx, persistent=False)

    def matrices(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (B,F) -> per-layer mixing matrices (L,B,H,F,N,N) from each frame's previous frame."""
        return (self.kernel * self.GAIN)[:, actions][..., self.idx].transpose(2, 3)

    def matrices_from_table(self, actions: torch.Tensor) -> torch.Tensor:
        """``matrices`` (L,B,H,F,N,N) by indexing the table of every action's matrices (L,A,H,N,N), built from the
        kernel alone: an export folds the table into a constant, and a call only copies its actions' rows (the
        per-call scatter of the kernel into N x N matrices cost ~0.9 ms of a ~14 ms onnxruntime step)."""
        return (self.kernel * self.GAIN)[..., self.idx][:, actions].transpose(2, 3)

    @staticmethod
    def follows(n: int, device: torch.device) -> torch.Tensor:
        """(n,n) float one-hot: row i reads frame i-1 of the same n frames (row 0 reads none)."""
        i = torch.arange(n, device=device)
        return (i[:, None] - 1 == i[None, :]).float()

    @staticmethod
    def select_teacher(T: int, lead: int, device: torch.device) -> torch.Tensor:
        """Rows [context T, target T] -> (2T, lead + 2T) one-hot of the previous frame among the value frames
        [lead frames, context T, target T]: both streams' frame i read context frame i-1 (none for i = 0)."""
        rows = torch.cat([torch.zeros(T, lead, device=device), PrevFrameMix.follows(T, device), torch.zeros(T, T, device=device)], 1)
        return torch.cat([rows, rows], 0)

    @staticmethod
    def select_inference(past_t: torch.Tensor, past_valid: torch.Tensor, k: int) -> torch.Tensor:
        """Slot times (B,P) relative to chunk frame 0 -> (B,k,P+k): chunk frame f reads the filled slot at time
        f-1, or chunk frame f-1."""
        f = torch.arange(k, device=past_t.device)
        past = ((past_t[:, None, :] == (f - 1).to(past_t.dtype)[None, :, None]) & (past_valid[:, None, :] > 0)).float()
        cur = PrevFrameMix.follows(k, past_t.device)[None].expand(past_t.shape[0], -1, -1)
        return torch.cat([past, cur], 2)


class CausalDiT(nn.Module):
    """Frame-causal DiT over latent tokens; see the module docstring for the two entry points."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, C, N = cfg.d_model, cfg.latent_channels, cfg.tokens_per_frame
        self.rotary = Rotary(cfg)
        self.x_in = nn.Linear(C, d)
        self.pos = nn.Parameter(torch.zeros(N, d))  # absolute in-frame position: the player and inventory rows are fixed
        nn.init.normal_(self.pos, std=0.02)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action_emb = nn.Embedding(cfg.num_actions, d)
        nn.init.normal_(self.action_emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.prev_mix = PrevFrameMix(cfg) if cfg.prev_mix else None
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, C)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- helpers ------------------------------------------------------------------------------------

    def _embed(self, x: torch.Tensor, sigma: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,F,C,g,g), sigma (B,F), actions (B,F) -> tokens (B,F*N,d), per-frame cond (B,F,d)."""
        B, Fn = sigma.shape
        N = self.cfg.tokens_per_frame
        tok = self.x_in(x.flatten(3).transpose(2, 3)) + self.pos  # (B,F,N,d)
        c = self.t_mlp(timestep_embedding(sigma, self.cfg.d_model)) + self.action_emb(actions)  # (B,F,d)
        c = F.silu(c)
        return tok.reshape(B, Fn * N, -1), c

    def _head(self, h: torch.Tensor, c: torch.Tensor, B: int, Fn: int) -> torch.Tensor:
        """Tokens (B,F*N,d) -> x0 prediction (B,F,C,g,g)."""
        shift, scale = self.ada_out(c)[:, :, None].chunk(2, -1)
        y = self.out(_modulate(self.norm_out(h), shift, scale, Fn))  # (B,F*N,C)
        g = self.cfg.grid
        return y.view(B, Fn, g, g, -1).permute(0, 1, 4, 2, 3)

    def _time_angles(self, t: torch.Tensor) -> torch.Tensor:
        """Frame times (B?,F) -> per-token time angles (B?,F*N,pairs)."""
        tyx = torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)], -1)  # (...,F,3)
        return self.rotary.angles(tyx).repeat_interleave(self.cfg.tokens_per_frame, dim=-2)

    # -- inference: one chunk against a cache -------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,  # (B,k,C,g,g) noisy latents of the chunk
        sigma: torch.Tensor,  # (B,k) noise level of each chunk frame, in [0,1]
        actions: torch.Tensor,  # (B,k) int64 action that produced each chunk frame
        past_k: torch.Tensor,  # (L,B,H,P*N,dh) cached keys (spatial rotation only)
        past_v: torch.Tensor,  # (L,B,H,P*N,dh) cached values
        past_t: torch.Tensor,  # (B,P) time of each cached frame relative to chunk frame 0 (e.g. -1, -2, ...)
        past_valid: torch.Tensor,  # (B,P) 1 for a filled slot, 0 for an empty one
        past_shift: torch.Tensor | None = None,  # (B,P,2) (dy,dx) in tiles of a memory frame's view; zeros for the window
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (x0 prediction (B,k,C,g,g), chunk keys (L,B,H,k*N,dh), chunk values (L,B,H,k*N,dh))."""
        B, k = sigma.shape
        N = self.cfg.tokens_per_frame
        P = past_t.shape[1]
        h, c = self._embed(x, sigma, actions)
        ang_space = self.rotary.spatial().repeat(k, 1)  # (k*N,pairs)
        ang_time = self._time_angles(torch.arange(k, device=x.device, dtype=torch.float32))[None]  # (1,k*N,pairs)
        if past_shift is None:
            past_shift = torch.zeros(B, P, 2, dtype=past_t.dtype, device=past_t.device)
        past_pos = torch.cat([past_t[..., None], past_shift], -1)  # (B,P,3)
        past_ang = self.rotary.angles(past_pos).repeat_interleave(N, dim=1)  # (B,P*N,pairs)
        # attention bias: empty cache slots are masked; block-causal inside the chunk
        neg = torch.finfo(torch.float32).min
        past_bias = torch.where(past_valid > 0, 0.0, neg).repeat_interleave(N, dim=1)  # (B,P*N)
        frame_of = torch.arange(k * N, device=x.device) // N
        cur_bias = torch.where(frame_of[None, :] <= frame_of[:, None], 0.0, neg)  # (k*N,k*N)
        mask = torch.cat([past_bias[:, None, :].expand(B, k * N, P * N), cur_bias[None].expand(B, -1, -1)], -1)[:, None]
        mix = sel = None
        if self.prev_mix is not None:
            mix, sel = self.prev_mix.matrices_from_table(actions), PrevFrameMix.select_inference(past_t, past_valid, k)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            h, kk, vv = blk(h, c, ang_space, ang_time, past_k[i], past_v[i], past_ang, mask,
                            prev=None if mix is None else (mix[i], sel))
            ks.append(kk)
            vs.append(vv)
        return self._head(h, c, B, k), torch.stack(ks), torch.stack(vs)

    # -- training: clean context stream + noisy target stream ---------------------------------------

    def forward_teacher(
        self,
        x_ctx: torch.Tensor,  # (B,T,C,g,g) context latents (clean or lightly noised)
        sigma_ctx: torch.Tensor,  # (B,T) their noise levels
        x_tgt: torch.Tensor,  # (B,T,C,g,g) noisy target latents
        sigma_tgt: torch.Tensor,  # (B,T)
        actions: torch.Tensor,  # (B,T) action that produced frame i (shared by both streams)
        mem_x: torch.Tensor | None = None,  # (B,M,C,g,g) memory frames' latents (clean or lightly noised)
        mem_sigma: torch.Tensor | None = None,  # (B,M) their noise levels
        mem_t: torch.Tensor | None = None,  # (B,M) their frame index minus the clip's first (negative: the past)
        mem_pose: torch.Tensor | None = None,  # (B,M,2) (x,y) tile of the player when each memory frame was seen
        pose: torch.Tensor | None = None,  # (B,T,2) (x,y) tile of the player in each clip frame
        mem_valid: torch.Tensor | None = None,  # (B,M) 1 = present, 0 = absent (default: all present)
    ) -> torch.Tensor:
        """-> x0 prediction of every target frame (B,T,C,g,g); target i sees context < i and itself.

        With memory (``mem_x`` given), every target frame also sees the memory frames, each at its time
        offset and shifted by (memory pose - that frame's pose), i.e. read exactly like a cache slot with
        past_t and past_shift = worldsim.memory.memory_shift(mem_pose, pose) at inference; a memory frame
        sees only itself (at play time its keys come from a pass over that frame alone). Context frames do
        not read memory: at play time the commit pass runs without it (a committed frame already shows
        what memory gave it), which halves the memory's cost per frame.
        """
        if mem_x is not None:
            return self._teacher_with_memory(x_ctx, sigma_ctx, x_tgt, sigma_tgt, actions, mem_x, mem_sigma, mem_t, mem_pose, pose, mem_valid)
        B, T = sigma_ctx.shape
        N = self.cfg.tokens_per_frame
        hc, cc = self._embed(x_ctx, sigma_ctx, actions)
        ht, ct = self._embed(x_tgt, sigma_tgt, actions)
        h = torch.cat([hc, ht], 1)  # (B,2*T*N,d)
        c = torch.cat([cc, ct], 1)
        ang_space = self.rotary.spatial().repeat(2 * T, 1)
        t = torch.arange(T, device=h.device, dtype=torch.float32)
        ang_time = self._time_angles(torch.cat([t, t]))[None]
        layout = TeacherLayout(T)
        mix = sel = None
        if self.prev_mix is not None:
            mix = self.prev_mix.matrices(torch.cat([actions, actions], 1))
            sel = PrevFrameMix.select_teacher(T, 0, h.device)[None]
        for i, blk in enumerate(self.blocks):
            h, _, _ = blk(h, c, ang_space, ang_time, None, None, None, None, layout, prev=None if mix is None else (mix[i], sel))
        return self._head(h[:, T * N:], c[:, T:], B, T)

    def _teacher_with_memory(self, x_ctx, sigma_ctx, x_tgt, sigma_tgt, actions, mem_x, mem_sigma, mem_t, mem_pose, pose, mem_valid):
        """forward_teacher with M memory frames in front of the two streams: -> (B,T,C,g,g)."""
        B, T = sigma_ctx.shape
        M = mem_x.shape[1]
        N = self.cfg.tokens_per_frame
        if mem_sigma is None or mem_t is None or mem_pose is None or pose is None:
            raise ValueError("forward_teacher with memory needs mem_sigma (B,M), mem_t (B,M), mem_pose (B,M,2) and pose (B,T,2)")
        if mem_x.shape[0] != B or mem_sigma.shape != (B, M) or mem_t.shape != (B, M) or mem_pose.shape != (B, M, 2) or pose.shape != (B, T, 2):
            raise ValueError(f"memory inputs do not fit {B} clips of {T} frames with {M} memory frames: mem_x {tuple(mem_x.shape)}, "
                             f"mem_sigma {tuple(mem_sigma.shape)}, mem_t {tuple(mem_t.shape)}, mem_pose {tuple(mem_pose.shape)}, "
                             f"pose {tuple(pose.shape)}")
        if mem_valid is None:
            mem_valid = torch.ones(B, M, device=mem_x.device)
        null = torch.full((B, M), NULL_ACTION, dtype=actions.dtype, device=actions.device)  # a memory frame's producing action is irrelevant
        hm, cm = self._embed(mem_x, mem_sigma, null)
        hc, cc = self._embed(x_ctx, sigma_ctx, actions)
        ht, ct = self._embed(x_tgt, sigma_tgt, actions)
        h = torch.cat([hm, hc, ht], 1)  # (B,(M+2T)*N,d)
        c = torch.cat([cm, cc, ct], 1)
        ang_space = self.rotary.spatial().repeat(M + 2 * T, 1)
        t = torch.arange(T, device=h.device, dtype=torch.float32)
        ang_time = self._time_angles(torch.cat([torch.zeros(M, device=h.device), t, t]))[None]  # a memory frame sees only itself
        # copy i of memory frame j is read by clip frame i: time t_j, shift (dy, dx) = memory pose - frame pose
        d = mem_pose.float()[:, None, :, :] - pose.float()[:, :, None, :]  # (B,T,M,2) (dx, dy)
        pos = torch.stack([mem_t.float()[:, None, :].expand(B, T, M), d[..., 1], d[..., 0]], -1)  # (B,T,M,3) (t, y, x)
        mem_ang = self.rotary.angles(pos).reshape(B, T * M, -1).repeat_interleave(N, dim=1)  # (B,T*M*N,pairs)
        layout = TeacherLayout(T, M, mem_valid, mem_ang)
        mix = sel = None
        if self.prev_mix is not None:  # value frames [memory M, context T, target T]; memory rows read nothing
            mix = self.prev_mix.matrices(torch.cat([null, actions, actions], 1))
            rows = PrevFrameMix.select_teacher(T, M, h.device)
            sel = torch.cat([rows.new_zeros(M, rows.shape[1]), rows], 0)[None]
        for i, blk in enumerate(self.blocks):
            h, _, _ = blk(h, c, ang_space, ang_time, None, None, None, None, layout, prev=None if mix is None else (mix[i], sel))
        return self._head(h[:, (M + T) * N:], c[:, M + T:], B, T)

    def empty_cache(self, batch: int, frames: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """Zeros for (past_k, past_v, past_t, past_valid) with `frames` slots."""
        cfg = self.cfg
        shape = (cfg.n_layers, batch, cfg.n_heads, frames * cfg.tokens_per_frame, cfg.head_dim)
        dev = self.pos.device
        return (torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev),
                torch.zeros(batch, frames, device=dev), torch.zeros(batch, frames, device=dev))
