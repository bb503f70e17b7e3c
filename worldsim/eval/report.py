"""The evaluation report: ``report.json`` (every number), ``report.md`` (tables, model next to the
copy-last baseline) and PNG plots drawn with PIL (metrics vs horizon, sample rollouts side by side
with the real game, a revisit example, long-run drift)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.io import atomic_path, atomic_write_json

REPORT_FORMAT = "worldsim-eval-report"
REPORT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "created", "world", "preset", "results", "plots")
MODEL_COLOR, BASE_COLOR, REAL_COLOR = (220, 70, 40), (70, 110, 200), (60, 150, 60)


# ----- small drawing kit -------------------------------------------------------------------------
def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_plot(series: Mapping[str, tuple[Sequence[float | None], tuple[int, int, int]]], title: str,
              xlabel: str = "", xs: Sequence[float] | None = None, size: tuple[int, int] = (440, 280),
              ylim: tuple[float, float] | None = None):
    """A PIL line chart of named series {label: (values, rgb)} (None values leave gaps)."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    left, right, top, bottom = 52, 12, 26, 40
    vals = [v for ys, _ in series.values() for v in ys if v is not None and math.isfinite(v)]
    n = max((len(ys) for ys, _ in series.values()), default=1)
    xs = list(range(1, n + 1)) if xs is None else list(xs)
    lo, hi = ylim if ylim is not None else ((min(vals), max(vals)) if vals else (0.0, 1.0))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = (lo, hi) if ylim is not None else (lo - pad, hi + pad)
    x0, x1 = min(xs), max(xs) if len(xs) > 1 else min(xs) + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return top + (hi - y) / (hi - lo) * (h - top - bottom)

    dr.text((left, 5), title, fill="black", font=font)
    dr.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    for t in _nice_ticks(lo, hi):
        if lo <= t <= hi:
            y = py(t)
            dr.line([left, y, w - right, y], fill=(232, 232, 232))
            dr.text((4, y - 6), f"{t:g}", fill="black", font=small)
    for t in _nice_ticks(x0, x1, 6):
        x = px(t)
        dr.line([x, h - bottom, x, h - bottom + 4], fill="black")
        dr.text((x - 8, h - bottom + 6), f"{t:g}", fill="black", font=small)
    if xlabel:
        dr.text(((w - left) // 2 + left - 30, h - 16), xlabel, fill="black", font=small)
    lx = left + 8
    for label, (ys, color) in series.items():
        pts: list[tuple[float, float]] = []
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(y):
                if len(pts) > 1:
                    dr.line(pts, fill=color, width=2)
                pts = []
                continue
            pts.append((px(x), py(min(max(y, lo), hi))))
        if len(pts) > 1:
            dr.line(pts, fill=color, width=2)
        elif len(pts) == 1:
            x, y = pts[0]
            dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        dr.rectangle([lx, top + 6, lx + 10, top + 14], fill=color)
        dr.text((lx + 14, top + 3), label, fill="black", font=small)
        lx += 24 + int(dr.textlength(label, font=small))
    return img


def hstack(images: Sequence[Any], gap: int = 8):
    """Place PIL images side by side on white."""
    from PIL import Image

    w = sum(i.width for i in images) + gap * (len(images) - 1)
    h = max(i.height for i in images)
    out = Image.new("RGB", (w, h), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def frame_grid(rows: Sequence[tuple[str, Sequence[np.ndarray | None]]], col_labels: Sequence[str], scale: int = 3,
               boxes: Sequence[Sequence[tuple[int, int] | None]] | None = None, tile: int = 8):
    """A labelled grid of frames (None = blank); optional red box around view tile (row, col) per cell."""
    from PIL import Image, ImageDraw

    fs = next(f.shape[0] for _, fr in rows for f in fr if f is not None) * scale
    lw, top, gap = 86, 20, 4
    ncol = len(col_labels)
    img = Image.new("RGB", (lw + ncol * (fs + gap), top + len(rows) * (fs + gap)), "white")
    dr = ImageDraw.Draw(img)
    font = _font(12)
    for c, lab in enumerate(col_labels):
        dr.text((lw + c * (fs + gap) + 2, 3), lab, fill="black", font=font)
    for r, (lab, frames) in enumerate(rows):
        y = top + r * (fs + gap)
        dr.text((4, y + fs // 2 - 6), lab, fill="black", font=font)
        for c, f in enumerate(frames):
            x = lw + c * (fs + gap)
            if f is None:
                dr.rectangle([x, y, x + fs - 1, y + fs - 1], outline=(200, 200, 200))
                continue
            img.paste(Image.fromarray(np.asarray(f, np.uint8)).resize((fs, fs), Image.NEAREST), (x, y))
            box = boxes[r][c] if boxes is not None else None
            if box is not None:
                tr, tc = box
                u = tile * scale
                dr.rectangle([x + tc * u - 1, y + tr * u - 1, x + (tc + 1) * u, y + (tr + 1) * u], outline=(255, 0, 0), width=2)
    return img


def _save_png(img, path: Path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
        tmp.chmod(0o644)   # atomic temp files are private; a report is for reading


# ----- plots -------------------------------------------------------------------------------------
def plot_horizon(results: Mapping[str, Any]):
    """PSNR and tile accuracies vs rollout step, model vs copy-last."""
    m, b = results["model"]["curves"], results["copy_last"]["curves"]
    panels = [
        line_plot({"copy-last": (b["psnr"], BASE_COLOR), "model": (m["psnr"], MODEL_COLOR)}, "PSNR (dB) vs step", "step"),
        line_plot({"copy-last": (b["tile_all"], BASE_COLOR), "model": (m["tile_all"], MODEL_COLOR)},
                  "tile accuracy (all) vs step", "step", ylim=(0, 1)),
        line_plot({"copy-last": (b["tile_persistent"], BASE_COLOR), "model": (m["tile_persistent"], MODEL_COLOR)},
                  "tile accuracy (persistent) vs step", "step", ylim=(0, 1)),
    ]
    return hstack(panels)


def plot_rollout_samples(samples: Mapping[str, Any]):
    """Real vs model vs copy-last frames at a few horizons of the first rollout."""
    m, b = samples["model"], samples["copy_last"]
    L = len(m["pred"])
    hs = [h for h in (1, 4, 16, 64, 256) if h <= L]
    rows = [("real", [m["true"][h - 1] for h in hs]), ("model", [m["pred"][h - 1] for h in hs]),
            ("copy-last", [b["pred"][h - 1] if b else None for h in hs])]
    return frame_grid(rows, [f"step {h}" for h in hs])


def _tile_of(pos: np.ndarray, target: np.ndarray) -> tuple[int, int] | None:
    r, c = int(target[1] - pos[1] + 3), int(target[0] - pos[0] + 4)
    return (r, c) if 0 <= r < 7 and 0 <= c < 9 else None


def plot_revisit(samples: Mapping[str, Any]):
    """A revisit: the block when placed, then real / model / copy-last when back beside it."""
    m, b = samples["model"], samples["copy_last"]
    target = m["target"]
    first_box = _tile_of(m["pos_placed"], target)
    last_box = _tile_of(m["pos"][-1], target)
    rows = [("real", [m["placed_real"], m["true"][0], m["true"][-1]]),
            ("model", [None, m["pred"][0], m["pred"][-1]]),
            ("copy-last", [None, b["pred"][0] if b else None, b["pred"][-1] if b else None])]
    back_box = _tile_of(m["pos"][0], target)
    boxes = [[first_box, back_box, last_box], [None, back_box, last_box], [None, back_box, last_box]]
    t = m["t"]
    return frame_grid(rows, [f"placed (t={t[0]})", f"back in view (t={t[1]})", f"beside it (t={t[2]})"], boxes=boxes)


def plot_long_run(results: Mapping[str, Any], samples: Mapping[str, Any]):
    """Class-distribution distance and unexplained tiles per window; sample frames."""
    m, b = results["model"], results["copy_last"]
    xs = [w["frames"][1] for w in m["windows"]]
    panels = [
        line_plot({"real": ([w["real_class_tv_to_real"] for w in m["windows"]], REAL_COLOR),
                   "copy-last": ([w["class_tv_to_real"] for w in b["windows"]], BASE_COLOR),
                   "model": ([w["class_tv_to_real"] for w in m["windows"]], MODEL_COLOR)},
                  "class TV distance to the real game", "frame", xs=xs, ylim=(0, 1)),
        line_plot({"copy-last": ([w["unexplained"] for w in b["windows"]], BASE_COLOR),
                   "model": ([w["unexplained"] for w in m["windows"]], MODEL_COLOR)},
                  "unexplained tiles", "frame", xs=xs, ylim=(0, 1)),
    ]
    charts = hstack(panels)
    sm = samples.get("model") or {}
    if not sm:
        return charts
    grid = frame_grid([("real", list(sm["true"])), ("model", list(sm["pred"]))], [f"frame {i}" for i in sm["index"]], scale=2)
    from PIL import Image

    out = Image.new("RGB", (max(charts.width, grid.width), charts.height + grid.height + 8), "white")
    out.paste(charts, (0, 0))
    out.paste(grid, (0, charts.height + 8))
    return out


def plot_one_step(samples: Mapping[str, Any]):
    """A few one-step predictions: the real frame t, the real t+1 and the model's t+1."""
    m = samples["model"]
    n = min(6, len(m["pred"]))
    rows = [("real t", list(m["prev"][:n])), ("real t+1", list(m["true"][:n])), ("model t+1", list(m["pred"][:n]))]
    return frame_grid(rows, [f"ep {e} t={t}" for e, t in zip(m["episode"][:n], m["t"][:n])], scale=2)


# ----- markdown ----------------------------------------------------------------------------------
def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)) and kind == "":
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return "–"
    if kind == "%":
        return f"{100 * v:.1f}%"
    if kind == "dB":
        return f"{v:.2f}"
    return f"{v:.3f}"


def _table(rows: Sequence[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]], counts: bool = True) -> list[str]:
    """Markdown rows 'metric | model | copy-last' from (label, key, model dict, baseline dict)."""
    out = ["| metric | model | copy-last |", "|---|---:|---:|"]
    for label, key, m, b in rows:
        kind = "%" if key.startswith(("tile_", "follow_", "inventory_", "revisit_", "action_", "unexplained", "lighting")) else (
            "dB" if key.startswith("psnr") else "")
        n = m.get(key + "_n")
        lab = f"{label} (n={n})" if counts and n is not None else label
        out.append(f"| {lab} | {_fmt(m.get(key), kind)} | {_fmt(b.get(key), kind)} |")
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """The human summary of a report dict."""
    res = report["results"]
    w = report["world"]
    lines = [f"# Evaluation: {w.get('name', 'world')}", "",
             f"World `{w.get('path') or w.get('name')}` · preset `{report['preset']}` · {report['created']} · "
             f"{report.get('seconds', 0):.0f} s", ""]
    cfg = res.get("config", {})
    if cfg:
        lines += [f"Held-out episodes: {cfg['episodes']} × {cfg['episode_len']} frames, env seeds "
                  f"{cfg['seed']}..{cfg['seed'] + cfg['episodes'] - 1}; context {cfg['context']} real frames. "
                  "Generated frames are read back into tiles with the real game's lighting at the same step (or with "
                  "their own when clearly lit otherwise: see 'frames lit as the real game') and compared with the real "
                  "frames read the same way, so a perfect world scores 100%.", ""]
    c = res.get("classifier")
    if c:
        lines += ["## The ruler: tile classifier on real held-out frames", "",
                  "| | accuracy | frames |", "|---|---:|---:|"]
        for k in ("day", "night", "night_awake", "night_asleep"):
            lines.append(f"| {k.replace('_', ' ')} | {_fmt(c.get('accuracy_' + k), '%')} | {c.get('frames_' + k, 0)} |")
        lines += [f"| all | {_fmt(c['accuracy'], '%')} | {c['frames']} |", "",
                  f"Inventory read exactly on {_fmt(c['inventory_exact'], '%')} of frames; daylight estimated to "
                  f"±{c['daylight_error']:.3f}; {c['ms_per_frame']:.2f} ms per frame.", ""]
    r = res.get("reader")
    if r:
        lines += ["## The ruler for generated frames: the world's tile reader", "",
                  "A world's frames come out of its autoencoder, which keeps each tile's class but not its exact pixels; "
                  "they are read with the tile reader trained on that autoencoder's round trips of real frames "
                  "(`worldsim train-reader`). Here both readers on held-out real frames passed through the world's "
                  "autoencoder (the most the world's frames can show):", "",
                  "| | reader | texture model |", "|---|---:|---:|"]
        for k in ("all", "day", "night", "deep_night", "asleep", "night_stone", "night_table", "night_plant", "night_tree"):
            if k in r["reader"]:
                lines.append(f"| {k.replace('_', ' ')} | {_fmt(r['reader'][k], '%')} | {_fmt(r['texture_model'].get(k), '%')} |")
        lines += ["", f"{r['frames']} frames.", ""]
    if "one_step" in res and res["one_step"]["model"].get("samples"):
        m, b = res["one_step"]["model"], res["one_step"]["copy_last"]
        lines += ["## One-step prediction (real context)", ""]
        rows = [("PSNR (dB)", "psnr"), ("PSNR day", "psnr_day"), ("PSNR night", "psnr_night"),
                ("PSNR after a move", "psnr_move"), ("PSNR after other actions", "psnr_other"),
                ("SSIM", "ssim"), ("SSIM day", "ssim_day"), ("SSIM night", "ssim_night"),
                ("tiles: all", "tile_all"), ("tiles: non-grass", "tile_non_grass"),
                ("tiles: persistent", "tile_persistent"), ("tiles: changed", "tile_changed"), ("tiles: new", "tile_new"),
                ("inventory items", "inventory_items"), ("inventory exact", "inventory_exact"),
                ("unexplained tiles", "unexplained"), ("frames lit as the real game (daylight ±0.03)", "lighting_match")]
        lines += _table([(a, k, m, b) for a, k in rows]) + [""]
        lines += ["## Action following (one step)", "",
                  "Did the view move as the real player moved (or stay when blocked / another action)? "
                  "Scored where the real views show the motion unambiguously.", ""]
        rows = [("overall (mean of the three)", "action_following"), ("moved", "follow_moved"),
                ("blocked move (view stays)", "follow_blocked"), ("other action (view stays)", "follow_still"),
                ("player faces the move", "follow_facing"), ("do/place changed the faced tile right", "follow_interact_changed"),
                ("do/place without effect: tile kept", "follow_interact_unchanged")]
        lines += _table([(a, k, m, b) for a, k in rows]) + [""]
        if m.get("frames_per_s"):
            lines += [f"{m['samples']} samples; the world made {m['frames_per_s']:.1f} one-step predictions/s "
                      "(including the context).", ""]
        if "one_step.png" in report["plots"]:
            lines += ["![one-step samples](one_step.png)", ""]
    if "rollouts" in res and res["rollouts"]["model"].get("rollouts"):
        m, b = res["rollouts"]["model"], res["rollouts"]["copy_last"]
        hs = list(m["horizons"])
        lines += [f"## Open-loop rollouts ({m['rollouts']} rollouts, real actions, means over the first H frames)", "",
                  "| metric | " + " | ".join(f"model H={h} | copy-last H={h}" for h in hs) + " |",
                  "|---|" + "---:|" * (2 * len(hs))]
        for label, key in (("PSNR (dB)", "psnr"), ("PSNR day", "psnr_day"), ("PSNR night", "psnr_night"),
                           ("PSNR at frame H", "psnr_at"), ("SSIM", "ssim"), ("SSIM day", "ssim_day"),
                           ("SSIM night", "ssim_night"),
                           ("tiles: all", "tile_all"), ("tiles at frame H", "tile_all_at"),
                           ("tiles: non-grass", "tile_non_grass"), ("tiles: persistent", "tile_persistent"),
                           ("tiles: non-grass, awake by day", "tile_non_grass_day"),
                           ("tiles: persistent, awake by day", "tile_persistent_day"),
                           ("tiles: persistent, night or asleep", "tile_persistent_night"),
                           ("tiles: persistent, asleep", "tile_persistent_asleep"),
                           ("tiles: changed", "tile_changed"), ("tiles: new", "tile_new"),
                           ("tiles: persistent in the world's own walk", "tile_persistent_own"),
                           ("tiles: persistent non-grass in the world's own walk", "tile_persistent_own_non_grass"),
                           ("frames where the world's walk is the real one", "walk_aligned"),
                           ("unexplained tiles", "unexplained"), ("frames lit as the real game (daylight ±0.03)", "lighting_match")):
            kind = "dB" if key.startswith("psnr") else ("%" if key.startswith(("tile", "unexpl", "lighting", "walk")) else "")
            cells = [f"{_fmt(m['horizons'][h].get(key), kind)} | {_fmt(b['horizons'][h].get(key), kind)}" for h in hs]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", "Persistent tiles compare each tile with the real frame at the real position. Once the world's walk "
                  "leaves the real one (a move blocked by terrain the context never showed, a creature's other step) every "
                  "tile is misplaced; the rows \"in the world's own walk\" score the same cells where the world's own walk "
                  "(read from its frames) puts them: whether it keeps its scene, apart from where it walked. A still "
                  "world (copy-last) keeps its scene too: read them with the moves followed.", ""]
        if m.get("frames_per_s"):
            lines += [f"The world generated {m['frames_per_s']:.1f} frames/s in these rollouts.", ""]
        for png, alt in (("horizon.png", "metrics vs horizon"), ("rollout_samples.png", "sample rollout")):
            if png in report["plots"]:
                lines += [f"![{alt}]({png})", ""]
    if "revisits" in res and res["revisits"]["model"].get("events"):
        m, b = res["revisits"]["model"], res["revisits"]["copy_last"]
        lines += ["## Revisits A → B → A", "",
                  f"{m['events']} events; A was out of view for {m['out_of_view_frames_mean']:.0f} frames on average "
                  f"({m['beyond_context']} events longer than the {m['context']}-frame context). The world starts "
                  "from the frames up to the placing and plays the real actions until the player stands beside A.", ""]
        rows = [("block still at A (frames A is on screen)", "revisit_block_kept"),
                ("block at A when beside it (last frame)", "revisit_block_kept_final"),
                ("block at A, out of view > context", "revisit_block_kept_beyond_context"),
                ("area around A as in the real game", "revisit_area"),
                ("area around A, out of view > context", "revisit_area_beyond_context"),
                ("whole view while back at A", "revisit_view_all")]
        table = _table([(a, k, m, b) for a, k in rows])
        pm = m.get("perfect_memory")
        if pm:  # a third column: the real game's cells as last seen by departure, re-projected (the ceiling)
            table[0] += " perfect memory |"
            table[1] += "---:|"
            for i, (_, k) in enumerate(rows, start=2):
                table[i] += f" {_fmt(pm.get(k), '%')} |"
        lines += table + [""]
        if pm:
            lines += ["Perfect memory: every cell as the real game last showed it up to the departure, re-projected with "
                      "the real positions (cells never seen count as wrong): what a world that remembers perfectly and "
                      "moves exactly like the game would score.", ""]
        if "revisit.png" in report["plots"]:
            lines += ["![revisit example](revisit.png)", ""]
    if "revisits_own" in res and res["revisits_own"]["model"].get("events"):
        m, b = res["revisits_own"]["model"], res["revisits_own"]["copy_last"]
        lines += ["## Revisits A → B → A in the world's own walk", "",
                  f"The same {m['events']} events and real actions; the block's cell is followed with the walk the world's "
                  f"own frames show. {m['returned']} events came back (the world's walk had A out of view for more than "
                  f"the {m['context']}-frame context, {'–' if m['gap_frames_mean'] is None else round(m['gap_frames_mean'])} frames on average, then showed it "
                  f"again): {m['frames_back']} frames scored (copy-last: {b.get('returned', 0)} events came back).", ""]
        rows = [("block still at A", "block_kept"), ("... in frames lit by day", "block_kept_day"),
                ("... at night or asleep", "block_kept_night"),
                ("... in frames lit at daylight 0.1 or more (readable)", "block_kept_readable"),
                ("... in deep night (daylight < 0.1: a perfect world reads right in 12-86% of such tiles)", "block_kept_deep_night"), ("area around A as the world showed it before leaving", "area"),
                ("whole view as the world showed it before leaving", "view"),
                (f"mined cell still path ({m.get('mined_returned', 0)} of {m.get('mined_events', 0)} events, "
                 f"{m.get('mined_frames_back', 0)} frames)", "mined_kept"),
                ("... in frames lit by day", "mined_kept_day"), ("... at night or asleep", "mined_kept_night"),
                ("... readable (daylight 0.1 or more)", "mined_kept_readable"), ("... in deep night", "mined_kept_deep_night"),
                ("area around the mined cell", "mined_area"), ("whole view back at the mined cell", "mined_view"),
                ("walk estimate right (worlds that expose the real position)", "pose_steps_right")]
        lines += ["| | world |", "|---|---:|"]
        lines += [f"| {a} | {_fmt(m.get(k), '%')} |" for a, k in rows if m.get(k) is not None] + [""]
        missed = [e for e in m.get("per_event", []) if e["kept"] < e["frames"]]
        if missed:
            lines += ["Events that came back without their cell in every frame:", "",
                      "| kind | seed | frame | placed | away (frames) | kept | of which at night | read instead |",
                      "|---|---:|---:|---|---:|---:|---:|---|"]
            lines += [f"| {e.get('kind', 'block')} | {e['seed']} | {e['t_place']} | {e['placed']} | {e['gap']} | "
                      f"{e['kept']} / {e['frames']} | {e['kept_night']} / {e['frames_night']} | {e['read_instead']} |" for e in missed]
            lines.append("")
    if "long_run" in res and res["long_run"]["model"].get("runs"):
        m, b = res["long_run"]["model"], res["long_run"]["copy_last"]
        lines += [f"## Long-run stability ({m['runs']} × {m['length']} frames, real actions)", "",
                  "Class TV distance: total variation between the tile classes the world shows and those of all real "
                  "held-out frames (the real game's own value for the same frames is the 'real' column).", "",
                  "| frames | TV model | TV copy-last | TV real | unexplained model | unexplained copy-last | "
                  "tiles model | tiles copy-last | PSNR model | PSNR copy-last | asleep model | asleep real | "
                  "patches model | patches real |",
                  "|---|" + "---:|" * 13]
        for wm, wb in zip(m["windows"], b["windows"]):
            lines.append(f"| {wm['frames'][0]}–{wm['frames'][1]} | {_fmt(wm['class_tv_to_real'])} | "
                         f"{_fmt(wb['class_tv_to_real'])} | {_fmt(wm['real_class_tv_to_real'])} | "
                         f"{_fmt(wm['unexplained'], '%')} | {_fmt(wb['unexplained'], '%')} | {_fmt(wm['tile_all'], '%')} | "
                         f"{_fmt(wb['tile_all'], '%')} | {_fmt(wm['psnr'], 'dB')} | {_fmt(wb['psnr'], 'dB')} | "
                         f"{_fmt(wm.get('asleep'), '%')} | {_fmt(wm.get('real_asleep'), '%')} | "
                         f"{_fmt(wm.get('same_neighbour'), '%')} | {_fmt(wm.get('real_same_neighbour'), '%')} |")
        lines += ["", "Patches: how often a non-grass tile's neighbour in view is of its own class (lakes and forests "
                  "in one piece score high, stray single tiles low).", "",
                  f"Open-loop action following over the run: model {_fmt(m.get('open_loop_following'), '%')}, "
                  f"copy-last {_fmt(b.get('open_loop_following'), '%')}.", ""]
        if "long_run.png" in report["plots"]:
            lines += ["![long run](long_run.png)", ""]
    return "\n".join(lines)


# ----- writing -----------------------------------------------------------------------------------
def make_report(results: Mapping[str, Any], world: Mapping[str, Any], preset: str, seconds: float = 0.0) -> dict[str, Any]:
    """The report dict (what report.json holds) around protocol results."""
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "world": dict(world),
        "preset": preset,
        "seconds": float(seconds),
        "results": _jsonable(results),
        "plots": [],
    }


def _jsonable(x: Any) -> Any:
    """Plain JSON types (numpy scalars/arrays -> Python; non-finite floats -> None)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_report(out_dir: str | Path, report: dict[str, Any], samples: Mapping[str, Any] | None = None) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; -> written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = report["results"]
    samples = samples or {}
    plots: dict[str, Any] = {}
    if res.get("rollouts", {}).get("model", {}).get("curves"):
        plots["horizon.png"] = lambda: plot_horizon(res["rollouts"])
        if samples.get("rollouts", {}).get("model"):
            plots["rollout_samples.png"] = lambda: plot_rollout_samples(samples["rollouts"])
    if samples.get("one_step", {}).get("model"):
        plots["one_step.png"] = lambda: plot_one_step(samples["one_step"])
    if samples.get("revisits", {}).get("model"):
        plots["revisit.png"] = lambda: plot_revisit(samples["revisits"])
    if res.get("long_run", {}).get("model", {}).get("windows"):
        plots["long_run.png"] = lambda: plot_long_run(res["long_run"], samples.get("long_run", {}))
    written = []
    report["plots"] = []
    for name, draw in plots.items():
        _save_png(draw(), out / name)
        report["plots"].append(name)
        written.append(out / name)
    atomic_write_json(out / "report.json", report)
    (out / "report.json").chmod(0o644)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(report) + "\n")
        tmp.chmod(0o644)
    return [out / "report.json", out / "report.md", *written]


def check_report(report: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is missing when ``report`` lacks the schema's keys."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"eval report lacks keys {missing}")
    if report["format"] != REPORT_FORMAT or report["version"] != REPORT_VERSION:
        raise ValueError(f"not a {REPORT_FORMAT} v{REPORT_VERSION} report: {report['format']!r} v{report['version']!r}")
    for name, res in report["results"].items():
        if name in ("classifier", "config", "reader"):
            continue
        if not isinstance(res, Mapping) or "model" not in res or "copy_last" not in res:
            raise ValueError(f"eval report: protocol {name!r} must hold 'model' and 'copy_last' results")
