"""The recorder: reproducible shards, resume, config/seed guards, shard content, revisit labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from worldsim.actions import MOVES, NULL_ACTION, action_index
from worldsim.cli import main as cli_main
from worldsim.crafter_env import in_view
from worldsim.data.format import ALL_FIELDS, SHARD_FIELDS, DatasetError, split_of_seed
from worldsim.data.policy import LOOKING, PLACING, RETURNING, WALKING_AWAY, PolicyConfig
from worldsim.data.record import record_dataset, record_episode

FRAMES, EPISODE_LEN, SEED = 200, 100, 0


def _record(out: Path, workers: int = 1, **kw) -> dict:
    args = dict(frames=FRAMES, seed=SEED, episode_len=EPISODE_LEN, workers=workers, progress=False, log=lambda m: None)
    args.update(kw)
    return record_dataset(out, **args)


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.npz"))}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rec") / "data"
    return out, _record(out)


def test_recording_is_byte_identical_for_any_number_of_workers(recorded, tmp_path):
    out, summary = recorded
    assert summary["frames"] == FRAMES and summary["episodes"] == 2
    other = tmp_path / "again"
    _record(other, workers=2)
    a, b = _shards(out), _shards(other)
    assert sorted(a) == ["shard-00000.npz", "shard-00001.npz"]
    assert a == b
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (out, other))
    assert [e["sha256"] for e in ma["episodes"]] == [e["sha256"] for e in mb["episodes"]]
    assert ma["complete"] and ma["total_frames"] == FRAMES


def test_resume_after_interruption_equals_uninterrupted_run(recorded, tmp_path):
    out, _ = recorded
    reference = _shards(out)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    # an interruption: shard 1 never written, shard 0 damaged on disk
    (broken / "shard-00001.npz").unlink()
    data = (broken / "shard-00000.npz").read_bytes()
    (broken / "shard-00000.npz").write_bytes(data[: len(data) // 2])
    messages: list[str] = []
    summary = _record(broken, log=messages.append)
    assert any("shard-00000.npz" in m and "checksum" in m for m in messages)
    assert _shards(broken) == reference
    assert summary["recorded_frames"] == FRAMES  # both episodes recorded again

    # killed after a shard was written but before the manifest listed it: the shard is checked and kept
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["episodes"] = manifest["episodes"][:1]
    manifest["total_frames"] = EPISODE_LEN
    (broken / "manifest.json").write_text(json.dumps(manifest))
    summary = _record(broken)
    assert summary["recorded_frames"] == 0 and _shards(broken) == reference
    assert len(json.loads((broken / "manifest.json").read_text())["episodes"]) == 2


def test_rerun_with_a_different_config_is_an_error(recorded):
    out, _ = recorded
    before = _shards(out)
    with pytest.raises(DatasetError, match=r"different recording \(seed: 0 there vs 5 now\)"):
        _record(out, seed=5)
    with pytest.raises(DatasetError, match="episode_len"):
        _record(out, episode_len=50)
    assert _shards(out) == before


def test_non_empty_directory_without_manifest_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and has no manifest.json"):
        _record(tmp_path)


def test_seed_splits_and_eval_seed_refusal(tmp_path):
    assert [split_of_seed(s) for s in (0, 899_999, 900_000, 999_999, 1_000_000)] == [
        "train", "train", "val", "val", "eval"]
    out = tmp_path / "eval"
    # episodes 999_999 and 1_000_000: the second seed is held out
    with pytest.raises(ValueError, match="held-out eval range"):
        _record(out, seed=999_999)
    assert not out.exists(), "a refused command writes nothing"
    summary = _record(out, seed=1_000_000, frames=3, episode_len=3, allow_eval_seeds=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["frames"] == 3 and manifest["episodes"][0]["split"] == "eval"


def test_shard_fields_dtypes_and_action_alignment(recorded):
    out, _ = recorded
    with np.load(out / "shard-00000.npz") as z:
        assert sorted(z.files) == sorted(ALL_FIELDS)
        arrays = {k: z[k] for k in z.files}
    n = EPISODE_LEN
    for name, (dtype, shape) in SHARD_FIELDS.items():
        assert arrays[name].dtype == dtype, name
        assert arrays[name].shape == (n, *(72 if d == "S" else d for d in shape)), name
    assert arrays["revisit_events"].dtype == np.int32 and arrays["revisit_events"].shape[1] == 6
    actions, facing, sleeping = arrays["actions"], arrays["facing"], arrays["sleeping"]
    assert actions[-1] == NULL_ACTION and actions[:-1].max() < NULL_ACTION
    assert (arrays["step"] == np.arange(n)).all()
    # actions[t] is taken on frame t: a move always turns the player, visible in facing[t + 1]
    moves = {action_index(k): v for k, v in MOVES.items()}
    checked = 0
    for t in range(n - 1):
        if int(actions[t]) in moves and not sleeping[t]:
            assert tuple(facing[t + 1]) == moves[int(actions[t])], f"frame {t}"
            checked += 1
    assert checked > 20


def test_revisit_events_and_labels_are_consistent():
    cfg = PolicyConfig(revisit_gap=(5, 10), out_of_view=(8, 12))
    ep = record_episode(seed=21, frames=240, policy_config=cfg)
    events, label, pos, sem = ep["revisit_events"], ep["revisit"], ep["pos"], ep["semantic"]
    assert len(events) >= 1
    for t_place, t_leave, t_back, x, y, placed in events:
        assert 0 < t_place < t_leave < t_back
        assert label[t_place - 1] == PLACING and label[t_leave] == WALKING_AWAY
        assert label[t_back - 1] == RETURNING and label[t_back] == LOOKING
        px, py = pos[t_place]
        assert sem[t_place][y - py + 3, x - px + 4] == placed, "the block shows at t_place where the event says"
        gone = [in_view(tuple(pos[t]), (x, y)) for t in range(t_leave, t_back)]
        assert not any(gone) and in_view(tuple(pos[t_back]), (x, y)) and not in_view(tuple(pos[t_leave]), (x, y))
        assert t_back - t_leave >= cfg.out_of_view[0]


def test_cli_prints_summary_and_reports_errors_cleanly(recorded, capsys):
    out, summary = recorded
    code = cli_main(["record", "--out", str(out), "--frames", str(FRAMES), "--seed", str(SEED),
                     "--episode-len", str(EPISODE_LEN), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert f"{FRAMES} frames in 2 episodes" in text and "bytes/frame" in text and "night" in text
    size = sum(p.stat().st_size for p in out.glob("shard-*.npz"))
    assert summary["bytes_per_frame"] == pytest.approx(size / FRAMES)
    assert sum(summary["actions"].values()) == FRAMES - 2  # one NULL_ACTION per episode
    code = cli_main(["record", "--out", str(out), "--frames", "10", "--no-progress"])
    assert code == 2 and "different recording" in capsys.readouterr().err
