"""`worldsim serve`: the browser client page at ``/`` and the WebSocket endpoint at ``/ws``, one process.

Each WebSocket connection gets its own session, stepped by its own :class:`engine.loop.RealtimeLoop`
thread, so the asyncio event loop never waits on the model. Messages go out through a small ordered
outbox per connection in which a new frame replaces any frame still waiting: a slow client gets the
latest frame when it can take one, stale frames are dropped (counted), never buffered, and no client
can stall another. Protocol: docs/protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import http
import io
import ipaddress
import logging
import mimetypes
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controllers import add_world_arguments
from controllers import protocol as P
from controllers.actionlog import LOG_SUFFIX, ActionLogWriter, LogHeader, Timeline
from controllers.input import HeldInput, load_bindings, make_keymap
from engine.loop import DEFAULT_TICK_HZ, RealtimeLoop, Tick, resolve_tick_hz

log = logging.getLogger("worldsim.serve")

WEB_DIR = Path(__file__).with_name("web")
# Close codes (RFC 6455 allows 4000-4999 for applications); the client decides whether to reconnect.
CLOSE_SERVER_FULL = 1013  # "try again later": the client reconnects with backoff
CLOSE_UNAUTHORIZED = 4401  # do not reconnect
CLOSE_IDLE = 4408  # do not reconnect automatically
CLOSE_HELLO_TIMEOUT = 4400
CLOSE_INTERNAL = 1011  # the session's generation failed
MAX_OUTBOX = 128  # queued messages per client (frames are at most one per control message)


@dataclass(frozen=True)
class ServeConfig:
    """Server limits and options (all adjustable on the command line)."""

    host: str = "127.0.0.1"  # loopback by default: remote use is an explicit choice
    port: int = 8000
    tick_hz: float | None = None  # None: the world's own pace (world.tick_hz), else DEFAULT_TICK_HZ
    max_sessions: int = 8
    idle_timeout_s: float = 300.0  # no client message for this long closes the session
    hello_timeout_s: float = 10.0
    max_message: int = P.MAX_CLIENT_MESSAGE  # larger client messages get `too_large` (connection stays)
    hard_max_message: int = 1 << 20  # beyond this the WebSocket library closes the connection (1009)
    rate_per_s: float = 30.0  # client messages per second (token bucket) ...
    rate_burst: int = 60  # ... with this burst
    write_limit: int = 64 * 1024  # bytes buffered per client before a send waits (frames drop meanwhile)
    frame_format: str = "png"
    jpeg_quality: int = 90
    rewind: int = 32  # rewind ring per session (snapshots); 0 disables rewind
    max_snapshots: int = 8  # named snapshots per session
    token: str | None = None  # if set, hello must carry it
    record_dir: str | None = None  # if set, every session writes an action log there
    allow_origins: tuple[str, ...] = ()  # extra browser origins allowed besides the server's own


@dataclass
class Stats:
    """Counters for one connection (and the server totals)."""

    frames_sent: int = 0
    frames_dropped: int = 0
    errors_sent: int = 0
    messages: int = 0


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second up to ``burst``; ``take()`` is False when empty."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens = float(burst)
        self.t = clock()

    def take(self) -> bool:
        """Consume one token if available."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def encode_frame(frame: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """Encode a uint8 (H,W,3) frame as PNG or JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)  # tiny frames: speed over the last few bytes
    else:
        img.save(buf, "JPEG", quality=jpeg_quality)
    return buf.getvalue()


class Connection:
    """One client: its session, loop thread, input state, outbox and limits."""

    def __init__(self, server: WorldServer, ws: Any) -> None:
        self.server = server
        self.ws = ws
        self.id = secrets.token_hex(6)
        self.aio = asyncio.get_running_loop()
        self.stats = Stats()
        self.bucket = TokenBucket(server.config.rate_per_s, server.config.rate_burst)
        self.last_message = time.monotonic()
        self.last_rate_error = 0.0
        self.fmt = server.config.frame_format
        self.held = HeldInput(server.keymap)
        self.timeline: Timeline | None = None
        self.loop: RealtimeLoop | None = None
        self.recorder: ActionLogWriter | None = None
        self.seed = 0
        self.frame_seq = 0
        # Outbox, in order: control replies (acks, errors, pongs) are never dropped while the client
        # reads at all; a new frame replaces the frames queued after the last control message (latest
        # wins), so the client still sees the last frame before each ack and never a backlog.
        self.outbox: collections.deque[tuple[bool, bytes]] = collections.deque()  # (is_frame, data)
        self.wake = asyncio.Event()

    # ---- outbox (event-loop thread) -------------------------------------------------------------
    def send_control(self, msg: dict[str, Any]) -> None:
        """Queue a control message (ack, error, pong, welcome)."""
        if msg.get("type") == "error":
            self.stats.errors_sent += 1
        if len(self.outbox) >= MAX_OUTBOX:
            return  # the client is not reading at all; keepalive pings will close it
        self.outbox.append((False, P.encode(msg)))
        self.wake.set()

    def _post_frame(self, data: bytes) -> None:
        while self.outbox and self.outbox[-1][0]:
            self.outbox.pop()
            self.stats.frames_dropped += 1
            self.server.stats.frames_dropped += 1
        self.outbox.append((True, data))
        self.wake.set()

    async def sender(self) -> None:
        """Send the outbox in order; only this task waits on the client's socket."""
        import websockets

        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.outbox:
                    is_frame, data = self.outbox.popleft()
                    await self.ws.send(data)
                    if is_frame:
                        self.stats.frames_sent += 1
                        self.server.stats.frames_sent += 1
        except websockets.ConnectionClosed:
            pass  # the handler sees the close too and cleans up

    # ---- frames (loop thread) ------------------------------------------------------------------
    def publish(self, frame: np.ndarray, tick: Tick | None, action: str) -> None:
        """Encode a frame and hand it to the event loop (called on the session's loop thread)."""
        self.frame_seq += 1
        latency = tick.latency_s * 1000 if tick is not None else 0.0
        msg = P.frame(self.frame_seq, tick.seq if tick is not None else None, tick.index if tick is not None else -1,
                      self.fmt, encode_frame(frame, self.fmt, self.server.config.jpeg_quality), latency,
                      tick.fps if tick is not None else 0.0, action)
        if tick is not None and tick.input_latency_s is not None:
            msg["input_latency_ms"] = round(tick.input_latency_s * 1000, 3)
        data = P.encode(msg)
        try:
            self.aio.call_soon_threadsafe(self._post_frame, data)
        except RuntimeError:
            pass  # the event loop is shutting down

    def _tick(self, action: str) -> np.ndarray:
        assert self.timeline is not None
        frame = self.timeline.step(action)
        if self.recorder is not None:
            self.recorder.step(action)
        return frame

    # ---- session lifecycle ----------------------------------------------------------------------
    def start_session(self, seed: int) -> None:
        """Create the world session and its loop (event-loop thread; creation is cheap)."""
        world, cfg = self.server.world, self.server.config
        self.seed = seed
        session = world.new_session(seed=seed)
        self.timeline = Timeline(session, lambda s: world.new_session(seed=s), cfg.rewind, max_named=cfg.max_snapshots)
        if cfg.record_dir:
            self.recorder = ActionLogWriter(
                Path(cfg.record_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id}{LOG_SUFFIX}",
                LogHeader(world.id, world.backend_name, world.preset_name, self.server.tick_hz, seed=seed, rewind_capacity=cfg.rewind),
            )
        self.loop = RealtimeLoop(self._tick, self.held.read, lambda f, t: self.publish(f, t, t.action),
                                 tick_hz=self.server.tick_hz, name=f"session-{self.id}")
        self.publish(session.frame, None, "start")
        self.loop.start()

    async def run_on_loop(self, fn: Any) -> Any:
        """Run ``fn`` on the session's loop thread between ticks, without blocking the event loop."""
        assert self.loop is not None
        return await asyncio.wrap_future(self.loop.submit(fn))

    async def close_session(self) -> None:
        """Stop the loop thread and close the log."""
        if self.loop is not None:
            await asyncio.to_thread(self.loop.stop)
        if self.recorder is not None:
            self.recorder.close()


class WorldServer:
    """Serves one world to many browser sessions (``/`` page, ``/ws`` protocol)."""

    def __init__(self, world: Any, config: ServeConfig = ServeConfig(),
                 bindings: Mapping[str, Sequence[str]] | None = None,
                 commands: Mapping[str, Sequence[str]] | None = None) -> None:
        from controllers.input import DEFAULT_COMMAND_KEYS
        from worldsim.actions import DEFAULT_KEYS

        if config.frame_format not in P.FRAME_FORMATS:
            raise ValueError(f"frame_format must be one of {P.FRAME_FORMATS}, got {config.frame_format!r}")
        if config.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {config.max_sessions}")
        self.world = world
        self.config = config
        self.tick_hz = resolve_tick_hz(config.tick_hz, world)
        self.bindings = {k: list(v) for k, v in (DEFAULT_KEYS if bindings is None else bindings).items()}
        self.commands = {k: list(v) for k, v in (DEFAULT_COMMAND_KEYS if commands is None else commands).items()}
        make_keymap(self.bindings, self.commands)  # validate: no key bound twice
        self.keymap = make_keymap(self.bindings)  # only actions are held server-side
        self.connections: set[Connection] = set()
        self.sessions = 0  # connections past hello
        self.stats = Stats()
        self._server: Any = None
        self.port: int | None = None
        self._static = {p.name: p for p in WEB_DIR.iterdir() if p.is_file()} if WEB_DIR.is_dir() else {}
        self._next_seed = 0

    # ---- HTTP ----------------------------------------------------------------------------------
    def process_request(self, connection: Any, request: Any) -> Any:
        """Serve the page and static files; let ``/ws`` upgrade (checking the browser Origin)."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = urllib.parse.urlsplit(request.path).path
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_ok(origin, request.headers.get("Host", "")):
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {origin} not allowed\n")
            if len(self.connections) >= 2 * self.config.max_sessions + 8:
                # Far over the cap (most of them never said hello): refuse at the HTTP level.
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
            return None
        name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
        file = self._static.get(name)
        if request.headers.get("Upgrade") or file is None:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        body = file.read_bytes()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        headers = Headers([
            ("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:"),
            ("Connection", "close"),
        ])
        return Response(200, "OK", headers, body)

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in self.config.allow_origins:
            return True
        netloc = urllib.parse.urlsplit(origin).netloc
        return bool(netloc) and netloc == host

    # ---- WebSocket -----------------------------------------------------------------------------
    async def handler(self, ws: Any) -> None:
        """One connection: hello, then messages until it closes or idles out."""
        import websockets

        conn = Connection(self, ws)
        self.connections.add(conn)
        sender = asyncio.create_task(conn.sender())
        watchdog = asyncio.create_task(self._watchdog(conn))
        helloed = False
        try:
            async for raw in ws:
                conn.last_message = time.monotonic()
                conn.stats.messages += 1
                if not conn.bucket.take():
                    if conn.last_message - conn.last_rate_error > 1.0:  # one error a second, not one per message
                        conn.last_rate_error = conn.last_message
                        conn.send_control(P.error(P.RATE_LIMITED, f"more than {self.config.rate_per_s:g} messages/s; message dropped"))
                    continue
                try:
                    msg = P.decode(raw, self.config.max_message)
                    if not helloed:
                        if msg["type"] != "hello":
                            raise P.ProtocolError(P.HELLO_REQUIRED, "send {type: 'hello', version: 1} first")
                        close = self._hello(conn, msg)
                        if close is not None:
                            await self._flush_and_close(conn, sender, *close)
                            return
                        helloed = True
                        continue
                    await self._dispatch(conn, msg)
                except P.ProtocolError as e:
                    conn.send_control(e.to_msg())
                except websockets.ConnectionClosed:
                    raise
                except Exception as e:  # a failed control (reset, restore...): report it, keep serving
                    log.exception("session %s: message failed", conn.id)
                    conn.send_control(P.error(P.INTERNAL, f"{type(e).__name__}: {e}"))
        except websockets.ConnectionClosed:
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection %s failed", conn.id)
        finally:
            watchdog.cancel()
            sender.cancel()
            self.connections.discard(conn)
            if helloed:
                self.sessions -= 1
            await conn.close_session()
            if helloed:
                log.info("session %s ended: %d frames sent, %d dropped, %d errors", conn.id, conn.stats.frames_sent,
                         conn.stats.frames_dropped, conn.stats.errors_sent)

    def _hello(self, conn: Connection, msg: dict[str, Any]) -> tuple[int, str] | None:
        """Validate a hello and start the session; return (close code, reason) to refuse it."""
        cfg = self.config
        if msg["version"] != P.PROTOCOL_VERSION:
            raise P.ProtocolError(P.VERSION_MISMATCH, f"this server speaks protocol version {P.PROTOCOL_VERSION}, not {msg['version']}")
        if cfg.token is not None and not hmac.compare_digest(str(msg.get("token", "")).encode(), cfg.token.encode()):
            conn.send_control(P.error(P.UNAUTHORIZED, "a valid token is required (the server was started with --token)"))
            return CLOSE_UNAUTHORIZED, "unauthorized"
        if self.sessions >= cfg.max_sessions:
            conn.send_control(P.error(P.SERVER_FULL, f"the server is full ({cfg.max_sessions} sessions); try again later"))
            return CLOSE_SERVER_FULL, "server full"
        self.sessions += 1
        conn.fmt = msg.get("format", cfg.frame_format)
        seed = msg.get("seed")
        if seed is None:
            seed, self._next_seed = self._next_seed, self._next_seed + 1
        limits = {
            "max_sessions": cfg.max_sessions, "max_message": cfg.max_message, "rate_per_s": cfg.rate_per_s,
            "rate_burst": cfg.rate_burst, "idle_timeout_s": cfg.idle_timeout_s, "rewind": cfg.rewind,
            "max_snapshots": cfg.max_snapshots,
        }
        conn.send_control(P.welcome(conn.id, list(self.world.action_names), tuple(self.world.frame_shape), self.tick_hz,
                                    {"actions": self.bindings, "commands": self.commands}, limits, conn.fmt, seed))
        conn.start_session(seed)
        log.info("session %s started (seed %d, %d/%d sessions)", conn.id, seed, self.sessions, cfg.max_sessions)
        return None

    async def _dispatch(self, conn: Connection, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        tl = conn.timeline
        assert tl is not None and conn.loop is not None
        if kind == "input":
            if "keys" in msg:
                conn.held.set_keys(msg["keys"], msg["seq"])
            else:
                try:
                    conn.held.set_action(msg["action"], msg["seq"])
                except ValueError as e:
                    raise P.ProtocolError(P.BAD_FIELD, f"input: field 'action': {e}") from None
        elif kind == "hello":
            raise P.ProtocolError(P.BAD_FIELD, "hello: this connection already has a session")
        elif kind == "ping":
            conn.send_control({"type": "pong", "t": msg.get("t"), "server_time": time.time()})
        elif kind == "pause":
            conn.loop.pause() if msg["paused"] else conn.loop.resume()
            conn.send_control(P.ack("pause", paused=conn.loop.paused))
        elif kind == "reset":
            seed = msg.get("seed")
            if seed is None:
                seed, self._next_seed = self._next_seed, self._next_seed + 1

            def reset() -> None:
                frame = tl.reset(seed)
                if conn.recorder is not None:
                    conn.recorder.reset(seed)
                conn.publish(frame, None, "reset")

            await conn.run_on_loop(reset)
            conn.seed = seed
            conn.send_control(P.ack("reset", seed=seed))
        elif kind == "rewind":
            steps = msg.get("steps", 1)

            def rewind() -> bool:
                frame = tl.rewind(steps)
                if frame is None:
                    return False
                if conn.recorder is not None:
                    conn.recorder.rewind(steps)
                conn.publish(frame, None, "rewind")
                return True

            done = await conn.run_on_loop(rewind)
            conn.send_control(P.ack("rewind", steps=steps if done else 0))
        elif kind == "snapshot":
            name = msg["name"]

            def snap() -> None:
                tl.snapshot(name)
                if conn.recorder is not None:
                    conn.recorder.snapshot(name)

            try:
                await conn.run_on_loop(snap)
            except ValueError as e:
                raise P.ProtocolError(P.BAD_FIELD, f"snapshot: {e}") from None
            conn.send_control(P.ack("snapshot", name=name))
        elif kind == "restore":
            name = msg["name"]
            if name not in tl.named:
                raise P.ProtocolError(P.UNKNOWN_SNAPSHOT, f"restore: no snapshot named {name[:P.MAX_NAME_LEN]!r}; known: {', '.join(tl.named) or 'none'}")

            def restore() -> None:
                frame = tl.restore(name)
                if conn.recorder is not None:
                    conn.recorder.restore(name)
                conn.publish(frame, None, "restore")

            await conn.run_on_loop(restore)
            conn.send_control(P.ack("restore", name=name))

    async def _watchdog(self, conn: Connection) -> None:
        """Close connections that never say hello or go idle."""
        cfg = self.config
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if conn.timeline is None:
                left = start + cfg.hello_timeout_s - now
                if left <= 0:
                    conn.send_control(P.error(P.HELLO_REQUIRED, f"no hello within {cfg.hello_timeout_s:g} s"))
                    await self._flush_and_close(conn, None, CLOSE_HELLO_TIMEOUT, "no hello")
                    return
            else:
                if conn.loop is not None and conn.loop.error is not None:
                    log.error("session %s failed: %r", conn.id, conn.loop.error)
                    conn.send_control(P.error(P.INTERNAL, f"the session failed: {type(conn.loop.error).__name__}: {conn.loop.error}"))
                    await self._flush_and_close(conn, None, CLOSE_INTERNAL, "session failed")
                    return
                left = conn.last_message + cfg.idle_timeout_s - now
                if left <= 0:
                    conn.send_control(P.error(P.IDLE_TIMEOUT, f"no message for {cfg.idle_timeout_s:g} s; session closed"))
                    await self._flush_and_close(conn, None, CLOSE_IDLE, "idle timeout")
                    return
            await asyncio.sleep(min(left, 0.5))

    async def _flush_and_close(self, conn: Connection, sender: asyncio.Task | None, code: int, reason: str) -> None:
        """Give queued control messages a moment to go out, then close."""
        if sender is not None:
            sender.cancel()
        try:
            async with asyncio.timeout(2.0):
                while conn.outbox:
                    await conn.ws.send(conn.outbox.popleft()[1])
        except Exception:
            pass
        await conn.ws.close(code, reason)

    # ---- running -------------------------------------------------------------------------------
    async def start(self) -> int:
        """Start listening; return the bound port."""
        from websockets.asyncio.server import serve

        cfg = self.config
        self._server = await serve(
            self.handler, cfg.host, cfg.port, process_request=self.process_request,
            max_size=cfg.hard_max_message, max_queue=16, write_limit=cfg.write_limit,
            compression=None,  # frames are PNG/JPEG already; deflate would cost CPU for nothing
            ping_interval=20, ping_timeout=20, close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop accepting, close every connection, stop every session."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        """Start and run until cancelled."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.close()


class ServerThread:
    """A WorldServer running in a background thread with its own event loop (tests, demos)."""

    def __init__(self, world: Any, config: ServeConfig = ServeConfig(port=0), **kwargs: Any) -> None:
        self.server = WorldServer(world, config, **kwargs)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="worldsim-serve", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._aio = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            finally:
                self._ready.set()
            await self._stop.wait()
            await self.server.close()

        try:
            asyncio.run(main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start and wait until listening."""
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server.port is not None
        return self.server.port

    @property
    def url(self) -> str:
        """http://host:port/"""
        return f"http://{self.server.config.host}:{self.port}/"

    def stop(self, timeout: float = 30.0) -> None:
        """Close everything and join the thread."""
        if self._aio is not None and self._stop is not None and self._thread.is_alive():
            self._aio.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- CLI -----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`worldsim serve` options."""
    d = ServeConfig()
    add_world_arguments(parser)
    parser.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 picks a free one)")
    parser.add_argument("--tick-hz", type=float, default=None, help=f"frames per second per session (default: the world's own pace, else {DEFAULT_TICK_HZ:g})")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions, help=f"session cap (default {d.max_sessions})")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                        help=f"seconds without a client message before a session closes (default {d.idle_timeout_s:g})")
    parser.add_argument("--max-message", type=int, default=d.max_message, help=f"largest client message in bytes (default {d.max_message})")
    parser.add_argument("--rate", type=float, default=d.rate_per_s, help=f"client messages per second (default {d.rate_per_s:g})")
    parser.add_argument("--format", choices=P.FRAME_FORMATS, default=d.frame_format, help="default frame encoding (default png: lossless pixel art)")
    parser.add_argument("--rewind", type=int, default=d.rewind, help=f"rewind steps kept per session (default {d.rewind})")
    parser.add_argument("--token", default=None, help="require this token in hello (use it when binding beyond loopback)")
    parser.add_argument("--record", metavar="DIR", default=None, help="write an action log per session into DIR")
    parser.add_argument("--keys", metavar="JSON", default=None, help="key bindings file (see `worldsim play --help`)")
    parser.add_argument("--allow-origin", action="append", default=[], help="extra browser origin allowed to connect (repeatable)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Entry point of `worldsim serve`."""
    from controllers import load_world

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per HTTP request is noise
    checks = (("--tick-hz", 1.0 if args.tick_hz is None else args.tick_hz, 0), ("--max-sessions", args.max_sessions, 0),
              ("--max-message", args.max_message, 63), ("--rate", args.rate, 0), ("--idle-timeout", args.idle_timeout, 0))
    for name, value, lo in checks:
        if not value > lo:
            print(f"error: {name} must be > {lo}, got {value}", file=sys.stderr)
            return 2
    if args.rewind < 0:
        print(f"error: --rewind must be >= 0, got {args.rewind}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not args.token:
        print(f"warning: serving on {args.host} without --token: anyone who can reach this port can play", file=sys.stderr)
    try:
        bindings, commands = load_bindings(args.keys)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = ServeConfig(
        host=args.host, port=args.port, tick_hz=args.tick_hz, max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout, max_message=args.max_message, rate_per_s=args.rate,
        rate_burst=max(1, int(2 * args.rate)), frame_format=args.format, rewind=args.rewind, token=args.token,
        record_dir=args.record, allow_origins=tuple(args.allow_origin),
    )
    world = load_world(args.world, args.backend, args.preset)
    if world is None:
        return 2
    server = WorldServer(world, config, bindings, commands)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:  # a clean shutdown (sessions stopped, logs closed) on Ctrl-C and on `kill`
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        port = await server.start()
        shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
        tok = f"#token={urllib.parse.quote(config.token)}" if config.token else ""
        print(f"serving world {world.id} ({world.backend_name}/{world.preset_name}) at http://{shown}:{port}/{tok}  (Ctrl-C to stop)", flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    print(f"stopped: {server.stats.frames_sent} frames sent, {server.stats.frames_dropped} dropped for slow clients", file=sys.stderr)
    return 0


__all__ = ["ServeConfig", "WorldServer", "ServerThread", "encode_frame", "add_arguments", "run"]
