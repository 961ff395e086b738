"""Chat workers through a real ``runtimed serve``: the built-in chat agent, started by the daemon
from a ``builtin = "chat"`` profile, talking to a local OpenAI-compatible server
(``tests/openai_server.py``) that runs in the test's event loop.

What a user checks: the answer arrives as deltas and lands as one assistant entry; the
conversation the server gets grows turn by turn and survives a daemon restart with the fs store;
an interrupt closes the stream; a server that refuses, times out, or answers 401 or 500 makes a
clear turn failure, and the worker goes on; the API key is in no log line, event or diagnostic.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import wait_until
from .openai_server import OpenAIServer, Reply
from .process import RuntimedProcess

pytestmark = pytest.mark.process

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 20.0
KEY = "sk-chat-test-5b8e0d3a9f"
KEY_VARIABLE = "RUNTIMED_TEST_CHAT_KEY"


def config_file(tmp_path: Path, profiles: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, table in profiles.items():
        lines.append(f"[profiles.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / "runtimed.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_profile(server: OpenAIServer, **settings: Any) -> dict[str, Any]:
    return {
        "builtin": "chat",
        "base_url": server.base_url,
        "model": "tiny",
        "api_key_env": KEY_VARIABLE,
        "stop_grace_seconds": 2,
        **settings,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Daemon:
    """A running ``runtimed serve`` and an HTTP session to it."""

    def __init__(self, process: RuntimedProcess, session: aiohttp.ClientSession) -> None:
        self.process = process
        self.session = session
        self.base_url = process.base_url

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, self.base_url + path, json=body) as response:
            answer = await response.json()
            assert response.status == 200, answer
            return answer

    async def create(self, profile: dict[str, Any], intent: dict[str, Any] | None = None) -> str:
        request = {"intent": intent or {"kind": "assistant"}, "profile": profile}
        return str((await self.ok("POST", "/v1/workers", request))["worker"]["worker_id"])

    async def say(self, worker: str, content: str, kind: str = "user") -> None:
        await self.ok("POST", f"/v1/workers/{worker}/input", {"kind": kind, "content": content})

    async def execution(self, worker: str) -> dict[str, Any]:
        return dict((await self.ok("GET", f"/v1/workers/{worker}"))["worker"]["execution"])

    async def until_idle(self, worker: str, turns: int | None = None) -> None:
        async def idle() -> bool:
            execution = await self.execution(worker)
            return execution["state"] == "idle" and (turns is None or execution["turns"] == turns)

        await wait_until(idle, TIMEOUT, f"{worker} idle")

    async def transcript(self, worker: str) -> list[tuple[str, str]]:
        items = (await self.ok("GET", f"/v1/workers/{worker}/transcript"))["transcript"]["items"]
        return [(item["role"], item["content"]) for item in items]

    async def diagnostics(self, code: str | None = None) -> list[dict[str, Any]]:
        diagnostics = (await self.ok("GET", "/v1/diagnostics"))["diagnostics"]
        return [d for d in diagnostics if code is None or d["code"] == code]

    async def everything(self) -> str:
        """The event log and the diagnostics, as text, to look for what must not be there."""
        events = await self.ok("GET", "/v1/events?cursor=1")
        return json.dumps(events) + json.dumps(await self.diagnostics())

    @asynccontextmanager
    async def watch(self, worker: str) -> AsyncIterator[Watch]:
        async with self.session.ws_connect(f"{self.base_url}/v1/workers/{worker}/events/ws") as ws:
            watch = Watch(ws)
            try:
                yield watch
            finally:
                watch.task.cancel()


class Watch:
    """The events of one observation WebSocket, as they arrive: ``(event, data)``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.events: list[tuple[str, Any]] = []
        self.raw: list[str] = []
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            self.raw.append(message.data)
            payload = json.loads(message.data)["envelope"]["payload"]
            self.events.append((payload["event"], payload["data"]))

    def data(self, event: str, turn: int | None = None) -> list[Any]:
        return [d for name, d in self.events if name == event and (turn is None or d.get("turn") == turn)]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await wait_until(condition, TIMEOUT, what)

    async def turn_ended(self, turn: int) -> str:
        await self.until(lambda: bool(self.data("turn_ended", turn)), f"turn {turn} to end")
        return str(self.data("turn_ended", turn)[0]["stop_reason"])


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[Daemon]:
    """A daemon on a free port with the key in its environment, stopped with SIGTERM at the end."""
    process = RuntimedProcess("--bind", "127.0.0.1:0", *args, env={**os.environ, KEY_VARIABLE: KEY})
    with process:
        async with aiohttp.ClientSession() as session:
            yield Daemon(process, session)
        assert process.process is not None
        if process.process.poll() is None:
            assert process.stop() == 0, process.stderr


async def test_a_chat_worker_streams_remembers_and_resumes_its_conversation_after_a_restart(tmp_path):
    root = tmp_path / "state"
    async with OpenAIServer() as server:
        server.script.extend(
            [Reply(pieces=["Hello", ", ", "Ada"], usage=(30, 3)), Reply(pieces=["Twice", " hello"], usage=(45, 2))]
        )
        profile = chat_profile(server, system_prompt="You are terse.")
        config = config_file(tmp_path, {"local": profile})
        store = ("--store", "fs", "--fs-root", str(root), "--config", str(config))
        intent = {"kind": "task", "objective": "greet people"}
        async with serving(*store) as daemon:
            worker = await daemon.create({"kind": "named", "value": "local"}, intent)
            await daemon.until_idle(worker)
            async with daemon.watch(worker) as watch:
                await daemon.say(worker, "I am Ada")
                assert await watch.turn_ended(1) == "end_turn"
                # Three deltas, one assistant entry.
                assert [d["text"] for d in watch.data("text_delta", 1)] == ["Hello", ", ", "Ada"]
                assert watch.data("assistant_message", 1) == [{"turn": 1, "sequence": 2, "content": "Hello, Ada"}]
                # The usage the server reported, as the ACP usage_update runtimed publishes.
                (usage,) = [d["update"] for d in watch.data("agent_update", 1)]
                assert usage == {
                    "sessionUpdate": "usage_update",
                    "used": 33,
                    "size": 0,
                    "_meta": {"openai": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}},
                }
                await daemon.say(worker, "say it twice")
                assert await watch.turn_ended(2) == "end_turn"
                seen = "".join(watch.raw)
            assert server.requests[1].messages == [
                {"role": "system", "content": "You are terse.\n\nYour task: greet people"},
                {"role": "user", "content": "I am Ada"},
                {"role": "assistant", "content": "Hello, Ada"},
                {"role": "user", "content": "say it twice"},
            ]
            assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"
            session_id = (await daemon.execution(worker))["session_id"]
        assert (root / "workdirs" / worker / f".runtimed-chat-{session_id}.jsonl").is_file()

        # A new daemon on the same state: the agent is started again and loads the conversation.
        async with serving(*store) as daemon:
            await daemon.until_idle(worker)
            assert (await daemon.execution(worker))["session_id"] == session_id
            await daemon.say(worker, "and who am I?")
            await daemon.until_idle(worker, turns=3)
            assert await daemon.diagnostics("worker.context_lost") == []
            assert await daemon.transcript(worker) == [
                ("user", "I am Ada"),
                ("assistant", "Hello, Ada"),
                ("user", "say it twice"),
                ("assistant", "Twice hello"),
                ("user", "and who am I?"),
                ("assistant", "you said: and who am I?"),
            ]
            seen += await daemon.everything()
            stderr = daemon.process.stderr
        assert server.requests[2].messages == [
            *server.requests[1].messages,
            {"role": "assistant", "content": "Twice hello"},
            {"role": "user", "content": "and who am I?"},
        ]
    assert KEY not in seen
    assert KEY not in stderr


async def test_a_worker_whose_history_file_is_gone_starts_afresh_and_says_the_context_was_lost(tmp_path):
    root = tmp_path / "state"
    async with OpenAIServer() as server:
        config = config_file(tmp_path, {"local": chat_profile(server)})
        store = ("--store", "fs", "--fs-root", str(root), "--config", str(config))
        async with serving(*store) as daemon:
            worker = await daemon.create({"kind": "named", "value": "local"})
            await daemon.until_idle(worker)
            await daemon.say(worker, "remember me")
            await daemon.until_idle(worker, turns=1)
        (history,) = (root / "workdirs" / worker).glob(".runtimed-chat-*.jsonl")
        history.unlink()

        async with serving(*store) as daemon:
            await daemon.until_idle(worker)
            (lost,) = await daemon.diagnostics("worker.context_lost")
            assert "could not be loaded" in lost["message"] and "the conversation is lost" in lost["message"]
            await daemon.say(worker, "who?")
            await daemon.until_idle(worker, turns=2)
        assert server.requests[-1].messages == [{"role": "user", "content": "who?"}]


async def test_an_interrupt_closes_the_stream_and_the_turn_ends_cancelled(tmp_path):
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["thinking ", "and never done"], hang_after=1))
        config = config_file(tmp_path, {"local": chat_profile(server)})
        async with serving("--config", str(config)) as daemon:
            worker = await daemon.create({"kind": "named", "value": "local"})
            await daemon.until_idle(worker)
            async with daemon.watch(worker) as watch:
                await daemon.say(worker, "think hard")
                await watch.until(lambda: bool(watch.data("text_delta", 1)), "the first delta")
                ack = (await daemon.ok("POST", f"/v1/workers/{worker}/interrupt"))["ack"]
                assert ack["turn"] == 1
                assert await watch.turn_ended(1) == "cancelled"
                await watch.until(lambda: server.disconnects == 1, "the server to see the client go")
                assert watch.data("assistant_message", 1)[0]["content"] == "thinking "
                # The worker goes on, with the interrupted exchange in its conversation.
                await daemon.say(worker, "again")
                assert await watch.turn_ended(2) == "end_turn"
        assert server.requests[1].messages == [
            {"role": "user", "content": "think hard"},
            {"role": "assistant", "content": "thinking "},
            {"role": "user", "content": "again"},
        ]


async def test_a_server_that_fails_makes_clear_turn_failures_and_the_key_is_never_shown(tmp_path):
    async with OpenAIServer() as server:
        server.script.extend(
            [
                Reply(status=401, message=f"Incorrect API key provided: {KEY}"),
                Reply(status=500, message="the model is overloaded"),
                Reply(hang_after=-1),
            ]
        )
        down = f"http://127.0.0.1:{free_port()}/v1"
        config = config_file(
            tmp_path,
            {
                "local": chat_profile(server, timeout_seconds=1),
                "down": {**chat_profile(server), "base_url": down},
            },
        )
        async with serving("--config", str(config)) as daemon:
            worker = await daemon.create({"kind": "named", "value": "local"})
            other = await daemon.create({"kind": "named", "value": "down"})
            await daemon.until_idle(worker)
            await daemon.until_idle(other)
            async with daemon.watch(worker) as watch:
                for turn, text in enumerate(["one", "two", "three", "four"], 1):
                    await daemon.say(worker, text)
                    await watch.turn_ended(turn)
                seen = "".join(watch.raw)
            assert [d["stop_reason"] for d in watch.data("turn_ended")] == ["error", "error", "error", "end_turn"]
            await daemon.say(other, "anyone?")
            await daemon.until_idle(other, turns=1)

            failures = [d["message"] for d in await daemon.diagnostics("worker.turn_failed")]
            assert len(failures) == 4
            assert f"the model server at {server.base_url} answered HTTP 401 Unauthorized: " in failures[0]
            assert "Incorrect API key provided: ***" in failures[0]
            assert "answered HTTP 500 Internal Server Error: the model is overloaded" in failures[1]
            assert f"the model server at {server.base_url} did not answer within 1 s" in failures[2]
            assert f"cannot connect to the model server at {down}" in failures[3]
            assert all(d["severity"] == "warning" for d in await daemon.diagnostics("worker.turn_failed"))
            # The agents kept running: no exit, no restart.
            assert await daemon.diagnostics("worker.agent_exited") == []
            assert (await daemon.execution(worker))["state"] == "idle"
            seen += await daemon.everything()
            stderr = daemon.process.stderr
        # One request per turn: no retries.
        assert len(server.requests) == 4
    # The agent's own log line of the failure reached the WebSocket as a log event, redacted.
    assert any(name == "log" and "Incorrect API key provided: ***" in data["line"] for name, data in watch.events), (
        watch.events
    )
    assert KEY not in seen
    assert KEY not in stderr


async def test_builtin_chat_without_a_profile_fails_its_turns_for_want_of_a_model(tmp_path):
    async with serving() as daemon:
        worker = await daemon.create({"kind": "builtin", "value": "builtin:chat"})
        await daemon.until_idle(worker)
        assert (await daemon.execution(worker))["agent"]["name"] == "runtimed-chat"
        await daemon.say(worker, "hello?")
        await daemon.until_idle(worker, turns=1)
        (failure,) = await daemon.diagnostics("worker.turn_failed")
        assert "no model configured" in failure["message"]
        assert await daemon.transcript(worker) == [("user", "hello?")]
