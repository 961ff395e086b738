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

from .catalog import WorkerStatus
from .identity import WorkerRef


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
