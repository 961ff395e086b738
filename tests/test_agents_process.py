"""Executing workers through a real ``runtimed serve`` (contract §9): REST, the WebSocket, the
daemon's configuration, its shutdown and its restore.

Each test starts the daemon with ``tests/process.py``'s ``RuntimedProcess``, drives it over real
sockets, and after stopping it (SIGTERM or SIGKILL) checks the process table: no agent the daemon
reported, nor anything of its process group, outlives it. The supervisor's behaviour in detail
(permissions, restarts, protocol errors …) is tested in-process in ``tests/test_supervisor.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtimed.domain.observation import encode_cursor

from .helpers import RAW_AGENT, SDK_AGENT, alive, group_members, wait_until
from .process import RuntimedProcess

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 20.0

ECHO = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "builtin:echo"}}

pytestmark = pytest.mark.process


def named(profile: str, **request: Any) -> dict[str, Any]:
    return {"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": profile}, **request}


def config_file(tmp_path: Path, profiles: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> Path:
    """A TOML config with ``[profiles.<name>]`` tables and other ``[sections]`` (flat values only)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    for name, table in profiles.items():
        lines.append(f"[profiles.{name}]")
        for key, value in table.items():
            if isinstance(value, dict):
                items = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {items} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "runtimed.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """A running ``runtimed serve`` and an HTTP session to it, recording every agent pid it shows."""

    def __init__(self, process: RuntimedProcess, session: aiohttp.ClientSession, pids: set[int]) -> None:
        self.process = process
        self.session = session
        self.base_url = process.base_url
        self.pids = pids

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base_url + path, json=body) as response:
            return response.status, await response.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status == 200, answer
        return answer

    async def create(self, request: dict[str, Any]) -> str:
        return str((await self.ok("POST", "/v1/workers", request))["worker"]["worker_id"])

    async def say(self, worker: str, content: str) -> int:
        ack = await self.ok("POST", f"/v1/workers/{worker}/input", {"kind": "user", "content": content})
        return int(ack["ack"]["transcript_sequence"])

    async def execution(self, worker: str) -> dict[str, Any]:
        execution = (await self.ok("GET", f"/v1/workers/{worker}"))["worker"]["execution"]
        if "pid" in execution:
            self.pids.add(execution["pid"])
        return dict(execution)

    async def until_idle(self, worker: str) -> dict[str, Any]:
        async def idle() -> bool:
            return (await self.execution(worker))["state"] == "idle"

        await wait_until(idle, TIMEOUT, f"{worker} idle")
        return await self.execution(worker)

    async def transcript(self, worker: str) -> list[tuple[str, str]]:
        items = (await self.ok("GET", f"/v1/workers/{worker}/transcript"))["transcript"]["items"]
        return [(item["role"], item["content"]) for item in items]

    @asynccontextmanager
    async def watch(self, worker: str, cursor: int | None = None) -> AsyncIterator[Watch]:
        """The worker's observation WebSocket, read in the background (from ``cursor`` if given)."""
        query = f"?cursor={encode_cursor(cursor)}" if cursor is not None else ""
        async with self.session.ws_connect(f"{self.base_url}/v1/workers/{worker}/events/ws{query}") as ws:
            watch = Watch(ws)
            try:
                yield watch
            finally:
                watch.task.cancel()


class Watch:
    """The events of one observation WebSocket, as they arrive: ``(event, data)``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.events: list[tuple[str, Any]] = []
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            frame = json.loads(message.data)
            assert frame["kind"] == "event", frame
            payload = frame["envelope"]["payload"]
            self.events.append((payload["event"], payload["data"]))

    def data(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def until(self, condition: Callable[[Watch], bool], what: str) -> None:
        await wait_until(lambda: condition(self), TIMEOUT, what)

    async def until_turn_ended(self, turn: int) -> str:
        def ended(watch: Watch) -> bool:
            return any(data["turn"] == turn for data in watch.data("turn_ended"))

        await self.until(ended, f"turn {turn} to end")
        return str(next(data["stop_reason"] for data in self.data("turn_ended") if data["turn"] == turn))

    def assistant(self, turn: int) -> str:
        return str(next(data["content"] for data in self.data("assistant_message") if data["turn"] == turn))


@asynccontextmanager
async def serving(
    *args: str, pids: set[int] | None = None, headers: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[Daemon]:
    """A daemon on a free port, stopped with SIGTERM (exit 0) at the end of the block unless the
    test stopped it; then none of its agents is left."""
    pids = set() if pids is None else pids
    process = RuntimedProcess("--bind", "127.0.0.1:0", *args, env=env)
    with process:
        async with aiohttp.ClientSession(headers=headers) as session:
            yield Daemon(process, session, pids)
        assert process.process is not None
        if process.process.poll() is None:
            assert process.stop() == 0, process.stderr
    assert_no_agents(pids)


def assert_no_agents(pids: Iterable[int]) -> None:
    for pid in pids:
        assert not alive(pid), f"agent {pid} outlived the daemon"
        assert group_members(pid) == [], f"processes of agent {pid}'s group outlived the daemon"


# ------------------------------------------------------------------ turns


async def test_an_echo_worker_answers_over_rest_and_the_websocket_in_order(tmp_path):
    async with serving() as daemon:
        profiles = (await daemon.ok("GET", "/v1/profiles"))["profiles"]
        assert [(p["name"], p["source"], p["default"]) for p in profiles] == [
            ("builtin:echo", "builtin", False),
            ("builtin:chat", "builtin", False),
        ]
        worker = await daemon.create(ECHO)
        await daemon.until_idle(worker)
        async with daemon.watch(worker) as watch:
            await daemon.say(worker, "hello over the wire")
            assert await watch.until_turn_ended(1) == "end_turn"
            names = [name for name, _ in watch.events]
            assert names[0] == "snapshot" and names[1] == "user_message" and names[2] == "turn_started"
            assert names.count("text_delta") >= 2
            assert names[-2:] == ["assistant_message", "turn_ended"]
            assert watch.data("assistant_message") == [
                {"turn": 1, "sequence": 2, "content": "echo: hello over the wire"}
            ]
            assert await daemon.transcript(worker) == [
                ("user", "hello over the wire"),
                ("assistant", "echo: hello over the wire"),
            ]

            # A burst: every input answered, in order, one turn each.
            sequences = [await daemon.say(worker, f"burst {n}") for n in range(4)]
            assert await watch.until_turn_ended(5) == "end_turn"
            assert [data["input_sequence"] for data in watch.data("turn_started")][1:] == sequences
            assert [watch.assistant(turn) for turn in range(2, 6)] == [f"echo: burst {n}" for n in range(4)]

            # An interrupt ends a long turn: answered once the turn has ended.
            await daemon.say(worker, "/sleep 30")
            await watch.until(lambda w: any(d["turn"] == 6 for d in w.data("text_delta")), "turn 6 to stream")
            ack = (await daemon.ok("POST", f"/v1/workers/{worker}/interrupt"))["ack"]
            assert (ack["turn"], ack["dropped_inputs"]) == (6, 0)
            assert await watch.until_turn_ended(6) == "cancelled"
        execution = await daemon.execution(worker)
        assert (execution["turns"], execution["agent"]["name"]) == (6, "runtimed-echo")


async def test_custom_profiles_run_an_sdk_agent_and_a_raw_agent(tmp_path):
    config = config_file(
        tmp_path,
        {"sdk": {"command": list(SDK_AGENT), "stop_grace_seconds": 0.3}, "raw": {"command": list(RAW_AGENT)}},
        runtime={"default_profile": "raw"},
    )
    async with serving("--config", str(config)) as daemon:
        profiles = (await daemon.ok("GET", "/v1/profiles"))["profiles"]
        assert [(p["name"], p["source"], p["default"]) for p in profiles] == [
            ("builtin:echo", "builtin", False),
            ("builtin:chat", "builtin", False),
            ("sdk", "config", False),
            ("raw", "config", True),
        ]
        sdk = await daemon.create(named("sdk"))
        raw = await daemon.create({"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}})
        assert (await daemon.until_idle(sdk))["agent"] == {"name": "sdk-showcase", "version": "1.2.3"}
        await daemon.until_idle(raw)
        async with daemon.watch(sdk) as watch:
            await daemon.say(sdk, "showcase")
            assert await watch.until_turn_ended(1) == "end_turn"
            assert {"thought_delta", "tool_call", "tool_call_update", "plan", "agent_update"} <= {
                name for name, _ in watch.events
            }
        async with daemon.watch(raw) as watch:
            await daemon.say(raw, "hello")
            await watch.until_turn_ended(1)
        assert await daemon.transcript(raw) == [("user", "hello"), ("assistant", "raw: hello")]
        # A selector that names no agent still makes a record-only worker.
        record_only = await daemon.create({"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": "x"}})
        status, body = await daemon.call("POST", f"/v1/workers/{record_only}/interrupt")
        assert (status, body["error"]["code"]) == (409, "worker_not_executing")


async def test_a_permission_request_is_listed_and_answered_over_rest(tmp_path):
    config = config_file(tmp_path, {"raw": {"command": list(RAW_AGENT), "stop_grace_seconds": 0.3}})
    async with serving("--config", str(config)) as daemon:
        worker = await daemon.create(named("raw"))
        await daemon.until_idle(worker)
        async with daemon.watch(worker) as watch:
            await daemon.say(worker, "permission allow_once,reject_once")
            await watch.until(lambda w: bool(w.data("permission_requested")), "the permission request")
            [requested] = watch.data("permission_requested")
            listed = (await daemon.ok("GET", f"/v1/workers/{worker}/permissions"))["permissions"]
            assert listed == [requested]
            assert (await daemon.execution(worker))["pending_permissions"] == 1
            path = f"/v1/workers/{worker}/permissions/{requested['request_id']}"
            status, body = await daemon.call("POST", path, {"option_id": "allow_always"})
            assert (status, body["error"]["code"]) == (400, "invalid_request")
            status, body = await daemon.call("POST", f"/v1/workers/{worker}/permissions/nope", {"option_id": "x"})
            assert (status, body["error"]["code"]) == (404, "permission_not_found")
            answer = await daemon.ok("POST", path, {"option_id": "allow_once"})
            assert answer == {
                "permission": {"request_id": requested["request_id"], "option_id": "allow_once", "by": "backend"}
            }
            assert await watch.until_turn_ended(1) == "end_turn"
            assert watch.assistant(1) == "permission: allow_once"
            assert watch.data("permission_resolved")[0]["by"] == "backend"
            status, _ = await daemon.call("POST", path, {"option_id": "allow_once"})
            assert status == 404


async def test_the_agent_sees_its_profiles_variables_and_never_the_daemons_token(tmp_path):
    config = config_file(
        tmp_path,
        {"raw": {"command": list(RAW_AGENT), "env": {"FROM_PROFILE": "yes"}, "pass_env": ["PASSED", "TEST_TOKEN"]}},
    )
    env = {**os.environ, "TEST_TOKEN": "t0ken-value", "PASSED": "for the agent", "OTHER": "no"}
    headers = {"Authorization": "Bearer t0ken-value"}
    async with serving("--config", str(config), "--local-token-env", "TEST_TOKEN", env=env, headers=headers) as daemon:
        worker = await daemon.create(named("raw"))
        await daemon.until_idle(worker)
        async with daemon.watch(worker) as watch:
            await daemon.say(worker, "env")
            await watch.until_turn_ended(1)
            seen = json.loads(watch.assistant(1))
    assert seen["FROM_PROFILE"] == "yes" and seen["PASSED"] == "for the agent" and seen["TERM"] == "dumb"
    assert set(seen) <= {"PATH", "HOME", "LANG", "TERM", "FROM_PROFILE", "PASSED"}
    assert "t0ken-value" not in json.dumps(seen)


async def test_the_limits_on_running_agents_and_queued_inputs_are_429(tmp_path):
    config = config_file(tmp_path, {}, limits={"max_running_agents": 1, "max_queued_inputs": 2})
    async with serving("--config", str(config)) as daemon:
        worker = await daemon.create(ECHO)
        status, body = await daemon.call("POST", "/v1/workers", ECHO)
        assert (status, body["error"]["code"]) == (429, "worker_limit_reached")
        await daemon.until_idle(worker)
        async with daemon.watch(worker) as watch:
            await daemon.say(worker, "/sleep 30")
            await watch.until(lambda w: bool(w.data("text_delta")), "the sleep to stream")
            await daemon.say(worker, "one")
            await daemon.say(worker, "two")
            status, body = await daemon.call("POST", f"/v1/workers/{worker}/input", {"kind": "user", "content": "3"})
            assert (status, body["error"]["code"]) == (429, "input_queue_full")
        await daemon.ok("POST", f"/v1/workers/{worker}/cancel")
        # A cancelled worker no longer counts: another agent-backed worker may run.
        await daemon.until_idle(await daemon.create(ECHO))
        assert (await daemon.execution(worker))["state"] == "exited"


# ------------------------------------------------------------------ shutdown and restore


@pytest.mark.parametrize(("signum", "first_turn"), [(signal.SIGTERM, "cancelled"), (signal.SIGKILL, "interrupted")])
async def test_a_restarted_daemon_restores_its_agents_and_delivers_each_input_once(tmp_path, signum, first_turn):
    root = tmp_path / "state"
    # An agent slow to start keeps the restore (and /readyz's 503) going for a while.
    config = config_file(tmp_path, {"slow": {"command": [*RAW_AGENT, "--slow-start", "1.5"]}})
    args = ("--store", "fs", "--fs-root", str(root), "--config", str(config))
    pids: set[int] = set()
    async with serving(*args, pids=pids) as daemon:
        worker = await daemon.create(ECHO)
        slow = await daemon.create(named("slow"))
        before = await daemon.until_idle(worker)
        async with daemon.watch(worker) as watch:
            await daemon.say(worker, "/sleep 30")
            await watch.until(lambda w: bool(w.data("text_delta")), "the sleep to stream")
        queued = [await daemon.say(worker, "first"), await daemon.say(worker, "second")]
        await daemon.until_idle(slow)
        assert daemon.process.stop(signum) == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
        # Killed with the daemon: by PR_SET_PDEATHSIG, and by the end of its stdin.
        await wait_until(lambda: not any(alive(pid) or group_members(pid) for pid in pids), TIMEOUT, "agents gone")

    async with serving(*args, pids=pids) as daemon:
        status, body = await daemon.call("GET", "/readyz")
        assert (status, body["error"]["code"]) == (503, "not_ready")
        async with daemon.watch(worker, cursor=0) as watch:
            assert await watch.until_turn_ended(3) == "end_turn"
            assert [d["stop_reason"] for d in watch.data("turn_ended")] == [first_turn, "end_turn", "end_turn"]
            # Each input reached an agent once: the open turn's input was not delivered again.
            assert [d["input_sequence"] for d in watch.data("turn_started")] == [1, *queued]
            assert [watch.assistant(turn) for turn in (2, 3)] == ["echo: first", "echo: second"]
        after = await daemon.until_idle(worker)
        assert after["session_id"] == before["session_id"] and after["pid"] != before["pid"]
        diagnostics = (await daemon.ok("GET", "/v1/diagnostics"))["diagnostics"]
        assert not [d for d in diagnostics if d["code"] in ("worker.context_lost", "worker.restore_failed")]
        await daemon.until_idle(slow)
        assert (await daemon.call("GET", "/readyz"))[0] == 200
        assert (await daemon.ok("GET", f"/v1/workers/{worker}"))["worker"]["status"] == "running"
