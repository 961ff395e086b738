"""The agent supervisor (contract §9.3 – §9.5): an in-process Runtime and real agent processes.

The agents are the built-in echo agent, ``tests/agents/sdk_agent.py`` (the SDK's agent side) and
``tests/agents/raw_agent.py`` (raw JSON-RPC lines, quick to start, and able to misbehave). The
``harness`` fixture builds a Runtime, attaches a ``Supervisor`` to it, records every pid the
supervisor reports, and after each test checks that none of those processes, nor anything of
their process groups, is left. The same behaviour through a real ``runtimed serve`` is in
``tests/test_agents_process.py``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

from runtimed import __version__
from runtimed.agents.supervisor import Supervisor
from runtimed.domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    CreateWorkerRequest,
    NamedProfile,
    WorkerStatus,
    WorkspaceRef,
)
from runtimed.domain.errors import InvalidRequest, PermissionNotFound
from runtimed.domain.execution import (
    AgentInfo,
    AgentProfile,
    ExecutionConfig,
    ExecutionState,
    PermissionAnswer,
    PermissionPolicy,
    ProcessExit,
    ProfileSource,
    RestartPolicy,
    WorkerExecution,
)
from runtimed.domain.identity import WorkerRef
from runtimed.domain.interaction import InputKind, WorkerInput
from runtimed.domain.management import RuntimeOptions
from runtimed.domain.observation import RuntimeDiagnostic, Severity
from runtimed.runtime import Runtime
from runtimed.store import FsStore, MemoryStore, Store

from .helpers import ECHO_AGENT, RAW_AGENT, SDK_AGENT, alive, group_members, wait_until

#: Bounds waits for a broken test; a passing one never waits this long.
TIMEOUT = 20.0
#: Short graces keep the stop sequences quick.
GRACE = 0.3

ECHO = AgentProfile("builtin:echo", ProfileSource.BUILTIN, ECHO_AGENT, stop_grace_seconds=GRACE)

pytestmark = pytest.mark.process


def profile(name: str, command: Iterable[str], **settings: Any) -> AgentProfile:
    """A ``[profiles.<name>]`` table with short graces."""
    settings.setdefault("stop_grace_seconds", GRACE)
    return AgentProfile(name, ProfileSource.CONFIG, tuple(command), **settings)


def raw(name: str = "raw", *flags: str, **settings: Any) -> AgentProfile:
    return profile(name, (*RAW_AGENT, *flags), **settings)


class Harness:
    """A Runtime with a ``Supervisor`` attached, and what a test needs to drive and watch it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.workdirs = tmp_path / "workdirs"
        self._runtime: Runtime | None = None
        self._supervisor: Supervisor | None = None
        #: Every pid the supervisor reported, for the check that no process is left.
        self.pids: set[int] = set()

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "open the harness first"
        return self._runtime

    @property
    def supervisor(self) -> Supervisor:
        assert self._supervisor is not None, "open the harness first"
        return self._supervisor

    async def open(
        self,
        *profiles: AgentProfile,
        store: Store | None = None,
        environ: dict[str, str] | None = None,
        withheld: Iterable[str] = (),
        open_file_limit: int | None = None,
        **execution: Any,
    ) -> Runtime:
        """Open a Runtime over ``store`` (memory by default), attach a supervisor running
        ``builtin:echo`` and ``profiles``, and wait until its restore is done."""
        runtime = self._runtime = await Runtime.open(store or MemoryStore(), RuntimeOptions())
        config = ExecutionConfig(profiles=(ECHO, *profiles), **execution)
        supervisor = self._supervisor = Supervisor(
            runtime,
            config,
            workdirs=self.workdirs,
            environ=environ,
            withheld=withheld,
            open_file_limit=open_file_limit,
            restart_delay=0.05,
        )
        self._record_pids(runtime)
        runtime.attach(supervisor)
        supervisor.restore()
        await wait_until(lambda: supervisor.ready, TIMEOUT, "the restore")
        return runtime

    def _record_pids(self, runtime: Runtime) -> None:
        update = runtime.update_execution

        @functools.wraps(update)
        async def recording(ref: WorkerRef, **changes: Any) -> WorkerExecution:
            if isinstance(changes.get("pid"), int):
                self.pids.add(changes["pid"])
            return await update(ref, **changes)

        # The supervisor calls the Runtime through its attributes: it gets this one.
        runtime.update_execution = recording  # type: ignore[method-assign]

    async def close(self) -> None:
        """Close the Runtime (which closes the supervisor first): no agent is left behind."""
        if self._runtime is not None:
            runtime, self._runtime = self._runtime, None
            await runtime.close()
        for pid in self.pids:
            assert not alive(pid), f"agent {pid} outlived the supervisor"
            assert group_members(pid) == [], f"processes of agent {pid}'s group outlived the supervisor"

    async def create(
        self,
        profile_name: str = "builtin:echo",
        capabilities: Iterable[str] = (),
        workspaces: Iterable[str] = (),
    ) -> WorkerRef:
        selector = BuiltinProfile(profile_name) if profile_name.startswith("builtin:") else NamedProfile(profile_name)
        request = CreateWorkerRequest(
            AssistantIntent(),
            selector,
            requested_capabilities=tuple(CapabilityRequest(name) for name in capabilities),
            workspace_refs=tuple(WorkspaceRef(f"ws{n}", reference) for n, reference in enumerate(workspaces)),
        )
        detail = await self.runtime.create_worker(request)
        return detail.worker_ref

    async def started(self, profile_name: str = "builtin:echo", **options: Any) -> WorkerRef:
        """A worker whose agent has started and is idle."""
        ref = await self.create(profile_name, **options)
        await self.until_state(ref, ExecutionState.IDLE)
        return ref

    async def say(self, ref: WorkerRef, text: str, kind: InputKind = InputKind.USER) -> int:
        ack = await self.runtime.send_input(ref, WorkerInput(kind, text))
        return ack.transcript_sequence

    def execution(self, ref: WorkerRef) -> WorkerExecution:
        execution = self.runtime.worker_detail(ref).execution
        assert execution is not None
        return execution

    async def until_state(self, ref: WorkerRef, state: ExecutionState) -> WorkerExecution:
        await wait_until(lambda: self.execution(ref).state is state, TIMEOUT, f"{ref.worker_id} {state.value}")
        return self.execution(ref)

    async def until_stopped(self, ref: WorkerRef) -> str:
        """Wait until the worker is stopped; the reason of its ``worker_status`` event."""
        await wait_until(lambda: self.runtime.worker_detail(ref).status is WorkerStatus.STOPPED, TIMEOUT)
        return str(self.data(ref, "worker_status")[-1]["reason"])

    def observed(self, ref: WorkerRef) -> list[tuple[str, Any]]:
        return [(o.event, o.data) for o in self.runtime.replay_observations(ref, 0)]

    def data(self, ref: WorkerRef, event: str) -> list[Any]:
        return [data for name, data in self.observed(ref) if name == event]

    def turn_end(self, ref: WorkerRef, turn: int) -> str | None:
        ends = [data["stop_reason"] for data in self.data(ref, "turn_ended") if data["turn"] == turn]
        return ends[0] if ends else None

    async def until_turn_ended(self, ref: WorkerRef, turn: int) -> str:
        await wait_until(lambda: self.turn_end(ref, turn) is not None, TIMEOUT, f"turn {turn} to end")
        reason = self.turn_end(ref, turn)
        assert reason is not None
        return reason

    async def until_event(self, ref: WorkerRef, event: str, count: int = 1) -> list[Any]:
        await wait_until(lambda: len(self.data(ref, event)) >= count, TIMEOUT, f"{count} {event}")
        return self.data(ref, event)

    def transcript(self, ref: WorkerRef) -> list[tuple[str, str]]:
        return [(e.role.value, e.content) for e in self.runtime.transcript(ref).items]

    def diagnostics(self, ref: WorkerRef, code: str) -> list[RuntimeDiagnostic]:
        return [d for d in self.runtime.diagnostics() if d.worker_ref == ref and d.code == code]

    async def until_diagnostic(self, ref: WorkerRef, code: str, count: int = 1) -> list[RuntimeDiagnostic]:
        await wait_until(lambda: len(self.diagnostics(ref, code)) >= count, TIMEOUT, f"{count} {code}")
        return self.diagnostics(ref, code)

    async def answer(self, ref: WorkerRef, text: str, turn: int) -> str:
        """Send ``text`` and wait for turn ``turn`` to end; the turn's assistant text."""
        await self.say(ref, text)
        await self.until_turn_ended(ref, turn)
        return self.assistant_text(ref, turn)

    def assistant_text(self, ref: WorkerRef, turn: int) -> str:
        messages = [data["content"] for data in self.data(ref, "assistant_message") if data["turn"] == turn]
        return messages[0] if messages else ""


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


def limits_of(pid: int) -> str:
    return Path(f"/proc/{pid}/limits").read_text()


# ------------------------------------------------------------------ start and turns


async def test_an_echo_worker_answers_each_input_with_a_turn_streamed_in_pieces(harness):
    runtime = await harness.open()
    ref = await harness.create()
    assert harness.execution(ref).state is ExecutionState.STARTING
    execution = await harness.until_state(ref, ExecutionState.IDLE)
    assert execution.agent == AgentInfo("runtimed-echo", __version__)
    assert execution.session_id and execution.pid is not None and alive(execution.pid)
    # A worker with no directory of its own runs in one runtimed makes for it.
    assert Path(f"/proc/{execution.pid}/cwd").resolve() == (harness.workdirs / ref.worker_id).resolve()

    sequence = await harness.say(ref, "hello there, agent")
    assert await harness.until_turn_ended(ref, 1) == "end_turn"

    turn = [(name, data) for name, data in harness.observed(ref) if name not in ("user_message", "log")]
    assert turn[0] == ("turn_started", {"turn": 1, "input_sequence": sequence})
    deltas = [data for name, data in turn if name == "text_delta"]
    assert len(deltas) >= 2 and all(delta["turn"] == 1 for delta in deltas)
    assert "".join(delta["text"] for delta in deltas) == "echo: hello there, agent"
    assert turn[-2] == ("assistant_message", {"turn": 1, "sequence": 2, "content": "echo: hello there, agent"})
    assert turn[-1] == ("turn_ended", {"turn": 1, "stop_reason": "end_turn"})
    assert harness.transcript(ref) == [("user", "hello there, agent"), ("assistant", "echo: hello there, agent")]
    execution = await harness.until_state(ref, ExecutionState.IDLE)
    assert (execution.turns, execution.queued_inputs, execution.open_turn) == (1, 0, None)
    [event] = [e for e in runtime.events().events if e.kind.value == "worker_turn_ended"]
    assert event.message == "turn 1 ended: end_turn"
    assert runtime.worker_detail(ref).last_event_id == event.id


async def test_a_burst_of_inputs_is_answered_in_order_one_turn_each(harness):
    await harness.open()
    ref = await harness.started()
    texts = [f"message {n}" for n in range(1, 7)]
    sequences = [await harness.say(ref, text) for text in texts]
    # A system input is marked as such in its prompt: the echo agent answers it "system: …".
    sequences.append(await harness.say(ref, "a system item", InputKind.SYSTEM))
    for turn in range(1, 8):
        assert await harness.until_turn_ended(ref, turn) == "end_turn"
    started = harness.data(ref, "turn_started")
    assert [data["input_sequence"] for data in started] == sequences
    assert [harness.assistant_text(ref, turn) for turn in range(1, 8)] == [
        *(f"echo: {text}" for text in texts),
        "system: a system item",
    ]
    assert harness.execution(ref).turns == 7


async def test_an_sdk_agent_streams_every_kind_of_update(harness):
    await harness.open(profile("sdk", SDK_AGENT))
    ref = await harness.started("sdk")
    assert harness.execution(ref).agent == AgentInfo("sdk-showcase", "1.2.3")
    # Real agents announce their commands outside any turn: an agent_update without a turn.
    [outside] = await harness.until_event(ref, "agent_update")
    assert "turn" not in outside and outside["update"]["sessionUpdate"] == "available_commands_update"
    assert await harness.answer(ref, "showcase", 1) == "done"
    names = [name for name, data in harness.observed(ref) if isinstance(data, dict) and data.get("turn") == 1]
    assert names == [
        "turn_started",
        "thought_delta",
        "tool_call",
        "tool_call_update",
        "tool_call_update",
        "plan",
        "agent_update",
        "agent_update",
        "text_delta",
        "assistant_message",
        "turn_ended",
    ]
    [tool_call] = harness.data(ref, "tool_call")
    assert tool_call == {
        "turn": 1,
        "tool_call_id": "call-1",
        "title": "Read the notes",
        "kind": "other",
        "status": "pending",
    }
    assert await harness.answer(ref, "stop max_tokens", 2) == ""
    assert harness.turn_end(ref, 2) == "max_tokens"


async def test_a_raw_agent_answers_and_an_error_ends_its_turn_with_a_diagnostic(harness):
    await harness.open(raw())
    ref = await harness.started("raw")
    assert harness.execution(ref).agent is None  # it sends no agentInfo
    assert await harness.answer(ref, "hello", 1) == "raw: hello"
    await harness.say(ref, "error")
    assert await harness.until_turn_ended(ref, 2) == "error"
    [failed] = harness.diagnostics(ref, "worker.turn_failed")
    assert failed.severity is Severity.WARNING and "the model is on fire" in failed.message
    assert await harness.answer(ref, "still here", 3) == "raw: still here"


# ------------------------------------------------------------------ the worker's process


async def test_the_agent_gets_a_minimal_environment_and_never_the_daemons_token(harness):
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": "/home/daemon",
        "LANG": "C.UTF-8",
        "RUNTIMED_TOKEN": "s3cret",
        "API_KEY": "for the agent",
        "UNRELATED": "the daemon's own",
    }
    settings = {"env": {"MODEL": "small", "TERM": "xterm"}, "pass_env": ("API_KEY", "RUNTIMED_TOKEN", "ABSENT")}
    await harness.open(raw(**settings), environ=environ, withheld=["RUNTIMED_TOKEN"])
    ref = await harness.started("raw")
    env = json.loads(await harness.answer(ref, "env", 1))
    assert env == {
        "PATH": os.environ["PATH"],
        "HOME": "/home/daemon",
        "LANG": "C.UTF-8",
        "TERM": "xterm",  # the profile's env wins
        "API_KEY": "for the agent",
        "MODEL": "small",
    }


async def test_the_agent_gets_back_the_open_file_limit_the_daemon_started_with(harness):
    await harness.open(raw(), open_file_limit=200)
    ref = await harness.started("raw")
    pid = harness.execution(ref).pid
    assert pid is not None
    [line] = [line for line in limits_of(pid).splitlines() if line.startswith("Max open files")]
    assert line.split()[3] == "200"


async def test_the_worker_directory_is_the_profile_cwd_else_a_workspace_inside_a_root_else_its_own(harness, tmp_path):
    root = tmp_path / "workspaces"
    project = root / "project"
    project.mkdir(parents=True)
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    await harness.open(raw(), raw("pinned", cwd=fixed), workspace_roots=(root,))
    refs = [
        await harness.started("pinned", workspaces=[str(project)]),
        await harness.started("raw", workspaces=["a label", str(project)]),
        await harness.started("raw", workspaces=["just a label"]),
    ]
    cwds = [Path(f"/proc/{harness.execution(ref).pid}/cwd").resolve() for ref in refs]
    assert cwds == [fixed.resolve(), project.resolve(), (harness.workdirs / refs[2].worker_id).resolve()]


@pytest.mark.parametrize("reference", ["/etc", "{root}/../outside"])
async def test_an_absolute_workspace_outside_the_roots_is_refused_and_nothing_is_created(harness, tmp_path, reference):
    root = tmp_path / "workspaces"
    root.mkdir()
    runtime = await harness.open(workspace_roots=(root,))
    with pytest.raises(InvalidRequest, match="workspace_roots"):
        await harness.create(workspaces=[reference.format(root=root)])
    assert runtime.list_workers() == []


async def test_a_stderr_flood_is_published_at_the_configured_rate_and_the_rest_counted(harness):
    await harness.open(raw("flood", "--flood", "400"), agent_log_lines_per_second=20)
    ref = await harness.started("flood")
    await wait_until(lambda: any("dropped" in data for data in harness.data(ref, "log")), TIMEOUT, "a drop report")
    logs = harness.data(ref, "log")
    lines = [data for data in logs if "dropped" not in data]
    assert 20 <= len(lines) < 60
    assert lines[0] == {"stream": "stderr", "line": "flood line 0"}
    assert sum(data["dropped"] for data in logs if "dropped" in data) + len(lines) == 400


# ------------------------------------------------------------------ permissions


@pytest.mark.parametrize(
    ("policy", "capabilities", "answer"),
    [
        (PermissionPolicy.ALLOW, [], "allow_once"),
        (PermissionPolicy.DENY, [], "reject_once"),
        (PermissionPolicy.ASK, ["execute"], "allow_once"),  # a requested capability is a standing permission
    ],
)
async def test_the_profiles_policy_answers_permission_requests(harness, policy, capabilities, answer):
    await harness.open(raw(permissions=policy))
    ref = await harness.started("raw", capabilities=capabilities)
    assert await harness.answer(ref, "permission allow_once,reject_once", 1) == f"permission: {answer}"
    [resolved] = harness.data(ref, "permission_resolved")
    assert resolved == {
        "request_id": resolved["request_id"],
        "option_id": answer,
        "outcome": "selected",
        "by": "policy",
    }
    assert harness.data(ref, "permission_requested") == []


async def test_a_permission_request_waits_for_the_backends_answer(harness):
    runtime = await harness.open(raw())
    ref = await harness.started("raw", capabilities=["read"])
    await harness.say(ref, "permission allow_once,reject_once")
    [requested] = await harness.until_event(ref, "permission_requested")
    assert requested == {
        "turn": 1,
        "request_id": requested["request_id"],
        "tool_call": {"tool_call_id": "raw-call", "title": "Run it", "kind": "execute"},
        "options": [
            {"option_id": "allow_once", "name": "allow_once", "kind": "allow_once"},
            {"option_id": "reject_once", "name": "reject_once", "kind": "reject_once"},
        ],
    }
    request_id = requested["request_id"]
    await wait_until(lambda: harness.execution(ref).pending_permissions == 1, TIMEOUT)
    [pending] = runtime.permissions(ref)
    assert (pending.request_id, pending.turn, pending.tool_call.kind) == (request_id, 1, "execute")

    with pytest.raises(InvalidRequest, match="not offered"):
        await runtime.answer_permission(ref, request_id, "allow_always")
    with pytest.raises(PermissionNotFound):
        await runtime.answer_permission(ref, "no-such-request", "allow_once")
    answer = await runtime.answer_permission(ref, request_id, "reject_once")
    assert answer == PermissionAnswer(request_id, "reject_once", "backend")
    # Answered means published: the event is durable before the answer returns.
    assert harness.data(ref, "permission_resolved") == [
        {"request_id": request_id, "option_id": "reject_once", "outcome": "selected", "by": "backend"}
    ]
    with pytest.raises(PermissionNotFound):
        await runtime.answer_permission(ref, request_id, "allow_once")
    assert await harness.until_turn_ended(ref, 1) == "end_turn"
    assert harness.assistant_text(ref, 1) == "permission: reject_once"
    assert runtime.permissions(ref) == [] and harness.execution(ref).pending_permissions == 0


@pytest.mark.parametrize(("offered", "answer"), [("allow_once,reject_always", "reject_always"), ("allow_once", None)])
async def test_an_unanswered_permission_request_is_rejected_after_the_timeout(harness, offered, answer):
    await harness.open(raw(), permission_timeout_seconds=0.3)
    ref = await harness.started("raw")
    said = await harness.answer(ref, f"permission {offered}", 1)
    assert said == f"permission: {answer or 'cancelled'}"
    [resolved] = harness.data(ref, "permission_resolved")
    expected = {"request_id": resolved["request_id"], "outcome": "selected" if answer else "cancelled", "by": "timeout"}
    if answer is not None:
        expected["option_id"] = answer
    assert resolved == expected


async def test_an_interrupt_answers_pending_permissions_cancelled_and_the_turn_ends_cancelled(harness):
    runtime = await harness.open()
    ref = await harness.started()
    await harness.say(ref, "/permission delete")
    [requested] = await harness.until_event(ref, "permission_requested")
    ack = await runtime.interrupt(ref)
    assert ack.turn == 1
    assert harness.turn_end(ref, 1) == "cancelled"  # the turn has ended when the interrupt answers
    resolved = harness.data(ref, "permission_resolved")
    assert resolved == [{"request_id": requested["request_id"], "outcome": "cancelled", "by": "interrupt"}]
    assert runtime.permissions(ref) == [] and harness.execution(ref).pending_permissions == 0
    assert await harness.answer(ref, "after", 2) == "echo: after"


async def test_a_stop_answers_pending_permissions_cancelled_by_stop(harness):
    runtime = await harness.open(raw())
    ref = await harness.started("raw")
    await harness.say(ref, "permission allow_once")
    [requested] = await harness.until_event(ref, "permission_requested")
    await runtime.stop_worker(ref)
    [resolved] = await harness.until_event(ref, "permission_resolved")
    assert resolved == {"request_id": requested["request_id"], "outcome": "cancelled", "by": "stop"}
    # This agent ignores session/cancel: it ends the turn itself, with what the answer made it say.
    assert await harness.until_turn_ended(ref, 1) == "end_turn"
    await harness.until_state(ref, ExecutionState.EXITED)


# ------------------------------------------------------------------ interrupt, stop, cancel


async def test_an_interrupt_ends_a_sleeping_turn_cancelled_and_the_next_input_runs(harness):
    runtime = await harness.open()
    ref = await harness.started()
    await harness.say(ref, "/sleep 30")
    await harness.until_event(ref, "text_delta")
    ack = await runtime.interrupt(ref)
    assert (ack.turn, ack.dropped_inputs, ack.status) == (1, 0, WorkerStatus.RUNNING)
    assert harness.turn_end(ref, 1) == "cancelled"
    assert harness.assistant_text(ref, 1).startswith(".")
    assert [e.kind.value for e in runtime.events().events][-1] == "worker_interrupted"
    pid = harness.execution(ref).pid
    assert await harness.answer(ref, "awake", 2) == "echo: awake"
    assert harness.execution(ref).pid == pid  # the same process: it honoured session/cancel
    # With no turn running, an interrupt changes nothing.
    assert (await runtime.interrupt(ref)).turn is None


async def test_an_interrupt_with_drop_queued_drops_the_queued_inputs(harness):
    runtime = await harness.open()
    ref = await harness.started()
    await harness.say(ref, "/sleep 30")
    await harness.until_event(ref, "text_delta")
    await harness.say(ref, "never delivered")
    ack = await runtime.interrupt(ref, drop_queued=True)
    assert (ack.turn, ack.dropped_inputs) == (1, 1)
    assert await harness.answer(ref, "delivered", 2) == "echo: delivered"
    assert [data["input_sequence"] for data in harness.data(ref, "turn_started")] == [1, 4]


async def test_an_agent_that_ignores_the_interrupt_is_restarted_and_its_turn_ends_interrupted(harness):
    runtime = await harness.open(raw())
    ref = await harness.started("raw")
    first = harness.execution(ref)
    await harness.say(ref, "hang")
    await harness.until_event(ref, "text_delta")
    ack = await runtime.interrupt(ref)
    assert ack.turn == 1 and harness.turn_end(ref, 1) == "interrupted"
    assert harness.assistant_text(ref, 1) == "hanging"
    execution = await harness.until_state(ref, ExecutionState.IDLE)
    assert execution.pid != first.pid and execution.exit == ProcessExit(signal="SIGKILL")
    [restarted] = harness.diagnostics(ref, "worker.agent_restarted")
    assert restarted.severity is Severity.WARNING
    # This agent cannot load a session: the new one starts without the conversation.
    [lost] = harness.diagnostics(ref, "worker.context_lost")
    assert lost.severity is Severity.WARNING and "loadSession" in lost.message
    assert await harness.answer(ref, "again", 2) == "raw: again"


async def test_a_stop_cancels_the_running_turn_and_the_agent_exits_with_its_stdin(harness):
    runtime = await harness.open()
    ref = await harness.started()
    pid = harness.execution(ref).pid
    await harness.say(ref, "/sleep 30")
    await harness.until_event(ref, "text_delta")
    await harness.say(ref, "queued, never delivered")
    await runtime.stop_worker(ref, "enough")
    assert await harness.until_turn_ended(ref, 1) == "cancelled"
    events = [name for name, _ in harness.observed(ref)]
    assert events.index("worker_status") < events.index("turn_ended")  # the turn ends after the status
    execution = await harness.until_state(ref, ExecutionState.EXITED)
    assert (execution.pid, execution.exit, execution.turns) == (None, ProcessExit(code=0), 1)
    assert pid is not None and not alive(pid)
    assert len(harness.data(ref, "turn_started")) == 1


@pytest.mark.parametrize(
    ("flag", "exit"), [("--linger", ProcessExit(signal="SIGTERM")), ("--stubborn", ProcessExit(signal="SIGKILL"))]
)
async def test_a_stop_sends_sigterm_then_sigkill_after_the_grace(harness, flag, exit):
    runtime = await harness.open(raw("raw", flag, stop_grace_seconds=0.2))
    ref = await harness.started("raw")
    await runtime.stop_worker(ref)
    execution = await harness.until_state(ref, ExecutionState.EXITED)
    assert execution.exit == exit


async def test_a_cancel_kills_the_agent_at_once_and_its_turn_ends_interrupted(harness):
    # A grace far longer than the test's wait: only an immediate SIGKILL ends it in time.
    runtime = await harness.open(raw("raw", "--stubborn", stop_grace_seconds=3600))
    ref = await harness.started("raw")
    await harness.say(ref, "hang")
    await harness.until_event(ref, "text_delta")
    await runtime.cancel_worker(ref)
    assert await harness.until_turn_ended(ref, 1) == "interrupted"
    execution = await harness.until_state(ref, ExecutionState.EXITED)
    assert execution.exit == ProcessExit(signal="SIGKILL")


# ------------------------------------------------------------------ failures


async def test_a_missing_command_stops_the_worker_with_a_start_failure(harness):
    await harness.open(profile("missing", ["/nonexistent/agent", "--acp"]))
    ref = await harness.create("missing")
    reason = await harness.until_stopped(ref)
    assert reason.startswith("agent failed to start: cannot run /nonexistent/agent --acp")
    [failed] = harness.diagnostics(ref, "worker.agent_start_failed")
    assert failed.severity is Severity.ERROR and "/nonexistent/agent --acp" in failed.message
    assert harness.execution(ref).state is ExecutionState.EXITED


async def test_an_agent_that_does_not_answer_in_time_fails_to_start(harness):
    await harness.open(raw("mute", "--mute", start_timeout_seconds=0.5))
    ref = await harness.create("mute")
    assert await harness.until_stopped(ref) == "agent failed to start: no answer to initialize within 0.5 s"
    assert len(harness.diagnostics(ref, "worker.agent_start_failed")) == 1


async def test_a_failing_agent_is_restarted_with_its_session_three_times_then_the_worker_stops(harness):
    await harness.open()
    ref = await harness.started()
    session_id = harness.execution(ref).session_id
    assert await harness.answer(ref, "remember me", 1) == "echo: remember me"
    for turn in range(2, 5):
        await harness.say(ref, "/exit 1")
        assert await harness.until_turn_ended(ref, turn) == "interrupted"
        await harness.until_diagnostic(ref, "worker.agent_exited", turn - 1)
        execution = await harness.until_state(ref, ExecutionState.IDLE)
        assert execution.session_id == session_id  # loaded again (echo advertises loadSession)
        assert execution.exit == ProcessExit(code=1)
    assert harness.diagnostics(ref, "worker.context_lost") == []
    await harness.say(ref, "/exit 1")
    assert await harness.until_stopped(ref) == "agent exited with status 1"
    assert harness.turn_end(ref, 5) == "interrupted"
    exits = harness.diagnostics(ref, "worker.agent_exited")
    assert [d.severity for d in exits] == [Severity.WARNING] * 4
    assert "restarting it in" in exits[0].message and "not restarting it: 3 restarts" in exits[-1].message
    assert harness.execution(ref).state is ExecutionState.EXITED
    assert len(harness.pids) == 4


async def test_an_agent_that_exits_with_status_0_stops_the_worker(harness):
    await harness.open(raw())
    ref = await harness.started("raw")
    await harness.say(ref, "exit 0")
    assert await harness.until_stopped(ref) == "agent exited with status 0"
    assert harness.turn_end(ref, 1) == "interrupted"
    assert harness.assistant_text(ref, 1) == "exiting"
    [exited] = harness.diagnostics(ref, "worker.agent_exited")
    assert exited.severity is Severity.INFO and "raw agent exiting with status 0" in exited.message


async def test_with_restart_never_a_failure_stops_the_worker_quoting_its_stderr(harness):
    await harness.open(raw(restart=RestartPolicy.NEVER))
    ref = await harness.started("raw")
    await harness.say(ref, "exit 3")
    assert await harness.until_stopped(ref) == "agent exited with status 3"
    [exited] = harness.diagnostics(ref, "worker.agent_exited")
    assert exited.severity is Severity.WARNING
    assert exited.message.endswith("the last lines of its stderr:\nraw agent exiting with status 3")


async def test_an_agent_that_cannot_load_its_session_is_restarted_without_its_context(harness):
    await harness.open(raw())
    ref = await harness.started("raw")
    await harness.say(ref, "exit 3")
    await harness.until_diagnostic(ref, "worker.context_lost")
    execution = await harness.until_state(ref, ExecutionState.IDLE)
    assert execution.exit == ProcessExit(code=3)
    assert await harness.answer(ref, "hello again", 2) == "raw: hello again"


@pytest.mark.parametrize(("prompt", "problem"), [("garbage", "not JSON"), ("oversize 5000", "more than 2000 bytes")])
async def test_output_that_breaks_the_protocol_kills_the_agent_and_the_restart_policy_applies(harness, prompt, problem):
    await harness.open(raw(), raw("once", restart=RestartPolicy.NEVER), max_agent_message_bytes=2000)
    restarted = await harness.started("raw")
    stopped = await harness.started("once")
    for ref in (restarted, stopped):
        await harness.say(ref, prompt)
        assert await harness.until_turn_ended(ref, 1) == "interrupted"
        [error] = await harness.until_diagnostic(ref, "worker.protocol_error")
        assert error.severity is Severity.WARNING and problem in error.message
    assert (await harness.until_state(restarted, ExecutionState.IDLE)).exit == ProcessExit(signal="SIGKILL")
    assert await harness.answer(restarted, "fine now", 2) == "raw: fine now"
    assert await harness.until_stopped(stopped) == "agent killed by signal SIGKILL"


# ------------------------------------------------------------------ shutdown and restore


async def test_shutdown_cancels_turns_and_restore_delivers_the_queued_inputs_in_order_once(harness, tmp_path):
    root = tmp_path / "state"
    runtime = await harness.open(store=FsStore(root))
    ref = await harness.started()
    session_id = harness.execution(ref).session_id
    await harness.say(ref, "/sleep 30")
    await harness.until_event(ref, "text_delta")
    await harness.say(ref, "first")
    await harness.say(ref, "second")
    await harness.close()  # the daemon's shutdown: the runtime closes the supervisor first

    runtime = await harness.open(store=FsStore(root))
    assert runtime.worker_detail(ref).status is WorkerStatus.RUNNING
    assert harness.turn_end(ref, 1) == "cancelled"  # ended at shutdown, before the agent stopped
    assert await harness.until_turn_ended(ref, 3) == "end_turn"
    assert [harness.assistant_text(ref, turn) for turn in (2, 3)] == ["echo: first", "echo: second"]
    assert [data["input_sequence"] for data in harness.data(ref, "turn_started")] == [1, 2, 3]
    execution = await harness.until_state(ref, ExecutionState.IDLE)
    assert execution.session_id == session_id and execution.turns == 3
    assert harness.diagnostics(ref, "worker.context_lost") == []
    assert [role for role, _ in harness.transcript(ref)] == ["user", "user", "user", "assistant"] + ["assistant"] * 2


async def test_a_worker_whose_agent_cannot_be_restored_is_stopped_and_the_rest_is_ready(harness, tmp_path):
    root = tmp_path / "state"
    await harness.open(raw("gone"), store=FsStore(root))
    gone = await harness.started("gone")
    kept = await harness.started()
    await harness.close()

    runtime = await harness.open(store=FsStore(root))  # the profile "gone" is no longer configured
    assert harness.supervisor.ready
    assert await harness.until_stopped(gone) == "agent failed to restore: its profile gone is not configured any more"
    [failed] = harness.diagnostics(gone, "worker.restore_failed")
    assert failed.severity is Severity.ERROR
    await harness.until_state(kept, ExecutionState.IDLE)
    assert runtime.worker_detail(kept).status is WorkerStatus.RUNNING
    assert await harness.answer(kept, "still here", 1) == "echo: still here"


async def test_restore_removes_the_directories_of_deleted_workers_and_nothing_else(harness, tmp_path):
    # A worker deleted just before the daemon went away: its directory is removed after the
    # answer, in the background, and a crash may leave it. The next start finishes the removal.
    root = tmp_path / "state"
    await harness.open(store=FsStore(root))
    kept = await harness.started()
    deleted = await harness.started()
    await harness.runtime.stop_worker(deleted, "done")
    await harness.until_stopped(deleted)
    await harness.close()
    left = harness.workdirs / deleted.worker_id
    assert left.is_dir()
    (left / "notes.txt").write_text("the agent's work")
    runtime = await Runtime.open(FsStore(root), RuntimeOptions())
    await runtime.delete_worker(deleted)
    await runtime.close()  # no supervisor attached: nothing removed the directory
    assert left.is_dir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (harness.workdirs / "worker-000000ff").symlink_to(outside)  # named like a worker, but a link
    (harness.workdirs / "not-a-worker").mkdir()

    await harness.open(store=FsStore(root))
    await wait_until(lambda: not left.exists(), TIMEOUT, "the deleted worker's directory to go")
    assert sorted(path.name for path in harness.workdirs.iterdir()) == sorted(
        [kept.worker_id, "not-a-worker", "worker-000000ff"]
    )
    assert outside.is_dir()
    await harness.until_state(kept, ExecutionState.IDLE)
