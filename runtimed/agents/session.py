"""An ACP client session over one agent process: runtimed as the client, the role an editor plays.

``AgentSession`` starts an ``AgentProcess``, connects the ACP SDK's client side to it, and
turns what the agent does into what the supervisor needs (contract §9.3 – §9.5):

- ``start``: spawn, ``initialize`` (protocol version 1, no ``fs`` and no ``terminal``
  capability), then ``session/load`` of a stored session when the agent advertises
  ``loadSession``, else (or when that fails) ``session/new`` — all within one timeout;
- ``prompt``: one turn, a single text block (a ``system`` input marked in ``_meta``); it returns
  a ``TurnResult`` — the stop reason, the text of the turn's agent message chunks, and the
  error — once every event of the turn has been handed to the sink;
- ``cancel``: ``session/cancel``, and every permission request still waiting for the sink is
  answered ``cancelled``;
- the events of §9.3 (``text_delta``, ``thought_delta``, ``tool_call``, ``tool_call_update``,
  ``plan``, ``agent_update``; ``log`` for stderr; ``permission_resolved`` for what the profile's
  policy answers) and the permission requests the policy leaves to the backend, through one
  ``AgentSink``.

The sink is called from one task, one call at a time, in the order the agent wrote the
messages behind the calls; ``permission`` is the exception (it waits for a person), but it is
only called once every event the agent wrote before its request has been handed over.

Why session updates are handled where the agent's stdout is read, not in an SDK handler: the
SDK runs each incoming message in a task of its own and validates updates against the kinds it
knows. Handled in the receive loop, updates keep the order they had on the wire by
construction, the end of a turn is exactly where the agent's answer to the prompt is, and an
update of a kind newer than the SDK still reaches the sink (as ``agent_update``). Everything
else — requests, answers, permission requests, errors — goes through the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import shlex
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from uuid import uuid4

from acp import PROTOCOL_VERSION, Client, RequestError, connect_to_agent, text_block
from acp.core import ClientSideConnection
from acp.meta import CLIENT_METHODS
from acp.schema import (
    AgentMessageChunk,
    AgentPlanUpdate,
    AgentThoughtChunk,
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    Implementation,
    RequestPermissionRequest,
    RequestPermissionResponse,
    SessionNotification,
    TextContentBlock,
    ToolCallProgress,
    ToolCallStart,
    ToolCallUpdate,
)
from pydantic import ValidationError

from runtimed import __version__

from ..domain.execution import (
    AgentInfo,
    PermissionOption,
    PermissionPolicy,
    PermissionRequest,
    ProcessExit,
    StopReason,
    ToolCallInfo,
)
from ..domain.identity import WorkerRef
from .process import AgentLaunch, AgentProcess, AgentSpawnError, describe_exit

log = logging.getLogger("runtimed.agents.session")

T = TypeVar("T")

#: The ``_meta`` a ``system`` input's prompt carries: ``{"runtimed": {"kind": "system"}}``.
RUNTIMED_META_KEY = "runtimed"
CLIENT_NAME = "runtimed"
ALLOW_KINDS = ("allow_once", "allow_always")
REJECT_KINDS = ("reject_once", "reject_always")
#: Tool calls remembered per session (their title and kind, for permission requests that omit them).
_TOOL_CALLS_REMEMBERED = 1024
#: How long an agent whose stdout ended during the start is given to exit by itself.
_GONE_GRACE_SECONDS = 1.0
#: Events waiting for the sink beyond which reading the agent's stdout pauses.
_EVENT_BACKLOG = 64
_PROMPT = "session/prompt"
_LOAD = "session/load"
_NEW = "session/new"
_UPDATE = "session/update"
_PERMISSION = CLIENT_METHODS["session_request_permission"]


class AgentError(Exception):
    """An ACP request failed: the agent answered an error, answered nonsense, or went away."""


class AgentGone(AgentError):
    """The agent's process (or its stdout) went away before it answered."""


class AgentStartError(Exception):
    """The agent could not be started: spawn, handshake or ``start_timeout_seconds`` (§9.3)."""


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the agent's ``initialize`` answer says: who it is, and whether it can load sessions."""

    agent: AgentInfo | None
    load_session: bool


@dataclass(frozen=True, slots=True)
class Started:
    """A started session. ``resumed``: the stored session was loaded; ``load_error``: why a
    stored session could not be (the agent does not advertise ``loadSession``, or it failed),
    so that the supervisor can say the context was lost (``worker.context_lost``)."""

    handshake: Handshake
    session_id: str
    resumed: bool = False
    load_error: str | None = None


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How a prompt turn ended: the stop reason, the turn's agent message text, and the error.

    ``stop_reason`` is the agent's (``end_turn`` … ``cancelled``) or runtimed's own: ``error``
    when the agent answered the prompt with a JSON-RPC error (or an answer that does not
    parse), ``interrupted`` when the agent went away during the turn. ``error`` says which.
    """

    stop_reason: StopReason
    text: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AgentPermissionRequest:
    """A ``session/request_permission`` the profile's policy leaves to the backend (§9.5)."""

    request_id: str
    turn: int | None
    tool_call: ToolCallInfo
    options: tuple[PermissionOption, ...]

    def for_worker(self, ref: WorkerRef) -> PermissionRequest:
        """The domain's ``PermissionRequest``, as ``GET …/permissions`` shows it."""
        return PermissionRequest(ref, self.request_id, self.turn, self.tool_call, self.options)


class AgentSink(Protocol):
    """Where an ``AgentSession`` sends what its agent does; the supervisor connects it to the Runtime.

    ``event`` gets the turn events of §9.3 with their data as published (``turn`` included
    inside a turn, absent outside one), ``log`` events, and ``permission_resolved`` for the
    answers the profile's policy gave. ``permission`` is called for a request the policy leaves
    to the backend and returns the chosen ``option_id``, or ``None`` for ``cancelled``; it is
    cancelled (``CancelledError`` inside it) when ``AgentSession.cancel`` answers it, or when the
    agent goes away. ``protocol_error`` and ``exited`` report the end of the process (``exited``
    once for every process spawned, after all its events, with the last lines of its stderr).
    """

    async def event(self, name: str, data: dict[str, Any]) -> None: ...

    async def permission(self, request: AgentPermissionRequest) -> str | None: ...

    def protocol_error(self, message: str) -> None: ...

    def exited(self, exit: ProcessExit, stderr_tail: Sequence[str]) -> None: ...


def choose_option(options: Sequence[PermissionOption], kinds: Sequence[str]) -> str | None:
    """The first option of the first of ``kinds`` that is offered; ``None`` (cancelled) if none is."""
    for kind in kinds:
        for option in options:
            if option.kind == kind:
                return option.option_id
    return None


def timeout_answer(options: Sequence[PermissionOption]) -> str | None:
    """The answer to a request unanswered after ``permission_timeout_seconds``: the first reject
    option offered (either kind), else ``None`` (cancelled)."""
    return next((option.option_id for option in options if option.kind in REJECT_KINDS), None)


def policy_answer(
    policy: PermissionPolicy, tool_kind: str, options: Sequence[PermissionOption], standing_kinds: Collection[str]
) -> tuple[bool, str | None]:
    """What the profile's policy answers (§9.5): ``(True, option_id or None)`` when it decides,
    ``(False, None)`` when the backend must be asked. ``standing_kinds`` are the names of the
    worker's requested capabilities: with ``ask``, a tool call of one of those kinds is allowed."""
    if policy is PermissionPolicy.ALLOW or (policy is PermissionPolicy.ASK and tool_kind in standing_kinds):
        return True, choose_option(options, ALLOW_KINDS)
    if policy is PermissionPolicy.DENY:
        return True, choose_option(options, REJECT_KINDS)
    return False, None


@dataclass
class _Permission:
    """A permission request as read from the wire, until the SDK's handler for it answers."""

    request: AgentPermissionRequest
    decided: bool
    answer: str | None
    #: Resolved when every event before the request has been handed to the sink.
    ready: asyncio.Future[None] | None = None
    #: The sink's ``permission`` call, once made.
    ask: asyncio.Task[str | None] | None = None
    #: Answered ``cancelled`` by ``AgentSession.cancel``.
    cancelled: bool = False


class _EventPump:
    """Hands items to the sink one at a time, in order, from one task.

    ``put`` never blocks (stderr lines and control items); the reader of the agent's stdout
    waits for ``room`` first, so a slow sink slows the agent down instead of piling events up.
    """

    def __init__(self) -> None:
        self._items: asyncio.Queue[Callable[[], Awaitable[None] | None] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._ended = False
        self._task = asyncio.create_task(self._run(), name="agent-events")

    def put(self, item: Callable[[], Awaitable[None] | None]) -> None:
        if self._ended:
            return
        self._items.put_nowait(item)
        if self._items.qsize() >= _EVENT_BACKLOG:
            self._room.clear()

    async def room(self) -> None:
        await self._room.wait()

    def barrier(self) -> asyncio.Future[None]:
        """A future resolved once everything put so far has been handed over."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._ended:
            future.set_result(None)
            return future

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        self.put(resolve)
        return future

    def end(self) -> None:
        """Nothing more will be put: the pump stops after handing over what it has."""
        if not self._ended:
            self._ended = True
            self._items.put_nowait(None)
            self._room.set()

    async def finished(self) -> None:
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        while (item := await self._items.get()) is not None:
            if self._items.qsize() < _EVENT_BACKLOG:
                self._room.set()
            try:
                result = item()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("the agent sink failed")


class _Wire:
    """The SDK's transport: messages to the agent's stdin, and from its stdout.

    ``receive`` is called by the SDK's one receive loop, in the order the agent wrote the
    messages; session updates and the bookkeeping of turns and permission requests happen
    there (see the module's docstring) before the SDK sees the rest.
    """

    def __init__(self, session: AgentSession, process: AgentProcess) -> None:
        self._session = session
        self._process = process
        self.ended = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self._session._sending(message)
        await self._process.send(message)

    async def receive(self) -> dict[str, Any] | None:
        while True:
            message = await self._process.receive()
            if message is None:
                self.ended.set()
                return None
            try:
                if message.get("method") == _UPDATE and "id" not in message:
                    await self._session._pump_room()
                    self._session._update(message.get("params"))
                    continue
                self._session._received(message)
            except Exception:  # a bug here must not stop the SDK's receive loop
                log.exception("failed to handle a message from agent %d", self._process.pid)
            return message

    async def close(self) -> None:
        """The process belongs to the session, which ends it: nothing to do here."""


class _Client(Client):
    """The client side the SDK calls: permission requests; what runtimed does not offer is refused."""

    def __init__(self, session: AgentSession) -> None:
        self._session = session

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[Any], **kwargs: Any
    ) -> RequestPermissionResponse:
        answer = await self._session._permission(tool_call.tool_call_id)
        if answer is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=answer))

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        """Never called: updates are handled as they are read (``_Wire.receive``)."""

    # runtimed declares no fs and no terminal capability: an agent that asks anyway is told
    # "method not found". (A method left out would answer an empty result instead.)

    async def write_text_file(self, *args: Any, **kwargs: Any) -> None:
        raise RequestError.method_not_found(CLIENT_METHODS["fs_write_text_file"])

    async def read_text_file(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found(CLIENT_METHODS["fs_read_text_file"])

    async def create_terminal(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found(CLIENT_METHODS["terminal_create"])

    async def terminal_output(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found(CLIENT_METHODS["terminal_output"])

    async def release_terminal(self, *args: Any, **kwargs: Any) -> None:
        raise RequestError.method_not_found(CLIENT_METHODS["terminal_release"])

    async def wait_for_terminal_exit(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found(CLIENT_METHODS["terminal_wait_for_exit"])

    async def kill_terminal(self, *args: Any, **kwargs: Any) -> None:
        raise RequestError.method_not_found(CLIENT_METHODS["terminal_kill"])

    async def create_elicitation(self, *args: Any, **kwargs: Any) -> Any:
        raise RequestError.method_not_found(CLIENT_METHODS["elicitation_create"])

    async def complete_elicitation(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise RequestError.method_not_found(f"_{method}")

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        log.debug("ignoring the agent's extension notification _%s", method)

    def on_connect(self, conn: Any) -> None:
        return None


class AgentSession:
    """One agent process and its ACP session, as the client; see the module's docstring.

    ``permissions`` and ``standing_kinds`` (the names of the worker's requested capabilities)
    decide permission requests (§9.5). The owner ends it with ``terminate`` or ``kill`` and
    always ``close``s it (or uses it as an async context manager), which reaps the process and
    hands the sink everything, ``exited`` last. One session object serves one process: a
    restart is a new ``AgentSession`` (which ``start`` can resume the stored session in).
    """

    def __init__(
        self,
        launch: AgentLaunch,
        sink: AgentSink,
        *,
        permissions: PermissionPolicy = PermissionPolicy.ASK,
        standing_kinds: Collection[str] = (),
    ) -> None:
        self.launch = launch
        self._sink = sink
        self.permissions = permissions
        self.standing_kinds = frozenset(standing_kinds)
        self._process: AgentProcess | None = None
        self._connection: ClientSideConnection | None = None
        self._wire: _Wire | None = None
        self._pump: _EventPump | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.handshake: Handshake | None = None
        self.session_id: str | None = None
        # Turn and load bookkeeping, kept where messages are sent and read (see _Wire).
        self._prompting = False
        self._turn: int | None = None
        self._in_turn = False
        self._turn_text: list[str] = []
        self._loading = False
        #: Prompt, load and new-session requests sent and not answered yet: id -> (method, session id).
        self._open_requests: dict[int | str, tuple[str, str | None]] = {}
        self._tool_calls: dict[str, tuple[str, str]] = {}
        self._permissions: dict[str, deque[_Permission]] = {}
        #: Requests left to the sink and not answered yet, by request id.
        self._undecided: dict[str, _Permission] = {}

    # The process.

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def process(self) -> AgentProcess:
        if self._process is None:
            raise RuntimeError("the agent is not spawned")
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    async def spawn(self) -> None:
        """Start the agent process and connect the SDK to it; ``AgentSpawnError`` if it cannot run."""
        if self._process is not None:
            raise RuntimeError("the agent is already spawned")
        self._pump = _EventPump()
        try:
            self._process = await AgentProcess.spawn(self.launch, self)
        except AgentSpawnError:
            self._pump.end()
            raise
        self._wire = _Wire(self, self._process)
        self._connection = connect_to_agent(_Client(self), self._wire)
        self._watch_task = asyncio.create_task(self._watch(), name=f"agent-{self._process.pid}-session")

    async def terminate(self, grace: float) -> ProcessExit:
        """Close stdin, then SIGTERM and SIGKILL the group after ``grace`` each (§9.3 stop)."""
        return await self.process.terminate(grace)

    def kill(self) -> None:
        """SIGKILL the agent's process group at once (§9.3 cancel)."""
        if self._process is not None:
            self._process.kill()

    async def wait(self) -> ProcessExit:
        """How the agent ended, once it is reaped."""
        return await self.process.wait()

    async def close(self) -> None:
        """Kill the agent if it still runs, reap it, and hand the sink what is left (``exited`` last)."""
        if self._process is not None:
            self._process.kill()
        if self._watch_task is not None:
            await asyncio.shield(self._watch_task)
        if self._pump is not None:
            self._pump.end()
            await self._pump.finished()

    async def __aenter__(self) -> AgentSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _watch(self) -> None:
        process, wire, connection, pump = self.process, self._wire, self._connection, self._pump
        assert wire is not None and connection is not None and pump is not None
        exit = await process.wait()
        # Let the SDK read every message the agent wrote before closing the connection: an
        # answer written just before exiting still answers its request.
        await wire.ended.wait()
        await connection.close()
        pump.put(lambda: self._sink.exited(exit, process.stderr_tail))
        pump.end()

    # ProcessListener: called by the process's reading tasks.

    def log(self, data: dict[str, Any]) -> None:
        self._emit("log", data)

    def protocol_error(self, message: str) -> None:
        assert self._pump is not None
        self._pump.put(lambda: self._sink.protocol_error(message))

    # The handshake.

    async def start(self, *, timeout: float, resume_session_id: str | None = None) -> Started:
        """Spawn, ``initialize``, then load ``resume_session_id`` (when given and the agent can)
        or make a new session, all within ``timeout`` seconds (§9.3, §9.4).

        ``AgentStartError`` says why it failed; the process is then killed and reaped (the
        sink still gets ``exited``).
        """
        step = "spawn"
        try:
            async with asyncio.timeout(timeout):
                await self.spawn()
                step = "initialize"
                handshake = await self.initialize()
                load_error = None
                if resume_session_id is not None:
                    if handshake.load_session:
                        step = _LOAD
                        try:
                            await self.load_session(resume_session_id)
                        except AgentGone:
                            raise
                        except AgentError as error:
                            load_error = str(error)
                        else:
                            return Started(handshake, resume_session_id, resumed=True)
                    else:
                        load_error = "the agent does not advertise loadSession"
                step = "session/new"
                session_id = await self.new_session()
                return Started(handshake, session_id, load_error=load_error)
        except AgentSpawnError as error:
            raise AgentStartError(str(error)) from error
        except TimeoutError:
            why = f"no answer to {step} within {timeout:g} s"
            if step == "spawn":
                why = f"{shlex.join(self.launch.command)} did not start within {timeout:g} s"
            raise AgentStartError(await self._abort(why)) from None
        except AgentError as error:
            raise AgentStartError(await self._abort(f"{step} failed: {error}", isinstance(error, AgentGone))) from error

    async def _abort(self, why: str, gone: bool = False) -> str:
        """Kill the agent after a failed start; ``why``, with how it ended if it ended by itself."""
        if self._process is None:
            return why
        if gone:
            # Its stdout ended: it is most likely exiting. Let it, so that its status can be told.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), _GONE_GRACE_SECONDS)
        exited_by_itself = not self._process.running
        self._process.kill()
        exit = await self._process.wait()
        return f"{why} (the agent {describe_exit(exit)})" if exited_by_itself else why

    async def initialize(self) -> Handshake:
        """ACP ``initialize``: protocol version 1, no ``fs`` and no ``terminal`` capability."""
        answer = await self._request(
            self._sdk.initialize(
                protocol_version=PROTOCOL_VERSION,
                client_capabilities=ClientCapabilities(
                    fs=FileSystemCapabilities(read_text_file=False, write_text_file=False), terminal=False
                ),
                client_info=Implementation(name=CLIENT_NAME, version=__version__),
            )
        )
        if answer.protocol_version != PROTOCOL_VERSION:
            raise AgentError(f"the agent speaks ACP version {answer.protocol_version}, not {PROTOCOL_VERSION}")
        info = answer.agent_info
        agent = AgentInfo(info.name, info.version or None) if info is not None else None
        capabilities = answer.agent_capabilities
        self.handshake = Handshake(agent, bool(capabilities is not None and capabilities.load_session))
        return self.handshake

    async def new_session(self, cwd: str | None = None) -> str:
        """ACP ``session/new`` in ``cwd`` (default: the process's directory); the session id."""
        # _received takes the session id as the answer is read, so that an update the agent
        # sends right after it is already this session's.
        answer = await self._request(self._sdk.new_session(cwd=cwd or str(self.launch.cwd), mcp_servers=[]))
        self.session_id = answer.session_id
        return answer.session_id

    async def load_session(self, session_id: str, cwd: str | None = None) -> None:
        """ACP ``session/load``: the updates the agent replays while loading are history, and
        are not handed to the sink (§9.4)."""
        # Loading ends where the answer is read (_received): what the agent sends after it is new.
        self._loading = True
        try:
            await self._request(
                self._sdk.load_session(cwd=cwd or str(self.launch.cwd), session_id=session_id, mcp_servers=[])
            )
        finally:
            self._loading = False

    # Turns.

    async def prompt(self, text: str, *, turn: int, system: bool = False) -> TurnResult:
        """One prompt turn: ``text`` as one text block (a ``system`` input marked in ``_meta``).

        Events of the turn carry ``"turn": turn``. Returns once the agent has answered (or gone)
        and every event of the turn has been handed to the sink. Cancelling the call sends the
        agent nothing: use ``cancel`` to end a turn.
        """
        if self.session_id is None:
            raise RuntimeError("no session: start the agent first")
        if self._prompting:
            raise RuntimeError("a prompt turn is already running")
        meta: dict[str, Any] = {RUNTIMED_META_KEY: {"kind": "system"}} if system else {}
        self._prompting, self._turn, self._in_turn, self._turn_text = True, turn, True, []
        self._tool_calls.clear()
        error: str | None = None
        try:
            answer = await self._sdk.prompt(session_id=self.session_id, prompt=[text_block(text)], **meta)
            stop_reason = StopReason(answer.stop_reason)
        except RequestError as failure:
            stop_reason, error = StopReason.ERROR, _describe_error(failure)
        except ValidationError as failure:
            stop_reason, error = StopReason.ERROR, f"the agent's answer to the prompt is not valid: {failure}"
        except ConnectionError:
            stop_reason, error = StopReason.INTERRUPTED, "the agent went away during the turn"
        finally:
            self._in_turn = False
            self._prompting = False
        assert self._pump is not None
        await self._pump.barrier()
        text_of_turn = "".join(self._turn_text)
        self._turn_text = []
        return TurnResult(stop_reason, text_of_turn, error)

    async def cancel(self) -> bool:
        """End the running turn: ``session/cancel``, then every permission request waiting for the
        sink answered ``cancelled``. ``False`` when no turn was running (nothing is sent)."""
        if not self._in_turn or self.session_id is None:
            return False
        with contextlib.suppress(ConnectionError):
            await self._sdk.cancel(session_id=self.session_id)
        for permission in list(self._undecided.values()):
            permission.cancelled = True
            if permission.ask is not None:
                permission.ask.cancel()
        return True

    @property
    def turn_text(self) -> str:
        """The text of the running turn's agent message chunks so far."""
        return "".join(self._turn_text)

    # What the wire sees (called in the order of the wire, without awaiting).

    def _sending(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method in (_PROMPT, _LOAD, _NEW) and "id" in message:
            params = message.get("params")
            session_id = params.get("sessionId") if isinstance(params, dict) else None
            self._open_requests[message["id"]] = (method, session_id)

    def _received(self, message: dict[str, Any]) -> None:
        if "method" not in message:
            # An answer ends a turn or a load exactly here: what follows is outside it.
            method, session_id = self._open_requests.pop(message["id"], (None, None))
            result = message.get("result")
            if method == _PROMPT:
                self._in_turn = False
            elif method == _LOAD:
                self._loading = False
                if "result" in message:
                    self.session_id = session_id
            elif method == _NEW and isinstance(result, dict) and isinstance(result.get("sessionId"), str):
                self.session_id = result["sessionId"]
        elif message["method"] == _PERMISSION and "id" in message:
            self._permission_request(message.get("params"))

    async def _pump_room(self) -> None:
        assert self._pump is not None
        await self._pump.room()

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        assert self._pump is not None
        self._pump.put(lambda: self._sink.event(name, data))

    def _update(self, params: Any) -> None:
        """One ``session/update`` as read: mapped to the events of §9.3 (history while loading)."""
        if self._loading or not isinstance(params, dict):
            return
        session_id = params.get("sessionId")
        if self.session_id is not None and session_id != self.session_id:
            log.warning("ignoring an update for session %r, not this agent's", session_id)
            return
        raw = params.get("update")
        turn = self._turn if self._in_turn else None
        try:
            update = SessionNotification.model_validate(params).update
        except ValidationError:
            # A kind newer than the SDK, or a known kind in a shape it does not accept.
            if isinstance(raw, dict):
                self._emit("agent_update", _with_turn(turn, {"update": raw}))
            return
        if turn is None:
            self._emit("agent_update", {"update": raw})
            return
        if isinstance(update, AgentMessageChunk) and isinstance(update.content, TextContentBlock):
            self._turn_text.append(update.content.text)
            self._emit("text_delta", {"turn": turn, "text": update.content.text})
        elif isinstance(update, AgentThoughtChunk) and isinstance(update.content, TextContentBlock):
            self._emit("thought_delta", {"turn": turn, "text": update.content.text})
        elif isinstance(update, ToolCallStart):
            kind: str = update.kind or "other"
            status: str = update.status or "pending"
            self._remember_tool_call(update.tool_call_id, update.title, kind)
            self._emit(
                "tool_call",
                {
                    "turn": turn,
                    "tool_call_id": update.tool_call_id,
                    "title": update.title,
                    "kind": kind,
                    "status": status,
                },
            )
        elif isinstance(update, ToolCallProgress):
            if update.title is not None or update.kind is not None:
                title, kind = self._tool_calls.get(update.tool_call_id, ("", "other"))
                self._remember_tool_call(update.tool_call_id, update.title or title, update.kind or kind)
            data: dict[str, Any] = {"turn": turn, "tool_call_id": update.tool_call_id}
            if update.status is not None:
                data["status"] = update.status
            if update.title is not None:
                data["title"] = update.title
            self._emit("tool_call_update", data)
        elif isinstance(update, AgentPlanUpdate):
            entries = [entry.model_dump(mode="json", by_alias=True, exclude_none=True) for entry in update.entries]
            self._emit("plan", {"turn": turn, "entries": entries})
        else:
            self._emit("agent_update", {"turn": turn, "update": raw})

    def _remember_tool_call(self, tool_call_id: str, title: str, kind: str) -> None:
        if tool_call_id not in self._tool_calls and len(self._tool_calls) >= _TOOL_CALLS_REMEMBERED:
            self._tool_calls.pop(next(iter(self._tool_calls)))
        self._tool_calls[tool_call_id] = (title, kind)

    # Permissions: read on the wire (decided there, in order), answered by the SDK's handler.

    def _permission_request(self, params: Any) -> None:
        try:
            request = RequestPermissionRequest.model_validate(params)
        except ValidationError:
            return  # the SDK answers it "invalid params" and never calls the handler
        tool_call = request.tool_call
        known_title, known_kind = self._tool_calls.get(tool_call.tool_call_id, ("", "other"))
        info = ToolCallInfo(tool_call.tool_call_id, tool_call.title or known_title, tool_call.kind or known_kind)
        options = tuple(PermissionOption(o.option_id, o.name, o.kind) for o in request.options)
        pending = AgentPermissionRequest(uuid4().hex, self._turn if self._in_turn else None, info, options)
        decided, answer = policy_answer(self.permissions, info.kind, options, self.standing_kinds)
        permission = _Permission(pending, decided, answer)
        assert self._pump is not None
        if decided:
            resolved: dict[str, Any] = {"request_id": pending.request_id}
            if answer is not None:
                resolved["option_id"] = answer
            resolved.update(outcome="selected" if answer is not None else "cancelled", by="policy")
            self._emit("permission_resolved", resolved)
        else:
            permission.ready = self._pump.barrier()
            self._undecided[pending.request_id] = permission
        self._permissions.setdefault(tool_call.tool_call_id, deque()).append(permission)

    async def _permission(self, tool_call_id: str) -> str | None:
        """The answer to the permission request the SDK hands its handler (FIFO per tool call)."""
        waiting = self._permissions.get(tool_call_id)
        if not waiting:
            log.warning("a permission request for tool call %r was not seen on the wire", tool_call_id)
            return None
        permission = waiting.popleft()
        if not waiting:
            del self._permissions[tool_call_id]
        if permission.decided:
            return permission.answer
        request = permission.request
        try:
            assert permission.ready is not None
            await permission.ready
            if permission.cancelled:
                return None
            ask = permission.ask = asyncio.create_task(
                self._sink.permission(request), name=f"agent-permission-{request.request_id}"
            )
            try:
                answer = await ask
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                return None  # answered "cancelled" by cancel()
        finally:
            self._undecided.pop(request.request_id, None)
        if answer is not None and answer not in {option.option_id for option in request.options}:
            log.warning("the sink chose %r, which the agent did not offer: answering cancelled", answer)
            return None
        return answer

    # Requests.

    @property
    def _sdk(self) -> ClientSideConnection:
        if self._connection is None:
            raise RuntimeError("the agent is not spawned")
        return self._connection

    async def _request(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except RequestError as error:
            raise AgentError(_describe_error(error)) from error
        except ValidationError as error:
            raise AgentError(f"the agent's answer is not valid: {error}") from error
        except ConnectionError as error:
            raise AgentGone("the agent went away before it answered") from error


def _with_turn(turn: int | None, data: dict[str, Any]) -> dict[str, Any]:
    return data if turn is None else {"turn": turn, **data}


def _describe_error(error: RequestError) -> str:
    """The agent's JSON-RPC error, readable and bounded."""
    text = f"the agent answered error {error.code}: {_cut(str(error) or 'error')}"
    if error.data is not None:
        text += f" ({_cut(json.dumps(error.data, ensure_ascii=False))})"
    return text


def _cut(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
