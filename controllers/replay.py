"""`worldsim replay LOG --video out.mp4|out.gif|DIR/`: re-render an action log on a world.

On the backend and preset the log was recorded with, the frames are identical to the live ones
(sessions are deterministic and snapshot/restore is exact). Also home of :class:`VideoWriter`,
shared with `worldsim play`'s recorder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from controllers.actionlog import ActionLogError, check_world, read_log, replay_frames

VIDEO_SUFFIXES = (".gif", ".mp4")


def mp4_available() -> bool:
    """True when imageio-ffmpeg (a bundled ffmpeg binary; works offline) is installed."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale (H,W,3) -> (H*scale, W*scale, 3): crisp pixel art."""
    if scale == 1:
        return frame
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


class VideoWriter:
    """Writes uint8 (H,W,3) frames to .gif (Pillow), .mp4 (imageio-ffmpeg) or a directory of PNGs.

    A path ending in '/' or without a suffix is a PNG directory. GIF frames are kept (small, at native
    size) and written atomically on close; MP4 streams to ffmpeg.
    """

    def __init__(self, path: str | os.PathLike, fps: float, scale: int = 4) -> None:
        raw = str(path)
        self.path = Path(path)
        self.fps = float(fps)
        self.scale = int(scale)
        if self.scale < 1:
            raise ValueError(f"video scale must be >= 1, got {scale}")
        if not self.fps > 0:
            raise ValueError(f"video fps must be > 0, got {fps}")
        suffix = self.path.suffix.lower()
        if raw.endswith(("/", os.sep)) or suffix == "":
            self.kind = "png"
            self.path.mkdir(parents=True, exist_ok=True)
        elif suffix in VIDEO_SUFFIXES:
            self.kind = suffix[1:]
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            raise ValueError(f"video path {raw!r}: use .gif, .mp4 or a directory (ending in '/') for PNG frames")
        if self.kind == "mp4" and not mp4_available():
            raise ValueError(f"video path {raw!r}: MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); use .gif or a PNG directory instead")
        self.frames = 0
        self._gif: list[Any] = []
        self._mp4: Any = None
        self._shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        """Add one frame (H,W,3) uint8."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"video frame shape changed from {self._shape} to {frame.shape}")
        big = upscale(frame, self.scale)
        if self.kind == "png":
            from PIL import Image

            Image.fromarray(big).save(self.path / f"{self.frames:06d}.png")
        elif self.kind == "gif":
            from PIL import Image

            self._gif.append(Image.fromarray(np.ascontiguousarray(big)))
        else:
            if self._mp4 is None:
                import imageio_ffmpeg

                h, w = big.shape[:2]
                # macro_block_size=8: 72-pixel frames need no padding; yuv420p only needs even sizes.
                self._mp4 = imageio_ffmpeg.write_frames(str(self.path), (w, h), fps=self.fps, codec="libx264",
                                                        pix_fmt_out="yuv420p", macro_block_size=8, quality=8,
                                                        ffmpeg_log_level="error")
                self._mp4.send(None)
            self._mp4.send(np.ascontiguousarray(big))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file; return its path."""
        if self.kind == "gif" and self._gif:
            from worldsim.io import atomic_path

            # GIF frame delays are in 10 ms units in most players; round to that.
            ms = max(20, int(round(1000.0 / self.fps / 10.0)) * 10)
            with atomic_path(self.path) as tmp:
                self._gif[0].save(tmp, format="GIF", save_all=True, append_images=self._gif[1:], duration=ms, loop=0, optimize=False)
            self._gif = []
        elif self.kind == "mp4" and self._mp4 is not None:
            self._mp4.close()
            self._mp4 = None
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`worldsim replay` options."""
    parser.add_argument("log", help="an action log written by `worldsim play --record` or `worldsim serve --record`")
    parser.add_argument("--video", required=True, help="output: out.mp4, out.gif, or a directory ending in '/' for PNG frames")
    parser.add_argument("--world", default=None, help="world directory (default: the default world); its id must match the log's")
    parser.add_argument("--backend", default=None, help="engine backend (default: the one the log was recorded with)")
    parser.add_argument("--preset", default=None, help="runtime preset (default: the one the log was recorded with)")
    parser.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale factor (default 4)")
    parser.add_argument("--fps", type=float, default=None, help="video frame rate (default: the log's tick rate)")
    parser.add_argument("--force", action="store_true", help="replay even if the world id differs from the log's")


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim replay`."""
    from controllers import load_world

    try:
        log = read_log(args.log)
    except ActionLogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if log.truncated:
        print(f"warning: {args.log} ends inside an event (was the recorder killed?); replaying the {len(log.events)} complete events", file=sys.stderr)
    h = log.header
    backend = args.backend or h.backend
    preset = args.preset or h.preset
    world = load_world(args.world, backend, preset)
    if world is None:
        return 2
    try:
        problems = check_world(world, log, strict=not args.force)
    except ActionLogError as e:
        print(f"error: {e} (use --world to pick the right world, or --force)", file=sys.stderr)
        return 2
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if (backend, preset) != (h.backend, h.preset):
        print(f"note: recorded on {h.backend}/{h.preset}, replaying on {backend}/{preset}: frames may differ slightly", file=sys.stderr)
    try:
        writer = VideoWriter(args.video, args.fps or h.tick_hz, args.scale)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        with writer:
            for frame in replay_frames(world, log):
                writer.append(frame)
    except ActionLogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"wrote {writer.frames} frames ({len(log.events)} events) to {writer.path} in {dt:.1f} s ({writer.frames / max(dt, 1e-9):.1f} frames/s)")
    return 0
