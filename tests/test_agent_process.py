"""Agent processes and the ACP client session over them (contract §9.1, §9.3 – §9.5).

Real child processes: the built-in echo agent, ``tests/agents/sdk_agent.py`` (the SDK's agent
side, sending what echo never does) and ``tests/agents/raw_agent.py`` (raw JSON-RPC lines, and
the ways an agent can misbehave). Tests that start one are marked ``process``; the pure parts
(parsing, the log rate, the environment, the permission policy) run without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from runtimed.agents.process import (
    AgentLaunch,
    AgentProcess,
    AgentSpawnError,
    LogLimiter,
    ProtocolError,
    agent_environment,
    describe_exit,
    parse_message,
    process_exit,
)
from runtimed.agents.session import (
    AgentPermissionRequest,
    AgentSession,
    AgentStartError,
    choose_option,
    policy_answer,
    timeout_answer,
)
from runtimed.domain.execution import PermissionOption, PermissionPolicy, ProcessExit, StopReason, ToolCallInfo
from runtimed.domain.identity import WorkerRef

from .helpers import AGENTS_DIR, ECHO_AGENT, RAW_AGENT, SDK_AGENT, alive, group_members, wait_until

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 10.0

ALL_OPTIONS = (
    PermissionOption("allow_once", "Allow once", "allow_once"),
    PermissionOption("allow_always", "Allow always", "allow_always"),
    PermissionOption("reject_once", "Reject once", "reject_once"),
    PermissionOption("reject_always", "Reject always", "reject_always"),
)


class RecordingSink:
    """The sink a supervisor would be: records everything, answers permission requests.

    ``event`` yields to the loop a few times, as a sink that makes events durable would, so
    that order and "the prompt returns after its events" are tested against a sink that is slow.
    """

    def __init__(self, answer: str | None = "allow_once", hold: bool = False) -> None:
        self.answer = answer
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.asked: list[AgentPermissionRequest] = []
        self.cancelled_asks: list[str] = []
        self.protocol_errors: list[str] = []
        self.exits: list[tuple[ProcessExit, tuple[str, ...]]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def event(self, name: str, data: dict[str, Any]) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.events.append((name, data))

    async def permission(self, request: AgentPermissionRequest) -> str | None:
        self.asked.append(request)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled_asks.append(request.request_id)
            raise
        return self.answer

    def protocol_error(self, message: str) -> None:
        self.protocol_errors.append(message)

    def exited(self, exit: ProcessExit, stderr_tail: Sequence[str]) -> None:
        self.exits.append((exit, tuple(stderr_tail)))

    def named(self, *names: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, data) for name, data in self.events if name in names]

    def data(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == name]

    def logs(self) -> list[str]:
        return [data["line"] for data in self.data("log")]


def launch(command: Sequence[str], cwd: Path, **settings: Any) -> AgentLaunch:
    return AgentLaunch(tuple(command), cwd, agent_environment(), **settings)


@contextlib.asynccontextmanager
async def started(
    command: Sequence[str], cwd: Path, sink: RecordingSink, **options: Any
) -> AsyncIterator[AgentSession]:
    """A started session (spawned, initialized, a new session), closed on the way out."""
    settings = {key: options.pop(key) for key in ("max_message_bytes", "log_lines_per_second") if key in options}
    session = AgentSession(launch(command, cwd, **settings), sink, **options)
    try:
        await session.start(timeout=TIMEOUT)
        yield session
    finally:
        await session.close()


async def prompt(session: AgentSession, text: str, turn: int = 1, **options: Any) -> Any:
    return await asyncio.wait_for(session.prompt(text, turn=turn, **options), TIMEOUT)


# The parts that need no process.


def test_a_line_is_one_json_rpc_object_or_a_protocol_error():
    assert parse_message(b'{"jsonrpc": "2.0", "id": 1, "result": {}}\r\n') == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert parse_message(b'{"jsonrpc": "2.0", "method": "session/update", "params": {}}\n') is not None
    assert parse_message(b"  \n") is None
    for line, problem in [
        (b"this is not json\n", "not JSON"),
        (b'{"jsonrpc": "2.0", "id": 1, "result": NaN}\n', "not JSON"),
        (b"[" * 100_000 + b"\n", "not JSON"),
        (b'\xff{"jsonrpc": "2.0"}\n', "not JSON"),
        (b'[{"jsonrpc": "2.0", "id": 1, "result": {}}]\n', "not a JSON-RPC 2.0 object"),
        (b'{"jsonrpc": "1.0", "id": 1, "result": {}}\n', "not a JSON-RPC 2.0 object"),
        (b'{"jsonrpc": "2.0", "id": 1}\n', "neither a request nor a response"),
        (b'{"jsonrpc": "2.0", "id": 1, "error": "bad"}\n', "neither a request nor a response"),
        (b'{"jsonrpc": "2.0", "id": [1], "result": {}}\n', "bad id"),
        (b'{"jsonrpc": "2.0", "method": 7}\n', "bad method or params"),
        (b'{"jsonrpc": "2.0", "method": "x", "params": "y"}\n', "bad method or params"),
    ]:
        with pytest.raises(ProtocolError, match=problem):
            parse_message(line)


def test_a_protocol_error_shows_the_line_escaped_and_short():
    with pytest.raises(ProtocolError) as caught:
        parse_message(b"\x1b[31mred\x07 " + b"x" * 200 + b"\n")
    assert "\\x1b[31mred\\x07" in str(caught.value) and "\x1b" not in str(caught.value)
    assert str(caught.value).endswith("…")


def test_stderr_lines_over_the_rate_are_dropped_and_counted_in_one_event():
    now = [100.0]
    emitted: list[dict[str, Any]] = []
    limiter = LogLimiter(5, emitted.append, clock=lambda: now[0])
    for n in range(20):
        limiter.offer(f"line {n}")
    assert [e["line"] for e in emitted] == [f"line {n}" for n in range(5)]
    now[0] += 1.0  # a second later, a second's worth of lines passes again
    for n in range(20, 30):
        limiter.offer(f"line {n}")
    limiter.flush()
    limiter.flush()
    assert [e["line"] for e in emitted[5:]] == [f"line {n}" for n in range(20, 25)] + ["20 lines dropped"]
    assert emitted[-1] == {"stream": "stderr", "line": "20 lines dropped", "dropped": 20}


def test_the_environment_is_the_minimal_one_plus_the_profiles():
    daemon = {"PATH": "/bin", "HOME": "/home/d", "LANG": "C.UTF-8", "TERM": "xterm", "TOKEN": "s3cret", "KEY": "k"}
    environment = agent_environment(
        {"MODEL": "m", "PATH": "/opt/bin"}, ["KEY", "MISSING", "TOKEN"], source=daemon, withheld={"TOKEN"}
    )
    assert environment == {
        "PATH": "/opt/bin",
        "HOME": "/home/d",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "KEY": "k",
        "MODEL": "m",
    }
    assert agent_environment(source={}) == {"TERM": "dumb"}


def test_a_launch_never_shows_its_environment():
    shown = repr(AgentLaunch(("agent", "--acp"), Path("/srv"), {"API_KEY": "s3cret"}))
    assert "s3cret" not in shown and "agent --acp" in shown


def test_an_exit_is_a_status_or_a_signal_name():
    assert process_exit(3) == ProcessExit(code=3)
    assert process_exit(-9) == ProcessExit(signal="SIGKILL")
    assert describe_exit(ProcessExit(code=0)) == "exited with status 0"
    assert describe_exit(ProcessExit(signal="SIGTERM")) == "killed by signal SIGTERM"


def test_the_policy_picks_options_by_kind_or_cancels():
    allow_only = ALL_OPTIONS[:2]
    reject_always_only = (ALL_OPTIONS[3],)
    assert policy_answer(PermissionPolicy.ALLOW, "edit", ALL_OPTIONS, ()) == (True, "allow_once")
    assert policy_answer(PermissionPolicy.ALLOW, "edit", ALL_OPTIONS[1:], ()) == (True, "allow_always")
    assert policy_answer(PermissionPolicy.ALLOW, "edit", reject_always_only, ()) == (True, None)
    assert policy_answer(PermissionPolicy.DENY, "edit", ALL_OPTIONS, ()) == (True, "reject_once")
    assert policy_answer(PermissionPolicy.DENY, "edit", reject_always_only, ()) == (True, "reject_always")
    assert policy_answer(PermissionPolicy.DENY, "edit", allow_only, ()) == (True, None)
    assert policy_answer(PermissionPolicy.ASK, "read", ALL_OPTIONS, {"read"}) == (True, "allow_once")
    assert policy_answer(PermissionPolicy.ASK, "edit", ALL_OPTIONS, {"read"}) == (False, None)
    assert choose_option(ALL_OPTIONS, ("reject_always",)) == "reject_always"


def test_an_unanswered_request_gets_the_first_reject_option_or_cancelled():
    options = (ALL_OPTIONS[0], ALL_OPTIONS[3], ALL_OPTIONS[2])
    assert timeout_answer(options) == "reject_always"
    assert timeout_answer(ALL_OPTIONS[:2]) is None


def test_a_permission_request_becomes_the_domains_for_a_worker():
    request = AgentPermissionRequest("r1", 2, ToolCallInfo("c1", "Run it", "execute"), ALL_OPTIONS)
    ref = WorkerRef("rt1", "w1")
    domain = request.for_worker(ref)
    assert (domain.worker_ref, domain.request_id, domain.turn, domain.options) == (ref, "r1", 2, ALL_OPTIONS)


# The echo agent through the session.


@pytest.mark.process
async def test_echo_streams_deltas_then_ends_the_turn_with_its_text(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        assert session.handshake is not None and session.handshake.load_session is True
        assert session.handshake.agent is not None and session.handshake.agent.name == "runtimed-echo"

        result = await prompt(session, "hi", turn=1)
        # The prompt returns after its events: no waiting here.
        deltas = sink.data("text_delta")
        assert result.stop_reason is StopReason.END_TURN and result.error is None
        assert result.text == "echo: hi" == "".join(d["text"] for d in deltas)
        assert len(deltas) >= 2 and {d["turn"] for d in deltas} == {1}

        result = await prompt(session, "/exit 3", turn=2, system=True)
        assert result.text == "system: /exit 3" and result.stop_reason is StopReason.END_TURN
        assert session.running
        assert {d["turn"] for d in sink.data("text_delta")} == {1, 2}
    assert sink.exits[0][0] == ProcessExit(signal="SIGKILL")  # close kills what still runs


@pytest.mark.process
async def test_a_slow_sink_slows_the_agent_down_and_loses_nothing(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        result = await prompt(session, "/stream 2000")
    expected = "".join(f"{n} " for n in range(1, 2001))
    assert result.text == expected == "".join(d["text"] for d in sink.data("text_delta"))
    assert len(sink.data("text_delta")) == 2000


@pytest.mark.process
async def test_a_cancelled_sleep_ends_the_turn_cancelled(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        assert await session.cancel() is False  # no turn: nothing is sent
        turn = asyncio.create_task(session.prompt("/sleep 30", turn=1))
        await wait_until(lambda: bool(sink.data("text_delta")), TIMEOUT, "the first dot")
        assert await session.cancel() is True
        result = await asyncio.wait_for(turn, TIMEOUT)
        assert (result.stop_reason, result.text) == (StopReason.CANCELLED, ".")
        # The session goes on after a cancelled turn.
        assert (await prompt(session, "again", turn=2)).text == "echo: again"


@pytest.mark.process
async def test_an_agent_that_exits_during_a_prompt_interrupts_the_turn(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        result = await prompt(session, "/exit 3")
        assert result.stop_reason is StopReason.INTERRUPTED and result.error
        assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(code=3)
    assert [exit for exit, _ in sink.exits] == [ProcessExit(code=3)]
    assert any("exiting with status 3" in line for line in sink.exits[0][1])  # echo says so on stderr


@pytest.mark.process
async def test_an_error_answer_ends_the_turn_with_error_not_interrupted(tmp_path):
    sink = RecordingSink()
    async with started(RAW_AGENT, tmp_path, sink) as session:
        assert session.handshake is not None and session.handshake.agent is None  # no agentInfo given
        result = await prompt(session, "error")
        assert result.stop_reason is StopReason.ERROR
        assert result.error is not None and "-32603" in result.error and "the model is on fire" in result.error
        assert session.running
        assert (await prompt(session, "hello", turn=2)).text == "raw: hello"


@pytest.mark.process
async def test_loading_a_session_emits_nothing_of_its_history(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        assert (await prompt(session, "remember me")).text == "echo: remember me"
        session_id = session.session_id
        assert session_id is not None
        before = list(sink.events)

        await asyncio.wait_for(session.load_session(session_id), TIMEOUT)
        after_load = await prompt(session, "and now", turn=2)

        assert sink.events[: len(before)] == before
        new = sink.events[len(before) :]
        assert new and all(name == "text_delta" and data["turn"] == 2 for name, data in new)
        assert after_load.text == "echo: and now"


@pytest.mark.process
async def test_start_resumes_a_stored_session_when_the_agent_can_load_it(tmp_path):
    sink = RecordingSink()
    session = AgentSession(launch(ECHO_AGENT, tmp_path), sink)
    async with session:
        started_session = await session.start(timeout=TIMEOUT, resume_session_id="stored-session")
        assert (started_session.resumed, started_session.session_id, started_session.load_error) == (
            True,
            "stored-session",
            None,
        )
    raw = AgentSession(launch(RAW_AGENT, tmp_path), sink)
    async with raw:
        started_raw = await raw.start(timeout=TIMEOUT, resume_session_id="stored-session")
        assert not started_raw.resumed and started_raw.session_id == "raw-session"
        assert started_raw.load_error == "the agent does not advertise loadSession"


# Updates of every kind.


@pytest.mark.process
async def test_updates_map_to_turn_events_in_the_order_the_agent_sent_them(tmp_path):
    sink = RecordingSink()
    async with started(SDK_AGENT, tmp_path, sink) as session:
        await wait_until(lambda: bool(sink.data("agent_update")), TIMEOUT, "the update after session/new")
        [outside] = sink.data("agent_update")
        assert "turn" not in outside and outside["update"]["sessionUpdate"] == "available_commands_update"
        assert outside["update"]["availableCommands"][0]["name"] == "showcase"
        sink.events.clear()

        result = await prompt(session, "showcase", turn=7)

    assert (result.stop_reason, result.text) == (StopReason.END_TURN, "done")
    assert [name for name, _ in sink.events if name != "log"] == [
        "thought_delta",
        "tool_call",
        "tool_call_update",
        "tool_call_update",
        "plan",
        "agent_update",
        "agent_update",
        "text_delta",
    ]
    events = [data for name, data in sink.events if name != "log"]
    assert events[0] == {"turn": 7, "text": "thinking it over"}
    assert events[1] == {
        "turn": 7,
        "tool_call_id": "call-1",
        "title": "Read the notes",
        "kind": "other",
        "status": "pending",
    }
    assert events[2] == {"turn": 7, "tool_call_id": "call-1", "status": "in_progress"}
    assert events[3] == {"turn": 7, "tool_call_id": "call-1", "status": "completed", "title": "Read the notes (done)"}
    assert events[4] == {
        "turn": 7,
        "entries": [
            {"content": "read", "priority": "medium", "status": "completed"},
            {"content": "write", "priority": "high", "status": "pending"},
        ],
    }
    assert events[5] == {"turn": 7, "update": {"sessionUpdate": "current_mode_update", "currentModeId": "architect"}}
    assert events[6]["update"]["sessionUpdate"] == "user_message_chunk"
    assert events[7] == {"turn": 7, "text": "done"}


@pytest.mark.process
async def test_the_agents_stop_reason_is_the_turns(tmp_path):
    async with started(SDK_AGENT, tmp_path, RecordingSink()) as session:
        for turn, reason in enumerate(["max_tokens", "max_turn_requests", "refusal"], start=1):
            assert (await prompt(session, f"stop {reason}", turn=turn)).stop_reason is StopReason(reason)
        assert (await prompt(session, "stop no_such_reason", turn=4)).stop_reason is StopReason.ERROR


@pytest.mark.process
async def test_an_update_of_an_unknown_kind_is_passed_on_as_received(tmp_path):
    sink = RecordingSink()
    async with started(RAW_AGENT, tmp_path, sink) as session:
        result = await prompt(session, "unknown", turn=3)
    assert result.text == "after the unknown update"
    assert sink.named("agent_update", "text_delta") == [
        ("agent_update", {"turn": 3, "update": {"sessionUpdate": "brand_new_kind", "payload": {"answer": 42}}}),
        ("text_delta", {"turn": 3, "text": "after the unknown update"}),
    ]


# Permissions.


@pytest.mark.process
async def test_the_allow_and_deny_policies_answer_without_asking(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink, permissions=PermissionPolicy.ALLOW) as session:
        assert (await prompt(session, "/permission execute")).text == "permission: allow_once"
        session.permissions = PermissionPolicy.DENY
        assert (await prompt(session, "/permission execute", turn=2)).text == "permission: reject_once"
    assert sink.asked == []
    resolved = sink.data("permission_resolved")
    assert [(r["option_id"], r["outcome"], r["by"]) for r in resolved] == [
        ("allow_once", "selected", "policy"),
        ("reject_once", "selected", "policy"),
    ]
    # Each answer comes after the tool call it answers, in the turn's order.
    names = [name for name, _ in sink.events if name in ("tool_call", "permission_resolved", "tool_call_update")]
    assert names == ["tool_call", "permission_resolved", "tool_call_update"] * 2


@pytest.mark.process
async def test_a_policy_with_no_option_of_its_kind_answers_cancelled(tmp_path):
    sink = RecordingSink()
    async with started(SDK_AGENT, tmp_path, sink, permissions=PermissionPolicy.DENY) as session:
        assert (await prompt(session, "ask execute allow_once,allow_always")).text == "permission: cancelled"
        session.permissions = PermissionPolicy.ALLOW
        assert (await prompt(session, "ask execute reject_once", turn=2)).text == "permission: cancelled"
    resolved = sink.data("permission_resolved")
    assert [{key: r[key] for key in r if key != "request_id"} for r in resolved] == [
        {"outcome": "cancelled", "by": "policy"}
    ] * 2
    assert len({r["request_id"] for r in resolved}) == 2 and sink.asked == []


@pytest.mark.process
async def test_ask_allows_standing_kinds_and_asks_the_sink_for_the_rest(tmp_path):
    sink = RecordingSink(answer="reject_always")
    async with started(ECHO_AGENT, tmp_path, sink, standing_kinds={"read"}) as session:
        assert (await prompt(session, "/permission read", turn=1)).text == "permission: allow_once"
        assert sink.asked == []
        assert (await prompt(session, "/permission edit", turn=2)).text == "permission: reject_always"
    [request] = sink.asked
    assert request.turn == 2
    assert (request.tool_call.title, request.tool_call.kind) == ("/permission edit", "edit")
    assert [o.kind for o in request.options] == ["allow_once", "allow_always", "reject_once", "reject_always"]
    # Only the policy's answer is an event of this layer; the sink reports its own answers.
    assert [r["by"] for r in sink.data("permission_resolved")] == ["policy"]
    # The request reached the sink after the tool call it is about.
    assert sink.data("tool_call")[-1]["tool_call_id"] == request.tool_call.tool_call_id


@pytest.mark.process
async def test_a_permission_request_without_kind_uses_the_tool_calls(tmp_path):
    sink = RecordingSink(answer="allow_once")
    async with started(SDK_AGENT, tmp_path, sink, standing_kinds={"fetch"}) as session:
        # The agent's request names only the tool call's id; its kind came with the tool call.
        assert (await prompt(session, "ask fetch allow_once,reject_once")).text == "permission: allow_once"
        assert sink.asked == []
        assert (await prompt(session, "ask delete allow_once,reject_once", turn=2)).text == "permission: allow_once"
    assert [(r.tool_call.title, r.tool_call.kind) for r in sink.asked] == [("ask delete", "delete")]


@pytest.mark.process
async def test_cancel_answers_a_pending_permission_request_cancelled(tmp_path):
    sink = RecordingSink(hold=True)
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        turn = asyncio.create_task(session.prompt("/permission edit", turn=1))
        await wait_until(lambda: bool(sink.asked), TIMEOUT, "the permission request")
        assert await session.cancel() is True
        result = await asyncio.wait_for(turn, TIMEOUT)
    assert result.stop_reason is StopReason.CANCELLED
    assert sink.cancelled_asks == [sink.asked[0].request_id]
    assert sink.data("tool_call_update")[-1]["status"] == "failed"  # echo closes the tool call


@pytest.mark.process
async def test_a_raw_permission_request_is_answered_on_the_wire(tmp_path):
    sink = RecordingSink(answer="reject_once")
    async with started(RAW_AGENT, tmp_path, sink) as session:
        result = await prompt(session, "permission allow_once,reject_once")
    assert result.text == "permission: reject_once"
    assert [(r.tool_call.tool_call_id, r.tool_call.kind) for r in sink.asked] == [("raw-call", "execute")]


# Protocol errors and stderr.


@pytest.mark.process
async def test_a_line_that_is_not_json_is_a_protocol_error_that_kills_the_agent(tmp_path):
    sink = RecordingSink()
    async with started(RAW_AGENT, tmp_path, sink) as session:
        result = await prompt(session, "garbage")
        assert result.stop_reason is StopReason.INTERRUPTED
        assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(signal="SIGKILL")
    assert len(sink.protocol_errors) == 1 and "not JSON" in sink.protocol_errors[0]
    assert "'this is not json'" in sink.protocol_errors[0]
    assert [exit for exit, _ in sink.exits] == [ProcessExit(signal="SIGKILL")]


@pytest.mark.process
async def test_a_message_over_the_limit_is_a_protocol_error(tmp_path):
    sink = RecordingSink()
    async with started(RAW_AGENT, tmp_path, sink, max_message_bytes=1024) as session:
        assert (await prompt(session, "x" * 500)).text == "raw: " + "x" * 500  # under the limit
        result = await prompt(session, "oversize 5000", turn=2)
        assert result.stop_reason is StopReason.INTERRUPTED
        assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(signal="SIGKILL")
    assert sink.protocol_errors == ["the agent wrote a message of more than 1024 bytes"]


@pytest.mark.process
async def test_a_stderr_flood_is_rate_limited_and_the_rest_counted_once(tmp_path):
    sink = RecordingSink()
    command = (*RAW_AGENT, "--flood", "1000")
    async with started(command, tmp_path, sink, log_lines_per_second=10) as session:
        assert (await prompt(session, "still here")).text == "raw: still here"
    lines = sink.data("log")
    passed = [data["line"] for data in lines if "dropped" not in data]
    [report] = [data for data in lines if "dropped" in data]
    assert 10 <= len(passed) < 20  # a burst of one second's worth, and what the refill allowed
    assert passed == [f"flood line {n}" for n in range(len(passed))]
    assert report == {"stream": "stderr", "line": f"{report['dropped']} lines dropped", "dropped": report["dropped"]}
    assert len(passed) + report["dropped"] == 1000
    assert sink.exits[0][1][-1] == "flood line 999"  # the tail for the exit diagnostic has them all


@pytest.mark.process
async def test_a_long_stderr_line_is_cut_at_8_kib(tmp_path):
    sink = RecordingSink()
    script = "import sys; sys.stderr.write('y' * 20000 + 'TAIL\\nshort\\n'); sys.stderr.flush()"
    process = await AgentProcess.spawn(launch((sys.executable, "-c", script), tmp_path), sink_listener(sink))
    assert await asyncio.wait_for(process.wait(), TIMEOUT) == ProcessExit(code=0)
    assert process.stderr_tail == ("y" * 8192, "short")


def sink_listener(sink: RecordingSink) -> Any:
    class Listener:
        def log(self, data: dict[str, Any]) -> None:
            sink.events.append(("log", data))

        def protocol_error(self, message: str) -> None:
            sink.protocol_errors.append(message)

    return Listener()


# The process: environment, stop, no orphans, failures.


@pytest.mark.process
async def test_the_agent_sees_exactly_the_minimal_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("RUNTIMED_TEST_TOKEN", "s3cret-token")
    monkeypatch.setenv("RUNTIMED_TEST_PASSED", "passed-value")
    monkeypatch.setenv("RUNTIMED_TEST_OTHER", "other-value")
    environment = agent_environment(
        {"PROFILE_SETTING": "on"}, ["RUNTIMED_TEST_PASSED", "RUNTIMED_TEST_TOKEN"], withheld={"RUNTIMED_TEST_TOKEN"}
    )
    sink = RecordingSink()
    session = AgentSession(AgentLaunch(RAW_AGENT, tmp_path, environment), sink)
    async with session:
        await session.start(timeout=TIMEOUT)
        seen = json.loads((await prompt(session, "env")).text)
    expected = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    assert seen == {**expected, "TERM": "dumb", "RUNTIMED_TEST_PASSED": "passed-value", "PROFILE_SETTING": "on"}
    assert "s3cret-token" not in json.dumps(seen)


@pytest.mark.process
async def test_the_agent_runs_in_its_directory_and_its_own_group(tmp_path):
    sink = RecordingSink()
    async with started(RAW_AGENT, tmp_path, sink) as session:
        pid = session.pid
        assert pid is not None
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        assert Path(f"/proc/{pid}/cwd").resolve() == tmp_path.resolve()


@pytest.mark.process
async def test_terminate_lets_an_agent_that_honours_eof_exit_by_itself(tmp_path):
    sink = RecordingSink()
    async with started(ECHO_AGENT, tmp_path, sink) as session:
        assert await asyncio.wait_for(session.terminate(grace=TIMEOUT), TIMEOUT + 1) == ProcessExit(code=0)


@pytest.mark.process
async def test_terminate_kills_an_agent_that_ignores_eof_and_sigterm(tmp_path):
    sink = RecordingSink()
    async with started((*RAW_AGENT, "--stubborn", "--grandchild"), tmp_path, sink) as session:
        await wait_until(lambda: any(line.startswith("grandchild ") for line in sink.logs()), TIMEOUT, "the grandchild")
        pgid = session.pid
        assert pgid is not None
        exit = await asyncio.wait_for(session.terminate(grace=0.2), TIMEOUT)
        assert exit == ProcessExit(signal="SIGKILL")
        await wait_until(lambda: group_members(pgid) == [], TIMEOUT, "the group to be gone")


@pytest.mark.process
async def test_kill_leaves_no_process_of_the_group(tmp_path):
    sink = RecordingSink()
    async with started((*RAW_AGENT, "--grandchild"), tmp_path, sink) as session:
        await wait_until(lambda: any(line.startswith("grandchild ") for line in sink.logs()), TIMEOUT, "the grandchild")
        [grandchild] = [int(line.split()[1]) for line in sink.logs() if line.startswith("grandchild ")]
        pgid = session.pid
        assert pgid is not None and sorted(group_members(pgid)) == sorted([pgid, grandchild])
        session.kill()
        assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(signal="SIGKILL")
        # SIGKILLed processes finish dying in the kernel a moment after their pipes close.
        await wait_until(lambda: group_members(pgid) == [], TIMEOUT, "the group to be gone")
        assert not alive(grandchild)


@pytest.mark.process
async def test_an_agent_that_exits_takes_what_it_started_with_it(tmp_path):
    # The grandchild holds the agent's pipes: the exit is still seen, and the grandchild killed.
    sink = RecordingSink()
    async with started((*RAW_AGENT, "--grandchild"), tmp_path, sink) as session:
        await wait_until(lambda: any(line.startswith("grandchild ") for line in sink.logs()), TIMEOUT, "the grandchild")
        [grandchild] = [int(line.split()[1]) for line in sink.logs() if line.startswith("grandchild ")]
        result = await prompt(session, "exit 0")
        assert result.stop_reason is StopReason.INTERRUPTED
        assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(code=0)
        await wait_until(lambda: not alive(grandchild), TIMEOUT, "the grandchild to die")


@pytest.mark.process
async def test_a_process_that_left_the_group_holding_the_pipes_does_not_hang_the_exit(tmp_path, monkeypatch):
    monkeypatch.setattr("runtimed.agents.process._PIPE_CLOSE_SECONDS", 0.2)
    sink = RecordingSink()
    escapee = None
    try:
        async with started((*RAW_AGENT, "--escapee"), tmp_path, sink) as session:
            await wait_until(lambda: any(line.startswith("escapee ") for line in sink.logs()), TIMEOUT, "the escapee")
            [escapee] = [int(line.split()[1]) for line in sink.logs() if line.startswith("escapee ")]
            result = await prompt(session, "exit 4")
            assert result.stop_reason is StopReason.INTERRUPTED
            assert await asyncio.wait_for(session.wait(), TIMEOUT) == ProcessExit(code=4)
        assert [exit for exit, _ in sink.exits] == [ProcessExit(code=4)]
    finally:
        if escapee is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(escapee, signal.SIGKILL)


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_an_agent_dies_with_the_parent_that_did_not_stop_it(tmp_path):
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENTS_DIR / "orphan_parent.py"),
        str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    output, _ = await asyncio.wait_for(parent.communicate(), TIMEOUT)
    agent = int(output.split()[0])
    try:
        await wait_until(lambda: not alive(agent), TIMEOUT, "the orphaned agent to die")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent, signal.SIGKILL)


@pytest.mark.process
async def test_a_missing_command_is_a_clear_start_error(tmp_path):
    sink = RecordingSink()
    session = AgentSession(launch(("/nonexistent/agent", "--acp"), tmp_path), sink)
    async with session:
        with pytest.raises(AgentStartError, match=r"cannot run /nonexistent/agent --acp in .*No such file"):
            await session.start(timeout=TIMEOUT)
    assert sink.exits == []
    with pytest.raises(AgentSpawnError, match=r"No such file.*\(/nonexistent/dir\)"):
        await AgentProcess.spawn(launch(RAW_AGENT, Path("/nonexistent/dir")), sink_listener(sink))


@pytest.mark.process
async def test_an_agent_that_never_answers_initialize_fails_to_start_in_time(tmp_path):
    sink = RecordingSink()
    session = AgentSession(launch((*RAW_AGENT, "--mute"), tmp_path), sink)
    async with session:
        with pytest.raises(AgentStartError, match=r"no answer to initialize within 0.5 s"):
            await session.start(timeout=0.5)
        pgid = session.pid
        assert pgid is not None and not session.running
        await wait_until(lambda: group_members(pgid) == [], TIMEOUT, "the group to be gone")
    assert [exit for exit, _ in sink.exits] == [ProcessExit(signal="SIGKILL")]


@pytest.mark.process
async def test_an_agent_that_dies_during_the_handshake_says_how(tmp_path):
    sink = RecordingSink()
    session = AgentSession(launch((sys.executable, "-c", "import sys; sys.exit(7)"), tmp_path), sink)
    async with session:
        with pytest.raises(AgentStartError, match=r"initialize failed: .*went away.*exited with status 7"):
            await session.start(timeout=TIMEOUT)
