"""Reading and validating an exported bundle (the writer is `export.bundle`).

A bundle is a self-contained directory that plays with no training code and no torch weights:

    manifest.json          format, version, every file's sha256, every graph's I/O, configs, tools
    graphs/encoder.onnx    uint8 frames (B,H,W,3) -> latents (B,C,g,g)        (onnxruntime)
    graphs/dit.onnx        one chunk against the KV cache                      (fp32 or int8-dynamic)
    graphs/decoder.onnx    latents (B,C,g,g) -> uint8 frames (B,H,W,3)
    opening.npz            opening frames + actions, so a session can start without a context
    reader.npz             the tile reader of the world's decoded frames (when the world has one; numpy only)
    ground.json            the ground head: new ground sampled from the model's tokens (when the world has one; engine.ground)
    actions.json           the action schema (names in the model's order, null action, default keys)
    tensorrt/...           (kind "tensorrt" only) fp16 graphs, engine plans, timing cache

Everything a loader trusts is checked here first: format and version, file hashes (a changed byte is an
error, not a surprise later), graph inputs/outputs against the model configs, the action schema.
"""

from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import numpy as np

from engine.graphs import GRAPH_NAMES, TensorSpec, graph_io, graph_specs
from worldsim.actions import ACTION_NAMES, NULL_ACTION
from worldsim.io import read_json, sha256_file  # noqa: F401  (sha256_file: export uses it from here)

BUNDLE_FORMAT = "worldsim-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE_KINDS = ("onnx", "tensorrt")
GRAPH_PRECISIONS = ("fp32", "int8-dynamic", "fp16")


class BundleError(ValueError):
    """A bundle is missing a file, was changed after export, or does not fit this version of worldsim."""


def is_bundle(path: str | os.PathLike) -> bool:
    """True if `path` is a directory holding a bundle manifest."""
    return (Path(path) / MANIFEST).is_file()


def spec_to_json(spec: TensorSpec) -> dict[str, Any]:
    """A TensorSpec as the manifest stores it."""
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def expected_specs(ae_cfg, dit_cfg) -> dict[str, dict[str, list[dict]]]:
    """The graph I/O a bundle of these configs must declare: {graph: {"inputs": [...], "outputs": [...]}}."""
    specs = graph_specs(SimpleNamespace(cfg=ae_cfg), SimpleNamespace(cfg=dit_cfg))  # graph_specs reads only .cfg
    return {g: {"inputs": [spec_to_json(s) for s in ins], "outputs": [spec_to_json(s) for s in outs]} for g, (ins, outs) in specs.items()}


def action_schema() -> dict[str, Any]:
    """The action schema written to actions.json (and checked on load)."""
    from worldsim.actions import DEFAULT_KEYS

    return {"names": list(ACTION_NAMES), "null_action": NULL_ACTION,
            "alignment": "action a_t is taken on frame t and produces frame t+1",
            "default_keys": {k: list(v) for k, v in DEFAULT_KEYS.items()}}


# -- validation ---------------------------------------------------------------------------------------


def _need(d: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{where}: missing field {key!r}")
    value = d[key]
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise BundleError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def bundle_file(root: Path, rel: Any, where: str) -> Path:
    """Resolve a manifest file reference; it must be a relative path inside the bundle that exists."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{where}: file must be a relative path string, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"{where}: file {rel!r} must stay inside the bundle (no absolute paths or '..')")
    path = root / Path(*p.parts)
    if not path.is_file():
        raise BundleError(f"{where}: file {rel} is missing from the bundle {root}")
    return path


def check_file_entry(root: Path, entry: Any, where: str, verify_hash: bool = True) -> Path:
    """Check one {"file", "sha256"} entry: present, inside the bundle, bytes unchanged; -> its path."""
    path = bundle_file(root, _need(entry, "file", str, where), where)
    want = _need(entry, "sha256", str, where)
    if verify_hash:
        got = sha256_file(path)
        if got != want:
            raise BundleError(f"{path}: sha256 mismatch: the file changed after export (manifest {want[:12]}..., file {got[:12]}...); "
                              "re-export the bundle")
    return path


def _onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Names, dtypes and shapes (int or axis name) of an ONNX graph's inputs and outputs."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise BundleError(f"{path}: not a readable ONNX graph: {e}") from None

    def desc(v) -> dict:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name}

    return [desc(v) for v in model.graph.input], [desc(v) for v in model.graph.output]


def _same_io(declared: list[dict], actual: list[dict]) -> bool:
    """Names, dtypes and ranks equal; static dims equal (dynamic axes may be named differently)."""
    if [(d["name"], d["dtype"], len(d["shape"])) for d in declared] != [(a["name"], a["dtype"], len(a["shape"])) for a in actual]:
        return False
    for d, a in zip(declared, actual):
        for x, y in zip(d["shape"], a["shape"]):
            if isinstance(x, int) and isinstance(y, int) and x != y:
                return False
    return True


def read_manifest(path: str | os.PathLike, verify_hashes: bool = True, check_graphs: bool = True) -> dict[str, Any]:
    """Load and validate a bundle's manifest and files; -> the manifest. Raises BundleError naming what is wrong."""
    root = Path(path)
    mpath = root / MANIFEST
    try:
        m = read_json(mpath, "bundle manifest")
    except (FileNotFoundError, ValueError) as e:
        raise BundleError(str(e)) from None
    where = str(mpath)
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: not a worldsim bundle (format {m.get('format') if isinstance(m, dict) else None!r}, expected {BUNDLE_FORMAT!r})")
    if m.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{where}: bundle format version {m.get('version')!r} is not supported by this worldsim (expected "
                          f"{BUNDLE_VERSION}); re-export it with `worldsim export`")
    kind = _need(m, "kind", str, where)
    if kind not in BUNDLE_KINDS:
        raise BundleError(f"{where}: field 'kind' is {kind!r}, expected one of {', '.join(BUNDLE_KINDS)}")
    world = _need(m, "world", dict, where)
    _need(world, "id", str, f"{where} world")
    ae_cfg, dit_cfg = bundle_configs(m, where)
    if (ae_cfg.latent_channels, ae_cfg.grid) != (dit_cfg.latent_channels, dit_cfg.grid):
        raise BundleError(f"{where}: configs disagree: autoencoder latents {ae_cfg.latent_channels}x{ae_cfg.grid}, DiT "
                          f"{dit_cfg.latent_channels}x{dit_cfg.grid}")
    graphs = _need(m, "graphs", dict, where)
    want = expected_specs(ae_cfg, dit_cfg)
    for name in GRAPH_NAMES:
        g = _need(graphs, name, dict, f"{where} graphs")
        gw = f"{where} graphs.{name}"
        precision = _need(g, "precision", str, gw)
        if precision not in GRAPH_PRECISIONS:
            raise BundleError(f"{gw}: precision {precision!r} is not one of {', '.join(GRAPH_PRECISIONS)}")
        ins, outs = _need(g, "inputs", list, gw), _need(g, "outputs", list, gw)
        names = (tuple(s.get("name") for s in ins if isinstance(s, dict)), tuple(s.get("name") for s in outs if isinstance(s, dict)))
        if names != graph_io(name, ae_cfg.lit):
            raise BundleError(f"{gw}: inputs/outputs {names} are not the {name} graph's {graph_io(name, ae_cfg.lit)}")
        if {"inputs": ins, "outputs": outs} != want[name]:
            raise BundleError(f"{gw}: declared shapes/dtypes do not fit the model configs: {ins} -> {outs}, expected "
                              f"{want[name]['inputs']} -> {want[name]['outputs']}")
        gpath = check_file_entry(root, g, gw, verify_hashes)
        if check_graphs:
            a_ins, a_outs = _onnx_io(gpath)
            if not (_same_io(ins, a_ins) and _same_io(outs, a_outs)):
                raise BundleError(f"{gpath}: the graph's inputs/outputs {a_ins} -> {a_outs} do not match the manifest {ins} -> {outs}")
    files = _need(m, "files", dict, where)
    check_file_entry(root, _need(files, "opening", dict, f"{where} files"), f"{where} files.opening", verify_hashes)
    apath = check_file_entry(root, _need(files, "actions", dict, f"{where} files"), f"{where} files.actions", verify_hashes)
    try:
        schema = json.loads(apath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{apath}: not valid JSON: {e}") from None
    if not isinstance(schema, dict) or schema.get("names") != list(ACTION_NAMES) or schema.get("null_action") != NULL_ACTION:
        raise BundleError(f"{apath}: the bundle's action schema ({schema.get('names') if isinstance(schema, dict) else schema!r}) "
                          f"differs from this worldsim's ({list(ACTION_NAMES)}, null {NULL_ACTION})")
    if "reader" in files:   # the world's tile reader (worldsim.eval.reader), when the source world had one
        check_file_entry(root, _need(files, "reader", dict, f"{where} files"), f"{where} files.reader", verify_hashes)
    if "ground" in files:   # the world's ground head (engine.ground), when the source world had one
        check_file_entry(root, _need(files, "ground", dict, f"{where} files"), f"{where} files.ground", verify_hashes)
    if kind == "tensorrt":
        trt = _need(m, "tensorrt", dict, where)
        for i, e in enumerate(_need(trt, "engines", list, f"{where} tensorrt")):
            ew = f"{where} tensorrt.engines[{i}]"
            check_file_entry(root, _need(e, "onnx", dict, ew), f"{ew}.onnx", verify_hashes)
            if "plan" in e:
                check_file_entry(root, e["plan"], f"{ew}.plan", verify_hashes)
    return m


def bundle_configs(m: dict[str, Any], where: str = MANIFEST):
    """(AEConfig, DiTConfig) from a manifest, with errors naming the field."""
    from worldsim.autoencoder import ae_config_from_dict
    from worldsim.dit import dit_config_from_dict

    configs = _need(m, "configs", dict, where)
    out = []
    for key, parse in (("autoencoder", ae_config_from_dict), ("dit", dit_config_from_dict)):
        try:
            cfg = parse(_need(configs, key, dict, f"{where} configs"))
            cfg.validate()
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: configs.{key} does not fit this version of worldsim: {e}") from None
        out.append(cfg)
    return tuple(out)


# -- loading a World from a bundle ----------------------------------------------------------------------


def load_bundle_world(world_cls, path: Path, backend: str | None, preset, threads: int | None, overrides: dict[str, Any]):
    """World.load for a bundle directory: validated graphs on onnxruntime (or tensorrt plans); no torch weights."""
    from engine.backends import BACKENDS, BackendUnavailable, OrtBackend, tensorrt_unavailable_reason
    from engine.world import _load_opening, resolve_preset

    m = read_manifest(path)
    ae_cfg, dit_cfg = bundle_configs(m)
    world = m["world"]
    max_window = int(world.get("max_window", 10**6))  # a bundle without max_window: no cap
    preset = resolve_preset(preset, overrides, max_window)
    opening = _load_opening(path / m["files"]["opening"]["file"])
    if opening[0].shape[1:] != (ae_cfg.image_size, ae_cfg.image_size, 3):
        raise BundleError(f"{path}: opening frames are {opening[0].shape[1:]}, the bundle renders {ae_cfg.image_size}px")
    graph_dir = {(path / m["graphs"][g]["file"]).parent for g in GRAPH_NAMES}
    if len(graph_dir) != 1 or any((path / m["graphs"][g]["file"]).name != f"{g}.onnx" for g in GRAPH_NAMES):
        raise BundleError(f"{path / MANIFEST}: graphs must be encoder.onnx, dit.onnx and decoder.onnx in one directory")
    graph_dir = graph_dir.pop()
    name = backend or "onnxruntime"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "torch":
        raise BackendUnavailable(f"backend 'torch' needs the torch weights, and the bundle {path} holds only ONNX graphs: "
                                 "load it with backend='onnxruntime' (or 'tensorrt'), or load the source world directory for torch")
    if name == "onnxruntime":
        # a bundle runs dit.onnx at the precision it was exported with (`worldsim export --quantize`), whatever the
        # preset asks: the preset says so, as World.precision does
        be = OrtBackend(graph_dir, threads=threads)
        be.precision = "int8" if m["graphs"]["dit"]["precision"] == "int8-dynamic" else "fp32"
        preset = dataclasses.replace(preset, precision=be.precision)
    else:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {reason}")
        if m["kind"] != "tensorrt":
            raise BackendUnavailable(f"{path} is an ONNX bundle with no TensorRT engines: export one with "
                                     "`worldsim export --format tensorrt` on this GPU machine")
        from engine.tensorrt_backend import TensorRTBackend

        be = TensorRTBackend.from_bundle(path, m, preset, threads=threads)
    meta = {"name": world.get("name", path.name), "tick_hz": float(world.get("tick_hz", 8.0)), "max_window": max_window,
            "bundle": {"kind": m["kind"], "precision": {g: m["graphs"][g]["precision"] for g in GRAPH_NAMES}}}
    out = world_cls(path, meta, be, preset, opening, ae_cfg, dit_cfg, world["id"])
    if "reader" in m["files"]:
        from worldsim.eval.reader import load_reader_npz

        # the export checked it against the source autoencoder; the manifest's hash guards the file since
        try:
            out.reader = load_reader_npz(path / m["files"]["reader"]["file"])
        except ValueError as e:
            raise BundleError(str(e)) from None
        if out.reader.cfg.image_size != ae_cfg.image_size:
            raise BundleError(f"{path}: the tile reader reads {out.reader.cfg.image_size}px frames, the bundle renders {ae_cfg.image_size}px")
    if "ground" in m["files"]:
        from engine.ground import load_ground

        # the export checked it against the source weights; the manifest's hash guards the file since
        try:
            out.ground = load_ground(path / m["files"]["ground"]["file"])
        except ValueError as e:
            raise BundleError(str(e)) from None
        if out.ground.channels != dit_cfg.latent_channels:
            raise BundleError(f"{path}: the ground head reads {out.ground.channels}-channel tokens, the bundle's are {dit_cfg.latent_channels}")
    return out
