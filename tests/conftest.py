"""Suite-wide settings: small models on a 2-core machine run fastest with one torch thread (two threads
that wait on each other at every op barrier were measured 3-40x slower when anything else runs)."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """torch's thread count is process-wide and worlds/exports set it: each module leaves it as it found it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory):
    """The tiny random-weight world (seed 0), built once per run; its ONNX graphs are built on the first
    onnxruntime load. Read-only: a test that changes a world copies it first."""
    from engine.testing import make_tiny_world

    return make_tiny_world(tmp_path_factory.mktemp("tiny-world") / "tiny")


@pytest.fixture(scope="module")
def tiny_world(tiny_world_dir):
    """The tiny world on onnxruntime, one World per test module."""
    from engine import World

    return World.load(tiny_world_dir, backend="onnxruntime")
