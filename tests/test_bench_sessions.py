"""`worldsim bench --sessions`: N sessions stepped together, one network call per denoising step (tiny world, 1 thread)."""

from __future__ import annotations

import json

import pytest

from engine import World
from engine.bench_sessions import bench_sessions, parse_counts

FIELDS = {"total_fps", "per_player_fps", "p50_ms", "p99_ms", "frames_per_tick"}


@pytest.fixture(scope="module")
def world(tiny_world_dir):
    return World.load(tiny_world_dir, backend="onnxruntime", threads=1)


def test_n_sessions_give_n_frames_per_tick(world):
    rows = bench_sessions(world, [1, 3], ticks=2, warmup=1, repeats=1)
    assert [r["sessions"] for r in rows] == [1, 3]
    for r in rows:
        n = r["sessions"]
        for mode in ("batched", "sequential"):
            m = r[mode]
            assert set(m) == FIELDS
            assert m["frames_per_tick"] == n
            assert m["total_fps"] > 0 and m["total_fps"] == pytest.approx(n * m["per_player_fps"])
            assert 0 < m["p50_ms"] <= m["p99_ms"]
        assert r["speedup"] == pytest.approx(r["batched"]["total_fps"] / r["sequential"]["total_fps"])


def test_batched_tick_is_one_network_call_per_step(world, monkeypatch):
    """A tick of N sessions costs `steps` DiT calls (the commit rides in the first: fused commits), whatever N is."""
    calls = []
    dit = world.backend.dit
    monkeypatch.setattr(world.backend, "dit", lambda *a: calls.append(a[0].shape[0]) or dit(*a))
    bench_sessions(world, [4], ticks=3, warmup=0, repeats=1, sequential=False)
    # batch 1: each new session prefills its cache from the opening frames; every tick call has batch = sessions
    assert world.fuses_commit and calls.count(4) == 3 * world.preset.steps and set(calls) == {1, 4}


def test_cli_table_and_json(tiny_world_dir, tmp_path, capsys):
    from worldsim.cli import main

    out = tmp_path / "bench.json"
    rc = main(["bench", "--world", str(tiny_world_dir), "--sessions", "1,2", "--backends", "onnxruntime", "--presets", "fast",
               "--threads", "1", "--ticks", "2", "--warmup", "1", "--repeats", "1", "--json", str(out)])
    assert rc == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in printed] == ["1", "2"] and all(float(r[1]) > 0 for r in printed)
    report = json.loads(out.read_text())
    assert report["session_counts"] == [1, 2] and report["ticks"] == 2 and report["sequential"] is True
    (res,) = report["results"]
    assert (res["backend"], res["preset"], res["threads"]) == ("onnxruntime", "fast", 1)
    assert [r["sessions"] for r in res["sessions"]] == [1, 2]
    for r in res["sessions"]:
        assert set(r["batched"]) == FIELDS and r["batched"]["frames_per_tick"] == r["sessions"]
        assert r["sequential"]["frames_per_tick"] == r["sessions"]


@pytest.mark.parametrize("text", ["0,2", "two", ","])
def test_bad_session_counts(text, tiny_world_dir, capsys):
    from worldsim.cli import main

    with pytest.raises(ValueError, match="--sessions"):
        parse_counts(text)
    assert main(["bench", "--world", str(tiny_world_dir), "--sessions", text]) == 2
    assert "--sessions" in capsys.readouterr().err


def test_export_wrapper_runs_the_engine_bench(tiny_world_dir, tmp_path, capsys):
    from export.bench_sessions import main

    out = tmp_path / "s.json"
    assert main(["--world", str(tiny_world_dir), "--sessions", "2", "--threads", "1", "--ticks", "1", "--warmup", "0",
                 "--repeats", "1", "--no-sequential", "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())["results"]
    assert (res["backend"], res["preset"]) == ("onnxruntime", "fast")
    assert [r["sessions"] for r in res["sessions"]] == [2] and "sequential" not in res["sessions"][0]
