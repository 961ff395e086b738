"""§11 with the fs store across restarts: kept answers survive a SIGKILL, a deleted worker's
files are gone when the answer is sent. Real ``runtimed serve`` processes on a real root.

These wait for the fs store to persist ``Change.idempotency`` and ``Change.deleted`` (the
write-ahead log rewrite of issue 11 does the fs store's part): until then each one fails, and
``xfail(strict=True)`` says so; once the fs store does its part they pass, and strict xfail fails
the run until the mark is taken off.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .process import RuntimedProcess, request_json

AWAITS_FS = pytest.mark.xfail(
    strict=True, reason="awaits the fs store's persistence of kept answers and deletions (§11, issue 12)"
)
pytestmark = [pytest.mark.process, AWAITS_FS]

CREATE = {"intent": {"kind": "task", "objective": "x"}, "profile": {"kind": "runtime_default"}}
INPUT = {"kind": "user", "content": "hello"}


def serve_fs(root: Path) -> RuntimedProcess:
    return RuntimedProcess("--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(root))


def keyed(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_a_create_answered_before_a_sigkill_is_replayed_after_the_restart(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        status, _, first = request_json("POST", daemon.base_url + "/v1/workers", CREATE, keyed("create-1"))
        assert status == 200
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        status, headers, again = request_json("POST", daemon.base_url + "/v1/workers", CREATE, keyed("create-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, first, "true")
        assert len(request_json("GET", daemon.base_url + "/v1/workers")[2]["workers"]) == 1
        assert daemon.stop() == 0


def test_an_input_and_a_stop_that_changed_nothing_are_replayed_after_a_sigkill(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        url = daemon.base_url
        worker = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        _, _, sent = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        request_json("POST", f"{url}/v1/workers/{worker}/stop")
        _, _, unchanged = request_json("POST", f"{url}/v1/workers/{worker}/stop", None, keyed("stop-again"))
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        url = daemon.base_url
        status, headers, again = request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT, keyed("in-1"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, sent, "true")
        status, headers, again = request_json("POST", f"{url}/v1/workers/{worker}/stop", None, keyed("stop-again"))
        assert (status, again, headers.get("Idempotent-Replayed")) == (200, unchanged, "true")
        status, _, reused = request_json("POST", f"{url}/v1/workers/{worker}/cancel", None, keyed("in-1"))
        assert (status, reused["error"]["code"]) == (409, "idempotency_key_reused")
        assert daemon.stop() == 0


def test_a_deleted_workers_files_are_gone_when_the_answer_is_sent(tmp_path):
    root = tmp_path / "root"
    with serve_fs(root) as daemon:
        url = daemon.base_url
        worker = request_json("POST", url + "/v1/workers", CREATE)[2]["worker"]["worker_id"]
        request_json("POST", f"{url}/v1/workers/{worker}/input", INPUT)
        request_json("POST", f"{url}/v1/workers/{worker}/stop")
        directories = list(root.glob(f"runtimes/id-*/workers/id-{worker.encode().hex()}"))
        assert len(directories) == 1
        assert request_json("DELETE", f"{url}/v1/workers/{worker}")[0] == 200
        assert not directories[0].exists()
        daemon.stop(signal.SIGKILL)
    with serve_fs(root) as daemon:
        assert request_json("GET", f"{daemon.base_url}/v1/workers/{worker}")[0] == 404
        assert not directories[0].exists()
        assert daemon.stop() == 0
