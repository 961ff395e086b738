"""``runtimed watch`` and ``runtimed transcript --follow`` as real processes against a real daemon
(issue 13): an echo agent's turn rendered as it streams, ``--json`` frames exactly as sent,
``--cursor`` continuing where a watch stopped, a too-old cursor's gap, and a watch that carries
on across a restart of an fs-store daemon with no event missed and none twice.

The client runs as a child process (``client_helpers.ClientProcess``) because these commands end
on a signal; what it printed is compared with a fresh observation session's replay.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .client_helpers import ClientProcess, api, cli, replay, short_tmp, snapshot, until, until_idle
from .process import RuntimedProcess

pytestmark = pytest.mark.process

ECHO = {"intent": {"kind": "assistant"}, "profile": {"kind": "builtin", "value": "builtin:echo"}}


@pytest.fixture(scope="module")
def daemon() -> Iterator[RuntimedProcess]:
    with RuntimedProcess("--bind", "127.0.0.1:0") as process:
        yield process


def echo_worker(daemon: RuntimedProcess) -> str:
    worker_id: str = api(daemon, "POST", "/v1/workers", ECHO)["worker"]["worker_id"]
    until_idle(daemon, worker_id)
    return worker_id


def say(daemon: RuntimedProcess, worker_id: str, content: str) -> None:
    api(daemon, "POST", f"/v1/workers/{worker_id}/input", {"kind": "user", "content": content})


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        frame for frame in frames if frame["kind"] == "event" and frame["envelope"]["payload"]["event"] != "snapshot"
    ]


def turn_ended(process: ClientProcess, turn: int) -> bool:
    return any(
        frame["kind"] == "event"
        and frame["envelope"]["payload"] == {"event": "turn_ended", "data": {"turn": turn, "stop_reason": "end_turn"}}
        for frame in process.frames()
    )


def test_watch_renders_a_turn_as_it_streams_and_prints_the_last_cursor_on_ctrl_c(daemon, tmp_path):
    worker_id = echo_worker(daemon)
    with ClientProcess(tmp_path, "watch", worker_id, "--url", daemon.base_url) as watch:
        watch.wait_for(f"── {worker_id}: running")
        say(daemon, worker_id, "hello watcher")
        watch.wait_for("── turn 1 ended: end_turn")
        assert watch.stop(signal.SIGINT) == 0
    assert watch.lines() == [
        f"── {worker_id}: running, execution idle, 0 transcript entries",
        "#1 user: hello watcher",
        "assistant: echo: hello watcher",
        "── turn 1 ended: end_turn",
    ]
    [last] = re.findall(r"^last cursor: (wo_[0-9a-f]{16})$", watch.stderr, re.MULTILINE)
    assert last == snapshot(daemon.base_url, worker_id)["envelope"]["cursor"]  # the worker's newest event


def test_watch_json_prints_every_frame_as_sent_and_cursor_continues_after_the_last(daemon, tmp_path):
    worker_id = echo_worker(daemon)
    with ClientProcess(tmp_path, "watch", worker_id, "--json", "--url", daemon.base_url) as watch:
        watch.wait_for('"event":"snapshot"')
        say(daemon, worker_id, "first")
        until(lambda: turn_ended(watch, 1), "turn 1 on the watch")
        assert watch.stop(signal.SIGTERM) == 0
    frames = watch.frames()
    assert frames[0]["envelope"]["payload"]["event"] == "snapshot"
    start = frames[0]["envelope"]["cursor"]
    seen = frames[1:]
    assert seen == [json.loads(text) for text in replay(daemon.base_url, worker_id, start, len(seen))]
    last = seen[-1]["envelope"]["cursor"]
    assert watch.stderr == f"last cursor: {last}\n"

    say(daemon, worker_id, "second")
    until_idle(daemon, worker_id, turns=2)
    with ClientProcess(tmp_path, "watch", worker_id, "--json", "--cursor", last, "--url", daemon.base_url) as again:
        until(lambda: turn_ended(again, 2), "turn 2 on the second watch")
        assert again.stop(signal.SIGINT) == 0
    more = again.frames()
    assert more[0]["envelope"]["cursor"] == last  # the snapshot stands at the cursor given
    assert more[1:] == [json.loads(text) for text in replay(daemon.base_url, worker_id, last, len(more) - 1)]
    assert more[1]["envelope"]["payload"] == {"event": "user_message", "data": {"sequence": 3, "content": "second"}}


def test_watch_of_a_worker_that_does_not_exist_is_one_line_and_exit_1(daemon):
    result = cli("watch", "worker-ffffffff", "--url", daemon.base_url)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"runtimed: worker_not_found: worker worker-ffffffff was not found in runtime {daemon.runtime_id}\n"
    )


def test_watch_refuses_a_malformed_cursor_as_a_usage_error():
    result = cli("watch", "worker-00000001", "--cursor", "wo_12", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "'wo_12' is not a cursor" in result.stderr


def test_a_cursor_older_than_the_backlog_continues_from_resume_from_and_warns(tmp_path):
    config = tmp_path / "runtimed.toml"
    config.write_text("[limits]\nobservation_backlog = 4\n")
    with RuntimedProcess("--bind", "127.0.0.1:0", "--config", str(config)) as small:
        worker_id = echo_worker(small)
        say(small, worker_id, "one")
        until_idle(small, worker_id, turns=1)
        say(small, worker_id, "two")
        until_idle(small, worker_id, turns=2)
        oldest = "wo_" + format(1, "016x")
        args = ("watch", worker_id, "--json", "--cursor", oldest, "--url", small.base_url)
        with ClientProcess(tmp_path, *args) as watch:
            watch.wait_for("continuing from", stream="stderr")
            until(lambda: turn_ended(watch, 2), "the retained end of turn 2")
            assert watch.stop(signal.SIGINT) == 0
    frames = watch.frames()
    assert frames[0]["envelope"]["payload"]["event"] == "snapshot"
    diagnostic = frames[1]["diagnostic"]
    assert diagnostic["code"] == "runtime.cursor_unknown_or_expired"
    resume_from = diagnostic["resume_from"]
    assert f"events after {oldest} up to {resume_from} are lost, continuing from {resume_from}" in watch.stderr
    retained = events(frames[2:])
    assert len(retained) == 4  # the backlog: the newest four events of the worker
    assert retained[0]["envelope"]["cursor"] > resume_from


def test_watch_resumes_across_a_restart_of_an_fs_daemon_with_no_gap_and_no_duplicate():
    with short_tmp() as directory:
        sock = directory / "s.sock"
        args = ("--bind", "127.0.0.1:0", "--store", "fs", "--fs-root", str(directory / "state"))
        args += ("--unix-socket", str(sock))
        first = RuntimedProcess(*args).start()
        try:
            worker_id = echo_worker(first)
            watch = ClientProcess(directory, "watch", worker_id, "--json", "--unix-socket", str(sock))
            with watch:
                watch.wait_for('"event":"snapshot"')
                say(first, worker_id, "before the restart")
                until(lambda: turn_ended(watch, 1), "turn 1 on the watch")
                assert first.stop(signal.SIGTERM) == 0
                watch.wait_for("runtime.upstream_closed", stream="stderr")
                with RuntimedProcess(*args) as second:
                    watch.wait_for("reconnected", stream="stderr")
                    say(second, worker_id, "after the restart")
                    until(lambda: turn_ended(watch, 2), "turn 2 on the watch")
                    assert watch.stop(signal.SIGINT) == 0
                    frames, stderr = watch.frames(), watch.stderr
                    start = frames[0]["envelope"]["cursor"]
                    seen = events(frames)
                    fresh = [json.loads(text) for text in replay(second.base_url, worker_id, start, len(seen))]
        finally:
            first.close()
    assert [frame["kind"] for frame in frames].count("diagnostic") == 1  # upstream_closed, printed as sent
    cursors = [frame["envelope"]["cursor"] for frame in seen]
    assert len(set(cursors)) == len(cursors)
    assert seen == fresh
    contents = [f["envelope"]["payload"]["data"].get("content") for f in seen]
    assert "echo: before the restart" in contents and "echo: after the restart" in contents
    assert re.search(rf"last cursor: {cursors[-1]}\n$", stderr)


# ------------------------------------------------------------------ transcript --follow


def test_transcript_follow_prints_the_transcript_then_each_new_entry(daemon, tmp_path):
    worker_id = echo_worker(daemon)
    say(daemon, worker_id, "already there")
    until_idle(daemon, worker_id, turns=1)
    with ClientProcess(tmp_path, "transcript", worker_id, "--follow", "--url", daemon.base_url) as follow:
        follow.wait_for("#2 assistant: echo: already there")
        say(daemon, worker_id, "new one")
        follow.wait_for("#4 assistant: echo: new one")
        assert follow.stop(signal.SIGINT) == 0
    assert follow.lines() == [
        "#1 user: already there",
        "#2 assistant: echo: already there",
        "#3 user: new one",
        "#4 assistant: echo: new one",
    ]


def test_transcript_follow_json_prints_each_page_as_the_api_sent_it(daemon, tmp_path):
    worker_id = echo_worker(daemon)
    say(daemon, worker_id, "one")
    until_idle(daemon, worker_id, turns=1)
    args = ("transcript", worker_id, "--follow", "--json", "--url", daemon.base_url)
    with ClientProcess(tmp_path, *args) as follow:
        follow.wait_for('"content":"echo: one"')
        say(daemon, worker_id, "two")
        until_idle(daemon, worker_id, turns=2)
        follow.wait_for('"content":"echo: two"')
        assert follow.stop(signal.SIGTERM) == 0
    pages = follow.frames()
    assert all(set(page) == {"transcript"} for page in pages)
    items = [item for page in pages for item in page["transcript"]["items"]]
    assert items == api(daemon, "GET", f"/v1/workers/{worker_id}/transcript")["transcript"]["items"]


def test_watch_ends_with_status_1_when_the_daemon_comes_back_with_another_runtime():
    with short_tmp() as directory:
        sock = directory / "s.sock"
        args = ("--bind", "127.0.0.1:0", "--unix-socket", str(sock))  # the memory store: new runtime each start
        first = RuntimedProcess(*args).start()
        try:
            worker_id = echo_worker(first)
            with ClientProcess(directory, "watch", worker_id, "--unix-socket", str(sock)) as watch:
                watch.wait_for(f"── {worker_id}: running")
                assert first.stop(signal.SIGTERM) == 0
                watch.wait_for("runtime.upstream_closed", stream="stderr")
                with RuntimedProcess(*args) as second:
                    echo_worker(second)  # the same id, in another runtime
                    assert watch.wait() == 1
                    assert (
                        f"runtimed: the daemon now serves runtime {second.runtime_id}, not {first.runtime_id}: "
                        f"the {worker_id} watched is gone with its runtime\n" in watch.stderr
                    )
                    assert re.search(r"\nlast cursor: wo_[0-9a-f]{16}\n$", watch.stderr)
        finally:
            first.close()


def test_a_watch_that_falls_behind_continues_from_resume_from_and_warns_of_the_gap(tmp_path):
    config = tmp_path / "runtimed.toml"
    config.write_text("[limits]\nsubscriber_queue = 1\nobservation_backlog = 4\n")
    with RuntimedProcess("--bind", "127.0.0.1:0", "--config", str(config)) as small:
        record_only = {"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}}
        worker_id = api(small, "POST", "/v1/workers", record_only)["worker"]["worker_id"]
        with ClientProcess(tmp_path, "watch", worker_id, "--json", "--url", small.base_url) as watch:
            watch.wait_for('"event":"snapshot"')
            watch.process.send_signal(signal.SIGSTOP)  # it stops reading: the daemon's queue for it overruns
            try:
                payload = "x" * (64 * 1024)
                for _ in range(400):
                    say(small, worker_id, payload)
                    if overruns(small) > 0:
                        break
                assert overruns(small) > 0, "the stopped watch never fell behind"
                for n in range(1, 4):
                    say(small, worker_id, f"tail {n}")
            finally:
                watch.process.send_signal(signal.SIGCONT)
            watch.wait_for('"content":"tail 3"')
            watch.wait_for("are lost, continuing from", stream="stderr")
            assert watch.stop(signal.SIGINT) == 0
    seen = events(watch.frames())
    cursors = [frame["envelope"]["cursor"] for frame in seen]
    assert cursors == sorted(set(cursors))  # nothing twice, in order
    assert [frame["envelope"]["payload"]["data"]["content"] for frame in seen[-3:]] == ["tail 1", "tail 2", "tail 3"]


def overruns(daemon: RuntimedProcess) -> float:
    text = urllib.request.urlopen(daemon.base_url + "/metrics", timeout=5).read().decode()
    [value] = re.findall(r"^runtimed_subscriber_overruns(?:_total)?(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(value)
