"""Typed errors of the Runtime.

Each error carries a stable snake_case ``code`` from the API contract and a human message.
Nothing here knows about HTTP: the web layer maps ``code`` to a status in one table
(``runtimed.web.errors``).
"""

from __future__ import annotations


class RuntimedError(Exception):
    """Base of every error runtimed reports to a client."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidWorkerId(RuntimedError):
    code = "invalid_worker_id"

    def __init__(self, message: str = "worker_id must not be empty") -> None:
        super().__init__(message)


class InvalidRequest(RuntimedError):
    """A request of the right shape whose values the Runtime refuses (contract §2)."""

    code = "invalid_request"

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid request: {reason}")
        self.reason = reason


class LimitTooLarge(RuntimedError):
    code = "limit_too_large"

    def __init__(self, limit: int, maximum: int) -> None:
        super().__init__(f"limit {limit} exceeds maximum {maximum}")
        self.limit = limit
        self.maximum = maximum


class WrongRuntime(RuntimedError):
    code = "wrong_runtime"

    def __init__(self, given: str, expected: str) -> None:
        super().__init__(f"worker ref names runtime {given}, but this is runtime {expected}")


class WorkerNotFound(RuntimedError):
    code = "worker_not_found"

    def __init__(self, worker_id: str, runtime_id: str) -> None:
        super().__init__(f"worker {worker_id} was not found in runtime {runtime_id}")
        self.worker_id = worker_id


class RuntimeStopped(RuntimedError):
    code = "runtime_stopped"

    def __init__(self, runtime_id: str) -> None:
        super().__init__(f"runtime {runtime_id} is stopped")


class WorkerNotExecuting(RuntimedError):
    """Interrupt or permissions on a worker that runs no agent (a record-only worker, §9)."""

    code = "worker_not_executing"

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} runs no agent; it records input only")
        self.worker_id = worker_id


class InputQueueFull(RuntimedError):
    """Input to an agent-backed worker that already has ``[limits] max_queued_inputs`` undelivered."""

    code = "input_queue_full"

    def __init__(self, worker_id: str, limit: int) -> None:
        super().__init__(
            f"worker {worker_id} has {limit} inputs waiting to be delivered, the most [limits] max_queued_inputs allows"
        )
        self.worker_id = worker_id
        self.limit = limit


class WorkerLimitReached(RuntimedError):
    """Creating an agent-backed worker while ``[limits] max_running_agents`` of them are running."""

    code = "worker_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} agent-backed workers are running, the most [limits] max_running_agents allows; "
            "stop one or create a worker of a profile that names no agent"
        )
        self.limit = limit


class PermissionNotFound(RuntimedError):
    """A permission request that is unknown, or already answered (§9.5)."""

    code = "permission_not_found"

    def __init__(self, worker_id: str, request_id: str) -> None:
        super().__init__(f"worker {worker_id} has no pending permission request {request_id}")
        self.worker_id = worker_id
        self.request_id = request_id


class WorkerRunning(RuntimedError):
    """A delete of a worker that is still ``running`` (§11): stop or cancel it first."""

    code = "worker_running"

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} is running; stop or cancel it before deleting it")
        self.worker_id = worker_id


class IdempotencyKeyReused(RuntimedError):
    """An ``Idempotency-Key`` sent again with another method, path or body (§11)."""

    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was used for another request (another method, path or body); "
            "use a new key for a new request"
        )


class StoreError(RuntimedError):
    """The store failed; the message names the operation and the path."""

    def __init__(self, operation: str, path: str, detail: str) -> None:
        super().__init__(f"{operation} {path}: {detail}")
        self.operation = operation
        self.path = path


class StoreIo(StoreError):
    code = "store_io"


class StoreLocked(StoreIo):
    """Another daemon holds the store's root. Found at start only, so never an HTTP answer: it
    shares ``store_io``'s code rather than adding one to the contract."""


class StoreMissing(StoreError):
    code = "store_missing"


class StoreCorrupt(StoreError):
    code = "store_corrupt"


class StatePoisoned(RuntimedError):
    code = "state_poisoned"

    def __init__(
        self, message: str = "runtime state is unusable after a failed store write; restart the daemon"
    ) -> None:
        super().__init__(message)


class ObservationError(RuntimedError):
    """A failure of an observation session: its ``code`` is a diagnostic frame's code on the
    observation WebSocket (``runtime.…``), never an HTTP status."""


class CursorError(ObservationError):
    """A cursor the bus cannot resume from. ``code`` is the observation diagnostic's code."""

    code = "runtime.cursor_unknown_or_expired"

    def __init__(self, message: str, resume_from: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.resume_from = resume_from


class CursorMalformed(CursorError):
    code = "runtime.cursor_malformed"

    def __init__(self, raw: str) -> None:
        super().__init__(f"malformed worker observation cursor: {raw}")


class CursorUnknown(CursorError):
    """A cursor beyond the newest sequence of the runtime: it was never handed out here."""


class CursorExpired(CursorError):
    """Events after the cursor have left the worker's retained backlog."""


class Overrun(ObservationError):
    """A subscription fell behind its bounded queue; events were dropped for it."""

    code = "runtime.cursor_expired"

    def __init__(self, message: str = "runtime observation backlog was overrun") -> None:
        super().__init__(message)


class WorkerDeleted(ObservationError):
    """The watched worker was deleted (§11): its observation sessions end."""

    code = "runtime.worker_deleted"

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} was deleted")
