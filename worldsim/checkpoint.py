"""Checkpoints: safetensors weights with their JSON config in the file's metadata (no pickles)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from worldsim.io import atomic_path

META_KEY = "worldsim"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match what the caller expects."""


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save tensors and a JSON-able ``meta`` (config, kind, step...) atomically to a .safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def read_meta(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """A checkpoint's meta (config, kind, step...) without reading its tensors; errors as load_checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file: {e}") from None
    return _parse_meta(path, raw, kind)


def _parse_meta(path: Path, raw: str | None, kind: str | None) -> dict[str, Any]:
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no '{META_KEY}' metadata (not a worldsim checkpoint)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {e}") from None
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {meta.get('kind')!r} model, expected {kind!r}")
    return meta


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load (tensors, meta); raise CheckpointError naming the file if it is missing, corrupt or of another kind."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path, kind)  # checks existence, the header and the kind before reading any tensor
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file: {e}") from None
    return tensors, meta


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike = "<memory>") -> None:
    """Load a state dict, turning key/shape mismatches into a CheckpointError that names them."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad_shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or unexpected or bad_shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if bad_shapes:
            parts.append(f"shape mismatch {bad_shapes[:3]}")
        raise CheckpointError(f"checkpoint {path} does not match the model config: " + "; ".join(parts))
    module.load_state_dict(tensors, strict=True)
