"""New ground: which material a cell the session never saw holds, sampled, not averaged.

Why: the one-step sampler's prediction for a cell a move uncovers is the mean of what the model expects there. On
new ground beside grass the real game shows another material on ~19% of the cells and the model's tokens carry
that doubt, but their mean decodes as grass on all but ~11% (session 16, teacher-forced, new cells after real moves
in grassy views): in free play every new row leaned to grass and the world drifted into a lawn (grass 85% of the
tiles after 1000 frames vs the game's 57%).

A world's *ground head* reads the model's token (C,) of such a cell as a distribution over the natural materials
(a softmax regression, fitted on teacher-forced frontier cells of real episodes, so its probabilities are calibrated
to the real game's), and the session draws one material per cell from it (``engine.memory.sample_uncovered``,
preset field ``ground_sample``). The head lives beside the weights as ``ground.json`` (plain JSON: 16 x 10 weights)
and names the autoencoder and DiT it was fitted on; `worldsim train-ground --world W --data D` fits one.

A version-2 head also reads neighbours of the cell (``GroundHead.neighbour``): the material drawn just before it along
the new row (lateral) and, if fitted so, the one toward the player (inward, seen before the move). Cells are drawn
in order along the row, each given the one drawn before it, so new ground comes in runs the way the game's does
instead of single stray tiles (session 16's independent draws). The shipped head reads the lateral neighbour only:
one that also read the inward one fitted better one step ahead (held-out log loss 0.67 vs 0.70) but in free play each
row then leaned on the last and the world drifted back to grass (69% of the tiles after 1000 frames; session 17).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.tiles import GRASS as GRASS_LABEL
from worldsim.eval.tiles import SEMANTIC_NAMES

GROUND_FORMAT = "worldsim-ground"
GROUND_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: the token alone, no neighbour terms
GROUND_FILE = "ground.json"


@dataclass(frozen=True)
class GroundHead:
    """p(material | the model's token of a new cell[, its neighbours]): softmax(((token - mean) / scale) @ weight + bias
    [+ neighbour[0, inward] + neighbour[1, lateral]]), neighbours indexed by ``neighbour_index``."""

    classes: tuple[int, ...]  # semantic labels (worldsim.eval.tiles) of the materials, in the weight's column order
    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    weight: np.ndarray  # (C, K)
    bias: np.ndarray  # (K,)
    meta: dict = field(default_factory=dict)
    neighbour: np.ndarray | None = None  # (2, K+1, K): logits added for the inward and the lateral neighbour's class

    def __post_init__(self) -> None:
        C, K = np.shape(self.weight)
        if K != len(self.classes) or np.shape(self.bias) != (K,) or np.shape(self.mean) != (C,) or np.shape(self.scale) != (C,):
            raise ValueError(f"ground head: weight {np.shape(self.weight)}, bias {np.shape(self.bias)}, mean {np.shape(self.mean)}, "
                             f"scale {np.shape(self.scale)} for {len(self.classes)} classes do not fit together")
        if not np.all(np.isfinite(self.weight)) or not np.all(np.isfinite(self.bias)) or not np.all(np.asarray(self.scale) > 0):
            raise ValueError("ground head: non-finite weights or a non-positive scale")
        if self.neighbour is not None and (np.shape(self.neighbour) != (2, K + 1, K) or not np.all(np.isfinite(self.neighbour))):
            raise ValueError(f"ground head: neighbour weights {np.shape(self.neighbour)}, expected finite (2, {K + 1}, {K})")

    @property
    def channels(self) -> int:
        """Token channels C the head reads."""
        return int(np.shape(self.weight)[0])

    def neighbour_index(self, labels: np.ndarray) -> np.ndarray:
        """Semantic labels (m,) -> rows (m,) of ``neighbour``: a material's column, K for anything else (a creature,
        a placed block, a cell out of view or not drawn yet: label -1)."""
        return _neighbour_rows(self.classes, labels)

    def probs(self, tokens: np.ndarray, inward: np.ndarray | None = None, lateral: np.ndarray | None = None) -> np.ndarray:
        """Material probabilities (m,K) of tokens (m,C); ``inward``/``lateral``: the neighbours' semantic labels (m,)
        (-1 where unknown), read by a version-2 head (ignored by one without neighbour terms)."""
        tokens = np.asarray(tokens, np.float64)
        if tokens.ndim != 2 or tokens.shape[1] != self.channels:
            raise ValueError(f"ground head reads tokens (m, {self.channels}), got shape {tokens.shape}")
        logits = ((tokens - self.mean) / self.scale) @ self.weight + self.bias
        if self.neighbour is not None:
            for k, labels in enumerate((inward, lateral)):
                rows = self.neighbour_index(labels) if labels is not None else np.full(len(tokens), len(self.classes))
                if len(rows) != len(tokens):
                    raise ValueError(f"ground head: {len(rows)} neighbour labels for {len(tokens)} tokens")
                logits = logits + self.neighbour[k][rows]
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (ground.json)."""
        return {"format": GROUND_FORMAT, "version": GROUND_VERSION,
                "classes": [SEMANTIC_NAMES[c] for c in self.classes],
                "mean": np.round(self.mean, 7).tolist(), "scale": np.round(self.scale, 7).tolist(),
                "weight": np.round(self.weight, 7).tolist(), "bias": np.round(self.bias, 7).tolist(),
                **({"neighbour": np.round(self.neighbour, 7).tolist()} if self.neighbour is not None else {}), **self.meta}


def load_ground(path: str | os.PathLike, autoencoder_sha256: str | None = None, dit_sha256: str | None = None) -> GroundHead:
    """Read a ground.json; ValueError naming the file when it is not one, or (digests given) was fitted on other weights."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"ground head not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"ground head {path} is not readable JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != GROUND_FORMAT:
        raise ValueError(f"{path} is not a ground head (format {d.get('format') if isinstance(d, dict) else None!r}, "
                         f"expected {GROUND_FORMAT!r})")
    if d.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"ground head {path}: version {d.get('version')!r}, this engine reads {READABLE_VERSIONS}")
    try:
        names = list(SEMANTIC_NAMES)
        classes = tuple(names.index(n) for n in d["classes"])
        head = GroundHead(classes, np.asarray(d["mean"], np.float64), np.asarray(d["scale"], np.float64),
                          np.asarray(d["weight"], np.float64), np.asarray(d["bias"], np.float64),
                          {k: v for k, v in d.items() if k not in ("format", "version", "classes", "mean", "scale", "weight", "bias", "neighbour")},
                          np.asarray(d["neighbour"], np.float64) if d.get("neighbour") is not None else None)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"ground head {path} does not hold a usable head: {e}") from None
    for what, want in (("autoencoder_sha256", autoencoder_sha256), ("dit_sha256", dit_sha256)):
        if want is not None and head.meta.get(what) != want:
            raise ValueError(f"ground head {path} was fitted on another {what.split('_')[0]}; fit it again with "
                             f"`worldsim train-ground --world <dir> --data <dataset>`")
    return head


def _neighbour_rows(classes: Sequence[int], labels: np.ndarray) -> np.ndarray:
    """GroundHead.neighbour_index for materials ``classes``."""
    lut = {int(c): j for j, c in enumerate(classes)}
    return np.array([lut.get(int(v), len(lut)) for v in np.asarray(labels).reshape(-1)], np.int64)


def frontier_neighbours(r: np.ndarray, c: np.ndarray, move: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New cells at view rows/columns r, c (m,) after a move (dx, dy) (the pose's change): -> (the order to draw them
    in (m,), each cell's inward neighbour (m,2) (row, col: one step back toward the player) and its lateral neighbour
    (m,2) (the one before it along the new row or column, drawn first)). Positions may lie outside the view."""
    r, c = np.asarray(r, np.int64), np.asarray(c, np.int64)
    mx, my = (int(v) for v in np.asarray(move).reshape(2))
    dx, dy = int(np.sign(mx)), int(np.sign(my))
    if abs(mx) >= abs(my):
        # a step sideways uncovers a column: lines nearest the player first, each from the top down
        return np.lexsort((r, c * dx)), np.stack([r, c - dx], 1), np.stack([r - 1, c], 1)
    return np.lexsort((c, r * dy)), np.stack([r - dy, c], 1), np.stack([r, c - 1], 1)


def _labels_at(grid: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """Labels (m,) of a view grid (R,W) at positions rc (m,2); -1 outside the view."""
    R, W = grid.shape
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < R) & (rc[:, 1] >= 0) & (rc[:, 1] < W)
    out = np.full(len(rc), -1, np.int64)
    out[ok] = grid[rc[ok, 0], rc[ok, 1]]
    return out


def collect_frontier(world: Any, episodes: Sequence[dict[str, np.ndarray]], samples: int, seed: int = 0, context: int = 8,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Teacher-forced frontier cells: at ``samples`` random steps where the real player moved (awake), a session from
    ``context`` real frames takes the real action; -> {"x": the model's tokens (m,C) at the cells no context frame
    showed, "y": the real game's labels (m,), "inward", "lateral": the real labels (m,) of their neighbours
    (``frontier_neighbours``; -1 out of view), "episode": (m,)}. ``episodes``: dicts of frames, actions, pos,
    semantic, sleeping (worldsim.data). The world's own sampling of new ground must be off (its tokens are read)."""
    from worldsim.actions import ACTION_NAMES
    from worldsim.eval import metrics as M
    from worldsim.memory import frame_lighting

    if world.preset.ground_sample and world.ground is not None:
        raise ValueError("collect the model's own tokens: load the world with ground_sample=False")
    k = context
    pool = [(e, t) for e, ep in enumerate(episodes) for t in range(k - 1, len(ep["frames"]) - 1)
            if (ep["pos"][t + 1] != ep["pos"][t]).any() and not ep["sleeping"][t + 1]]
    if not pool:
        raise ValueError("no step where the player moved: the episodes are too short or the player never walks")
    rng = np.random.default_rng(seed)
    picks = sorted(pool[i] for i in rng.choice(len(pool), min(samples, len(pool)), replace=False))
    xs, ys, es, ins, lats = [], [], [], [], []
    t0, last = time.perf_counter(), 0.0
    for i, (e, t) in enumerate(picks):
        ep = episodes[e]
        acts = [ACTION_NAMES[int(a)] for a in ep["actions"][t - k + 1:t]] + [None]
        session = world.new_session(context=ep["frames"][t - k + 1:t + 1], actions=acts, seed=seed + i)
        frame = session.step(ACTION_NAMES[int(ep["actions"][t])])
        lit = frame_lighting(frame)
        if lit is None or lit[1]:
            continue
        z = session._state.latent
        seen = M.last_seen(ep["semantic"][t - k + 1:t + 1], ep["pos"][t - k + 1:t + 1], ep["pos"][t + 1][None])[0]
        r, c = np.nonzero(seen == M.UNSEEN)
        real = np.asarray(ep["semantic"][t + 1])
        _, inward, lateral = frontier_neighbours(r, c, np.asarray(ep["pos"][t + 1]) - np.asarray(ep["pos"][t]))
        xs.append(z[:, r, c].T)
        ys.append(real[r, c])
        ins.append(_labels_at(real, inward))
        lats.append(_labels_at(real, lateral))
        es.append(np.full(len(r), e))
        if progress and time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"  {i + 1}/{len(picks)} steps, {sum(map(len, ys))} cells, {last - t0:.0f} s", file=sys.stderr, flush=True)
    C = world.dit_cfg.latent_channels
    ints = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)  # noqa: E731
    return {"x": np.concatenate(xs) if xs else np.zeros((0, C), np.float32), "y": ints(ys), "inward": ints(ins),
            "lateral": ints(lats), "episode": ints(es)}


def fit_ground(x: np.ndarray, y: np.ndarray, classes: Sequence[int], l2: float = 1e-3, iters: int = 300,
               inward: np.ndarray | None = None, lateral: np.ndarray | None = None) -> GroundHead:
    """Softmax regression of labels y (m,) on tokens x (m,C) [and the labels (m,) of either neighbour or both:
    ``inward``, ``lateral`` (a version-2 head; a neighbour not given keeps zero weights)], over ``classes`` (cells of
    other labels are dropped); full-batch L-BFGS on the mean cross-entropy + l2 (|W|^2 + |neighbour|^2)."""
    import torch

    x, y = np.asarray(x, np.float64), np.asarray(y)
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    given = [None if v is None else np.asarray(v)[keep] for v in (inward, lateral)]
    nb = None if all(v is None for v in given) else given
    if len(x) < 10 * len(classes):
        raise ValueError(f"{len(x)} frontier cells of the materials are too few to fit a head over {len(classes)} classes")
    mean, scale = x.mean(0), x.std(0) + 1e-6
    X = torch.tensor((x - mean) / scale)
    Y = torch.tensor([list(classes).index(v) for v in y])
    W = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    K = len(classes)
    terms = [] if nb is None else [(k, torch.tensor(_neighbour_rows(classes, v)), torch.zeros(K + 1, K, dtype=torch.float64, requires_grad=True))
                                   for k, v in enumerate(nb) if v is not None]
    opt = torch.optim.LBFGS([W, b] + [t[2] for t in terms], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = X @ W + b
        reg = (W ** 2).sum()
        for _, rows, table in terms:
            logits = logits + table[rows]
            reg = reg + (table ** 2).sum()
        loss = torch.nn.functional.cross_entropy(logits, Y) + l2 * reg
        loss.backward()
        return loss

    opt.step(closure)
    neighbour = None
    if terms:
        neighbour = np.zeros((2, K + 1, K))
        for k, _, table in terms:
            neighbour[k] = table.detach().numpy()
    return GroundHead(tuple(int(c) for c in classes), mean, scale, W.detach().numpy(), b.detach().numpy(), neighbour=neighbour)


def ground_scores(head: GroundHead, x: np.ndarray, y: np.ndarray, seed: int = 0, inward: np.ndarray | None = None,
                  lateral: np.ndarray | None = None) -> dict[str, Any]:
    """How well a head reads held-out cells (and their real neighbours' labels): log loss, accuracy, the class mix
    of one sample per cell against the real one (total variation; what free play's new ground will look like), and
    how often a cell is the material of the one before it along the row, sampled and real (patches vs salt and
    pepper)."""
    keep = np.isin(y, head.classes)
    x, y = np.asarray(x)[keep], np.asarray(y)[keep]
    inward = None if inward is None else np.asarray(inward)[keep]
    lateral = None if lateral is None else np.asarray(lateral)[keep]
    if not len(y):
        return {"cells": 0}
    p = head.probs(x, inward, lateral)
    idx = np.array([head.classes.index(v) for v in y])
    pick = (np.random.default_rng(seed).random((len(p), 1)) > np.cumsum(p, 1)).sum(1).clip(0, len(head.classes) - 1)
    K = len(head.classes)
    real, drawn = np.bincount(idx, minlength=K) / len(idx), np.bincount(pick, minlength=K) / len(pick)
    out = {"cells": int(len(y)), "log_loss": float(-np.log(p[np.arange(len(y)), idx] + 1e-12).mean()),
           "accuracy": float((p.argmax(1) == idx).mean()), "sampled_tv": float(0.5 * np.abs(real - drawn).sum()),
           "real": {SEMANTIC_NAMES[c]: round(float(real[j]), 4) for j, c in enumerate(head.classes)},
           "sampled": {SEMANTIC_NAMES[c]: round(float(drawn[j]), 4) for j, c in enumerate(head.classes)}}
    if lateral is not None:
        lat = head.neighbour_index(lateral)
        has, non_grass = lat < K, (lat < K) & (np.asarray(head.classes + (-1,))[lat] != GRASS_LABEL)
        for name, m in (("same_as_lateral", has), ("same_as_lateral_non_grass", non_grass)):
            if m.any():
                out[name] = {"real": round(float((idx[m] == lat[m]).mean()), 4), "sampled": round(float((pick[m] == lat[m]).mean()), 4)}
    return out


# ---------------------------------------------------------------------------------------------------
# `worldsim train-ground`

def add_arguments(p) -> None:
    """CLI arguments of `worldsim train-ground`."""
    p.add_argument("--world", default=None, help="world directory (default: the shipped world)")
    p.add_argument("--data", required=True, action="append",
                   help="recorded dataset(s) of episodes the DiT did not train on (repeatable; not eval seeds)")
    p.add_argument("--split", default="all", choices=("train", "val", "all"), help="the datasets' episodes to read (default: all)")
    p.add_argument("--samples", type=int, default=3000, help="steps per dataset (each gives the ~7 cells a move uncovers)")
    p.add_argument("--held-out", type=int, default=1, help="episodes per dataset kept out of the fit for the printed scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--neighbours", default="lateral", choices=("lateral", "both", "none"),
                   help="what the head reads beside the token: the material drawn before the cell along the new row "
                        "(default), that and the one toward the player, or nothing (session 17: 'both' drifted to grass "
                        "in free play)")
    p.add_argument("--out", default=None, help=f"output file (default: WORLD/{GROUND_FILE}, added to world.json)")


def run(args) -> int:
    """Fit a world's ground head on teacher-forced frontier cells, print held-out scores, save it."""
    from engine.memory import NATURAL
    from engine.world import World, default_world_dir
    from worldsim.data import open_dataset
    from worldsim.data.dataset import DatasetError
    from worldsim.eval.protocols import EVAL_SEEDS_START
    from worldsim.io import atomic_write_json, sha256_file

    world_dir = Path(args.world) if args.world is not None else default_world_dir()
    try:
        if args.samples < 1 or args.held_out < 0:
            raise ValueError(f"--samples must be >= 1 and --held-out >= 0, got {args.samples}, {args.held_out}")
        world = World.load(world_dir, backend="onnxruntime", preset="fast", threads=args.threads, ground_sample=False)
        fit_parts, held_parts = [], []
        for d in args.data:
            store = open_dataset(d).load(args.split, fields=("frames", "actions", "pos", "semantic", "sleeping"))
            eps = list(store.episodes)
            metas = [m["seed"] for m in store.meta]
            if any(s >= EVAL_SEEDS_START for s in metas):
                raise ValueError(f"{d} holds held-out eval seeds (>= {EVAL_SEEDS_START}): fit on other episodes")
            if len(eps) <= args.held_out:
                raise ValueError(f"{d}: {len(eps)} episode(s), none left to fit on after --held-out {args.held_out}")
            print(f"{d}: {len(eps)} episodes, seeds {min(metas)}..{max(metas)}", file=sys.stderr)
            got = collect_frontier(world, eps, args.samples, seed=args.seed)
            held = got["episode"] >= len(eps) - args.held_out
            fit_parts.append({k: v[~held] for k, v in got.items()})
            held_parts.append({k: v[held] for k, v in got.items()})
        fit = {k: np.concatenate([p[k] for p in fit_parts]) for k in fit_parts[0]}
        hold = {k: np.concatenate([p[k] for p in held_parts]) for k in held_parts[0]}
        nb = lambda part: {k: part[k] for k in {"none": (), "lateral": ("lateral",), "both": ("inward", "lateral")}[args.neighbours]}  # noqa: E731
        head = fit_ground(fit["x"], fit["y"], NATURAL, **nb(fit))
        meta = json.loads((world_dir / "world.json").read_text())
        scores = ground_scores(head, hold["x"], hold["y"], **nb(hold)) if len(hold["y"]) else {"cells": 0}
        head = replace(head, meta={
            "autoencoder_sha256": sha256_file(world_dir / meta["autoencoder"]), "dit_sha256": sha256_file(world_dir / meta["dit"]),
            "fit": {"data": [str(d) for d in args.data], "cells": int(np.isin(fit["y"], NATURAL).sum()), "samples_per_dataset": args.samples,
                    "seed": args.seed, "neighbours": args.neighbours, "held_out": scores, "fit": ground_scores(head, fit["x"], fit["y"], **nb(fit))}})
    except (ValueError, FileNotFoundError, DatasetError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else world_dir / GROUND_FILE
    atomic_write_json(out, head.to_dict())
    if args.out is None:
        meta["ground"] = GROUND_FILE
        atomic_write_json(world_dir / "world.json", meta)
    print(json.dumps({"out": str(out), "held_out": scores}, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------
# drawing: one uniform number per world cell
#
# Each cell draws with its own number, a hash of (session seed, cell): the same cell always draws the same (a restore,
# or a cell uncovered twice before the tile map kept it), and no random state is carried. The numbers are independent:
# the head's odds already depend on the cells beside (the model sees them), and a smooth field on top (session 16:
# value noise over 6 cells) counted that twice: free play grew lakes and mountains (grass 42% vs the game's 57%,
# unexplained tiles up to 6.9%) where independent draws held grass at 58-59%.


def cell_uniforms(seed: int, cells: np.ndarray) -> np.ndarray:
    """Uniform numbers (m,) in (0,1) for world cells (m,2) (x, y), a pure function of (seed, x, y)."""
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        h = ((cells[:, 0] * 73856093) ^ (cells[:, 1] * 19349663) ^ (int(seed) * 83492791)).astype(np.uint64)
        for _ in range(2):  # splitmix64's finaliser, twice: neighbouring cells get unrelated numbers
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53


def draw(head: GroundHead, probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Labels (m,) drawn from probabilities (m,K) over head.classes with uniforms u (m,) (inverse CDF)."""
    j = (np.asarray(u).reshape(-1, 1) > np.cumsum(probs, 1)).sum(1).clip(0, len(head.classes) - 1)
    return np.asarray(head.classes)[j]
