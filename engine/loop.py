"""The real-time loop: the one place that paces time.

Each tick the loop reads the *current* input from a callable just before generating (held keys are
sampled, never queued, so stale key events cannot pile up), advances the world by one frame, and
hands the frame plus its timing to a callback. Generation runs in its own thread; the display (pygame
main thread, asyncio event loop) never waits on the model.

Pacing: ticks are scheduled every ``1 / tick_hz`` seconds. When generation is slower than a tick the
loop runs back to back as fast as it can and *resets* its schedule instead of catching up in a burst,
so no backlog ever builds.

Everything that mutates the session outside a tick (rewind, reset, restore, save) goes through
``submit``/``call`` so it runs on the loop thread between ticks: one thread owns the session.

Default pace: a world may declare its pace (``world.tick_hz``); controllers use that. Otherwise
Crafter's own GUI (``crafter/run_gui.py``) steps the game at ``--fps 5``, and a world that stands in
for the game should feel the same, so ``DEFAULT_TICK_HZ = 5``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Crafter's run_gui default (--fps 5): the pace people know the real game at.
DEFAULT_TICK_HZ: float = 5.0
# Longest single wait; bounds how late a stop/pause/submit is noticed if a wake-up were ever missed.
_MAX_WAIT_S = 0.25


def resolve_tick_hz(tick_hz: float | None, world: Any = None) -> float:
    """The tick rate to use: the one asked for, else the world's declared pace, else DEFAULT_TICK_HZ."""
    if tick_hz is not None:
        return float(tick_hz)
    return float(getattr(world, "tick_hz", None) or DEFAULT_TICK_HZ)


@dataclass(frozen=True)
class Input:
    """One sample of the controller's current input: an action (or command) name plus provenance."""

    action: str
    seq: int | None = None  # the latest input message/event number seen when this was read
    since: float | None = None  # clock time the input last changed (for input-to-frame latency)


@dataclass(frozen=True)
class Tick:
    """Timing of one tick; times are in the loop's clock (seconds)."""

    index: int  # 0-based count of ticks run by this loop
    action: str  # what the tick function was given
    seq: int | None  # Input.seq of the input read this tick
    input_time: float  # when the input was read
    frame_time: float  # when the frame was ready
    latency_s: float  # frame_time - input_time: input read -> frame ready
    input_latency_s: float | None  # frame_time - Input.since: input change -> frame ready (if known)
    fps: float  # frames per second over the last few ticks (0 until two ticks exist)


class LoopStopped(RuntimeError):
    """A call was submitted to a loop that has stopped."""


class RealtimeLoop:
    """Paced generation loop: ``tick_fn(action) -> frame (H,W,3) uint8`` once per tick.

    ``tick_fn`` may return None when a tick has nothing new to show (a refused rewind): no callback.

    ``read_input()`` returns an action name or an :class:`Input`; raising ``StopIteration`` ends the
    loop cleanly (scripted controllers). ``on_frame(frame, tick)`` runs on the loop thread.
    ``clock``/``sleep`` are injectable so tests can drive pacing with a fake clock; by default waits
    are interruptible by ``stop``/``pause``/``submit``.
    """

    def __init__(
        self,
        tick_fn: Callable[[str], np.ndarray],
        read_input: Callable[[], str | Input],
        on_frame: Callable[[np.ndarray, Tick], None] | None = None,
        *,
        tick_hz: float = DEFAULT_TICK_HZ,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Any] | None = None,
        fps_window: int = 16,
        name: str = "worldsim-loop",
    ) -> None:
        self.tick_fn = tick_fn
        self.read_input = read_input
        self.on_frame = on_frame
        self.tick_hz = tick_hz  # validated by the setter
        self.clock = clock
        self._sleep = sleep
        self.name = name
        self.ticks = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()  # set when the loop ends (stop, script end or error)
        self._frame_times: collections.deque[float] = collections.deque(maxlen=max(2, fps_window))
        self._wake = threading.Event()
        self._stop = False
        self._paused = False
        self._pending: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_deadline: float | None = None
        self._exhausted = False

    # ---- configuration -------------------------------------------------------------------------
    @property
    def tick_hz(self) -> float:
        """Target ticks per second (adjustable while running; takes effect at the next tick)."""
        return self._tick_hz

    @tick_hz.setter
    def tick_hz(self, hz: float) -> None:
        hz = float(hz)
        if not (hz > 0 and hz < float("inf")):
            raise ValueError(f"tick_hz must be a positive finite number, got {hz!r}")
        self._tick_hz = hz

    @property
    def period(self) -> float:
        """Seconds between tick starts."""
        return 1.0 / self._tick_hz

    @property
    def running(self) -> bool:
        """True while the loop thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        """True while paused (no ticks; submitted calls still run)."""
        return self._paused

    @property
    def fps(self) -> float:
        """Frames per second over the last ``fps_window`` ticks."""
        t = self._frame_times
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # ---- control -------------------------------------------------------------------------------
    def start(self) -> RealtimeLoop:
        """Start the loop thread (returns self)."""
        if self._thread is not None:
            raise RuntimeError("loop already started (a loop runs once; make a new one)")
        self._thread = threading.Thread(target=self._thread_main, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current tick and join the thread; pending calls are cancelled."""
        self._stop = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"loop thread {self.name!r} did not stop within {timeout} s (a tick is stuck)")
        self._cancel_pending()

    def pause(self) -> None:
        """Stop ticking until ``resume``; submitted calls keep running."""
        self._paused = True
        self._wake.set()

    def resume(self) -> None:
        """Resume ticking; the schedule restarts now (no burst to make up for the pause)."""
        self._paused = False
        self._next_deadline = None
        self._wake.set()

    def toggle_pause(self) -> bool:
        """Pause or resume; return the new paused state."""
        if self._paused:
            self.resume()
        else:
            self.pause()
        return self._paused

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the loop thread before the next tick; return a Future with its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._stop or self.finished.is_set():
            fut.set_exception(LoopStopped(f"loop {self.name!r} has stopped"))
            return fut
        with self._lock:
            self._pending.append((fn, fut))
        self._wake.set()
        return fut

    def call(self, fn: Callable[[], Any], timeout: float | None = 30.0) -> Any:
        """Run ``fn`` between ticks and return its result; runs inline if no loop thread is running."""
        if not self.running or threading.current_thread() is self._thread:
            self.run_pending()
            return fn()
        return self.submit(fn).result(timeout)

    def run_pending(self) -> int:
        """Run the submitted calls now (on the calling thread); return how many ran."""
        n = 0
        while True:
            with self._lock:
                if not self._pending:
                    return n
                fn, fut = self._pending.popleft()
            n += 1
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # the caller gets it through the future
                fut.set_exception(e)

    # ---- ticking -------------------------------------------------------------------------------
    def step_now(self) -> tuple[np.ndarray | None, Tick] | None:
        """Run exactly one tick on the calling thread, unpaced (tests, manual stepping).

        Returns (frame, tick) (frame None when the tick had nothing new to show), or None when the
        input source is exhausted.
        """
        if self.running:
            raise RuntimeError("step_now() cannot be used while the loop thread is running")
        self.run_pending()
        return self._tick()

    def run(self, max_ticks: int | None = None) -> int:
        """Run paced ticks on the calling thread until stopped, exhausted or ``max_ticks``; return ticks run."""
        start = self.ticks
        try:
            while not self._stop:
                self.run_pending()
                if self._paused:
                    self._wait(_MAX_WAIT_S)
                    continue
                now = self.clock()
                if self._next_deadline is None:
                    self._next_deadline = now
                if now < self._next_deadline:
                    self._wait(self._next_deadline - now)
                    continue  # re-check stop/pause/pending, then the deadline
                if max_ticks is not None and self.ticks - start >= max_ticks:
                    break
                if self._tick() is None:
                    break
                # Schedule the next tick one period after this one was due; if generation overran,
                # start from now instead of catching up (never a backlog, never a burst).
                self._next_deadline = max(self._next_deadline + self.period, self.clock())
        except BaseException as e:
            self.error = e
            raise
        finally:
            if max_ticks is None or self._stop or self.error is not None or self._exhausted:
                self.finished.set()
        return self.ticks - start

    def _tick(self) -> tuple[np.ndarray | None, Tick] | None:
        """Read the current input, generate one frame, report it; None when the input is exhausted."""
        try:
            inp = self.read_input()
        except StopIteration:
            self._exhausted = True
            return None
        if isinstance(inp, str):
            inp = Input(inp)
        t_in = self.clock()
        frame = self.tick_fn(inp.action)
        t_out = self.clock()
        if frame is not None:
            self._frame_times.append(t_out)
        tick = Tick(
            index=self.ticks,
            action=inp.action,
            seq=inp.seq,
            input_time=t_in,
            frame_time=t_out,
            latency_s=t_out - t_in,
            input_latency_s=None if inp.since is None else max(0.0, t_out - inp.since),
            fps=self.fps,
        )
        self.ticks += 1
        if frame is not None and self.on_frame is not None:
            self.on_frame(frame, tick)
        return frame, tick

    def _wait(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), _MAX_WAIT_S)
        if self._sleep is not None:
            self._sleep(seconds)
            return
        if self._wake.wait(seconds):
            self._wake.clear()

    def _thread_main(self) -> None:
        try:
            self.run()
        except BaseException:
            pass  # kept in self.error; the owner checks it (or ``finished``)
        finally:
            self.finished.set()
            self._cancel_pending()

    def _cancel_pending(self) -> None:
        with self._lock:
            pending, self._pending = list(self._pending), collections.deque()
        for _, fut in pending:
            fut.cancel()  # never started: the waiter gets CancelledError

    def __enter__(self) -> RealtimeLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
