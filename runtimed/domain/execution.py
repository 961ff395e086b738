"""Workers that execute: agent profiles, a worker's execution, turns and permissions (contract §9).

Values only. The Runtime keeps a worker's ``WorkerExecution`` in its stored state (so restore
knows which inputs reached the agent); the agent supervisor (``runtimed.agents``) changes it only
through Runtime calls, each a durable change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from .identity import WorkerRef

if TYPE_CHECKING:
    # The catalog holds a worker's ``WorkerExecution``, so it imports this module, not the reverse.
    from .catalog import ProfileSelector, WorkerStatus

#: The prefix of a built-in agent's profile name (``builtin:echo``), as selectors and the API write it.
BUILTIN_PREFIX = "builtin:"


class ExecutionState(str, Enum):
    """What the worker's agent process is doing (the catalog's ``WorkerStatus`` is separate)."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"
    EXITED = "exited"


class PermissionPolicy(str, Enum):
    """How an agent's ``session/request_permission`` is answered (§9.5)."""

    ASK = "ask"
    ALLOW = "allow"
    DENY = "deny"


class RestartPolicy(str, Enum):
    """Whether an agent that exits with a failure is started again (§9.4)."""

    ON_FAILURE = "on-failure"
    NEVER = "never"


class ProfileSource(str, Enum):
    BUILTIN = "builtin"
    CONFIG = "config"


class StopReason(str, Enum):
    """How a turn ended: ACP's stop reasons, and runtimed's own ``error`` and ``interrupted``."""

    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    MAX_TURN_REQUESTS = "max_turn_requests"
    REFUSAL = "refusal"
    CANCELLED = "cancelled"
    ERROR = "error"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """An agent workers can be created with: a built-in one (``builtin:echo``) or a config table.

    ``name`` is what ``execution.profile`` and ``GET /v1/profiles`` show: ``builtin:<name>`` for
    built-in agents, the table's name for ``[profiles.<name>]``.
    """

    name: str
    source: ProfileSource
    command: tuple[str, ...]
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ()
    permissions: PermissionPolicy = PermissionPolicy.ASK
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    stop_grace_seconds: float = 5.0
    start_timeout_seconds: float = 30.0
    #: A built-in agent's own settings (``model`` …), handed to it by the supervisor.
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What the agent said of itself in its ``initialize`` answer."""

    name: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """How an agent process ended: an exit status, or the name of the signal that killed it."""

    code: int | None = None
    signal: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerExecution:
    """The execution of an agent-backed worker, as made durable (§9.2).

    ``turns`` counts turns ended; ``turns_started`` numbers them (turn n is the n-th started,
    across restarts). ``delivered_sequence`` is the transcript sequence up to which inputs have
    been consumed — delivered to the agent, or dropped by an interrupt — so restore knows
    exactly which inputs reached the agent. ``open_turn`` is the turn started and not yet ended.
    ``queued_inputs`` is kept by the Runtime as inputs are accepted and consumed.

    ``turns_started``, ``delivered_sequence`` and ``open_turn`` are the restore bookkeeping: they
    are stored, and the API does not show them. The Runtime alone changes ``profile``, the turn
    counts, ``queued_inputs``, ``delivered_sequence`` and ``open_turn``; the backend the rest,
    through ``Runtime.update_execution``.
    """

    profile: str
    state: ExecutionState = ExecutionState.STARTING
    pid: int | None = None
    agent: AgentInfo | None = None
    session_id: str | None = None
    turns: int = 0
    turns_started: int = 0
    queued_inputs: int = 0
    pending_permissions: int = 0
    delivered_sequence: int = 0
    open_turn: int | None = None
    exit: ProcessExit | None = None


@dataclass(frozen=True, slots=True)
class ToolCallInfo:
    tool_call_id: str
    title: str
    kind: str


@dataclass(frozen=True, slots=True)
class PermissionOption:
    option_id: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class PermissionRequest:
    """A pending ``session/request_permission`` that the backend may answer (§9.5)."""

    worker_ref: WorkerRef
    request_id: str
    turn: int | None
    tool_call: ToolCallInfo
    options: tuple[PermissionOption, ...]


@dataclass(frozen=True, slots=True)
class PermissionAnswer:
    request_id: str
    option_id: str
    by: str = "backend"


@dataclass(frozen=True, slots=True)
class InterruptAck:
    """The answer to ``POST …/interrupt``: the turn it ended, if any, and inputs dropped."""

    worker_ref: WorkerRef
    status: WorkerStatus
    turn: int | None
    dropped_inputs: int


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """A profile as ``GET /v1/profiles`` shows it (§9.1): never its ``env`` values."""

    name: str
    source: ProfileSource
    command: tuple[str, ...]
    permissions: PermissionPolicy
    restart: RestartPolicy
    default: bool

    @classmethod
    def of(cls, profile: AgentProfile, default: bool) -> ProfileSummary:
        return cls(profile.name, profile.source, profile.command, profile.permissions, profile.restart, default)


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    """What the daemon's config says about executing workers (§9, §10), for the agent supervisor.

    ``profiles`` are the built-in agents' (``builtin:<name>``) then the ``[profiles.<name>]``
    tables', in the file's order; ``default_profile`` names one of them (or is ``None``: a
    ``runtime_default`` selector makes a record-only worker). The limits here are the
    supervisor's; those the Runtime enforces are ``RuntimeLimits``.
    """

    profiles: tuple[AgentProfile, ...] = ()
    default_profile: str | None = None
    #: Directories a worker's absolute ``workspace_refs`` may name as its working directory.
    workspace_roots: tuple[Path, ...] = ()
    permission_timeout_seconds: float = 300.0
    max_agent_message_bytes: int = 8 * 1024 * 1024
    agent_log_lines_per_second: int = 50

    def profile(self, name: str) -> AgentProfile | None:
        """The profile called ``name`` (``builtin:echo``, or a table's name), if any."""
        for profile in self.profiles:
            if profile.name == name:
                return profile
        return None

    def resolve(self, selector: ProfileSelector) -> AgentProfile | None:
        """The agent a create with ``selector`` runs (§9.1), or ``None`` for a record-only worker:
        ``builtin:<name>`` names a built-in agent, ``named`` a ``[profiles.<name>]`` table,
        ``runtime_default`` the ``default_profile``."""
        if selector.kind == "runtime_default":
            return None if self.default_profile is None else self.profile(self.default_profile)
        value: str = getattr(selector, "value", "")
        profile = self.profile(value)
        if profile is None:
            return None
        wanted = ProfileSource.BUILTIN if selector.kind == "builtin" else ProfileSource.CONFIG
        return profile if profile.source is wanted else None

    def listing(self) -> list[tuple[AgentProfile, bool]]:
        """Every profile, and whether it is the default (what ``ExecutionBackend.profiles`` answers)."""
        return [(profile, profile.name == self.default_profile) for profile in self.profiles]
