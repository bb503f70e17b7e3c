"""Deployment (issue #7) on a random-weight tiny world: bundle round trip with no torch weights, manifest
validation and clear errors for tampered bundles, the parity check as an error, the int8 quality bound,
engine-cache keys, batched sessions == sessions alone, the TensorRT device path (with stand-in engines on
the CPU here, the real engines behind `pytest.mark.gpu`) and the clear errors without a GPU."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import BackendUnavailable, World
from engine.backends import tensorrt_unavailable_reason
from engine.bundle import BundleError, read_manifest
from engine.testing import add_ground_head, add_random_reader, make_tiny_world
from export.bundle import export_bundle
from export.parity import ParityError, check_parity, play

ACTS = ["move_left", "do", "noop", "move_up", "place_stone", "move_right", "move_down", "sleep"]


def _acts(n: int, offset: int = 0) -> list[str]:
    return [ACTS[(i + offset) % len(ACTS)] for i in range(n)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny world with a (random) tile reader and ground head: bundles carry them."""
    path = make_tiny_world(tmp_path_factory.mktemp("export") / "tiny", seed=3)
    add_random_reader(path, seed=3)
    add_ground_head(path, seed=3)
    return path


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory) -> Path:
    """An fp32 ONNX bundle of the tiny world, moved away from its source (nothing to fall back on)."""
    out = tmp_path_factory.mktemp("bundles") / "made"
    export_bundle(tiny, out, parity_frames=6, log=lambda s: None)
    moved = out.parent / "moved"
    shutil.move(str(out), moved)
    return moved


@pytest.fixture(scope="module")
def int8_bundle(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "int8"
    export_bundle(tiny, out, quantize="int8", parity_frames=6, log=lambda s: None)
    return out


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


# -- round trip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fast", "quality"])
def test_bundle_plays_the_same_frames_as_its_source_world(tiny, bundle, preset):
    """export -> World.load(bundle) -> identical frames to the source world on onnxruntime, with no torch
    weights, world.json or ONNX cache in the bundle."""
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "actions.json", "opening.npz", "graphs/encoder.onnx", "graphs/dit.onnx", "graphs/decoder.onnx", "reader.npz",
                     "ground.json"}
    src = World.load(tiny, backend="onnxruntime", preset=preset, precision="fp32")
    b = World.load(bundle, preset=preset)  # a float32 bundle runs float32 whatever the preset's precision
    assert b.backend_name == "onnxruntime" and b.id == src.id and b.frame_shape == src.frame_shape
    assert b.precision == b.preset.precision == "fp32"
    assert b.ground is not None and np.array_equal(b.ground.weight, src.ground.weight) and b.ground.classes == src.ground.classes
    for seed in (0, 1):
        expected = play(src, 12, seed)
        got = play(b, 12, seed)
        assert np.array_equal(got, expected)
    # a session saved from the source world resumes in the bundle (same id, same frames)
    s = src.new_session(seed=2)
    s.step(_acts(3))
    path = bundle.parent / f"s-{preset}.npz"
    s.save(path)
    r = b.load_session(path)
    assert np.array_equal(r.step(_acts(4, 3)), s.step(_acts(4, 3)))


def test_bundle_loads_without_training_code_or_weights(bundle):
    """A fresh process plays the bundle without importing the trainer or reading safetensors."""
    import subprocess
    import sys

    code = ("import sys; from engine import World; w = World.load(sys.argv[1]); w.new_session().step('do'); "
            "print(sorted(m for m in ('worldsim.train', 'safetensors', 'worldsim.checkpoint') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_manifest_describes_graphs_hashes_configs_and_parity(tiny, bundle):
    from engine.bundle import expected_specs, sha256_file
    from worldsim.train import load_autoencoder, load_dit

    m = read_manifest(bundle)
    ae, dit = load_autoencoder(tiny / "autoencoder.safetensors"), load_dit(tiny / "dit.safetensors")
    want = expected_specs(ae.cfg, dit.cfg)
    for g in ("encoder", "dit", "decoder"):
        e = m["graphs"][g]
        assert {"inputs": e["inputs"], "outputs": e["outputs"]} == want[g]
        assert e["sha256"] == sha256_file(bundle / e["file"]) and e["precision"] == "fp32" and e["opset"] == m["opset"]
    assert m["source"]["files"]["dit.safetensors"] == sha256_file(tiny / "dit.safetensors")
    assert {"torch", "onnx", "onnxruntime", "python", "worldsim"} <= set(m["tools"])
    p = m["parity"]["onnxruntime"]
    assert p["ok"] and p["frames"] == 6
    assert set(p["max_diff"]) == {"encoder/latents", "dit/x0", "dit/k", "dit/v", "decoder/frames"}
    assert all(p["max_diff"][k] <= p["tolerance"][k] for k in p["max_diff"])
    # the world's tile reader travels as a numpy archive and reads exactly as the source world's
    assert m["files"]["reader"]["sha256"] == sha256_file(bundle / m["files"]["reader"]["file"])
    src, out = World.load(tiny, backend="torch").reader, World.load(bundle).reader
    frames = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    np.testing.assert_array_equal(out.logits(frames, [0.2, 0.6, 1.0], [False, True, False]),
                                  src.logits(frames, [0.2, 0.6, 1.0], [False, True, False]))


# -- validation: tampered and mismatched bundles ----------------------------------------------------------


def _edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_changed_graph_bytes_are_a_hash_mismatch(bundle_copy):
    p = bundle_copy / "graphs" / "dit.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"dit\.onnx: sha256 mismatch.*re-export"):
        World.load(bundle_copy)


@pytest.mark.parametrize("victim", ["graphs/decoder.onnx", "opening.npz", "actions.json", "reader.npz"])
def test_missing_file_is_named(bundle_copy, victim):
    (bundle_copy / victim).unlink()
    with pytest.raises(BundleError, match=f"{victim} is missing"):
        World.load(bundle_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=99), r"version 99 is not supported.*expected 1"),
    (lambda m: m.update(format="something-else"), r"not a worldsim bundle"),
    (lambda m: m.pop("graphs"), r"missing field 'graphs'"),
    (lambda m: m["graphs"]["dit"].update(file="../../etc/passwd"), r"must stay inside the bundle"),
    (lambda m: m["graphs"]["dit"].update(precision="int4"), r"precision 'int4'"),
    (lambda m: m["configs"]["dit"].update(n_layers=3), r"declared shapes/dtypes do not fit the model configs"),
    (lambda m: m["configs"]["dit"].update(colour="blue"), r"configs\.dit does not fit.*colour"),
    (lambda m: m["graphs"]["dit"]["inputs"].pop(), r"inputs/outputs .* are not the dit graph's"),
])
def test_bad_manifest_errors_name_the_field(bundle_copy, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        World.load(bundle_copy)


def test_graph_swapped_for_another_is_caught(bundle_copy):
    """A graph replaced by another one (hash updated to match) still fails: its I/O is not the manifest's."""
    from engine.bundle import sha256_file

    shutil.copy(bundle_copy / "graphs" / "encoder.onnx", bundle_copy / "graphs" / "decoder.onnx")
    _edit_manifest(bundle_copy, lambda m: m["graphs"]["decoder"].update(sha256=sha256_file(bundle_copy / "graphs" / "decoder.onnx")))
    with pytest.raises(BundleError, match=r"decoder\.onnx: the graph's inputs/outputs .* do not match the manifest"):
        World.load(bundle_copy)


def test_action_schema_mismatch(bundle_copy):
    from engine.bundle import sha256_file

    a = json.loads((bundle_copy / "actions.json").read_text())
    a["names"] = a["names"][::-1]
    (bundle_copy / "actions.json").write_text(json.dumps(a))
    _edit_manifest(bundle_copy, lambda m: m["files"]["actions"].update(sha256=sha256_file(bundle_copy / "actions.json")))
    with pytest.raises(BundleError, match="action schema"):
        World.load(bundle_copy)


def test_bundle_backends_and_reexport_errors(bundle, tmp_path):
    with pytest.raises(BackendUnavailable, match="holds only ONNX graphs"):
        World.load(bundle, backend="torch")
    with pytest.raises(BundleError, match="already an exported bundle"):
        export_bundle(bundle, tmp_path / "again", log=lambda s: None)


# -- the export command and its parity check -----------------------------------------------------------------


def test_cli_exports_and_refuses_to_overwrite(tiny, tmp_path, capsys):
    from worldsim.cli import main

    out = tmp_path / "cli-bundle"
    assert main(["export", "--world", str(tiny), "--format", "onnx", "--out", str(out), "--parity-frames", "3"]) == 0
    log = capsys.readouterr().out
    assert "dit/x0" in log and "max diff" in log and "wrote" in log
    assert read_manifest(out)["kind"] == "onnx"
    assert main(["export", "--world", str(tiny), "--out", str(out), "--parity-frames", "3"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "world description not found" in capsys.readouterr().err


def test_failed_parity_is_an_error_and_writes_nothing(tiny, tmp_path, monkeypatch, capsys):
    """A graph that does not match the torch reference stops the export with the max difference per output."""
    import engine.graphs
    from worldsim.cli import main

    real = engine.graphs.export_onnx

    def export_a_different_dit(ae, dit, out_dir):
        wrong = copy.deepcopy(dit)
        with torch.no_grad():
            wrong.out.bias.add_(0.5)  # the DiT graph's x0 is now off by 0.5
        return real(ae, wrong, out_dir)

    monkeypatch.setattr(engine.graphs, "export_onnx", export_a_different_dit)
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"dit/x0 max diff [0-9.]+ > tolerance 0.001"):
        export_bundle(tiny, out, parity_frames=3, log=lambda s: None)
    assert not out.exists() and not list(tmp_path.glob(".bad*"))
    assert main(["export", "--world", str(tiny), "--out", str(out), "--parity-frames", "3"]) == 1
    assert "dit/x0" in capsys.readouterr().err and not out.exists()


# -- quantization -----------------------------------------------------------------------------------------


def test_int8_dit_stays_close_to_float32(bundle, int8_bundle, tiny):
    """The int8 bundle: per-call DiT outputs within 8% of the output range of float32 (manifest), and
    decoded free rollouts within 35 dB PSNR of the float32 bundle. A quantization with wrong weight scales
    (x2) fails the check."""
    m = read_manifest(int8_bundle)
    assert m["graphs"]["dit"]["precision"] == "int8-dynamic" and m["graphs"]["encoder"]["precision"] == "fp32"
    assert m["world"]["id"] != read_manifest(bundle)["world"]["id"]  # different frames: sessions do not cross over
    assert (int8_bundle / "graphs" / "dit.onnx").stat().st_size < (bundle / "graphs" / "dit.onnx").stat().st_size
    assert m["parity"]["onnxruntime"]["max_diff"]["dit/x0"] <= 0.08
    f32, q8 = World.load(bundle), World.load(int8_bundle)
    assert q8.precision == q8.preset.precision == "int8"
    for seed in (0, 1):
        assert _psnr(play(q8, 16, seed), play(f32, 16, seed)) >= 35.0

    import onnx
    from onnx import numpy_helper

    from engine.backends import OrtBackend

    broken_dir = int8_bundle.parent / "broken"
    shutil.copytree(int8_bundle / "graphs", broken_dir)
    model = onnx.load(str(broken_dir / "dit.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("_scale") and init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    onnx.save(model, str(broken_dir / "dit.onnx"))
    ref = World.load(tiny, backend="torch", threads=1)
    cand = copy.copy(ref)
    cand.backend = OrtBackend(broken_dir, threads=1)
    with pytest.raises(ParityError, match="dit/x0"):
        check_parity(ref, cand, {"dit": "int8-dynamic"}, frames=3)


# -- many players ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fast", "quality"])
def test_batched_stepping_equals_each_session_alone(bundle, preset):
    """Three sessions at different frame indices, stepped with one network call per denoising step, give the
    latents and frames each gives alone (own RNG, own cache), through the ring wrapping and a restore of one
    of them outside the batch. Latents are compared, not only frames: the tiny decoder hides small errors."""
    from engine.batch import SessionBatch

    w = World.load(bundle, preset=preset)

    def act(i: int, t: int) -> str:
        return ACTS[(3 * i + t) % len(ACTS)]

    def start(i: int):
        s = w.new_session(seed=i)
        for t in range(i):  # different frame indices per session
            s.step(act(i, -1 - t))
        return s

    alone = []  # per session: [(frame, latent)] for ticks 0..13
    for i in range(3):
        s = start(i)
        alone.append([(s.step(act(i, t)), s._state.latent.copy()) for t in range(14)])
    sessions = [start(i) for i in range(3)]
    batch = SessionBatch(sessions)
    got: list[list] = [[], [], []]

    def tick(ts: list[int]) -> None:
        frames = batch.step([act(i, t) for i, t in enumerate(ts)])
        for i, f in enumerate(frames):
            got[i].append((ts[i], f, sessions[i]._state.latent.copy()))

    for t in range(6):
        tick([t, t, t])
    snap = sessions[1].snapshot()
    for t in range(6, 10):
        tick([t, t, t])
    sessions[1].restore(snap)  # replaced outside the batch: the batch must re-read its cache
    for t in range(6, 10):
        tick([t + 4, t, t + 4])
    for i in range(3):
        for t, frame, latent in got[i]:
            ref_frame, ref_latent = alone[i][t]
            np.testing.assert_allclose(latent, ref_latent, atol=1e-4, err_msg=f"session {i} tick {t}")
            assert np.abs(frame.astype(int) - ref_frame.astype(int)).max() <= 1, f"session {i} tick {t}"


def test_batch_errors(bundle, tiny):
    from engine.batch import SessionBatch, step_sessions

    w = World.load(bundle)
    a, b = w.new_session(seed=0), w.new_session(seed=1)
    other = World.load(bundle).new_session()
    with pytest.raises(ValueError, match="twice"):
        SessionBatch([a, a])
    with pytest.raises(ValueError, match="same World"):
        SessionBatch([a, other])
    with pytest.raises(ValueError, match="2 sessions need 2 actions"):
        step_sessions([a, b], ["noop"])
    with pytest.raises(ValueError, match="unknown action 'fly'.*valid actions"):
        step_sessions([a, b], ["noop", "fly"])
    with pytest.raises(ValueError, match="not a mix"):
        step_sessions([a, b], ["noop", ["do"]])
    with pytest.raises(ValueError, match="chunk of 1"):
        step_sessions([a, b], [["noop", "do"], ["do", "do"]])
    out = step_sessions([a, b], ["noop", "do"])
    assert [f.shape for f in out] == [w.frame_shape] * 2 and all(f.dtype == np.uint8 for f in out)


def test_bench_sessions_cli(capsys):
    from export.bench_sessions import main

    assert main(["--tiny", "--sessions", "1,2", "--ticks", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[1]) > 0 for r in rows)
    assert main(["--tiny", "--sessions", "0,2"]) == 2


# -- TensorRT: pure logic, the device path on stand-in engines, the real thing behind `gpu` ---------------------


def test_engine_cache_key():
    from engine.tensorrt_backend import engine_cache_key, trt_major

    h = "ab" * 32
    shapes = {"x": (1, 1, 16, 9, 9), "past_k": (6, 1, 3, 486, 64)}
    key = engine_cache_key(h, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp16", shapes)
    assert key == engine_cache_key(h, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp16", dict(reversed(list(shapes.items()))))
    assert key == engine_cache_key(h, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp16", {k: list(v) for k, v in shapes.items()})
    variants = [("cd" * 32, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp16", shapes), (h, "10.4.0", "NVIDIA H100 (sm 9.0)", "fp16", shapes),
                (h, "10.3.0", "NVIDIA L4 (sm 8.9)", "fp16", shapes), (h, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp32", shapes),
                (h, "10.3.0", "NVIDIA H100 (sm 9.0)", "fp16", {**shapes, "x": (2, 1, 16, 9, 9)})]
    keys = {engine_cache_key(*v) for v in variants}
    assert len(keys) == len(variants) and key not in keys
    for bad, match in [((h[:10], "10", "g", "fp16", shapes), "64-digit"), ((h, "10", "g", "int4", shapes), "precision"),
                       ((h, "10", "g", "fp16", {"x": (-1, 3)}), "static"), ((h, "", "g", "fp16", shapes), "must not be empty")]:
        with pytest.raises(ValueError, match=match):
            engine_cache_key(*bad)
    assert trt_major("10.3.0.26") == 10 and trt_major("11.0.0") == 11


def test_tensorrt_graphs_keep_precision_in_the_graph(tiny, tmp_path):
    """The fp16 graphs TensorRT builds from (fp16 weights, float32 I/O) stay within the fp16 parity tolerance of
    torch float32 on onnxruntime's CPU kernels; the decoder's float pixels truncate to the uint8 frames."""
    import onnx
    import onnxruntime as ort

    from engine.graphs import DecoderGraph
    from export.parity import TOLERANCES
    from export.tensorrt import export_trt_onnx
    from worldsim.train import load_autoencoder, load_dit

    ae, dit = load_autoencoder(tiny / "autoencoder.safetensors"), load_dit(tiny / "dit.safetensors")
    paths = export_trt_onnx(ae, dit, tmp_path, "fp16")
    g = onnx.load(str(paths["dit"])).graph
    inits = {i.name: i.data_type for i in g.initializer}
    weights = [inits[n.input[1]] for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    assert len(weights) >= 4 * dit.cfg.n_layers and set(weights) == {onnx.TensorProto.FLOAT16}  # the precision is in the graph
    so = ort.SessionOptions()
    so.log_severity_level = 3
    c = dit.cfg
    rng = np.random.default_rng(0)
    P = 5
    kv = (c.n_layers, 2, c.n_heads, P * c.tokens_per_frame, c.head_dim)
    feed = {"x": rng.standard_normal((2, 1, c.latent_channels, c.grid, c.grid), dtype=np.float32), "sigma": np.full((2, 1), 0.6, np.float32),
            "actions": np.array([[3], [5]]), "past_k": rng.standard_normal(kv, dtype=np.float32), "past_v": rng.standard_normal(kv, dtype=np.float32),
            "past_t": -np.arange(1, P + 1, dtype=np.float32)[None].repeat(2, 0), "past_valid": np.ones((2, P), np.float32),
            "past_shift": np.zeros((2, P, 2), np.float32)}
    got = ort.InferenceSession(str(paths["dit"]), so, providers=["CPUExecutionProvider"]).run(None, feed)
    with torch.no_grad():
        ref = dit(*(torch.from_numpy(v) for v in feed.values()))
    for name, a, b in zip(("x0", "k", "v"), got, ref):
        b = b.numpy()
        assert np.abs(a - b).max() / max(1.0, np.abs(b).max()) <= TOLERANCES["fp16"][name] / 4, name
    z = rng.standard_normal((3, c.latent_channels, c.grid, c.grid), dtype=np.float32)
    pix = ort.InferenceSession(str(paths["decoder"]), so, providers=["CPUExecutionProvider"]).run(None, {"latents": z})[0]
    with torch.no_grad():
        frames = DecoderGraph(ae)(torch.from_numpy(z)).numpy()
    assert pix.dtype == np.float32 and np.abs(pix.astype(np.uint8).astype(int) - frames.astype(int)).max() <= 1


class _StandInEngine:
    """A TensorRT engine stand-in on the CPU: the same ONNX graph on onnxruntime, reading and writing the bound
    torch tensors. Lets the tensorrt backend's device code (buffers, sampler, ring write, sync) run here."""

    _TYPES = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64}

    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.types = {v.name: self._TYPES[v.type] for v in (*self.sess.get_inputs(), *self.sess.get_outputs())}
        self.calls = 0

    def dtype(self, name):
        return self.types[name]

    def output_shapes(self, shapes):
        feed = {n: np.zeros(shapes[n], dtype=torch.empty(0, dtype=self.types[n]).numpy().dtype) for n in self.inputs}
        return {n: o.shape for n, o in zip(self.outputs, self.sess.run(None, feed))}

    def context(self, tensors):
        eng = self

        class Context:
            def execute_async_v3(self, stream_handle):
                eng.calls += 1
                outs = eng.sess.run(None, {n: tensors[n].numpy() for n in eng.inputs})
                for n, o in zip(eng.outputs, outs):
                    tensors[n].copy_(torch.from_numpy(o))
                return True
        return Context()


@pytest.mark.parametrize("preset", ["fast", "quality"])
def test_tensorrt_device_path_matches_the_session(tiny, tmp_path, preset):
    """The tensorrt backend's real-time path (cache on the device, per-frame work in one replayable function,
    host RNG in the session's order) run with float32 stand-in engines gives the Session's frames; snapshot,
    restore and a fall back to the generic path keep the device and host caches consistent."""
    from engine.tensorrt_backend import TensorRTBackend
    from export.tensorrt import export_trt_onnx
    from worldsim.train import load_autoencoder, load_dit

    ae, dit = load_autoencoder(tiny / "autoencoder.safetensors"), load_dit(tiny / "dit.safetensors")
    paths = export_trt_onnx(ae, dit, tmp_path, "fp32")
    # the device path is the rule-free one (the rules and the warm start read frames on the host)
    from engine.world import MODEL_ONLY

    # the device path commits on its own pass (a world whose backend has step_chunk does not fuse commits): so does the reference
    ref = World.load(tiny, backend="onnxruntime", preset=preset, threads=1, fuse_commit=False, precision="fp32", **MODEL_ONLY)
    assert not ref.preset.reads_frames
    # the stand-in engines run TensorRT's graphs (dynamic shapes, the key rotation as plain nodes): so does the
    # reference, to compare like with like, bit for bit (onnxruntime's own graphs fuse the rotation: ~1e-6 apart)
    import contextlib

    import engine.graphs
    from engine.backends import OrtBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.graphs, "fused_past_rotation", lambda dit: contextlib.nullcontext())
        engine.graphs.export_onnx(ae, dit, tmp_path / "plain")
    ref.backend = OrtBackend(tmp_path / "plain", threads=1, static=False)
    W = ref.preset.window
    engines = {("dit", 1, 1, W): _StandInEngine(paths["dit"]), ("decoder", 1): _StandInEngine(paths["decoder"])}
    w = copy.copy(ref)
    w.backend = TensorRTBackend(engines, ref.backend.graph_dir, ref.dit_cfg, ref.ae_cfg, ref.preset, device="cpu")
    w.preset = dataclasses.replace(w.preset, fuse_commit=True)
    assert not w.fuses_commit  # the device path's own structure, whatever the preset asks
    a, b = ref.new_session(seed=4), w.new_session(seed=4)
    acts = _acts(3 * W)

    def same(actions) -> None:  # frames and latents (the tiny decoder alone would hide small errors)
        for x in actions:
            assert np.array_equal(b.step(x), a.step(x))
            np.testing.assert_allclose(b._state.latent, a._state.latent, atol=1e-5)

    same(acts[:2 * W])  # past the ring's capacity
    assert engines[("dit", 1, 1, W)].calls == 2 * W * (ref.preset.steps + 1)  # the device path ran, not the fallback
    snap_a, snap_b = a.snapshot(), b.snapshot()
    np.testing.assert_allclose(snap_b.cache.k, snap_a.cache.k, atol=1e-5)
    assert np.array_equal(snap_b.cache.frame, snap_a.cache.frame) and snap_a.cache.next_slot == snap_b.cache.next_slot
    same(acts[2 * W:])
    a.restore(snap_a)
    b.restore(snap_b)  # the device cache must be replaced by the restored one
    same(acts[2 * W:])
    # no static engine for this window: the backend hands the chunk back to the generic path, consistently
    del w.backend.engines[("dit", 1, 1, W)]
    a.restore(snap_a)
    b.restore(snap_b)
    same(["do", "move_left"])
    w.backend.engines[("dit", 1, 1, W)] = engines[("dit", 1, 1, W)]
    same(["noop", "do"])  # back on the device path after generic steps
    # with the rule on (the presets' default) the session takes the generic path: the device path is not called
    fused = []
    ruled = copy.copy(w)
    ruled.backend = copy.copy(w.backend)
    ruled.backend.step_chunk = lambda *args: fused.append(1)
    ruled.preset = dataclasses.replace(w.preset, block_rule=True)
    s = ruled.new_session(seed=4)
    s.step("move_left")
    assert s.timings.get("rule_fixes") is not None and not fused
    ruled.preset = dataclasses.replace(w.preset, warm=0.5)  # the warm start reads the previous frame: generic path too
    ruled.new_session(seed=4).step("move_left")
    assert not fused
    ruled.preset = w.preset
    ruled.new_session(seed=4).step("move_left")
    assert fused  # ... and without them the device path is asked first


def test_tensorrt_without_a_gpu_says_what_is_missing(tiny, bundle, tmp_path, capsys):
    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are available here")
    from worldsim.cli import main

    assert main(["export", "--world", str(tiny), "--format", "tensorrt", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "--format tensorrt needs TensorRT and a CUDA GPU" in err and reason in err and not (tmp_path / "t").exists()
    with pytest.raises(BackendUnavailable, match="tensorrt") as e:
        World.load(bundle, backend="tensorrt")
    assert reason in str(e.value)
    from demos.gpu_path import main as gpu_main

    assert gpu_main([]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason=f"needs TensorRT and a CUDA GPU: {tensorrt_unavailable_reason()}")
def test_tensorrt_bundle_on_the_gpu(tiny, tmp_path):
    """Build fp16 engines, load them, play: close to onnxruntime; snapshot/restore exact on the device path;
    a batch of 2 players on its static engine equals the players alone within fp16 noise."""
    from engine.batch import SessionBatch

    out = tmp_path / "trt"
    export_bundle(tiny, out, kind="tensorrt", trt_sessions=(1, 2), parity_frames=6, log=lambda s: None)
    m = read_manifest(out)
    assert m["kind"] == "tensorrt" and m["parity"]["tensorrt"]["ok"]
    w = World.load(out, backend="tensorrt")
    o = World.load(out, backend="onnxruntime")
    assert _psnr(play(w, 16, 0), play(o, 16, 0)) >= 30.0
    s = w.new_session(seed=1)
    [s.step(a) for a in _acts(8)]
    snap = s.snapshot()
    first = np.stack([s.step(a) for a in _acts(4)])
    s.restore(snap)
    assert np.array_equal(np.stack([s.step(a) for a in _acts(4)]), first)
    alone = [np.stack([w.new_session(seed=i).step(a) for a in _acts(1)]) for i in range(2)]
    got = SessionBatch([w.new_session(seed=i) for i in range(2)]).step(_acts(1) * 2)
    for i in range(2):
        assert _psnr(got[i][None], alone[i]) >= 30.0
