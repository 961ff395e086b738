"""The JSON text of observation WebSocket frames (contract §7), dumped with the frame schemas."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ..domain.observation import Observation, encode_cursor
from ..runtime import WorkerSnapshot
from . import schemas
from .encoding import dumps

_event_frame = schemas.compile_dumper(schemas.EventFrameSchema())
_diagnostic_frame = schemas.compile_dumper(schemas.DiagnosticFrameSchema())
_snapshot_data = schemas.compile_dumper(schemas.SnapshotDataSchema())


def event_frame(cursor: str, event_id: str, worker_id: str, event: str, data: Any) -> str:
    envelope = {
        "cursor": cursor,
        "event_id": event_id,
        "worker_id": worker_id,
        "payload": {"event": event, "data": data},
    }
    return dumps(_event_frame({"kind": "event", "envelope": envelope})).decode()


def snapshot_frame(snapshot: WorkerSnapshot, start: int) -> str:
    """The first frame of a session: the worker now, under the cursor of the start point."""
    cursor = encode_cursor(start)
    data = _snapshot_data({"worker": snapshot.worker, "status": snapshot.worker.status, "entries": snapshot.entries})
    return event_frame(cursor, f"snapshot:{cursor}", snapshot.worker.worker_id, "snapshot", data)


def diagnostic_frame(code: str, message: str, resume_from: int | None = None) -> str:
    diagnostic: dict[str, Any] = {"code": code, "message": message}
    if resume_from is not None:
        diagnostic["resume_from"] = encode_cursor(resume_from)
    return dumps(_diagnostic_frame({"kind": "diagnostic", "diagnostic": diagnostic})).decode()


class FrameCache:
    """The JSON text of recent event frames, by sequence: with many observers of one worker,
    each event is encoded once, not once per observer. Bounded; frames never change."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._frames: OrderedDict[int, str] = OrderedDict()

    def frame(self, observation: Observation) -> str:
        text = self._frames.get(observation.sequence)
        if text is None:
            cursor = observation.cursor
            text = self._frames[observation.sequence] = event_frame(
                cursor, cursor, observation.worker_ref.worker_id, observation.event, observation.data
            )
            if len(self._frames) > self._capacity:
                self._frames.popitem(last=False)
        return text
