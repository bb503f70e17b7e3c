"""`worldsim play`: play a world with the keyboard in a pygame window.

Threads: the pygame main thread pumps events into a :class:`HeldInput` and draws the latest frame at
the display rate; the :class:`engine.loop.RealtimeLoop` thread reads the held keys once per tick and
steps the session. Everything that touches the session (rewind, reset, save, load, recording) runs on
the loop thread between ticks via ``loop.call``.

Keys are DOM ``KeyboardEvent.code`` names shared with the browser client (physical positions: pygame
scancodes are translated, so WASD stays WASD on any layout). Defaults: worldsim.actions.DEFAULT_KEYS
and controllers.input.DEFAULT_COMMAND_KEYS; ``--keys FILE.json`` overrides them.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controllers import add_world_arguments
from controllers.actionlog import LOG_SUFFIX, ActionLogWriter, LogHeader, Timeline
from controllers.input import DEFAULT_COMMAND_KEYS, HeldInput, load_bindings, make_keymap
from engine.loop import DEFAULT_TICK_HZ, RealtimeLoop, Tick, resolve_tick_hz
from worldsim.actions import DEFAULT_KEYS

HUD_HEIGHT = 22  # pixels of status bar under the picture


@dataclass(frozen=True)
class PlayConfig:
    """Window, pacing and output options of `worldsim play`."""

    scale: int = 8  # 72x72 -> 576x576: nearest-neighbour keeps the pixel art crisp
    tick_hz: float | None = None  # None: the world's own pace (world.tick_hz), else DEFAULT_TICK_HZ
    display_hz: float = 60.0  # event pumping and redraw rate of the main thread
    rewind: int = 200  # snapshots kept for Backspace (40 s at 5 Hz)
    seed: int = 0
    out_dir: str = "worldsim-out"  # screenshots/, recordings/, saves/
    video_format: str = "gif"  # for F3 recordings: gif or mp4
    record: str | None = None  # action log to write from the start


def _pygame_code_tables() -> tuple[dict[int, str], dict[int, str]]:
    """(scancode -> DOM code, keysym -> DOM code) for the keys a game uses."""
    import pygame

    names = {
        "LEFT": "ArrowLeft", "RIGHT": "ArrowRight", "UP": "ArrowUp", "DOWN": "ArrowDown", "SPACE": "Space",
        "TAB": "Tab", "RETURN": "Enter", "BACKSPACE": "Backspace", "ESCAPE": "Escape", "LSHIFT": "ShiftLeft",
        "RSHIFT": "ShiftRight", "LCTRL": "ControlLeft", "RCTRL": "ControlRight", "LALT": "AltLeft", "RALT": "AltRight",
        "MINUS": "Minus", "EQUALS": "Equal", "COMMA": "Comma", "PERIOD": "Period", "SLASH": "Slash",
        "SEMICOLON": "Semicolon", "APOSTROPHE": "Quote", "LEFTBRACKET": "BracketLeft", "RIGHTBRACKET": "BracketRight",
        "BACKSLASH": "Backslash", "GRAVE": "Backquote", "DELETE": "Delete", "HOME": "Home", "END": "End",
        "PAGEUP": "PageUp", "PAGEDOWN": "PageDown", "INSERT": "Insert",
    }
    names |= {c: f"Key{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    names |= {str(d): f"Digit{d}" for d in range(10)}
    names |= {f"F{i}": f"F{i}" for i in range(1, 13)}
    names |= {f"KP_{d}": f"Numpad{d}" for d in range(10)}
    scan: dict[int, str] = {}
    sym: dict[int, str] = {}
    for name, code in names.items():
        sc = getattr(pygame, f"KSCAN_{name}", None)
        if sc is not None:
            scan[int(sc)] = code
        # keysym constants: K_a (lower-case letters), K_LEFT, K_1, K_F1, K_KP_1 / K_KP1
        for cand in (f"K_{name.lower()}" if len(name) == 1 and name.isalpha() else f"K_{name}", f"K_{name.replace('_', '')}",
                     {"APOSTROPHE": "K_QUOTE", "GRAVE": "K_BACKQUOTE"}.get(name, "")):
            k = getattr(pygame, cand, None) if cand else None
            if k is not None:
                sym[int(k)] = code
                break
    return scan, sym


def key_label(code: str) -> str:
    """A short label for a DOM key code: KeyA -> A, Digit1 -> 1, ArrowLeft -> Left."""
    for prefix in ("Key", "Digit", "Arrow"):
        if code.startswith(prefix) and len(code) > len(prefix):
            return code[len(prefix):]
    return code


class PlayApp:
    """The pygame game: window, keys, HUD, overlay, rewind, recording, saves."""

    def __init__(self, world: Any, config: PlayConfig = PlayConfig(), *,
                 bindings: Mapping[str, Sequence[str]] | None = None,
                 commands: Mapping[str, Sequence[str]] | None = None,
                 session: Any = None, clock: Any = time.perf_counter) -> None:
        import pygame

        self.world = world
        self.config = config
        self.bindings = {k: tuple(v) for k, v in (DEFAULT_KEYS if bindings is None else bindings).items()}
        self.commands = {k: tuple(v) for k, v in (DEFAULT_COMMAND_KEYS if commands is None else commands).items()}
        self.command_keys = {code: name for code, name in make_keymap({}, self.commands).items()}
        # Only actions and "rewind" are held per tick; other commands act once per key press.
        keymap = make_keymap(self.bindings, {"rewind": self.commands.get("rewind", ())})
        make_keymap(self.bindings, self.commands)  # no key may be both an action and a command
        self.held = HeldInput(keymap, clock=clock)
        self.clock = clock
        self.out = Path(config.out_dir)
        self.origin_seed: int | None = config.seed if session is None else None
        session = world.new_session(seed=config.seed) if session is None else session
        self.timeline = Timeline(session, lambda s: world.new_session(seed=s), config.rewind)
        self.next_seed = config.seed + 1
        self.loop = RealtimeLoop(self._tick, self.held.read, self._on_frame, tick_hz=resolve_tick_hz(config.tick_hz, world), clock=clock, name="play")
        # Shared with the main thread (guarded by _lock): the latest frame and its timing.
        self._lock = threading.Lock()
        self.frame: np.ndarray = np.asarray(session.frame)
        self.last_tick: Tick | None = None
        self.key_latency_s: float | None = None  # the latest key change -> frame latency
        self.frames_shown = 0
        self.actionlog: ActionLogWriter | None = None
        self.video: Any = None
        self.recording_paths: list[Path] = []
        self._own_log = False  # the action log was started by F3 (so F3 stops it too)
        self.show_help = False
        self.running = True
        self.messages: list[tuple[float, str]] = []  # (until, text) toasts in the HUD

        # Only the modules we use: pygame.init() would also open audio (ALSA noise, no sound here).
        pygame.display.init()
        pygame.font.init()
        self._scan, self._sym = _pygame_code_tables()
        h, w = np.asarray(self.frame).shape[:2]
        self.view_size = (w * config.scale, h * config.scale)
        self.screen = pygame.display.set_mode((self.view_size[0], self.view_size[1] + HUD_HEIGHT))
        pygame.display.set_caption(f"worldsim - {getattr(world, 'id', '?')} ({world.backend_name}/{world.preset_name}) - H for help")
        pygame.key.set_repeat()  # no auto-repeat: held keys are read per tick, not replayed as events
        self.font = pygame.font.Font(None, 20)
        if config.record:
            self.loop.call(lambda: self._start_actionlog(Path(config.record)))

    # ---- loop thread ---------------------------------------------------------------------------
    def _tick(self, name: str) -> np.ndarray | None:
        if name == "rewind":
            frame = self.timeline.rewind(1)
            if frame is None:
                return None  # nothing left to rewind: no new frame
            if self.actionlog is not None:
                self.actionlog.rewind(1)
            return frame
        frame = self.timeline.step(name)
        if self.actionlog is not None:
            self.actionlog.step(name)
        return frame

    def _on_frame(self, frame: np.ndarray, tick: Tick) -> None:
        self._show(frame, tick)

    def _show(self, frame: np.ndarray, tick: Tick | None) -> None:
        frame = np.asarray(frame)
        if self.video is not None:
            self.video.append(frame)
        with self._lock:
            self.frame = frame
            self.frames_shown += 1
            if tick is not None:
                self.last_tick = tick
                if tick.input_latency_s is not None:
                    self.key_latency_s = tick.input_latency_s

    def _start_actionlog(self, path: Path) -> Path:
        """Begin an action log at the current state (loop thread)."""
        w = self.world
        start = None
        seed = self.origin_seed if self.timeline.steps == 0 else None
        if seed is None:
            # Mid-game: the log starts from a saved copy of the current state, kept beside it.
            start = path.name + ".start"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.timeline.session.save(path.parent / start)
        self.actionlog = ActionLogWriter(path, LogHeader(w.id, w.backend_name, w.preset_name, self.loop.tick_hz, seed=seed,
                                                         start_session=start, rewind_capacity=self.config.rewind))
        return path

    def _stop_actionlog(self) -> Path | None:
        if self.actionlog is None:
            return None
        self.actionlog.close()
        path, self.actionlog = self.actionlog.path, None
        return path

    # ---- commands (main thread; session work goes through loop.call) ----------------------------
    def toast(self, text: str, seconds: float = 3.0) -> None:
        """Show a message in the HUD (and print it)."""
        print(text, flush=True)
        self.messages = [m for m in self.messages if m[0] > time.monotonic()][-2:] + [(time.monotonic() + seconds, text)]

    def command(self, name: str) -> None:
        """Run a one-shot command: help, pause, reset, screenshot, record, save, load, quit."""
        if name == "help":
            self.show_help = not self.show_help
        elif name == "pause":
            self.toast("paused" if self.loop.toggle_pause() else "resumed", 1.5)
        elif name == "quit":
            self.running = False
        elif name == "screenshot":
            self.toast(f"screenshot: {self.screenshot()}")
        elif name == "reset":
            self.reset()
        elif name == "record":
            self.toggle_recording()
        elif name == "save":
            self.toast(f"saved: {self.save()}")
        elif name == "load":
            path = self.out / "saves" / "quicksave"
            if not path.exists():
                self.toast(f"no save at {path} (F5 saves)")
            else:
                self.load(path)
                self.toast(f"loaded: {path}")

    def reset(self, seed: int | None = None) -> int:
        """Start again from the world's opening frames with a new seed (logged when recording)."""
        seed = self.next_seed if seed is None else seed
        self.next_seed = seed + 1

        def do() -> None:
            frame = self.timeline.reset(seed)
            self.origin_seed = seed
            if self.actionlog is not None:
                self.actionlog.reset(seed)
            self._show(frame, None)

        self.loop.call(do)
        self.toast(f"new start (seed {seed})", 1.5)
        return seed

    def screenshot(self, path: str | os.PathLike | None = None) -> Path:
        """Save the current frame, upscaled, as PNG."""
        from PIL import Image

        from controllers.replay import upscale

        with self._lock:
            frame = self.frame
        p = Path(path) if path is not None else self.out / "screenshots" / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.frames_shown:06d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(upscale(np.asarray(frame), self.config.scale)).save(p)
        return p

    def toggle_recording(self) -> list[Path]:
        """Start or stop recording a video plus its action log; return the finished paths on stop."""
        from controllers.replay import VideoWriter

        if self.video is None:
            stem = self.out / "recordings" / time.strftime("%Y%m%d-%H%M%S")
            video_path = stem.with_suffix("." + self.config.video_format)

            def start() -> None:
                writer = VideoWriter(video_path, self.loop.tick_hz, scale=max(1, min(self.config.scale, 4)))
                writer.append(np.asarray(self.timeline.session.frame))  # the frame on screen now
                self.video = writer
                if self.actionlog is None:
                    self._start_actionlog(stem.with_suffix(LOG_SUFFIX))
                    self._own_log = True
                else:
                    self._own_log = False

            self.loop.call(start)
            self.toast(f"recording to {video_path}")
            return []

        def stop() -> list[Path]:
            paths = [self.video.close()]
            self.video = None
            if self._own_log:
                p = self._stop_actionlog()
                if p is not None:
                    paths.append(p)
            return paths

        paths = self.loop.call(stop)
        self.recording_paths += paths
        self.toast("recorded: " + ", ".join(map(str, paths)))
        return paths

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Save the game with ``session.save`` (default: the quicksave slot)."""
        p = Path(path) if path is not None else self.out / "saves" / "quicksave"
        p.parent.mkdir(parents=True, exist_ok=True)
        self.loop.call(lambda: self.timeline.session.save(p))
        return p

    def load(self, path: str | os.PathLike) -> None:
        """Continue from a saved game (``world.load_session``); an action log rolls over to a new file."""
        session = self.world.load_session(path)

        def do() -> None:
            frame = self.timeline.replace_session(session)
            self.origin_seed = None
            if self.actionlog is not None:
                old = self._stop_actionlog()
                assert old is not None
                self._start_actionlog(old.with_name(f"{old.stem}-{time.strftime('%H%M%S')}{LOG_SUFFIX}"))
            self._show(frame, None)

        self.loop.call(do)

    # ---- events and drawing (main thread) -------------------------------------------------------
    def key_code(self, event: Any) -> str | None:
        """The DOM code of a pygame key event: physical scancode first, then the keysym."""
        code = self._scan.get(int(getattr(event, "scancode", 0) or 0))
        return code if code is not None else self._sym.get(int(getattr(event, "key", -1)))

    def handle_event(self, event: Any) -> None:
        """Apply one pygame event."""
        import pygame

        if event.type == pygame.QUIT:
            self.running = False
        elif event.type == pygame.KEYDOWN:
            code = self.key_code(event)
            if code is None:
                return
            name = self.command_keys.get(code)
            if name is not None and name != "rewind":
                self.command(name)
            else:
                self.held.press(code)
        elif event.type == pygame.KEYUP:
            code = self.key_code(event)
            if code is not None:
                self.held.release(code)
        elif event.type in (pygame.WINDOWFOCUSLOST, pygame.WINDOWMINIMIZED):
            self.held.clear()  # keys released while unfocused would otherwise stay held

    def pump(self) -> None:
        """Process every pending pygame event."""
        import pygame

        for event in pygame.event.get():
            self.handle_event(event)

    def draw(self) -> None:
        """Draw the latest frame, the HUD and (if on) the key overlay."""
        import pygame

        with self._lock:
            frame, tick, key_lat = self.frame, self.last_tick, self.key_latency_s
        surf = pygame.surfarray.make_surface(np.ascontiguousarray(np.asarray(frame).transpose(1, 0, 2)))
        self.screen.blit(pygame.transform.scale(surf, self.view_size), (0, 0))  # scale = nearest neighbour
        bar = pygame.Rect(0, self.view_size[1], self.view_size[0], HUD_HEIGHT)
        self.screen.fill((20, 20, 24), bar)
        parts = [f"{self.loop.fps:4.1f} fps / {self.loop.tick_hz:g} Hz"]
        if tick is not None:
            parts.append(f"gen {tick.latency_s * 1000:.0f} ms")
        if key_lat is not None:
            parts.append(f"key->frame {key_lat * 1000:.0f} ms")
        parts.append(self.held.current())
        if self.loop.paused:
            parts.append("PAUSED")
        if self.video is not None:
            parts.append("REC")
        now = time.monotonic()
        toasts = [t for until, t in self.messages if until > now]
        if toasts:
            parts.append(toasts[-1])
        self._text("  |  ".join(parts), (6, self.view_size[1] + 4), (230, 230, 230))
        if self.show_help:
            self._draw_help()
        pygame.display.flip()

    def _text(self, s: str, pos: tuple[int, int], color: tuple[int, int, int]) -> None:
        self.screen.blit(self.font.render(s, True, color), pos)

    def help_rows(self) -> list[tuple[str, str]]:
        """The overlay's rows: (action or command, its keys) for every binding."""
        return [(name.replace("_", " "), ", ".join(key_label(k) for k in keys))
                for name, keys in list(self.bindings.items()) + list(self.commands.items())]

    def _draw_help(self) -> None:
        import pygame

        rows = [("KEYS", "(H hides this)")] + self.help_rows()
        panel = pygame.Surface((self.view_size[0] - 40, 18 * len(rows) + 12), pygame.SRCALPHA)
        panel.fill((0, 0, 0, 190))
        self.screen.blit(panel, (20, 20))
        for i, (name, keys) in enumerate(rows):
            color = (255, 255, 200) if i == 0 else (235, 235, 235)
            self._text(name, (30, 26 + 18 * i), color)
            self._text(keys, (220, 26 + 18 * i), color)

    def run(self) -> None:
        """Play until quit: ticks on the loop thread, events and drawing here."""
        import pygame

        clock = pygame.time.Clock()
        self.loop.start()
        try:
            while self.running:
                self.pump()
                if self.loop.finished.is_set():
                    if self.loop.error is not None:
                        raise RuntimeError(f"generation failed: {self.loop.error!r}") from self.loop.error
                    break
                self.draw()
                clock.tick(self.config.display_hz)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the loop, finish recordings and logs, close the window."""
        import pygame

        self.loop.stop()
        if self.video is not None:
            self.recording_paths.append(self.video.close())
            self.video = None
        p = self._stop_actionlog()
        if p is not None:
            self.recording_paths.append(p)
        pygame.display.quit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`worldsim play` options."""
    d = PlayConfig()
    add_world_arguments(parser)
    parser.add_argument("--tick-hz", type=float, default=None,
                        help=f"world steps per second (default: the world's own pace, else {DEFAULT_TICK_HZ:g} like Crafter's GUI)")
    parser.add_argument("--scale", type=int, default=d.scale, help=f"window upscale factor (default {d.scale}: 576x576 for 72x72 frames)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the first session (default {d.seed})")
    parser.add_argument("--rewind", type=int, default=d.rewind, help=f"steps kept for Backspace rewind (default {d.rewind})")
    parser.add_argument("--load", metavar="SAVE", default=None, help="continue a saved game (F5 saves to OUT/saves/quicksave)")
    parser.add_argument("--record", metavar="LOG", default=None,
                        help=f"write an action log from the start (e.g. game{LOG_SUFFIX}); replay it with `worldsim replay`")
    parser.add_argument("--out", default=d.out_dir, help=f"folder for screenshots, recordings and saves (default {d.out_dir})")
    parser.add_argument("--video-format", choices=("gif", "mp4"), default=d.video_format, help="format of F3 recordings (mp4 needs imageio-ffmpeg)")
    parser.add_argument("--keys", metavar="JSON", default=None,
                        help='key bindings: {"actions": {"do": ["Space"]}, "commands": {"quit": ["KeyQ"]}}; codes are DOM KeyboardEvent.code names')


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim play`."""
    from controllers import load_world
    from controllers.replay import mp4_available

    if (args.tick_hz is not None and not args.tick_hz > 0) or args.scale < 1 or args.rewind < 0:
        print("error: --tick-hz must be > 0, --scale >= 1 and --rewind >= 0", file=sys.stderr)
        return 2
    if args.video_format == "mp4" and not mp4_available():
        print("error: --video-format mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); use gif", file=sys.stderr)
        return 2
    try:
        bindings, commands = load_bindings(args.keys)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    world = load_world(args.world, args.backend, args.preset)
    if world is None:
        return 2
    try:
        session = world.load_session(args.load) if args.load else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = PlayConfig(scale=args.scale, tick_hz=args.tick_hz, rewind=args.rewind, seed=args.seed, out_dir=args.out,
                        video_format=args.video_format, record=args.record)
    app = PlayApp(world, config, bindings=bindings, commands=commands, session=session)
    print("keys:", "; ".join(f"{name}: {keys}" for name, keys in app.help_rows()))
    app.run()
    for p in app.recording_paths:
        print(f"wrote {p}")
    return 0
