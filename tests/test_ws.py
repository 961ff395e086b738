"""The observation WebSocket (contract §7), over a real socket with a real WebSocket client."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from runtimed.daemon.config import Secret, ServerConfig
from runtimed.domain.execution import ExecutionState, StopReason
from runtimed.domain.management import RuntimeLimits, RuntimeOptions
from runtimed.domain.observation import encode_cursor
from runtimed.runtime import Runtime
from runtimed.store import MemoryStore
from runtimed.web import schemas
from runtimed.web.app import create_app
from runtimed.web.keys import WS_SESSIONS
from runtimed.web.masking import MaskCheck

from .helpers import ECHO_REQUEST, create_worker, wait_until

_event_frame = schemas.EventFrameSchema()
_diagnostic_frame = schemas.DiagnosticFrameSchema()


async def make_client(aiohttp_client, limits: RuntimeLimits | None = None, **server: Any):
    runtime = await Runtime.open(MemoryStore(), RuntimeOptions(limits=limits or RuntimeLimits()))
    client = await aiohttp_client(create_app(runtime, ServerConfig(**server)))
    return runtime, client


def ws_path(worker_id: str, cursor: str | None = None) -> str:
    path = f"/v1/workers/{worker_id}/events/ws"
    return path if cursor is None else f"{path}?cursor={cursor}"


async def next_frame(ws, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == WSMsgType.TEXT, (message.type, message.data)
    frame = json.loads(message.data)
    schema = _event_frame if frame["kind"] == "event" else _diagnostic_frame
    schema.load(frame)  # every frame has exactly the contract's shape
    assert schema.unknown_paths(frame) == []
    return frame


async def expect_close(ws, code: int, timeout: float = 5.0) -> None:
    message = await ws.receive(timeout=timeout)
    assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), (message.type, message.data)
    assert ws.close_code == code


async def expect_close_once_the_server_closed(client, ws, code: int) -> None:
    """Read the close only after the server has sent it: a client that reads late (busy, or far
    away) must still get the server's close code, not 1006 from a connection already gone."""
    await wait_until(
        lambda: all(session.ws.closed for session in client.server.app[WS_SESSIONS]),
        what="the server to close the socket",
    )
    await expect_close(ws, code)


async def input_(client, worker_id: str, content: str, kind: str = "user") -> dict[str, Any]:
    response = await client.post(f"/v1/workers/{worker_id}/input", json={"kind": kind, "content": content})
    assert response.status == 200, await response.text()
    return (await response.json())["ack"]


def envelope(frame: dict[str, Any]) -> dict[str, Any]:
    assert frame["kind"] == "event", frame
    return frame["envelope"]


UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, length: int | None = None
) -> bytes:
    """One frame as a client sends it (RFC 6455 §5.2); ``length`` may claim another payload length."""
    length = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    header = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        header += bytes([mask_bit | length])
    elif length < 1 << 16:
        header += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        header += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


class RawWebSocket:
    """A WebSocket client written by hand over a plain connection, for what aiohttp's client
    will not send: unmasked frames, unfinished fragmented messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, client, path: str, then: bytes = b"") -> RawWebSocket:
        """Upgrade by hand; ``then`` goes in the same write as the request, before any answer."""
        reader, writer = await asyncio.open_connection(client.host, client.port)
        head = "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS.items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n{head}\r\n".encode() + then)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert response.startswith(b"HTTP/1.1 101 "), response
        return cls(reader, writer)

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The next frame from the server: its opcode and payload (servers do not mask)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), 5)

    async def close_code(self) -> int:
        """Skip to the server's close frame and return its code."""
        while True:
            opcode, payload = await self.receive()
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big")

    async def closed_by_server(self) -> bool:
        """Read to the end of the connection: whether the server closed it (within a bound)."""
        await asyncio.wait_for(self.reader.read(), 5)
        return self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


# ------------------------------------------------------------------ sessions


async def test_connect_without_cursor_sends_snapshot_then_live_events_of_that_worker_only(client, runtime):
    worker = await create_worker(client)
    other = await create_worker(client)
    await input_(client, worker["worker_id"], "before")
    async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
        snapshot = envelope(await next_frame(ws))
        assert snapshot["cursor"] == encode_cursor(1)
        assert snapshot["event_id"] == f"snapshot:{encode_cursor(1)}"
        assert snapshot["worker_id"] == worker["worker_id"]
        assert snapshot["payload"]["event"] == "snapshot"
        data = snapshot["payload"]["data"]
        assert data["worker"] == (await (await client.get(f"/v1/workers/{worker['worker_id']}")).json())["worker"]
        assert data["status"] == "running"
        assert [(e["sequence"], e["content"]) for e in data["entries"]] == [(1, "before")]

        await input_(client, other["worker_id"], "not for this observer")
        await input_(client, worker["worker_id"], "first", "user")
        await input_(client, worker["worker_id"], "second", "system")
        await client.post(f"/v1/workers/{worker['worker_id']}/stop", json={"reason": "done"})
        frames = [envelope(await next_frame(ws)) for _ in range(3)]
        assert [(f["payload"]["event"], f["payload"]["data"]) for f in frames] == [
            ("user_message", {"sequence": 2, "content": "first"}),
            ("system_item", {"sequence": 3, "content": "second"}),
            ("worker_status", {"status": "stopped", "reason": "done"}),
        ]
        assert [f["cursor"] for f in frames] == [encode_cursor(3), encode_cursor(4), encode_cursor(5)]
        assert all(f["event_id"] == f["cursor"] and f["worker_id"] == worker["worker_id"] for f in frames)
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.2)  # nothing else: no repeats, no other worker


async def test_resume_with_cursor_replays_exactly_the_missed_events_then_goes_live(client, runtime):
    worker = await create_worker(client)
    other = await create_worker(client)
    wid = worker["worker_id"]
    await input_(client, wid, "seen")  # sequence 1
    await input_(client, other["worker_id"], "other")  # sequence 2
    await input_(client, wid, "missed 1")  # 3
    await input_(client, wid, "missed 2")  # 4
    async with client.ws_connect(ws_path(wid, encode_cursor(1))) as ws:
        snapshot = envelope(await next_frame(ws))
        assert snapshot["cursor"] == encode_cursor(1)
        # The snapshot shows the worker now; replayed entries carry sequences to de-duplicate with.
        assert [e["content"] for e in snapshot["payload"]["data"]["entries"]] == ["seen", "missed 1", "missed 2"]
        missed = [envelope(await next_frame(ws)) for _ in range(2)]
        assert [(m["cursor"], m["payload"]["data"]["content"]) for m in missed] == [
            (encode_cursor(3), "missed 1"),
            (encode_cursor(4), "missed 2"),
        ]
        await input_(client, wid, "live")
        live = envelope(await next_frame(ws))
        assert (live["cursor"], live["payload"]["data"]["content"]) == (encode_cursor(5), "live")


async def test_events_published_through_observe_reach_observers(client, runtime):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
        await next_frame(ws)
        await runtime.observe(runtime.worker_ref(worker["worker_id"]), "text_delta", {"text": "Hel"})
        await runtime.observe(runtime.worker_ref(worker["worker_id"]), "run_end")
        delta = envelope(await next_frame(ws))
        assert delta["payload"] == {"event": "text_delta", "data": {"text": "Hel"}}
        end = envelope(await next_frame(ws))
        assert end["payload"] == {"event": "run_end"}  # an event with no fields omits data


async def test_runtime_stop_tells_observers_of_running_workers(client, runtime):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
        await next_frame(ws)
        await client.post("/v1/runtime/stop")
        status = envelope(await next_frame(ws))
        assert status["payload"] == {
            "event": "worker_status",
            "data": {"status": "stopped", "reason": "runtime stopped"},
        }


async def test_a_stopped_worker_can_still_be_observed(client, runtime):
    worker = await create_worker(client)
    await client.post(f"/v1/workers/{worker['worker_id']}/cancel")
    async with client.ws_connect(ws_path(worker["worker_id"], encode_cursor(0))) as ws:
        snapshot = envelope(await next_frame(ws))
        assert snapshot["payload"]["data"]["status"] == "cancelled"
        status = envelope(await next_frame(ws))
        assert status["payload"]["data"] == {"status": "cancelled", "reason": "worker cancelled"}


async def test_an_executing_workers_turn_reaches_observers_in_order(client, runtime, backend):
    worker = await create_worker(client, ECHO_REQUEST)
    wid = worker["worker_id"]
    ref = runtime.worker_ref(wid)
    async with client.ws_connect(ws_path(wid)) as ws:
        snapshot = envelope(await next_frame(ws))
        assert snapshot["payload"]["data"]["worker"]["execution"]["state"] == "starting"
        await runtime.update_execution(ref, state=ExecutionState.IDLE)  # no observation of its own
        await input_(client, wid, "hi")
        started = await runtime.begin_turn(ref)
        assert started is not None
        await runtime.observe(ref, "text_delta", {"turn": started.turn, "text": "echo: "})
        await runtime.observe(ref, "text_delta", {"turn": started.turn, "text": "hi"})
        await runtime.end_turn(ref, started.turn, StopReason.END_TURN, "echo: hi")
        await client.post(f"/v1/workers/{wid}/stop")

        frames = [envelope(await next_frame(ws)) for _ in range(7)]

        assert [(f["payload"]["event"], f["payload"].get("data")) for f in frames] == [
            ("user_message", {"sequence": 1, "content": "hi"}),
            ("turn_started", {"turn": 1, "input_sequence": 1}),
            ("text_delta", {"turn": 1, "text": "echo: "}),
            ("text_delta", {"turn": 1, "text": "hi"}),
            ("assistant_message", {"turn": 1, "sequence": 2, "content": "echo: hi"}),
            ("turn_ended", {"turn": 1, "stop_reason": "end_turn"}),
            ("worker_status", {"status": "stopped", "reason": "worker stopped"}),
        ]
        cursors = [f["cursor"] for f in frames]
        assert cursors == sorted(cursors) and len(set(cursors)) == 7
    # A client that connects afterwards sees the reply in its snapshot, and replays the turn.
    async with client.ws_connect(ws_path(wid, snapshot["cursor"])) as ws:
        data = envelope(await next_frame(ws))["payload"]["data"]
        assert [(e["role"], e["content"]) for e in data["entries"]] == [("user", "hi"), ("assistant", "echo: hi")]
        assert data["worker"]["execution"]["turns"] == 1
        replayed = [envelope(await next_frame(ws))["payload"]["event"] for _ in range(7)]
        assert replayed == [f["payload"]["event"] for f in frames]


async def test_a_turn_that_ends_after_a_stop_is_published_after_the_status(client, runtime, backend):
    worker = await create_worker(client, ECHO_REQUEST)
    wid = worker["worker_id"]
    ref = runtime.worker_ref(wid)
    await input_(client, wid, "long job")
    started = await runtime.begin_turn(ref)
    assert started is not None
    async with client.ws_connect(ws_path(wid)) as ws:
        await next_frame(ws)
        await client.post(f"/v1/workers/{wid}/stop", json={"reason": "enough"})
        await runtime.end_turn(ref, started.turn, StopReason.CANCELLED, "partial")

        frames = [envelope(await next_frame(ws))["payload"] for _ in range(3)]

        assert [(f["event"], f["data"]) for f in frames] == [
            ("worker_status", {"status": "stopped", "reason": "enough"}),
            ("assistant_message", {"turn": 1, "sequence": 2, "content": "partial"}),
            ("turn_ended", {"turn": 1, "stop_reason": "cancelled"}),
        ]


async def test_reconnecting_with_the_last_cursor_never_repeats_or_skips(aiohttp_client):
    """Property-style: random publishes on three workers interleaved with disconnects and
    reconnects; the observer of each worker sees every one of its events exactly once, in order."""
    for seed in range(6):
        rng = random.Random(seed)
        runtime, client = await make_client(aiohttp_client, RuntimeLimits(observation_backlog=64))
        workers = [(await create_worker(client))["worker_id"] for _ in range(3)]
        watched = workers[0]
        expected: list[int] = []
        seen: list[int] = []
        cursor: str | None = None
        ws = None
        for _ in range(40):
            action = rng.random()
            if ws is None and action < 0.3:
                ws = await client.ws_connect(ws_path(watched, cursor))
                snapshot = envelope(await next_frame(ws))
                if cursor is None:
                    # Without a cursor the stream starts now: take what came before as seen.
                    seen.extend(expected)
                    cursor = snapshot["cursor"]
            elif ws is not None and action < 0.45:
                # Drain what has arrived, then drop the connection.
                while True:
                    try:
                        frame = envelope(await next_frame(ws, timeout=0.05))
                    except TimeoutError:
                        break
                    seen.append(int(frame["cursor"][3:], 16))
                    cursor = frame["cursor"]
                await ws.close()
                ws = None
            else:
                target = rng.choice(workers)
                if rng.random() < 0.5:
                    ack = await input_(client, target, f"m{rng.random()}")
                    sequence = runtime.observation_sequence
                    assert ack["transcript_sequence"] >= 1
                else:
                    sequence = (await runtime.observe(runtime.worker_ref(target), "text_delta", {"text": "x"})).sequence
                if target == watched:
                    expected.append(sequence)
        if ws is None:
            ws = await client.ws_connect(ws_path(watched, cursor))
            await next_frame(ws)
        while len(seen) < len(expected):
            frame = envelope(await next_frame(ws))
            seen.append(int(frame["cursor"][3:], 16))
        await ws.close()
        assert seen == expected, f"seed {seed}"


# ------------------------------------------------------------------- cursors


async def test_malformed_cursor_gets_a_diagnostic_and_a_close(client):
    worker = await create_worker(client)
    for raw in ("bad", "wo_123", "wo_000000000000000G", "WO_0000000000000001", "wo_00000000000000001"):
        async with client.ws_connect(ws_path(worker["worker_id"], raw)) as ws:
            frame = await next_frame(ws)
            assert frame == {
                "kind": "diagnostic",
                "diagnostic": {
                    "code": "runtime.cursor_malformed",
                    "message": f"malformed worker observation cursor: {raw}",
                },
            }
            await expect_close(ws, 1000)


async def test_cursor_beyond_the_newest_sequence_is_unknown_after_the_snapshot(client):
    worker = await create_worker(client)
    await input_(client, worker["worker_id"], "x")
    async with client.ws_connect(ws_path(worker["worker_id"], encode_cursor(99))) as ws:
        snapshot = envelope(await next_frame(ws))
        assert snapshot["cursor"] == encode_cursor(99)
        diagnostic = (await next_frame(ws))["diagnostic"]
        assert diagnostic["code"] == "runtime.cursor_unknown_or_expired"
        assert "resume_from" not in diagnostic
        await expect_close(ws, 1000)


async def test_cursor_older_than_the_backlog_is_expired_with_a_resume_point_that_replays_it_all(aiohttp_client):
    _, client = await make_client(aiohttp_client, RuntimeLimits(observation_backlog=3))
    worker = (await create_worker(client))["worker_id"]
    other = (await create_worker(client))["worker_id"]
    for i in range(5):
        await input_(client, worker, f"w{i}")  # worker: transcript entries 1..5, the last 3 retained
        await input_(client, other, f"o{i}")
    async with client.ws_connect(ws_path(worker, encode_cursor(1))) as ws:
        await next_frame(ws)
        diagnostic = (await next_frame(ws))["diagnostic"]
        assert diagnostic["code"] == "runtime.cursor_unknown_or_expired"
        await expect_close(ws, 1000)
    # Worker sequences were 1, 3, 5, 7, 9; the oldest retained is 5, so resume just before it.
    assert diagnostic["resume_from"] == encode_cursor(4)
    async with client.ws_connect(ws_path(worker, diagnostic["resume_from"])) as ws:
        await next_frame(ws)
        replayed = [envelope(await next_frame(ws))["payload"]["data"]["content"] for _ in range(3)]
        assert replayed == ["w2", "w3", "w4"]


async def test_cursor_zero_replays_everything_while_nothing_was_trimmed(client):
    worker = await create_worker(client)
    for i in range(3):
        await input_(client, worker["worker_id"], f"m{i}")
    async with client.ws_connect(ws_path(worker["worker_id"], encode_cursor(0))) as ws:
        await next_frame(ws)
        contents = [envelope(await next_frame(ws))["payload"]["data"]["content"] for _ in range(3)]
        assert contents == ["m0", "m1", "m2"]


async def test_snapshot_entries_are_bounded_by_the_projection_limit(aiohttp_client):
    _, client = await make_client(aiohttp_client, RuntimeLimits(max_transcript_projection_items=2))
    worker = (await create_worker(client))["worker_id"]
    for i in range(5):
        await input_(client, worker, f"m{i}")
    async with client.ws_connect(ws_path(worker)) as ws:
        entries = envelope(await next_frame(ws))["payload"]["data"]["entries"]
        assert [e["content"] for e in entries] == ["m3", "m4"]


async def test_snapshot_entries_are_bounded_to_one_mebibyte_of_content(client):
    worker = (await create_worker(client))["worker_id"]
    for i in range(3):
        await input_(client, worker, str(i) * (400 * 1024))
    async with client.ws_connect(ws_path(worker), max_msg_size=0) as ws:
        entries = envelope(await next_frame(ws))["payload"]["data"]["entries"]
        assert [e["sequence"] for e in entries] == [2, 3]


# --------------------------------------------------------- client messages


@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_a_client_message_is_answered_observation_only_and_closed_1008(client, kind):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
        await next_frame(ws)
        if kind == "text":
            await ws.send_str('{"hello": 1}')
        else:
            await ws.send_bytes(b"\x00\x01")
        assert await next_frame(ws) == {
            "kind": "diagnostic",
            "diagnostic": {
                "code": "runtime.observation_only",
                "message": "runtime worker event WebSocket is observation-only",
            },
        }
        await expect_close(ws, 1008)


async def test_a_ping_gets_a_pong(client):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"]), autoping=False) as ws:
        await next_frame(ws)
        await ws.ping(b"are you there")
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.PONG, b"are you there")


async def test_a_client_close_ends_the_session_and_unsubscribes(client, runtime):
    worker = await create_worker(client)
    ws = await client.ws_connect(ws_path(worker["worker_id"]))
    await next_frame(ws)
    assert runtime._bus.subscriber_count() == 1
    await ws.close()
    for _ in range(100):
        if runtime._bus.subscriber_count() == 0:
            break
        await asyncio.sleep(0.01)
    assert runtime._bus.subscriber_count() == 0


# ----------------------------------------------------------------- liveness


async def test_a_peer_that_does_not_answer_pings_is_disconnected(aiohttp_client):
    runtime, client = await make_client(aiohttp_client, ws_heartbeat_seconds=0.2)
    worker = (await create_worker(client))["worker_id"]
    async with client.ws_connect(ws_path(worker), autoping=False) as ws:
        await next_frame(ws)
        # Read without answering: the server pings, gets no pong, and drops the connection.
        kinds = []
        for _ in range(10):
            message = await ws.receive(timeout=5)
            kinds.append(message.type)
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
        assert kinds[0] == WSMsgType.PING
        assert kinds[-1] in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
    assert runtime._bus.subscriber_count() == 0


async def test_a_peer_that_answers_pings_stays_connected(aiohttp_client):
    _, client = await make_client(aiohttp_client, ws_heartbeat_seconds=0.1)
    worker = (await create_worker(client))["worker_id"]
    async with client.ws_connect(ws_path(worker)) as ws:  # autoping answers
        await next_frame(ws)
        # (receive's own timeout restarts at every ping it answers, so bound it from outside)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.6)
        await input_(client, worker, "still here")
        assert envelope(await next_frame(ws))["payload"]["data"]["content"] == "still here"


# ------------------------------------------------------------- slow readers


async def test_a_slow_subscriber_is_expired_while_a_fast_one_gets_everything(aiohttp_client):
    _, client = await make_client(aiohttp_client, RuntimeLimits(subscriber_queue=4, observation_backlog=4096))
    worker = (await create_worker(client))["worker_id"]
    # The slow reader stops reading after the snapshot: once the socket buffers between it and
    # the server are full (a few MB on loopback), the server's sends to it block.
    slow = await client.ws_connect(ws_path(worker), max_msg_size=0)
    await next_frame(slow)
    fast = await client.ws_connect(ws_path(worker), max_msg_size=0)
    await next_frame(fast)
    fast_seen: list[int] = []

    async def read_fast(count: int) -> None:
        while len(fast_seen) < count:
            fast_seen.append(int(envelope(await next_frame(fast))["cursor"][3:], 16))

    payload = "x" * (64 * 1024)
    count = 250
    reader = asyncio.create_task(read_fast(count))
    slowest_request = 0.0
    loop = asyncio.get_running_loop()
    for _ in range(count):
        started = loop.time()
        await input_(client, worker, payload)
        slowest_request = max(slowest_request, loop.time() - started)
    await asyncio.wait_for(reader, 30)
    assert fast_seen == list(range(1, count + 1))
    # A generous bound: this checks the publisher never waits on the slow reader, not speed.
    assert slowest_request < 5.0

    # The slow reader gets what was in flight, then the overrun diagnostic, then a close.
    last_cursor = None
    while True:
        frame = await next_frame(slow, timeout=10)
        if frame["kind"] == "diagnostic":
            break
        last_cursor = envelope(frame)["cursor"]
    assert frame["diagnostic"]["code"] == "runtime.cursor_expired"
    assert frame["diagnostic"]["message"] == "runtime observation backlog was overrun"
    assert last_cursor is not None and frame["diagnostic"]["resume_from"] == last_cursor
    await expect_close(slow, 1000)
    # Resuming from resume_from yields the rest, with nothing repeated.
    async with client.ws_connect(ws_path(worker, frame["diagnostic"]["resume_from"]), max_msg_size=0) as ws:
        await next_frame(ws)
        rest = [int(envelope(await next_frame(ws))["cursor"][3:], 16) for _ in range(count - int(last_cursor[3:], 16))]
        assert rest == list(range(int(last_cursor[3:], 16) + 1, count + 1))
    await fast.close()


# ------------------------------------------------------- before the upgrade


async def test_unknown_worker_is_404_before_the_upgrade(client):
    response = await client.get(
        ws_path("worker-0000ffff"),
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "worker_not_found"
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(ws_path("worker-0000ffff"))
    assert caught.value.status == 404


async def test_a_plain_get_is_426_upgrade_required(client):
    worker = await create_worker(client)
    response = await client.get(ws_path(worker["worker_id"]))
    assert response.status == 426
    assert (await response.json())["error"]["code"] == "upgrade_required"


async def test_blank_worker_id_is_400_before_the_upgrade(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(ws_path("%20"))
    assert caught.value.status == 400


async def test_the_token_is_checked_before_the_upgrade(aiohttp_client):
    _, client = await make_client(aiohttp_client, local_token=Secret("tok-123"))
    response = await client.post(
        "/v1/workers",
        json={"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}},
        headers={"Authorization": "Bearer tok-123"},
    )
    worker = (await response.json())["worker"]["worker_id"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(ws_path(worker))
    assert caught.value.status == 401
    async with client.ws_connect(ws_path(worker), headers={"Authorization": "Bearer tok-123"}) as ws:
        assert envelope(await next_frame(ws))["payload"]["event"] == "snapshot"


async def test_past_the_session_limit_an_upgrade_is_429_and_an_ended_session_frees_its_slot(aiohttp_client):
    _, client = await make_client(aiohttp_client, max_observation_sessions=2)
    worker = (await create_worker(client))["worker_id"]
    other = (await create_worker(client))["worker_id"]
    sessions = client.server.app[WS_SESSIONS]
    first = await client.ws_connect(ws_path(worker))
    second = await client.ws_connect(ws_path(other))  # the limit counts every worker's sessions
    for ws in (first, second):
        await next_frame(ws)
    response = await client.get(ws_path(worker), headers=UPGRADE_HEADERS)
    assert response.status == 429
    assert await response.json() == {
        "error": {
            "code": "too_many_sessions",
            "message": "too many observation sessions: at most 2 may be open at once",
        }
    }
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(ws_path(worker))
    assert caught.value.status == 429
    assert len(sessions) == 2

    await first.close()
    await wait_until(lambda: len(sessions) == 1, what="the closed session to free its slot")
    async with client.ws_connect(ws_path(worker)) as third:
        assert envelope(await next_frame(third))["payload"]["event"] == "snapshot"
        await input_(client, worker, "live")
        assert envelope(await next_frame(third))["payload"]["data"]["content"] == "live"
    await second.close()
    await wait_until(lambda: not sessions, what="every session to end")


async def test_a_missing_worker_is_404_even_past_the_session_limit(aiohttp_client):
    _, client = await make_client(aiohttp_client, max_observation_sessions=1)
    worker = (await create_worker(client))["worker_id"]
    async with client.ws_connect(ws_path(worker)) as ws:
        await next_frame(ws)
        response = await client.get(ws_path("worker-0000ffff"), headers=UPGRADE_HEADERS)
        assert (response.status, (await response.json())["error"]["code"]) == (404, "worker_not_found")


async def test_an_origin_is_refused_before_the_upgrade(client):
    worker = await create_worker(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(ws_path(worker["worker_id"]), origin="http://evil.example")
    assert caught.value.status == 403


# ------------------------------------------------------------------ shutdown


async def test_shutdown_sends_upstream_closed_and_1001_to_every_session(aiohttp_server):
    runtime = await Runtime.open(MemoryStore())
    server = await aiohttp_server(create_app(runtime))
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            server.make_url("/v1/workers"),
            json={"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}},
        )
        worker = (await response.json())["worker"]["worker_id"]
        sockets = [await session.ws_connect(server.make_url(ws_path(worker))) for _ in range(2)]
        for ws in sockets:
            await next_frame(ws)

        async def last_frame_and_close(ws) -> dict[str, Any]:
            frame = await next_frame(ws)
            await expect_close(ws, 1001)
            return frame

        # Clients keep reading while the server shuts down, as real ones do (the close
        # handshake needs their answer).
        _, *frames = await asyncio.gather(server.close(), *(last_frame_and_close(ws) for ws in sockets))
        assert [f["diagnostic"]["code"] for f in frames] == ["runtime.upstream_closed"] * 2


async def test_a_stalled_subscriber_is_told_it_overran_without_waiting_for_its_next_read(aiohttp_client):
    runtime, client = await make_client(aiohttp_client, RuntimeLimits(subscriber_queue=4), ws_heartbeat_seconds=0)
    worker = (await create_worker(client))["worker_id"]
    stalled = await client.ws_connect(ws_path(worker), max_msg_size=0)
    await next_frame(stalled)
    payload = "x" * (64 * 1024)
    for _ in range(250):  # far more than the socket buffers hold: the server's send blocks
        await input_(client, worker, payload)
    # The session gave up on the blocked send as soon as the subscription overran: the
    # subscription is released and the diagnostic is already behind the frames in flight.
    assert runtime.stats().subscriber_overruns == 1
    assert runtime.stats().observers == 0
    last_cursor = None
    while True:
        frame = await next_frame(stalled, timeout=10)
        if frame["kind"] == "diagnostic":
            break
        last_cursor = envelope(frame)["cursor"]
    assert frame["diagnostic"]["code"] == "runtime.cursor_expired"
    assert frame["diagnostic"]["resume_from"] == last_cursor  # nothing repeated on resume
    await expect_close_once_the_server_closed(client, stalled, 1000)


# ------------------------------------------------- close codes of late readers


async def test_a_malformed_cursor_closes_1000_for_a_client_that_reads_late(client):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"], "wo_bad")) as ws:
        assert (await next_frame(ws))["diagnostic"]["code"] == "runtime.cursor_malformed"
        await expect_close_once_the_server_closed(client, ws, 1000)


async def test_an_unknown_cursor_closes_1000_for_a_client_that_reads_late(client):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"], encode_cursor(99))) as ws:
        await next_frame(ws)
        assert (await next_frame(ws))["diagnostic"]["code"] == "runtime.cursor_unknown_or_expired"
        await expect_close_once_the_server_closed(client, ws, 1000)


async def test_an_overrun_found_by_the_session_closes_1000_for_a_client_that_reads_late(aiohttp_client):
    runtime, client = await make_client(aiohttp_client, RuntimeLimits(subscriber_queue=4))
    worker = (await create_worker(client))["worker_id"]
    async with client.ws_connect(ws_path(worker)) as ws:
        start = envelope(await next_frame(ws))["cursor"]
        # The memory store never makes observe wait, so the session cannot read in between: its
        # queue overflows while it waits for the next event, and it finds out when it reads.
        for _ in range(5):
            await runtime.observe(runtime.worker_ref(worker), "text_delta", {"text": "x"})
        diagnostic = (await next_frame(ws))["diagnostic"]
        assert (diagnostic["code"], diagnostic["resume_from"]) == ("runtime.cursor_expired", start)
        await expect_close_once_the_server_closed(client, ws, 1000)


async def test_an_observation_only_close_reaches_a_client_that_reads_late(client):
    worker = await create_worker(client)
    async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
        await next_frame(ws)
        await ws.send_str("hello")
        assert (await next_frame(ws))["diagnostic"]["code"] == "runtime.observation_only"
        await expect_close_once_the_server_closed(client, ws, 1008)


async def test_shutdown_closes_1001_for_a_client_that_reads_late(aiohttp_server):
    runtime = await Runtime.open(MemoryStore())
    server = await aiohttp_server(create_app(runtime))
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            server.make_url("/v1/workers"),
            json={"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}},
        )
        worker = (await response.json())["worker"]["worker_id"]
        ws = await session.ws_connect(server.make_url(ws_path(worker)))
        await next_frame(ws)
        closing = asyncio.create_task(server.close())
        await wait_until(lambda: all(s.ws.closed for s in server.app[WS_SESSIONS]), what="the server to close")
        assert (await next_frame(ws))["diagnostic"]["code"] == "runtime.upstream_closed"
        await expect_close(ws, 1001)
        await closing


async def test_an_internal_error_closes_1011_for_a_client_that_reads_late(client, runtime, monkeypatch, caplog):
    worker = await create_worker(client)

    def explode(ref):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(runtime, "observation_snapshot", explode)
    with caplog.at_level(logging.ERROR, logger="runtimed.ws"):
        async with client.ws_connect(ws_path(worker["worker_id"])) as ws:
            assert await next_frame(ws) == {
                "kind": "diagnostic",
                "diagnostic": {
                    "code": "runtime.internal_error",
                    "message": "internal error; the daemon's log has the details",
                },
            }
            await expect_close_once_the_server_closed(client, ws, 1011)
    assert any(record.exc_info and record.exc_info[0] is ZeroDivisionError for record in caplog.records)


# ------------------------------------------------------------ client messages


async def test_a_client_message_over_the_size_limit_closes_1009_while_one_at_it_is_observation_only(aiohttp_client):
    _, client = await make_client(aiohttp_client, ws_max_message_bytes=64)
    worker = (await create_worker(client))["worker_id"]
    async with client.ws_connect(ws_path(worker)) as ws:
        await next_frame(ws)
        await ws.send_str("x" * 64)
        assert (await next_frame(ws))["diagnostic"]["code"] == "runtime.observation_only"
        await expect_close(ws, 1008)
    raw = await RawWebSocket.connect(client, ws_path(worker))
    try:
        await raw.send(client_frame(TEXT, b"x" * 65))
        # No diagnostic: the close is the next frame after the snapshot.
        opcode, payload = await raw.receive()
        assert (opcode, json.loads(payload)["envelope"]["payload"]["event"]) == (TEXT, "snapshot")
        assert await raw.close_code() == 1009
        assert await raw.closed_by_server()
    finally:
        raw.close()
    await wait_until(lambda: not client.server.app[WS_SESSIONS], what="the session to end")


async def test_a_frame_claiming_more_than_the_limit_is_refused_from_its_header(aiohttp_client):
    _, client = await make_client(aiohttp_client, ws_max_message_bytes=64)
    worker = (await create_worker(client))["worker_id"]
    raw = await RawWebSocket.connect(client, ws_path(worker))
    try:
        # Only the header (and mask) is sent: the server does not wait for a byte of the payload.
        await raw.send(client_frame(TEXT, b"", length=65))
        assert await raw.close_code() == 1009
        assert await raw.closed_by_server()
    finally:
        raw.close()


async def test_unfinished_fragmented_messages_hold_at_most_the_limit_per_session(aiohttp_client):
    """Each session may hold part of a message up to ``ws_max_message_bytes``; the fragment that
    takes it past the limit closes the socket, so many such clients cannot pile up memory."""
    _, client = await make_client(aiohttp_client, ws_max_message_bytes=1024)
    worker = (await create_worker(client))["worker_id"]
    sessions = client.server.app[WS_SESSIONS]
    sockets = [await RawWebSocket.connect(client, ws_path(worker)) for _ in range(20)]
    try:
        for raw in sockets:
            assert (await raw.receive())[0] == TEXT  # the snapshot
            await raw.send(client_frame(TEXT, b"x" * 1000, fin=False))
            # A ping between fragments is allowed; its pong shows the fragment was read and held.
            await raw.send(client_frame(PING, b"still here"))
            assert await raw.receive() == (PONG, b"still here")
        assert len(sessions) == 20 and not any(session.ws.closed for session in sessions)
        for raw in sockets:
            await raw.send(client_frame(CONTINUATION, b"x" * 25, fin=False))  # 1025 bytes in all
        for raw in sockets:
            assert await raw.close_code() == 1009
            assert await raw.closed_by_server()
        await wait_until(lambda: not sessions, what="every session to end")
    finally:
        for raw in sockets:
            raw.close()


# ------------------------------------------------------------ unmasked frames


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([client_frame(TEXT, b"hello", masked=False)], id="text"),
        pytest.param([client_frame(PING, b"ping", masked=False)], id="ping"),
        pytest.param([client_frame(PING, b"ok"), client_frame(CLOSE, b"\x03\xe8", masked=False)], id="after-masked"),
        pytest.param(
            [client_frame(TEXT, b"x" * 10, fin=False), client_frame(CONTINUATION, b"y" * 10, masked=False)],
            id="continuation",
        ),
        # One write holding the upgrade request and the frame: it reaches the server before the
        # upgrade is done, and must be checked all the same.
        pytest.param("with-the-request", id="with-the-request"),
    ],
)
async def test_an_unmasked_client_frame_fails_the_connection_with_1002(client, frames):
    """RFC 6455 §5.1: a server MUST close the connection upon receiving a frame that is not masked."""
    worker = (await create_worker(client))["worker_id"]
    if frames == "with-the-request":
        raw = await RawWebSocket.connect(client, ws_path(worker), then=client_frame(TEXT, b"early", masked=False))
    else:
        raw = await RawWebSocket.connect(client, ws_path(worker))
        for frame in frames:
            await raw.send(frame)
    try:
        assert await raw.close_code() == 1002
        assert await raw.closed_by_server()
    finally:
        raw.close()
    await wait_until(lambda: not client.server.app[WS_SESSIONS], what="the session to end")


async def test_masked_frames_from_a_raw_client_are_accepted(client):
    """The counterpart of the test above: the same hand-written client, masking as it must."""
    worker = (await create_worker(client))["worker_id"]
    raw = await RawWebSocket.connect(client, ws_path(worker))
    try:
        assert (await raw.receive())[0] == TEXT  # the snapshot
        await raw.send(client_frame(PING, b"ping"))
        assert await raw.receive() == (PONG, b"ping")
        await raw.send(client_frame(TEXT, b"hello"))
        opcode, payload = await raw.receive()
        assert (opcode, json.loads(payload)["diagnostic"]["code"]) == (TEXT, "runtime.observation_only")
        assert await raw.close_code() == 1008
    finally:
        raw.close()


def first_unmasked_at(chunks: list[bytes]) -> int | None:
    """Feed ``chunks`` to a ``MaskCheck``: where in the whole stream it says the unmasked frame
    starts (the start of the chunk it is found in, when its header began in an earlier one)."""
    check = MaskCheck()
    offset = 0
    for chunk in chunks:
        found = check.first_unmasked(chunk)
        if found is not None:
            return offset + found
        offset += len(chunk)
    return None


def masked_frames(*sizes: int) -> bytes:
    """Masked frames with payloads of these sizes: short, 16-bit and 64-bit lengths alike."""
    return b"".join(client_frame(BINARY if size % 2 else TEXT, bytes(size)) for size in sizes)


def test_the_mask_check_finds_the_unmasked_frame_wherever_the_stream_is_cut():
    head = client_frame(PING, b"") + masked_frames(0, 5, 125, 126, 300) + client_frame(CLOSE, b"\x03\xe8")
    stream = head + client_frame(TEXT, b"bad", masked=False) + client_frame(TEXT, b"after")
    bad = len(head)
    assert first_unmasked_at([stream]) == bad
    assert first_unmasked_at([bytes([byte]) for byte in stream]) == bad + 1  # found on the mask bit's byte
    for cut in range(1, len(stream)):
        # Cut just after the first byte of the bad header, the mask bit is found in the second
        # chunk, which is all the check can point at: it reports that chunk's start.
        assert first_unmasked_at([stream[:cut], stream[cut:]]) == (bad + 1 if cut == bad + 1 else bad), cut
    assert first_unmasked_at([head[:7], head[7:]]) is None


def test_the_mask_check_follows_long_frames_split_at_random():
    head = masked_frames(65536, 3, 70000, 126, 65535)
    stream = head + client_frame(BINARY, bytes(200), masked=False)
    rng = random.Random(6455)
    for _ in range(50):
        cuts = [0, *sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40))), len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(cuts)]
        mask_chunk_start = max(c for c in cuts if c <= len(head) + 1)  # the chunk holding the mask bit
        assert first_unmasked_at(chunks) == max(len(head), mask_chunk_start)
        assert first_unmasked_at([head[a:b] for a, b in itertools.pairwise(cuts)]) is None
