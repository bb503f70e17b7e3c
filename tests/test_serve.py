"""`worldsim serve`: the WebSocket protocol against a real server on loopback."""

from __future__ import annotations

import asyncio
import io
import socket
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest

from controllers import protocol as P
from controllers.actionlog import read_log, replay_frames
from controllers.serve import ServeConfig, ServerThread
from worldsim.actions import ACTION_NAMES

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world  # tests/conftest.py


@pytest.fixture
def server(world, request):
    """A server in a thread; config overrides come from indirect parametrization (see `config`)."""
    kwargs = {"port": 0, "tick_hz": 20.0, **getattr(request, "param", {})}
    with ServerThread(world, ServeConfig(**kwargs)) as st:
        yield st


def config(**overrides):
    """Run a test against a server with these ServeConfig overrides."""
    return pytest.mark.parametrize("server", [overrides], indirect=True, ids=["-".join(overrides)])


def png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Client:
    """A small asyncio protocol client for tests."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[dict] = []
        self.seq = 0

    @classmethod
    async def open(cls, port: int, hello: bool = True, **kwargs):
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{port}/ws", **kwargs)
        c = cls(ws)
        if hello:
            c.welcome = await c.send_wait({"type": "hello", "version": 1}, "welcome")
        return c

    async def send(self, msg) -> None:
        await self.ws.send(P.encode(msg) if isinstance(msg, dict) else msg)

    async def recv(self) -> dict:
        msg = msgpack.unpackb(await asyncio.wait_for(self.ws.recv(), TIMEOUT), raw=False)
        if msg["type"] == "frame":
            self.frames.append(msg)
        return msg

    async def until(self, pred) -> dict:
        """Receive until a message satisfies pred; return it."""
        while True:
            msg = await self.recv()
            if pred(msg):
                return msg

    async def send_wait(self, msg, reply_type: str) -> dict:
        await self.send(msg)
        return await self.until(lambda m: m["type"] in (reply_type, "error"))

    async def input(self, **fields) -> int:
        self.seq += 1
        await self.send({"type": "input", "seq": self.seq, **fields})
        return self.seq

    async def close(self) -> None:
        await self.ws.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_http_serves_the_page_and_static_files_only(server):
    with urllib.request.urlopen(server.url, timeout=TIMEOUT) as resp:
        html = resp.read().decode()
    assert "<canvas" in html and "client.js" in html
    with urllib.request.urlopen(server.url + "client.js", timeout=TIMEOUT) as resp:
        assert "javascript" in resp.headers["Content-Type"] and b"MsgPack" in resp.read()
    for bad in ("nope.html", "../serve.py", "%2e%2e/serve.py"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + bad, timeout=TIMEOUT)
        assert e.value.code == 404
        e.value.close()


def test_round_trip_frames_inputs_and_recorded_replay(world, tmp_path):
    cfg = ServeConfig(port=0, tick_hz=20.0, record_dir=str(tmp_path))
    with ServerThread(world, cfg) as st:

        async def go():
            c = await Client.open(st.port)
            w = c.welcome
            assert (w["version"], w["actions"], w["frame_shape"], w["tick_hz"]) == (1, list(ACTION_NAMES), [72, 72, 3], 20.0)
            assert w["bindings"]["actions"]["move_left"] == ["KeyA", "ArrowLeft"]
            first = await c.until(lambda m: m["type"] == "frame")
            # PNG is lossless: the opening frame is exactly the world's
            assert np.array_equal(png_to_array(first["data"]), world.new_session(seed=w["seed"]).frame)
            seq = await c.input(keys=["KeyA"])
            f = await c.until(lambda m: m["type"] == "frame" and m["input_seq"] == seq)
            assert f["action"] == "move_left" and f["latency_ms"] >= 0
            seq = await c.input(action="do")
            f = await c.until(lambda m: m["type"] == "frame" and m["input_seq"] == seq)
            assert f["action"] == "do"
            await c.input(action="noop")
            await c.until(lambda m: m["type"] == "frame" and m["action"] == "noop")
            pong = await c.send_wait({"type": "ping", "t": 1.5}, "pong")
            assert pong["t"] == 1.5
            await c.close()
            return c.frames, w["session"]

        frames, sid = run(go())
    # the session's action log replays to exactly the frames that were streamed
    (log_path,) = tmp_path.glob(f"*{sid}*.wslog")
    replayed = list(replay_frames(world, read_log(log_path)))
    checked = 0
    for m in frames:
        if m["tick"] >= 0:
            assert np.array_equal(png_to_array(m["data"]), replayed[m["tick"] + 1]), m["tick"]
            checked += 1
    assert checked >= 3


def test_eight_concurrent_clients_each_get_their_own_session(server):
    async def one(i):
        c = await Client.open(server.port)
        mine = "move_left" if i % 2 else "move_right"
        seq = await c.input(action=mine)
        f = await c.until(lambda m: m["type"] == "frame" and m["input_seq"] == seq and m["tick"] >= 3)
        assert f["action"] == mine  # each session follows its own client's input
        await c.close()
        return c.welcome["session"], len(c.frames)

    async def all_clients():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = run(all_clients())
    assert len({sid for sid, _ in results}) == 8
    assert all(n >= 2 for _, n in results)


@config(tick_hz=100.0, write_limit=4096)
def test_a_slow_client_does_not_stall_the_others(server):
    async def go():
        # The slow client says hello, then never reads; a tiny receive buffer makes TCP push back fast.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow = await Client.open(server.port, sock=sock, max_queue=1)
        fast = await Client.open(server.port)
        slow_conn = next(c for c in server.server.connections if c.id == slow.welcome["session"])
        # the server's side of the slow socket gets a tiny send buffer too, so it fills in a few frames
        slow_conn.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        first = len(fast.frames)
        last = await fast.until(lambda m: m["type"] == "frame" and m["tick"] >= 100)
        # the fast client kept receiving while the slow one was stuck (a stall would end in recv's TIMEOUT):
        # most ticks reached it (no wall-clock bound: a loaded CI machine slows every tick alike)
        got = [m["tick"] for m in fast.frames[first:] if m["type"] == "frame"]
        assert len(got) >= 0.5 * (last["tick"] - got[0] + 1), (len(got), got[0], last["tick"])
        assert slow_conn.stats.frames_dropped > 0  # stale frames were dropped, not buffered
        assert len(slow_conn.outbox) <= 2
        await fast.close()
        slow.ws.transport.abort()  # a polite close would wait behind the full buffers

    run(go())


def test_malformed_and_oversized_messages_get_errors_and_the_connection_stays_up(server):
    async def go():
        c = await Client.open(server.port)
        other = await Client.open(server.port)
        cases = [
            (b"\xc1\x00garbage", P.BAD_MESSAGE),
            (msgpack.packb([1, 2, 3]), P.BAD_MESSAGE),
            (P.encode({"type": "dance"}), P.UNKNOWN_TYPE),
            (P.encode({"type": "input", "seq": "one", "action": "do"}), P.BAD_FIELD),
            (P.encode({"type": "input", "seq": 1}), P.BAD_FIELD),
            (P.encode({"type": "input", "seq": 1, "action": "fly"}), P.BAD_FIELD),
            (P.encode({"type": "input", "seq": 1, "action": "do", "extra": 1}), P.BAD_FIELD),
            (P.encode({"type": "ping", "t": "x" * 10_000}), P.TOO_LARGE),
            (P.encode({"type": "hello", "version": 1}), P.BAD_FIELD),
            (P.encode({"type": "restore", "name": "never"}), P.UNKNOWN_SNAPSHOT),
            ("a text message", P.BAD_MESSAGE),
        ]
        for data, code in cases:
            err = await c.send_wait(data, "error")
            assert err["type"] == "error" and err["code"] == code, (data[:40], err)
        # still up: inputs work and echo their seq
        seq = await c.input(action="move_up")
        f = await c.until(lambda m: m["type"] == "frame" and m["input_seq"] == seq)
        assert f["action"] == "move_up"
        # and the other client never noticed
        f = await other.until(lambda m: m["type"] == "frame" and m["tick"] >= 2)
        assert f["type"] == "frame"
        await c.close()
        await other.close()

    run(go())


def test_hello_rules_version_and_token(world):
    with ServerThread(world, ServeConfig(port=0, tick_hz=20.0, token="s3cret")) as st:

        async def go():
            c = await Client.open(st.port, hello=False)
            err = await c.send_wait({"type": "input", "seq": 1, "action": "do"}, "error")
            assert err["code"] == P.HELLO_REQUIRED
            err = await c.send_wait({"type": "hello", "version": 2, "token": "s3cret"}, "error")
            assert err["code"] == P.VERSION_MISMATCH
            w = await c.send_wait({"type": "hello", "version": 1, "token": "s3cret"}, "welcome")
            assert w["type"] == "welcome"
            await c.close()
            bad = await Client.open(st.port, hello=False)
            err = await bad.send_wait({"type": "hello", "version": 1, "token": "guess"}, "error")
            assert err["code"] == P.UNAUTHORIZED
            await bad.ws.wait_closed()
            assert bad.ws.close_code == 4401

        run(go())


@config(max_sessions=2)
def test_session_cap_gives_a_clear_error_and_frees_up(server):
    async def go():
        a = await Client.open(server.port)
        b = await Client.open(server.port)
        c = await Client.open(server.port, hello=False)
        err = await c.send_wait({"type": "hello", "version": 1}, "error")
        assert err["code"] == P.SERVER_FULL and "2 sessions" in err["message"]
        await c.ws.wait_closed()
        assert c.ws.close_code == 1013
        await a.close()
        await a.ws.wait_closed()
        for _ in range(100):  # the server notices the close asynchronously
            if server.server.sessions < 2:
                break
            await asyncio.sleep(0.02)
        d = await Client.open(server.port)
        assert d.welcome["type"] == "welcome"
        await b.close()
        await d.close()

    run(go())


@config(idle_timeout_s=0.5)
def test_idle_sessions_time_out(server):
    async def go():
        c = await Client.open(server.port)
        err = await c.until(lambda m: m["type"] == "error")
        assert err["code"] == P.IDLE_TIMEOUT
        await c.ws.wait_closed()
        assert c.ws.close_code == 4408

    run(go())


@config(rate_per_s=5.0, rate_burst=5)
def test_rate_limit_drops_messages_with_one_error(server):
    async def go():
        c = await Client.open(server.port)  # the hello used one token
        for i in range(20):
            await c.send({"type": "ping", "t": float(i)})
        err = await c.until(lambda m: m["type"] == "error")
        assert err["code"] == P.RATE_LIMITED
        pongs = [m for m in [await c.recv() for _ in range(3)] if m["type"] == "pong"]
        assert all(p["t"] < 5 for p in pongs)  # pongs only for the messages within the burst
        await c.close()

    run(go())


def test_reset_snapshot_restore_rewind_and_pause(server, world):
    async def go():
        c = await Client.open(server.port)
        ack = await c.send_wait({"type": "reset", "seed": 7}, "ack")
        assert ack["seed"] == 7
        reset = next(m for m in reversed(c.frames) if m["action"] == "reset")
        assert np.array_equal(png_to_array(reset["data"]), world.new_session(seed=7).frame)

        await c.input(action="move_down")
        await c.until(lambda m: m["type"] == "frame" and m["tick"] >= 3)
        await c.send_wait({"type": "snapshot", "name": "a"}, "ack")
        at_snapshot = png_to_array(c.frames[-1]["data"])  # the last frame sent before the ack
        later = c.frames[-1]["tick"] + 2
        await c.until(lambda m: m["type"] == "frame" and m["tick"] >= later)
        await c.send_wait({"type": "restore", "name": "a"}, "ack")
        restored = next(m for m in reversed(c.frames) if m["action"] == "restore")
        assert np.array_equal(png_to_array(restored["data"]), at_snapshot)

        # a restore empties the rewind ring: let two ticks happen, then pause and rewind one
        after = len(c.frames)
        await c.until(lambda m: m["type"] == "frame" and len(c.frames) >= after + 2)
        await c.send_wait({"type": "pause", "paused": True}, "ack")
        ack = await c.send_wait({"type": "rewind", "steps": 1}, "ack")
        assert ack["steps"] == 1
        by_tick = {m["tick"]: png_to_array(m["data"]) for m in c.frames if m["action"] not in ("reset", "restore", "rewind")}
        rewound = png_to_array(next(m for m in reversed(c.frames) if m["action"] == "rewind")["data"])
        assert any(np.array_equal(rewound, f) for f in by_tick.values())  # an earlier frame, exactly
        # paused: a round trip later no new tick has arrived
        n = len(c.frames)
        await c.send_wait({"type": "ping"}, "pong")
        await c.send_wait({"type": "ping"}, "pong")
        assert len(c.frames) == n
        ack = await c.send_wait({"type": "pause", "paused": False}, "ack")
        assert ack["paused"] is False
        await c.until(lambda m: m["type"] == "frame" and m["action"] == "move_down")
        await c.close()

    run(go())


def test_protocol_validation_unit():
    assert P.decode(P.encode({"type": "input", "seq": 3, "keys": ["KeyA", "Space"]}))["keys"] == ["KeyA", "Space"]
    with pytest.raises(P.ProtocolError) as e:
        P.decode(P.encode({"type": "input", "seq": 3, "keys": ["K"] * 40}))
    assert e.value.code == P.BAD_FIELD and "at most" in e.value.message
    with pytest.raises(P.ProtocolError) as e:
        P.decode(P.encode({"type": "pause", "paused": 1}))
    assert e.value.code == P.BAD_FIELD and "'paused'" in e.value.message
    with pytest.raises(P.ProtocolError) as e:
        P.decode(P.encode({1: "x"}))
    assert e.value.code == P.BAD_MESSAGE


def test_a_failing_session_reports_internal_and_closes_only_itself(world):
    class Flaky:
        """Wraps the world; sessions with seed 666 fail on their first step."""

        def __getattr__(self, name):
            return getattr(world, name)

        def new_session(self, seed=0, **kw):
            s = world.new_session(seed=seed, **kw)
            if seed == 666:
                def boom(action):
                    raise RuntimeError("model exploded")
                s.step = boom
            return s

    with ServerThread(Flaky(), ServeConfig(port=0, tick_hz=20.0)) as st:

        async def go():
            good = await Client.open(st.port)
            bad = await Client.open(st.port, hello=False)
            await bad.send({"type": "hello", "version": 1, "seed": 666})
            err = await bad.until(lambda m: m["type"] == "error")
            assert err["code"] == P.INTERNAL and "model exploded" in err["message"]
            await bad.ws.wait_closed()
            assert bad.ws.close_code == 1011
            seq = await good.input(action="do")
            await good.until(lambda m: m["type"] == "frame" and m["input_seq"] == seq)
            await good.close()

        run(go())
