"""The commit record: what the fs store has made durable, and so what may have been acknowledged.

Every flush ends with one line appended to ``commits.jsonl`` (and fsynced); nothing of the flush
is acknowledged before that line is durable. A line holds where the runtime's numbered records
stood once the flush was written, as absolute values: the last event id, the last observation
sequence, the last diagnostic id, and, for each worker whose observations the flush wrote, how many
observations its ``observations.jsonl`` has taken in so far (compaction does not lower it). The
line that leads the file holds every worker's count (a checkpoint), so the file can be cut back
to one line whenever it grows long; restore folds the lines in order, a later count replacing an
earlier one.

A line also holds, under ``executions``, the whole stored ``WorkerExecution`` (§9.2) of each
agent-backed worker the flush changed (a checkpoint: of every such worker), a later one replacing
an earlier one. The commit record is the execution's only home: a change such as
``Runtime.begin_turn`` has no runtime event, yet must be durable exactly when its commit line is
— no sooner, or restore would take an unacknowledged turn for delivered; no later, or an input
could reach the agent twice. The key is left out of a line with no execution in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...domain.execution import WorkerExecution
from .. import codec

#: The commit log, beside ``events.jsonl``.
COMMIT_LOG = "commits.jsonl"


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """Where the runtime's numbered records stood at a commit (all 0 before the first)."""

    event_id: int = 0
    observation_sequence: int = 0
    diagnostic_id: int = 0
    #: Per worker id: observations written to its ``observations.jsonl``, those compacted away included.
    observations: Mapping[str, int] = field(default_factory=dict)
    #: Per worker id: the execution of an agent-backed worker, as of this commit.
    executions: Mapping[str, WorkerExecution] = field(default_factory=dict)
    #: Kept ``Idempotency-Key`` answers written to ``idempotency.jsonl``, those compacted away
    #: included (a checkpoint marker's count; 0 in the commit log, which predates them).
    idempotency: int = 0


def encode(
    commit: CommitRecord, workers: Mapping[str, int], executions: Mapping[str, WorkerExecution] | None = None
) -> dict[str, Any]:
    """A commit line: ``commit``'s counters, with the observation counts of ``workers`` only and
    the ``executions`` given (those the flush changed, or every one for a checkpoint)."""
    record: dict[str, Any] = {
        "event_id": commit.event_id,
        "observation_sequence": commit.observation_sequence,
        "diagnostic_id": commit.diagnostic_id,
        "observations": dict(workers),
    }
    if executions:
        record["executions"] = {worker_id: codec.encode_execution(e) for worker_id, e in executions.items()}
    if commit.idempotency:
        record["idempotency"] = commit.idempotency
    return record


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return value


def fold(previous: CommitRecord, record: Mapping[str, Any]) -> CommitRecord:
    """``previous`` advanced by one commit line; raises ``ValueError`` (or ``KeyError``) for a
    line that is malformed or that goes back on what ``previous`` committed."""
    event_id = _count(record["event_id"], "event_id")
    observation_sequence = _count(record["observation_sequence"], "observation_sequence")
    diagnostic_id = _count(record["diagnostic_id"], "diagnostic_id")
    idempotency = _count(record.get("idempotency", previous.idempotency), "idempotency")
    counts = record["observations"]
    if not isinstance(counts, Mapping):
        raise ValueError(f"observations must be an object, not {counts!r}")
    observations = dict(previous.observations)
    for worker_id, value in counts.items():
        count = _count(value, f"the observation count of {worker_id}")
        if count < observations.get(worker_id, 0):
            raise ValueError(
                f"counts {count} observations of {worker_id}, fewer than the {observations[worker_id]} before"
            )
        observations[worker_id] = count
    changed = record.get("executions", {})
    if not isinstance(changed, Mapping):
        raise ValueError(f"executions must be an object, not {changed!r}")
    executions = dict(previous.executions)
    for worker_id, execution in changed.items():
        if not isinstance(execution, Mapping):
            raise ValueError(f"the execution of {worker_id} must be an object, not {execution!r}")
        executions[worker_id] = codec.decode_execution(execution)
    for name, now, before in (
        ("event_id", event_id, previous.event_id),
        ("observation_sequence", observation_sequence, previous.observation_sequence),
        ("diagnostic_id", diagnostic_id, previous.diagnostic_id),
        ("idempotency", idempotency, previous.idempotency),
    ):
        if now < before:
            raise ValueError(f"{name} {now} goes back from {before}")
    return CommitRecord(event_id, observation_sequence, diagnostic_id, observations, executions, idempotency)
