"""`worldsim eval`: measure a world against the real game on held-out seeds; write a JSON + Markdown report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

REFERENCE_WORLDS = ("copy-last", "real", "real-reseeded", "real-ae")


def default_cache_dir() -> Path:
    """Where held-out episodes are cached: $WORLDSIM_CACHE/eval or ~/.cache/worldsim/eval."""
    root = os.environ.get("WORLDSIM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "worldsim") / "eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `worldsim eval`."""
    parser.add_argument("--world", default=None,
                        help="world directory (default: the shipped world), or 'copy-last' / 'real' / 'real-reseeded' (the game with "
                             "other luck) / 'real-ae' (the game through the shipped world's autoencoder, read by its reader: "
                             "the ceiling of a world that draws through it) for the reference worlds")
    parser.add_argument("--out", required=True, help="output directory for report.json, report.md and the PNG plots")
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer episodes, samples and rollouts")
    parser.add_argument("--episodes", type=int, default=None, help="held-out episodes to record/use (default: preset)")
    parser.add_argument("--seed", type=int, default=1_000_000, help="env seed of the first held-out episode (>= 1000000)")
    parser.add_argument("--context", type=int, default=None, help="real context frames per session (default 16, capped by the world's window)")
    parser.add_argument("--protocols", default="one_step,rollouts,revisits,long_run",
                        help="comma-separated subset of one_step,rollouts,revisits,long_run")
    parser.add_argument("--cache", default=None, help=f"held-out data cache (default {default_cache_dir()})")
    parser.add_argument("--backend", default=None, help="engine backend for --world (default: the best available)")
    parser.add_argument("--preset", default=None, help="engine runtime preset for --world (default: the engine's)")
    parser.add_argument("--window", type=int, default=None, help="override the preset's cache window (frames; capped by the world's)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's denoising steps")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="override any runtime preset field, e.g. block_rule=false or memory_fill=false (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace):
    from worldsim.eval.protocols import EVAL_PRESETS

    cfg = EVAL_PRESETS["quick" if args.quick else "full"]
    changes: dict[str, Any] = {"seed": args.seed}
    if args.episodes is not None:
        changes["episodes"] = args.episodes
    if args.context is not None:
        changes["context"] = args.context
    return dataclasses.replace(cfg, **changes)


def _reference_world(name: str, episodes) -> tuple[Any, dict[str, Any]]:
    """The copy-last baseline or the real-game oracle as the evaluated world."""
    from worldsim.eval.reference import CopyLastWorld, RealGameWorld

    if name == "copy-last":
        return CopyLastWorld(tuple(episodes[0].frames.shape[1:])), {"name": "copy-last", "path": None, "kind": "reference"}
    if name == "real-reseeded":  # the game against itself: how far a perfect but independent world can score
        return RealGameWorld(episodes, reseed=True), {"name": "real game, other luck (oracle)", "path": None, "kind": "reference"}
    if name == "real-ae":  # the autoencoder's ceiling: the game itself, every frame through the shipped world's autoencoder
        return _autoencoded_world(episodes)
    return RealGameWorld(episodes), {"name": "real game (oracle)", "path": None, "kind": "reference"}


def _autoencoded_world(episodes) -> tuple[Any, dict[str, Any]]:
    """The real game through the shipped world's autoencoder, read with its tile reader."""
    import json

    from worldsim.eval.reader import load_reader
    from worldsim.eval.reference import AutoencodedGameWorld
    from worldsim.train import load_autoencoder

    from worldsim.package import shipped_world_dir

    world = shipped_world_dir()
    manifest = json.loads((world / "world.json").read_text())
    ae_path = world / manifest["autoencoder"]
    reader = load_reader(world / manifest["reader"], autoencoder=ae_path) if manifest.get("reader") else None
    return (AutoencodedGameWorld(episodes, load_autoencoder(ae_path), reader),
            {"name": "real game through the autoencoder (ceiling)", "path": str(ae_path), "kind": "reference"})


def run(args: argparse.Namespace, load_world: Callable[[argparse.Namespace], tuple[Any, dict[str, Any]]] | None = None) -> int:
    """Entry point of `worldsim eval`."""
    from worldsim.eval.protocols import PROTOCOLS, evaluate, load_episodes
    from worldsim.eval.report import make_report, write_report

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    try:
        cfg = _config(args)
        protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"--protocols: unknown {unknown}; choose from {', '.join(PROTOCOLS)}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        world = desc = None
        if args.world not in REFERENCE_WORLDS:
            # load the world first: a bad path fails before any recording, and the data matches its frame size
            try:
                if load_world is None:
                    raise ValueError("this entry point evaluates only --world copy-last|real; "
                                     "`worldsim eval` (engine.eval_cli) loads engine worlds")
                world, desc = load_world(args)
            except RuntimeError as e:   # e.g. engine.backends.BackendUnavailable
                raise ValueError(f"cannot load world {args.world or '(default)'}: {e}") from None
            size = int(getattr(world, "frame_shape", (cfg.size,))[0])
            cfg = dataclasses.replace(cfg, size=size)
        episodes = load_episodes(args.cache or default_cache_dir(), cfg, progress=not args.no_progress, log=log)
        if world is None:
            world, desc = _reference_world(args.world, episodes)
        log(f"evaluating {desc['name']} on {len(episodes)} held-out episodes ({cfg.name} preset)")
        results, samples = evaluate(world, episodes, cfg, protocols=protocols, progress=not args.no_progress, log=log)
        report = make_report(results, desc, cfg.name, seconds=time.perf_counter() - t0)
        paths = write_report(out, report, samples)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _summary(report, log)
    print(paths[1])
    return 0


def _summary(report: dict[str, Any], log) -> None:
    """A few headline numbers on stderr."""
    res = report["results"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    if "one_step" in res and res["one_step"]["model"].get("samples"):
        m, b = res["one_step"]["model"], res["one_step"]["copy_last"]
        log(f"one-step: PSNR {m['psnr']:.2f} dB (copy-last {b['psnr']:.2f}), tiles {pct(m['tile_all'])} "
            f"(copy-last {pct(b['tile_all'])}), action following {pct(m['action_following'])} "
            f"(copy-last {pct(b['action_following'])})")
    if "rollouts" in res and res["rollouts"]["model"].get("rollouts"):
        for h, m in res["rollouts"]["model"]["horizons"].items():
            b = res["rollouts"]["copy_last"]["horizons"][h]
            log(f"rollout {h}: PSNR {m['psnr']:.2f} dB (copy-last {b['psnr']:.2f}), tiles {pct(m['tile_all'])} "
                f"(copy-last {pct(b['tile_all'])})")
    if "revisits" in res and res["revisits"]["model"].get("events"):
        m, b = res["revisits"]["model"], res["revisits"]["copy_last"]
        pm = m.get("perfect_memory") or {}
        log(f"revisits: block kept {pct(m['revisit_block_kept'])} (copy-last {pct(b['revisit_block_kept'])}, "
            f"perfect memory {pct(pm.get('revisit_block_kept'))}), area {pct(m['revisit_area'])} "
            f"(copy-last {pct(b['revisit_area'])}, perfect memory {pct(pm.get('revisit_area'))})")
    if "revisits_own" in res and res["revisits_own"]["model"].get("events"):
        m = res["revisits_own"]["model"]
        pose = f", walk estimate right in {pct(m['pose_steps_right'])} of steps" if m.get("pose_steps_right") is not None else ""
        log(f"revisits in the world's own walk: {m['returned']} of {m['events']} events came back, {m['frames_back']} frames; "
            f"block kept {pct(m['block_kept'])} (by day {pct(m['block_kept_day'])} of {m['block_kept_day_n']} frames, "
            f"night {pct(m['block_kept_night'])} of {m['block_kept_night_n']}; readable, daylight >= 0.1: "
            f"{pct(m['block_kept_readable'])} of {m['block_kept_readable_n']}, deep night {pct(m['block_kept_deep_night'])} of "
            f"{m['block_kept_deep_night_n']}), area {pct(m['area'])}, view {pct(m['view'])}{pose}")
        if m.get("mined_events"):
            log(f"mined cells in the world's own walk: {m['mined_returned']} of {m['mined_events']} came back, "
                f"{m['mined_frames_back']} frames; still path {pct(m.get('mined_kept'))} (readable "
                f"{pct(m.get('mined_kept_readable'))} of {m.get('mined_kept_readable_n')}), area {pct(m.get('mined_area'))}, "
                f"view {pct(m.get('mined_view'))}")
    if "long_run" in res and res["long_run"]["model"].get("runs"):
        m, b = res["long_run"]["model"], res["long_run"]["copy_last"]
        log(f"long run: class TV {m['class_tv_to_real_last']:.3f} (copy-last {b['class_tv_to_real_last']:.3f}), "
            f"unexplained {pct(m['unexplained_last'])}, patches {pct(m.get('same_neighbour_last'))} "
            f"(real {pct(m['windows'][-1].get('real_same_neighbour'))})")
