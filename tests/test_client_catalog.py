"""``runtimed delete`` and the filtered, paged ``runtimed workers`` against a real daemon
(issue 13, written against contract §11: ``DELETE /v1/workers/{id}`` and
``GET /v1/workers?status=&limit=&after=``).

The client pages through ``next_after`` until it is null and, with ``--json``, prints one body
holding every worker of every page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .client_helpers import ClientProcess, api, cli, until_idle
from .process import RuntimedProcess

pytestmark = pytest.mark.process

ECHO = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "builtin:echo"}}
RECORD = {"intent": {"kind": "task", "objective": "keep notes"}, "profile": {"kind": "runtime_default"}}


@pytest.fixture(scope="module")
def daemon() -> Iterator[RuntimedProcess]:
    with RuntimedProcess("--bind", "127.0.0.1:0", "--max-event-batch-items", "3") as process:
        yield process


def create(daemon: RuntimedProcess, request: dict = RECORD) -> str:
    worker_id: str = api(daemon, "POST", "/v1/workers", request)["worker"]["worker_id"]
    return worker_id


def stopped(daemon: RuntimedProcess) -> str:
    worker_id = create(daemon)
    api(daemon, "POST", f"/v1/workers/{worker_id}/stop")
    return worker_id


def run(daemon: RuntimedProcess, *args: str) -> tuple[int, str, str]:
    result = cli(*args, "--url", daemon.base_url)
    return result.exit_code, result.stdout, result.stderr


def test_delete_removes_a_stopped_worker_and_json_prints_the_deleted_ref(daemon):
    first, second = stopped(daemon), stopped(daemon)
    assert run(daemon, "delete", first) == (0, f"{first}: deleted\n", "")
    code, _, err = run(daemon, "show", first)
    assert code == 1 and err.startswith(f"runtimed: worker_not_found: worker {first} was not found")
    ref = api(daemon, "GET", f"/v1/workers/{second}")["worker"]["worker_ref"]
    code, out, err = run(daemon, "delete", second, "--json")
    assert (code, err) == (0, "") and json.loads(out) == {"deleted": ref}


def test_delete_of_a_running_worker_is_the_apis_409_in_one_line(daemon):
    worker_id = create(daemon)
    code, out, err = run(daemon, "delete", worker_id)
    assert (code, out) == (1, "")
    assert err.startswith("runtimed: worker_running: ") and err.count("\n") == 1
    assert api(daemon, "GET", f"/v1/workers/{worker_id}")["worker"]["status"] == "running"


def test_watch_ends_with_status_0_when_its_worker_is_deleted(daemon, tmp_path):
    worker_id = create(daemon, ECHO)
    until_idle(daemon, worker_id)
    with ClientProcess(tmp_path, "watch", worker_id, "--url", daemon.base_url) as watch:
        watch.wait_for(f"── {worker_id}: running")
        api(daemon, "POST", f"/v1/workers/{worker_id}/stop")
        watch.wait_for("── status stopped")
        api(daemon, "DELETE", f"/v1/workers/{worker_id}")
        assert watch.wait() == 0
        assert watch.lines()[-1] == f"── {worker_id} was deleted"
        assert watch.stderr.startswith("last cursor: wo_")


def test_workers_filters_by_status_through_every_page(daemon):
    running = {create(daemon) for _ in range(2)}
    halted = {stopped(daemon) for _ in range(4)}
    code, out, err = run(daemon, "workers", "--status", "stopped", "--json")
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert body["next_after"] is None
    stopped_ids = [w["worker_id"] for w in body["workers"]]
    assert all(w["status"] == "stopped" for w in body["workers"])
    assert halted <= set(stopped_ids) and not running & set(stopped_ids)
    # More than one page of three: the merged body holds every one, in creation order.
    assert len(stopped_ids) >= 4 and stopped_ids == sorted(stopped_ids)
    code, out, _ = run(daemon, "workers", "--status", "stopped")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[0] for row in rows] == stopped_ids and {row[1] for row in rows} == {"stopped"}


def test_workers_with_a_page_size_pages_through_all_of_them(daemon):
    for _ in range(3):
        create(daemon)
    everyone = api(daemon, "GET", "/v1/workers")["workers"]
    code, out, err = run(daemon, "workers", "--page-size", "2", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"workers": everyone, "next_after": None}
    code, out, _ = run(daemon, "workers", "--status", "running", "--status", "cancelled", "--page-size", "1")
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == [w["worker_id"] for w in everyone if w["status"] in ("running", "cancelled")]
