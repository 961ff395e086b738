"""The agent supervisor: the ``ExecutionBackend`` that runs every agent-backed worker (contract §9).

``Supervisor`` is what the Runtime calls (``runtimed.runtime.execution``); it speaks back only
through the Runtime's own methods, each a durable change. Each worker's agent belongs to one
task, its ``WorkerAgent``, which the supervisor owns and cancels at the latest in ``close``. The
task does everything that happens to the agent, one thing at a time, in the order of §9.3 – §9.4
(as jupyter_client's ``KernelManager`` starts, interrupts, restarts and kills a kernel):

- **start**: spawn the agent in the worker's directory (``worker_directory``), ``initialize``,
  ``session/new`` (or ``session/load`` of the stored session after a restart or a restore), all
  within the profile's ``start_timeout_seconds``; ``state`` goes ``starting`` → ``idle``. A first
  start that fails stops the worker ("agent failed to start: <why>") with an error diagnostic.
- **turns**, one at a time: ``begin_turn`` (the input is durable as delivered) *then* the prompt;
  what the agent streams is observed as it comes, permission requests are decided by the
  profile's policy or left to the backend (``permission_requested`` / ``permission_resolved``);
  the turn's end is ``end_turn``.
- **exit**: an agent that exits by itself ends the running turn ``interrupted`` and gets a
  ``worker.agent_exited`` diagnostic; with ``restart = "on-failure"`` a failure is restarted after
  1 s, 2 s, 4 s, at most 3 times in any 10 minutes, and its session resumed; otherwise the worker
  is stopped. A protocol error kills the agent (``worker.protocol_error``); the same policy applies.
- **stop** (the worker's, or the daemon's shutdown): the running turn is cancelled and given
  ``stop_grace_seconds`` to end; then the stop sequence (stdin closed, SIGTERM and SIGKILL after
  ``stop_grace_seconds`` each); a cancel SIGKILLs the group at once. The turn still ends.

``stop``, ``start`` and ``wake`` return at once: they only tell the worker's task. ``interrupt``
and the permission calls are answered from the request's own task, through the worker's state.
At shutdown (``close``) workers stay ``running`` in the store, and ``restore`` starts their agents
again at the next start (§9.4).

``session`` (the ACP SDK and pydantic, most of a second to import) is imported when the first
agent starts, not with this module: the daemon imports this module at every start, and a daemon
that runs no agent (``runtimed --help`` and ``config`` too) need not pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shlex
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..domain.catalog import CreateWorkerRequest, ProfileSelector, WorkerDetail, WorkerIntent, WorkerStatus
from ..domain.errors import InvalidRequest, PermissionNotFound, RuntimeStopped, WorkerNotFound
from ..domain.execution import (
    AgentProfile,
    ExecutionConfig,
    ExecutionState,
    PermissionAnswer,
    PermissionRequest,
    ProcessExit,
    RestartPolicy,
    StopReason,
)
from ..domain.identity import WorkerRef, worker_sequence
from ..domain.observation import Severity, TranscriptRole
from ..runtime import Runtime, TurnStart
from .process import AgentLaunch, agent_environment, describe_exit

if TYPE_CHECKING:
    from .session import AgentPermissionRequest, AgentSession, Started, TurnResult

log = logging.getLogger("runtimed.agents.supervisor")

T = TypeVar("T")

#: A built-in agent's settings reach it as variables of this prefix (``setting_environment``).
SETTING_PREFIX = "RUNTIMED_AGENT_"
#: The setting that names the daemon's variable holding an API key, rather than holding a value.
API_KEY_ENV_SETTING = "api_key_env"

DIAG_AGENT_START_FAILED = "worker.agent_start_failed"
DIAG_AGENT_EXITED = "worker.agent_exited"
DIAG_AGENT_RESTARTED = "worker.agent_restarted"
DIAG_CONTEXT_LOST = "worker.context_lost"
DIAG_PROTOCOL_ERROR = "worker.protocol_error"
DIAG_RESTORE_FAILED = "worker.restore_failed"

#: At most this many restarts of one worker's agent in any ``RESTART_WINDOW_SECONDS`` (§9.4).
MAX_RESTARTS = 3
RESTART_WINDOW_SECONDS = 600.0
#: The first restart waits this long, and each next one twice as long as the one before.
RESTART_DELAY_SECONDS = 1.0
#: Lines of an agent's stderr an exit diagnostic quotes, and how much of each.
DIAGNOSTIC_STDERR_LINES = 10
DIAGNOSTIC_LINE_CHARS = 500
#: Beyond the stop sequences' own bounds, how long ``close`` waits before it cancels what is left.
CLOSE_MARGIN_SECONDS = 5.0


class Supervisor:
    """Runs the agent of every agent-backed worker of one Runtime; see the module's docstring.

    Build it after the Runtime, ``runtime.attach`` it, call ``restore`` once (before serving: it
    starts the agents of the workers the store holds as running, in the background, and ``ready``
    waits for it), and let ``Runtime.close`` close it.

    ``workdirs`` is where runtimed makes a directory for each worker that has none of its own
    (``<workdirs>/<worker id>``); ``environ`` the daemon's environment (``PATH``, ``HOME``,
    ``LANG`` and ``pass_env`` variables are copied from it), of which the variables named in
    ``withheld`` (the token's) never reach an agent; ``open_file_limit`` the soft limit on open
    files agents get (the daemon's own before it raised it).
    """

    def __init__(
        self,
        runtime: Runtime,
        config: ExecutionConfig,
        *,
        workdirs: Path,
        environ: Mapping[str, str] | None = None,
        withheld: Collection[str] = (),
        open_file_limit: int | None = None,
        restart_delay: float = RESTART_DELAY_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.config = config
        # Absolute, as ACP wants a session's cwd: an fs root given as ./state must not become a
        # path the agent reads relative to the worker's directory it already runs in.
        self.workdirs = Path(os.path.abspath(workdirs))
        # What is withheld is not even kept: no agent's environment can be built with it.
        self.environ = {
            name: value for name, value in (os.environ if environ is None else environ).items() if name not in withheld
        }
        self.open_file_limit = open_file_limit
        self.restart_delay = restart_delay
        self._agents: dict[str, WorkerAgent] = {}
        self._restore_task: asyncio.Task[None] | None = None
        self._ready = False
        self._closing = False

    # ---------------------------------------------------------------- the Runtime's calls

    def profiles(self) -> list[tuple[AgentProfile, bool]]:
        return self.config.listing()

    def resolve(self, selector: ProfileSelector) -> AgentProfile | None:
        return self.config.resolve(selector)

    def check_create(self, request: CreateWorkerRequest, profile: AgentProfile) -> None:
        """An absolute ``workspace_refs`` reference must lie inside ``[execution] workspace_roots``
        (§9.3); other references are opaque labels."""
        for workspace in request.workspace_refs:
            if os.path.isabs(workspace.reference) and self._workspace_root(workspace.reference) is None:
                roots = ", ".join(str(root) for root in self.config.workspace_roots) or "none configured"
                raise InvalidRequest(
                    f"workspace {workspace.name!r} names {workspace.reference}, which is not inside "
                    f"[execution] workspace_roots ({roots})"
                )

    def start(self, ref: WorkerRef) -> None:
        if self._closing or ref.worker_id in self._agents:
            return
        self._add(self.runtime.worker_detail(ref), restoring=False)

    def delete(self, ref: WorkerRef) -> None:
        """Kill what is left of the deleted worker's agent (a stop's grace may still run), then
        remove ``<workdirs>/<worker id>`` if runtimed made it (a profile ``cwd`` or a workspace is
        never touched: the agent's directory is only ever made there)."""
        directory = self.workdirs / ref.worker_id
        agent = self._agents.get(ref.worker_id)
        if agent is None:
            _remove_directory(directory)
        else:
            agent.request_stop(kill=True)
            agent.task.add_done_callback(lambda _: _remove_directory(directory))

    def wake(self, ref: WorkerRef) -> None:
        agent = self._agents.get(ref.worker_id)
        if agent is not None:
            agent.wake.set()

    def stop(self, ref: WorkerRef, *, kill: bool) -> None:
        agent = self._agents.get(ref.worker_id)
        if agent is not None:
            agent.request_stop(kill=kill)

    async def interrupt(self, ref: WorkerRef) -> int | None:
        agent = self._agents.get(ref.worker_id)
        return None if agent is None else await agent.interrupt()

    def pending_permissions(self, ref: WorkerRef) -> list[PermissionRequest]:
        agent = self._agents.get(ref.worker_id)
        if agent is None:
            return []
        return [pending.request.for_worker(ref) for pending in agent.pending.values() if pending.published]

    async def answer_permission(self, ref: WorkerRef, request_id: str, option_id: str) -> PermissionAnswer:
        agent = self._agents.get(ref.worker_id)
        pending = agent.pending.get(request_id) if agent is not None else None
        if agent is None or pending is None or not pending.published:
            raise PermissionNotFound(ref.worker_id, request_id)
        offered = [option.option_id for option in pending.request.options]
        if option_id not in offered:
            raise InvalidRequest(
                f"option {option_id!r} was not offered by permission request {request_id} "
                f"(offered: {', '.join(offered)})"
            )
        await agent.resolve(pending, option_id, "backend")
        return PermissionAnswer(request_id, option_id, "backend")

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def closing(self) -> bool:
        """The daemon is shutting down: workers stay ``running``, their agents are stopped."""
        return self._closing

    async def close(self) -> None:
        """Daemon shutdown: every worker's running turn is cancelled and given its
        ``stop_grace_seconds`` to end, then its agent gets the stop sequence; all at once, and
        bounded. Workers stay ``running`` in the store (``restore`` starts them again)."""
        self._closing = True
        if self._restore_task is not None:
            self._restore_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restore_task
        agents = list(self._agents.values())
        for agent in agents:
            agent.request_stop(kill=False)
        tasks = [agent.task for agent in agents]
        if not tasks:
            return
        # Cancel + turn grace + SIGTERM grace + SIGKILL grace, and the reaping: past that, cancel
        # what is left (a cancelled agent task still kills and reaps its process).
        bound = max(3 * agent.grace for agent in agents) + CLOSE_MARGIN_SECONDS
        _, late = await asyncio.wait(tasks, timeout=bound)
        for task in late:
            log.warning("%s did not stop within %g s: cancelling it", task.get_name(), bound)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------- restore

    def restore(self) -> None:
        """Start the agents of the workers the store holds as ``running`` (§9.4), in the
        background; ``ready`` becomes true once every one of them has been attempted."""
        if self._restore_task is not None:
            raise RuntimeError("restore is called once")
        self._restore_task = asyncio.create_task(self._restore(), name="agents-restore")

    async def _restore(self) -> None:
        try:
            live = {summary.worker_ref.worker_id for summary in self.runtime.list_workers()}
            await asyncio.get_running_loop().run_in_executor(None, _remove_deleted_directories, self.workdirs, live)
            await self._settle_stopped_workers()
            agents = [self._add(detail, restoring=True) for detail in self.runtime.executing_workers()]
            if agents:
                log.info("restoring the agents of %d running workers", len(agents))
            await asyncio.gather(*(agent.first_start.wait() for agent in agents))
        finally:
            self._ready = True

    async def _settle_stopped_workers(self) -> None:
        """A worker stopped while its agent ran, and the daemon went away before the agent
        ended: its turn is ended ``interrupted`` and its agent recorded gone."""
        for summary in self.runtime.list_workers():
            execution = summary.execution
            if summary.status is WorkerStatus.RUNNING or execution is None:
                continue
            ref = summary.worker_ref
            try:
                if execution.state is not ExecutionState.EXITED or execution.pid is not None:
                    await self.runtime.update_execution(
                        ref, state=ExecutionState.EXITED, pid=None, pending_permissions=0
                    )
                if execution.open_turn is not None:
                    await self.runtime.end_turn(ref, execution.open_turn, StopReason.INTERRUPTED)
            except Exception:
                log.exception("could not settle the execution of stopped worker %s", ref.worker_id)

    # ---------------------------------------------------------------- workers

    def _add(self, detail: WorkerDetail, *, restoring: bool) -> WorkerAgent:
        agent = WorkerAgent(self, detail, restoring=restoring)
        self._agents[detail.worker_ref.worker_id] = agent

        def forget(_: asyncio.Task[None]) -> None:
            if self._agents.get(detail.worker_ref.worker_id) is agent:
                del self._agents[detail.worker_ref.worker_id]

        agent.task.add_done_callback(forget)
        return agent

    def _workspace_root(self, reference: str) -> Path | None:
        """The workspace root ``reference`` (an absolute path) lies inside, if any."""
        path = Path(os.path.realpath(reference))
        for root in self.config.workspace_roots:
            if path.is_relative_to(os.path.realpath(root)):
                return root
        return None

    def worker_directory(self, detail: WorkerDetail, profile: AgentProfile) -> Path:
        """Where the worker's agent runs (§9.3): the profile's ``cwd``; else the first workspace
        reference inside a workspace root; else ``<workdirs>/<worker id>``, made if need be."""
        if profile.cwd is not None:
            return profile.cwd
        for workspace in detail.workspace_refs:
            if os.path.isabs(workspace.reference) and self._workspace_root(workspace.reference) is not None:
                return Path(workspace.reference)
        directory = self.workdirs / detail.worker_ref.worker_id
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            # The spawn fails in it, and the worker's start failure names the directory.
            log.warning("cannot make the directory of worker %s: %s", detail.worker_ref.worker_id, error)
        return directory

    def launch(self, detail: WorkerDetail, profile: AgentProfile) -> AgentLaunch:
        env = agent_environment(profile.env, profile.pass_env, source=self.environ)
        if profile.settings:
            env.update(setting_environment(profile.settings, detail.intent, source=self.environ))
        return AgentLaunch(
            command=profile.command,
            cwd=self.worker_directory(detail, profile),
            env=env,
            max_message_bytes=self.config.max_agent_message_bytes,
            log_lines_per_second=self.config.agent_log_lines_per_second,
            open_file_limit=self.open_file_limit,
        )


def setting_environment(
    settings: Mapping[str, str], intent: WorkerIntent, *, source: Mapping[str, str]
) -> dict[str, str]:
    """The variables that hand a built-in agent its profile's settings (§9.1): each setting as
    ``RUNTIMED_AGENT_<KEY>`` (``model`` as ``RUNTIMED_AGENT_MODEL``), except ``api_key_env``,
    which names the daemon's variable whose value goes to ``RUNTIMED_AGENT_API_KEY`` (the key
    itself is never a setting); and the worker's intent as JSON, ``RUNTIMED_AGENT_INTENT``.

    ``source`` is the daemon's environment less what is withheld (its token)."""
    env: dict[str, str] = {}
    for key, value in settings.items():
        if key == API_KEY_ENV_SETTING:
            if source.get(value):
                env[SETTING_PREFIX + "API_KEY"] = source[value]
        else:
            env[SETTING_PREFIX + key.upper()] = value
    described = {"kind": intent.kind, **{k: v for k, v in dataclasses.asdict(intent).items() if v is not None}}
    env[SETTING_PREFIX + "INTENT"] = json.dumps(described, ensure_ascii=False)
    return env


@dataclass(eq=False)
class _Turn:
    """A turn of the worker's agent, from just before ``begin_turn`` until ``end_turn`` is durable.

    ``number`` is ``None`` until ``begin_turn`` numbered it (or found nothing queued).
    ``prompting``: the prompt is on the wire, so ``session/cancel`` reaches it. ``cancel_by``:
    who asked to end it (``interrupt`` or ``stop``); a turn cancelled before its prompt was sent
    ends ``cancelled`` without the agent ever seeing its input.
    """

    number: int | None = None
    prompting: bool = False
    cancel_by: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Pending:
    """A permission request left to the backend, until one answer resolves it."""

    request: AgentPermissionRequest
    answer: asyncio.Future[str | None]
    #: ``permission_requested`` is durable and published: the backend may see and answer it.
    published: bool = False
    resolved: bool = False


@dataclass(frozen=True, slots=True)
class _Left:
    """How ``_serve`` left a session: the turn the process's end left open (ended once the
    agent's state is settled), with what it had streamed."""

    turn: _Turn | None = None
    text: str = ""


class WorkerAgent:
    """One worker's agent: the task that starts it, feeds it turns, restarts and stops it.

    It is also the ``AgentSink`` of the worker's sessions (one at a time): what the agent
    streams becomes the worker's observations, and the permission requests its policy leaves
    to the backend wait here (``pending``) for ``answer_permission``.
    """

    def __init__(self, supervisor: Supervisor, detail: WorkerDetail, *, restoring: bool) -> None:
        assert detail.execution is not None, "a record-only worker has no agent"
        self.supervisor = supervisor
        self.runtime = supervisor.runtime
        self.ref = detail.worker_ref
        self.detail = detail
        self.profile = supervisor.config.profile(detail.execution.profile)
        self.restoring = restoring
        self.session: AgentSession | None = None
        self.session_id: str | None = detail.execution.session_id
        self.turn: _Turn | None = None
        self.pending: dict[str, _Pending] = {}
        self.wake = asyncio.Event()
        #: The worker was stopped or cancelled, or the daemon shuts down.
        self.stop_requested = asyncio.Event()
        self.kill = False
        #: An interrupt killed the agent, which did not end its turn in time: start it again at once.
        self.restart_now = False
        #: When each restart (after a failure) happened, within the last ``RESTART_WINDOW_SECONDS``.
        self.restarts: deque[float] = deque()
        #: Set once the first start has succeeded or failed (``Supervisor.ready`` waits for it).
        self.first_start = asyncio.Event()
        self._stopper: asyncio.Task[None] | None = None
        self.task = asyncio.create_task(self._run(), name=f"agent-of-{self.ref.worker_id}")

    @property
    def grace(self) -> float:
        return self.profile.stop_grace_seconds if self.profile is not None else 0.0

    @property
    def worker_id(self) -> str:
        return self.ref.worker_id

    # ------------------------------------------------------------ what others ask

    def request_stop(self, *, kill: bool) -> None:
        """The worker was stopped (or cancelled, ``kill``), or the daemon shuts down: the task
        runs the stop sequence. A cancel after a stop kills at once."""
        if kill and not self.kill:
            self.kill = True
            if self.session is not None:
                self.session.kill()
        self.stop_requested.set()

    async def interrupt(self) -> int | None:
        """End the running turn (§9.3): ``session/cancel`` (pending permissions answered
        ``cancelled``), and wait for it to end; an agent that does not end it within
        ``stop_grace_seconds`` is killed and started again, and the turn ends ``interrupted``."""
        turn = self.turn
        if turn is None:
            return None
        await self._cancel_turn(turn, "interrupt")
        try:
            await asyncio.wait_for(asyncio.shield(turn.ended.wait()), self.grace)
        except TimeoutError:
            session = self.session
            if session is not None and session.running and not self.stop_requested.is_set():
                log.warning(
                    "worker %s: the agent did not end turn %s within %g s of session/cancel: restarting it",
                    self.worker_id,
                    turn.number,
                    self.grace,
                )
                self.restart_now = True
                session.kill()
            await turn.ended.wait()
        return turn.number

    async def resolve(self, pending: _Pending, option_id: str | None, by: str) -> None:
        """Answer a pending permission request, once (a later answer changes nothing):
        ``permission_resolved`` is published, then the agent gets the answer."""
        if pending.resolved:
            return
        pending.resolved = True
        self.pending.pop(pending.request.request_id, None)
        try:
            if pending.published:
                data: dict[str, Any] = {"request_id": pending.request.request_id}
                if option_id is not None:
                    data["option_id"] = option_id
                data.update(outcome="selected" if option_id is not None else "cancelled", by=by)
                await self.runtime.observe(self.ref, "permission_resolved", data)
                # The count is read as the change is made, so the last change holds the last count.
                await self.runtime.update_execution(self.ref, pending_permissions=len(self.pending))
        finally:
            if not pending.answer.done():
                pending.answer.set_result(option_id)

    # ------------------------------------------------------------ AgentSink

    async def event(self, name: str, data: dict[str, Any]) -> None:
        await self.runtime.observe(self.ref, name, data)

    async def permission(self, request: AgentPermissionRequest) -> str | None:
        """A request the profile's policy leaves to the backend (§9.5): published, listed, and
        answered by the backend, by the timeout, or ``cancelled`` when the turn is."""
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self.pending[request.request_id] = pending
        try:
            data: dict[str, Any] = {} if request.turn is None else {"turn": request.turn}
            data.update(
                request_id=request.request_id,
                tool_call=dataclasses.asdict(request.tool_call),
                options=[dataclasses.asdict(option) for option in request.options],
            )
            await self.runtime.observe(self.ref, "permission_requested", data)
            pending.published = True
            await self.runtime.update_execution(self.ref, pending_permissions=len(self.pending))
            timeout = self.supervisor.config.permission_timeout_seconds
            try:
                return await asyncio.wait_for(asyncio.shield(pending.answer), timeout)
            except TimeoutError:
                from .session import timeout_answer  # imported already: a session asked

                await self.resolve(pending, timeout_answer(request.options), "timeout")
                return await pending.answer
        except asyncio.CancelledError:
            # session/cancel answered it, or the agent went away: say so, then let it go.
            await self.resolve(pending, None, self._cancelled_by())
            raise
        finally:
            if not pending.resolved:  # a failure of the store: nobody can answer it any more
                pending.resolved = True
                self.pending.pop(request.request_id, None)

    def protocol_error(self, message: str) -> None:
        """Read from the session's process once it has ended (``_after_exit``)."""

    def exited(self, exit: ProcessExit, stderr_tail: Sequence[str]) -> None:
        """Read from the session's process once it has ended (``_after_exit``)."""

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        try:
            await self._supervise()
        except RuntimeStopped:
            pass  # stop_worker on a stopped runtime: the worker is stopped already
        except WorkerNotFound:
            pass  # the worker was deleted (after its stop); the agent is being killed
        except Exception as error:
            log.exception("worker %s: supervising its agent failed", self.worker_id)
            await self._give_up(error)
        finally:
            self.first_start.set()
            if self.session is not None:
                with contextlib.suppress(Exception):
                    await self.session.close()  # kills the agent if it still runs, and reaps it
            if self.turn is not None:
                self.turn.ended.set()
            for pending in list(self.pending.values()):
                pending.resolved = True
                if not pending.answer.done():
                    pending.answer.set_result(None)
            self.pending.clear()

    async def _supervise(self) -> None:
        from .session import AgentSession, AgentStartError  # see the module's docstring

        if self.profile is None:
            assert self.detail.execution is not None
            await self._start_failed(f"its profile {self.detail.execution.profile} is not configured any more")
            return
        profile = self.profile
        resume: str | None = None
        if self.restoring:
            resume = await self._prepare_restore()
        restarting = False
        while not self.stop_requested.is_set():
            session = self.session = AgentSession(
                self.supervisor.launch(self.detail, profile),
                self,
                permissions=profile.permissions,
                standing_kinds=[capability.name for capability in self.detail.requested_capabilities],
            )
            try:
                started = await self._unless_stopped(
                    session.start(timeout=profile.start_timeout_seconds, resume_session_id=resume)
                )
            except AgentStartError as error:
                exit = await self._close(session)
                if self.stop_requested.is_set():
                    break
                # A failed restart counts as one (§9.4): try again while the budget lasts.
                delay = self._next_restart_delay() if restarting else None
                if delay is None:
                    await self._start_failed(str(error), exit)
                    return
                await self._diagnose(Severity.WARNING, DIAG_AGENT_START_FAILED, self._start_failure(str(error)))
                await self.runtime.update_execution(self.ref, state=ExecutionState.RESTARTING, pid=None, exit=exit)
                await self._unless_stopped(asyncio.sleep(delay))
                continue
            finally:
                self.first_start.set()
            if started is None:  # stopped while starting
                await self._stop_process(session)
                await self._exited(await self._close(session), _Left())
                return
            await self._started(session, started, resume)
            left = await self._serve(session)
            if self.stop_requested.is_set():
                await self._stop_process(session)
            elif session.running:
                session.kill()  # it broke the connection, yet runs on: it is of no more use
            exit = await self._close(session)
            if self.stop_requested.is_set():
                await self._exited(exit, left)
                return
            resume = self.session_id
            if self.restart_now:
                self.restart_now = False
                await self.runtime.update_execution(self.ref, state=ExecutionState.RESTARTING, pid=None, exit=exit)
                await self._end_left(left)
                await self._diagnose(
                    Severity.WARNING,
                    DIAG_AGENT_RESTARTED,
                    f"the agent of worker {self.worker_id} did not end its turn within {self.grace:g} s of "
                    "session/cancel: it was killed and started again",
                )
                restarting = False
                continue
            exit = exit or ProcessExit()
            delay = await self._after_exit(session, exit, left)
            if delay is None:
                await self._stop_worker(f"agent {describe_exit(exit)}")
                return
            await self._unless_stopped(asyncio.sleep(delay))
            restarting = True
        # Stopped while starting or waiting to restart: no process is left.
        await self.runtime.update_execution(self.ref, state=ExecutionState.EXITED, pid=None, pending_permissions=0)

    async def _prepare_restore(self) -> str | None:
        """A restored worker: the turn left open when the daemon went away ends ``interrupted``
        (its input is not delivered again), then the agent starts and resumes the session."""
        execution = self.detail.execution
        assert execution is not None
        await self.runtime.update_execution(self.ref, state=ExecutionState.STARTING, pid=None, pending_permissions=0)
        if execution.open_turn is not None:
            await self.runtime.end_turn(self.ref, execution.open_turn, StopReason.INTERRUPTED)
        return execution.session_id

    async def _started(self, session: AgentSession, started: Started, resume: str | None) -> None:
        self.session_id = started.session_id
        log.info(
            "worker %s: agent %d started (session %s%s)",
            self.worker_id,
            session.pid,
            started.session_id,
            ", resumed" if started.resumed else "",
        )
        await self.runtime.update_execution(
            self.ref,
            state=ExecutionState.IDLE,
            pid=session.pid,
            agent=started.handshake.agent,
            session_id=started.session_id,
        )
        if resume is not None and not started.resumed:
            await self._diagnose(
                Severity.WARNING,
                DIAG_CONTEXT_LOST,
                f"the agent of worker {self.worker_id} starts without its earlier conversation "
                f"(session {resume} could not be loaded: {started.load_error})",
            )

    async def _serve(self, session: AgentSession) -> _Left:
        """Deliver queued inputs, a turn at a time, until the agent's process ends or a stop
        comes; a graceful stop lets the running turn end first (cancelled, within the grace)."""
        exited = asyncio.ensure_future(session.wait())
        try:
            while not self.stop_requested.is_set():
                self.wake.clear()  # before begin_turn: an input made durable after it wakes us
                turn = self.turn = _Turn()
                try:
                    started = await self.runtime.begin_turn(self.ref)
                except BaseException:
                    self._forget(turn)
                    raise
                if started is None:
                    self._forget(turn)
                    await _first(exited, self.wake.wait(), self.stop_requested.wait())
                    if exited.done():
                        return _Left()
                    continue
                turn.number = started.turn
                left = await self._turn(session, turn, started)
                if left is not None:
                    return left
            return _Left()
        finally:
            exited.cancel()

    async def _turn(self, session: AgentSession, turn: _Turn, started: TurnStart) -> _Left | None:
        """One turn; ``_Left`` when the process went away during it (ended by the caller)."""
        assert turn.number is not None
        if turn.cancel_by is not None or self.stop_requested.is_set():
            # Cancelled before its prompt was sent: the agent never sees the input.
            await self._end_turn(turn, StopReason.CANCELLED)
            return None
        prompt = asyncio.create_task(self._prompt(session, turn, started))
        try:
            await _first(prompt, self.stop_requested.wait())
            if not prompt.done():
                # A stop: the turn is cancelled and given the grace to end; then the stop sequence.
                if not self.kill:
                    await self._cancel_turn(turn, "stop")
                    await asyncio.wait({prompt}, timeout=self.grace)
                if not prompt.done():
                    self._stop_process(session)
            result = await prompt
        except BaseException:
            prompt.cancel()
            raise
        if result is None:
            await self._end_turn(turn, StopReason.CANCELLED)
            return None
        if result.stop_reason is StopReason.INTERRUPTED:
            return _Left(turn, result.text)
        error = result.error if result.stop_reason is StopReason.ERROR else None
        await self._end_turn(turn, result.stop_reason, result.text, error)
        return None

    async def _prompt(self, session: AgentSession, turn: _Turn, started: TurnStart) -> TurnResult | None:
        """The turn's prompt and how it ended; ``None`` when it was cancelled before it was sent."""
        # Whoever cancels the turn from now on finds it on the wire (prompting), or not sent.
        if turn.cancel_by is not None:
            return None
        turn.prompting = True
        assert turn.number is not None
        entry = started.entry
        return await session.prompt(entry.content, turn=turn.number, system=entry.role is TranscriptRole.SYSTEM)

    async def _cancel_turn(self, turn: _Turn, by: str) -> None:
        if turn.cancel_by is None:
            turn.cancel_by = by
        session = self.session
        if turn.prompting and session is not None:
            await session.cancel()

    async def _end_turn(self, turn: _Turn, reason: StopReason, text: str = "", error: str | None = None) -> None:
        assert turn.number is not None
        try:
            await self.runtime.end_turn(self.ref, turn.number, reason, text, error)
        finally:
            self._forget(turn)

    async def _end_left(self, left: _Left) -> None:
        if left.turn is not None:
            await self._end_turn(left.turn, StopReason.INTERRUPTED, left.text)

    def _forget(self, turn: _Turn) -> None:
        if self.turn is turn:
            self.turn = None
        turn.ended.set()

    def _stop_process(self, session: AgentSession) -> asyncio.Task[None]:
        """The stop sequence, once: SIGKILL for a cancel; else stdin closed, then SIGTERM and
        SIGKILL after the grace each."""
        if self._stopper is None:
            self._stopper = asyncio.create_task(self._terminate(session), name=f"stop-agent-of-{self.worker_id}")
        return self._stopper

    async def _terminate(self, session: AgentSession) -> None:
        if session.pid is None:
            return
        if self.kill:
            session.kill()
            await session.wait()
        else:
            await session.terminate(self.grace)

    async def _close(self, session: AgentSession) -> ProcessExit | None:
        """Reap the session's process and hand over everything it wrote; how it ended (``None``
        when it was never spawned)."""
        if self._stopper is not None:
            await self._stopper
        exit = await session.wait() if session.pid is not None else None
        await session.close()
        return exit

    async def _exited(self, exit: ProcessExit | None, left: _Left) -> None:
        """The agent is gone after a stop: recorded, and a turn it left open ends ``interrupted``."""
        log.info("worker %s: agent %s", self.worker_id, describe_exit(exit) if exit is not None else "stopped")
        await self.runtime.update_execution(
            self.ref, state=ExecutionState.EXITED, pid=None, exit=exit, pending_permissions=0
        )
        await self._end_left(left)

    async def _after_exit(self, session: AgentSession, exit: ProcessExit, left: _Left) -> float | None:
        """The agent went away by itself (or broke the protocol): the state it leaves, its turn
        ended, the diagnostic; the delay before it starts again, or ``None`` if it does not."""
        process = session.process
        failed = exit.code != 0
        restart = self.profile is not None and self.profile.restart is RestartPolicy.ON_FAILURE and failed
        delay = self._next_restart_delay() if restart else None
        state = ExecutionState.RESTARTING if delay is not None else ExecutionState.EXITED
        await self.runtime.update_execution(self.ref, state=state, pid=None, exit=exit, pending_permissions=0)
        await self._end_left(left)
        if delay is not None:
            what = f"restarting it in {delay:g} s (restart {len(self.restarts)} of {MAX_RESTARTS} in 10 minutes)"
        elif restart:
            what = f"not restarting it: {MAX_RESTARTS} restarts in the last 10 minutes"
        else:
            what = "the worker stops"
        if process.protocol_error is not None:
            message = f"the agent of worker {self.worker_id} broke the protocol: {process.protocol_error}"
            await self._diagnose(Severity.WARNING, DIAG_PROTOCOL_ERROR, f"{message}; it was killed, {what}")
        else:
            message = f"the agent of worker {self.worker_id} {describe_exit(exit)}; {what}"
            tail = [line[:DIAGNOSTIC_LINE_CHARS] for line in process.stderr_tail[-DIAGNOSTIC_STDERR_LINES:]]
            if tail:
                message += "; the last lines of its stderr:\n" + "\n".join(tail)
            await self._diagnose(Severity.WARNING if failed else Severity.INFO, DIAG_AGENT_EXITED, message)
        log.info("worker %s: agent %d %s; %s", self.worker_id, process.pid, describe_exit(exit), what)
        return delay

    def _next_restart_delay(self) -> float | None:
        """Take one restart from the budget: its delay (1 s, 2 s, 4 s), or ``None`` when used up."""
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] >= RESTART_WINDOW_SECONDS:
            self.restarts.popleft()
        if len(self.restarts) >= MAX_RESTARTS:
            return None
        delay = self.supervisor.restart_delay * (1 << len(self.restarts))
        self.restarts.append(now)
        return delay

    async def _start_failed(self, why: str, exit: ProcessExit | None = None) -> None:
        """The agent could not be started (§9.3), or restored (§9.4): the worker stops."""
        await self.runtime.update_execution(self.ref, state=ExecutionState.EXITED, pid=None, exit=exit)
        restore = self.restoring and not self.first_start.is_set()
        code = DIAG_RESTORE_FAILED if restore else DIAG_AGENT_START_FAILED
        await self._diagnose(Severity.ERROR, code, self._start_failure(why))
        await self._stop_worker(f"agent failed to {'restore' if restore else 'start'}: {why}")

    def _start_failure(self, why: str) -> str:
        command = shlex.join(self.profile.command) if self.profile is not None else "(no command)"
        return f"the agent of worker {self.worker_id} failed to start: {why} (command: {command})"

    async def _give_up(self, error: Exception) -> None:
        """Supervising the agent failed (the store refused a change …): the agent is killed, and
        unless the daemon is shutting down, the worker stops."""
        if self.session is not None:
            self.session.kill()
        if self.supervisor.closing or self.stop_requested.is_set():
            return
        with contextlib.suppress(Exception):
            if self.restoring and not self.first_start.is_set():
                await self._diagnose(
                    Severity.ERROR,
                    DIAG_RESTORE_FAILED,
                    f"the agent of worker {self.worker_id} could not be restored: {error}",
                )
            await self._stop_worker(f"agent supervision failed: {error}")

    async def _stop_worker(self, reason: str) -> None:
        with contextlib.suppress(RuntimeStopped):
            await self.runtime.stop_worker(self.ref, reason)

    async def _diagnose(self, severity: Severity, code: str, message: str) -> None:
        await self.runtime.diagnose(self.ref, severity, code, message)

    def _cancelled_by(self) -> str:
        """Who a permission request answered ``cancelled`` by its turn's end is answered by."""
        if self.stop_requested.is_set():
            return "stop"
        turn = self.turn
        return turn.cancel_by if turn is not None and turn.cancel_by is not None else "interrupt"

    async def _unless_stopped(self, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result; ``None`` (and it cancelled) if a stop comes first."""
        task = asyncio.ensure_future(awaitable)
        try:
            await _first(task, self.stop_requested.wait())
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return task.result() if not task.cancelled() else None


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` is done; the waits made here for the others are
    cancelled (a task or future passed in is left as it is)."""
    futures = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    made = [future for future, awaitable in zip(futures, awaitables, strict=True) if future is not awaitable]
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in made:
            future.cancel()


def _remove_deleted_directories(workdirs: Path, live: Collection[str]) -> None:
    """Remove the directories runtimed made for workers that are gone: a worker deleted just
    before the daemon went away (its directory is removed after the answer, in the background)
    leaves one. Only entries named like a worker id that no live worker has are removed, and a
    symbolic link is never followed; anything else under ``workdirs`` is left alone."""
    try:
        entries = list(os.scandir(workdirs))
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("cannot look for the directories of deleted workers in %s: %s", workdirs, error)
        return
    for entry in entries:
        if worker_sequence(entry.name) is None or entry.name in live or not entry.is_dir(follow_symlinks=False):
            continue
        log.info("removing the directory of deleted worker %s: %s", entry.name, entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)


def _remove_directory(directory: Path) -> None:
    """Remove a deleted worker's directory in a thread of the loop's executor: an agent's
    directory may hold many files, and the event loop must not wait for them."""
    if directory.is_dir() and not directory.is_symlink():
        remove = functools.partial(shutil.rmtree, directory, ignore_errors=True)
        asyncio.get_running_loop().run_in_executor(None, remove)
