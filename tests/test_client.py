"""The terminal client's one-shot commands against a real ``runtimed serve`` (issue 13).

One daemon serves the module (memory store, TCP and a Unix socket); each test makes its own
workers. The client runs in-process through click's ``CliRunner`` (``client_helpers.cli``), and
what it prints is checked against the API's own answers: in text for a person, and with ``--json``
exactly the bodies the API sent. Watching, following and chatting are in ``test_client_watch.py``
and ``test_client_chat.py``; deletion and paged listings in ``test_client_catalog.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtimed.cli import SECTIONS
from runtimed.daemon.config import builtin_profiles

from .client_helpers import TIMEOUT, ClientProcess, api, cli, short_tmp, until, until_busy, until_idle, worker
from .process import RuntimedProcess

TOKEN = "tok-client-7c1d-never-printed"


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    with short_tmp() as directory:
        yield directory


@pytest.fixture(scope="module")
def daemon(socket_dir: Path) -> Iterator[RuntimedProcess]:
    with RuntimedProcess(
        "--bind", "127.0.0.1:0", "--unix-socket", str(socket_dir / "d.sock"), "--display-name", "client tests"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def token_daemon() -> Iterator[RuntimedProcess]:
    with RuntimedProcess(
        "--bind",
        "127.0.0.1:0",
        "--local-token-env",
        "CLIENT_TEST_TOKEN",
        env={**os.environ, "CLIENT_TEST_TOKEN": TOKEN},
    ) as process:
        yield process


def ok(daemon: RuntimedProcess, *args: str, input: str | None = None) -> str:
    """Run a client command that must succeed; its stdout (stderr must be empty)."""
    result = cli(*args, "--url", daemon.base_url, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def failed(daemon_url: str | None, *args: str, code: int = 1, **kwargs: object) -> str:
    """Run a client command that must fail with ``code``; its one line of stderr, stdout empty."""
    url = ("--url", daemon_url) if daemon_url is not None else ()
    result = cli(*args, *url, **kwargs)  # type: ignore[arg-type]
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def echo_worker(daemon: RuntimedProcess, *options: str) -> str:
    worker_id = ok(daemon, "create", "--profile", "builtin:echo", *options).strip()
    until_idle(daemon, worker_id)
    return worker_id


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ------------------------------------------------------------------------- help


def test_help_lists_every_command_with_a_one_line_description():
    result = cli("--help")
    assert result.exit_code == 0
    listed = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"  (\S+)\s{2,}(\S.*)", line)
        if match:
            listed[match[1]] = match[2]
    for name in (name for names in SECTIONS.values() for name in names):
        assert name in listed, f"{name} is not listed:\n{result.stdout}"
        assert not listed[name].endswith("..."), f"{name}'s description is cut: {listed[name]}"
    assert set(SECTIONS["Client commands (talk to a running daemon)"]) >= {
        "status", "workers", "create", "show", "send", "stop", "cancel", "interrupt", "delete",
        "transcript", "watch", "chat", "permissions", "approve",
    }  # fmt: skip


# ------------------------------------------------------------- the commands


@pytest.mark.process
def test_status_shows_the_runtime_for_a_person_and_its_body_with_json(daemon):
    text = plain(ok(daemon, "status"))
    runtime = api(daemon, "GET", "/v1/runtime")["runtime"]
    assert f"runtime      {daemon.runtime_id}  (client tests)" in text
    assert "status       running" in text
    assert "store        memory" in text
    assert f"workers      {runtime['worker_count']}: {runtime['active_worker_count']} running" in text
    assert f"diagnostics  {runtime['diagnostic_count']}" in text
    body = json.loads(ok(daemon, "status", "--json"))
    assert body == {"runtime": api(daemon, "GET", "/v1/runtime")["runtime"]}


@pytest.mark.process
def test_create_prints_only_the_new_id_so_a_shell_can_keep_it(daemon):
    out = ok(daemon, "create", "--task", "write the notes", "--capability", "read", "--capability", "edit")
    worker_id = out.strip()
    assert out == worker_id + "\n" and re.fullmatch(r"worker-[0-9a-f]{8}", worker_id)
    detail = worker(daemon, worker_id)
    assert detail["intent"] == {"kind": "task", "objective": "write the notes"}
    assert detail["profile"] == {"kind": "runtime_default"}
    assert detail["requested_capabilities"] == [{"name": "read"}, {"name": "edit"}]


@pytest.mark.process
def test_create_builds_each_intent_profile_and_workspace_the_api_takes(daemon):
    role = ok(daemon, "create", "--role", "reviewer", "--purpose", "read diffs", "--profile", "gemini").strip()
    assert worker(daemon, role)["intent"] == {"kind": "role", "role": "reviewer", "purpose": "read diffs"}
    assert worker(daemon, role)["profile"] == {"kind": "named", "value": "gemini"}
    assistant = ok(daemon, "create", "--assistant", "--workspace", "repo=label-not-a-path").strip()
    detail = worker(daemon, assistant)
    assert detail["intent"] == {"kind": "assistant"}
    assert detail["workspace_refs"] == [{"name": "repo", "reference": "label-not-a-path"}]


@pytest.mark.process
def test_create_with_json_prints_the_worker_body_as_the_api_sent_it(daemon):
    body = json.loads(ok(daemon, "create", "--json", "--profile", "builtin:coder"))
    assert set(body) == {"worker"}
    assert body["worker"] == worker(daemon, body["worker"]["worker_id"])


@pytest.mark.parametrize(
    "args, complaint",
    [
        (("--task", "x", "--role", "r"), "give one of --task, --assistant and --role"),
        (("--task", "x", "--purpose", "p"), "--purpose goes with --assistant or --role"),
        (("--workspace", "no-equals"), "'no-equals' is not NAME=PATH"),
    ],
)
def test_create_refuses_options_that_do_not_make_one_request(args, complaint):
    result = cli("create", *args, "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert complaint in result.stderr


@pytest.mark.process
def test_workers_lists_each_worker_in_a_table_and_json_is_the_api_body(daemon):
    echo = echo_worker(daemon)
    record = ok(daemon, "create", "--role", "scribe").strip()
    lines = plain(ok(daemon, "workers")).splitlines()
    assert lines[0].split() == ["ID", "STATUS", "STATE", "PROFILE", "INTENT", "TRANSCRIPT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[echo][:4] == [echo, "running", "idle", "builtin:echo"]
    assert rows[record][:5] == [record, "running", "-", "(runtime", "default)"]
    assert rows[record][-1] == "0"
    assert len(rows) == len(api(daemon, "GET", "/v1/workers")["workers"])
    body = json.loads(ok(daemon, "workers", "--json"))
    assert body["workers"] == api(daemon, "GET", "/v1/workers")["workers"]


@pytest.mark.process
def test_show_prints_the_detail_for_a_person_and_json_is_the_api_body(daemon):
    worker_id = echo_worker(daemon, "--capability", "read")
    text = plain(ok(daemon, "show", worker_id))
    assert f"worker        {worker_id}  (runtime {daemon.runtime_id})" in text
    assert "status        running" in text
    assert "profile       builtin:echo" in text
    assert "capability    read" in text
    assert re.search(r"execution     idle, profile builtin:echo, pid \d+, agent runtimed-echo", text), text
    assert json.loads(ok(daemon, "show", worker_id, "--json")) == {"worker": worker(daemon, worker_id)}


@pytest.mark.process
def test_send_accepts_text_stdin_and_system_items(daemon):
    worker_id = echo_worker(daemon)
    assert ok(daemon, "send", worker_id, "good morning") == f"{worker_id}: input accepted as transcript entry #1\n"
    until_idle(daemon, worker_id, turns=1)
    ack = json.loads(ok(daemon, "send", worker_id, "-", "--json", input="from a pipe\nsecond line\n"))
    assert ack["ack"]["transcript_sequence"] == 3 and ack["ack"]["status"] == "running"
    until_idle(daemon, worker_id, turns=2)
    ok(daemon, "send", worker_id, "--system", "be brief")
    until_idle(daemon, worker_id, turns=3)
    items = api(daemon, "GET", f"/v1/workers/{worker_id}/transcript")["transcript"]["items"]
    assert [(item["role"], item["content"]) for item in items] == [
        ("user", "good morning"),
        ("assistant", "echo: good morning"),
        ("user", "from a pipe\nsecond line"),
        ("assistant", "echo: from a pipe\nsecond line"),
        ("system", "be brief"),
        ("assistant", "system: be brief"),
    ]


@pytest.mark.process
def test_transcript_pages_through_all_of_it_and_json_merges_the_pages(daemon):
    worker_id = echo_worker(daemon)
    for turn in range(1, 4):
        ok(daemon, "send", worker_id, f"line {turn}")
        until_idle(daemon, worker_id, turns=turn)
    text = plain(ok(daemon, "transcript", worker_id, "--page-size", "2"))
    assert text.splitlines() == [
        "#1 user: line 1",
        "#2 assistant: echo: line 1",
        "#3 user: line 2",
        "#4 assistant: echo: line 2",
        "#5 user: line 3",
        "#6 assistant: echo: line 3",
    ]
    merged = json.loads(ok(daemon, "transcript", worker_id, "--page-size", "4", "--json"))
    whole = api(daemon, "GET", f"/v1/workers/{worker_id}/transcript")["transcript"]
    assert merged == {"transcript": {**whole, "limit": 6}}
    one_page = ok(daemon, "transcript", worker_id, "--json")
    assert json.loads(one_page) == {"transcript": whole}


@pytest.mark.process
def test_interrupt_ends_the_running_turn_and_says_when_none_runs(daemon):
    worker_id = echo_worker(daemon)
    ok(daemon, "send", worker_id, "/sleep 30")
    until_busy(daemon, worker_id)
    assert ok(daemon, "interrupt", worker_id) == f"{worker_id}: interrupted turn 1\n"
    until_idle(daemon, worker_id, turns=1)
    assert ok(daemon, "interrupt", worker_id) == f"{worker_id}: no turn was running\n"
    body = json.loads(ok(daemon, "interrupt", worker_id, "--json"))
    assert body == {
        "ack": {"worker_ref": worker(daemon, worker_id)["worker_ref"], "status": "running", "dropped_inputs": 0}
    }


@pytest.mark.process
def test_permissions_lists_pending_requests_and_approve_answers_one(daemon):
    worker_id = echo_worker(daemon, "--capability", "read")
    assert plain(ok(daemon, "permissions", worker_id)) == "no pending permission requests\n"
    ok(daemon, "send", worker_id, "/permission edit")
    until(lambda: api(daemon, "GET", f"/v1/workers/{worker_id}/permissions")["permissions"], "a permission request")
    pending = api(daemon, "GET", f"/v1/workers/{worker_id}/permissions")
    request_id = pending["permissions"][0]["request_id"]
    assert json.loads(ok(daemon, "permissions", worker_id, "--json")) == pending
    lines = plain(ok(daemon, "permissions", worker_id)).splitlines()
    assert lines[0].split() == ["REQUEST", "TOOL", "KIND", "OPTIONS"]
    assert lines[1].split()[:1] == [request_id]
    assert "allow_once, allow_always, reject_once, reject_always" in lines[1]
    out = ok(daemon, "approve", worker_id, request_id, "reject_once")
    assert out == f"{worker_id}: answered {request_id} with reject_once\n"
    until_idle(daemon, worker_id, turns=1)
    assert api(daemon, "GET", f"/v1/workers/{worker_id}/transcript")["transcript"]["items"][-1]["content"] == (
        "permission: reject_once"
    )
    # The same request again: the API's 404, as one line.
    line = failed(daemon.base_url, "approve", worker_id, request_id, "allow_once")
    assert line.startswith("runtimed: permission_not_found: ")


@pytest.mark.process
def test_approve_with_json_prints_the_answer_body(daemon):
    worker_id = echo_worker(daemon)
    ok(daemon, "send", worker_id, "/permission execute")
    until(lambda: api(daemon, "GET", f"/v1/workers/{worker_id}/permissions")["permissions"], "a permission request")
    request_id = api(daemon, "GET", f"/v1/workers/{worker_id}/permissions")["permissions"][0]["request_id"]
    body = json.loads(ok(daemon, "approve", worker_id, request_id, "allow_once", "--json"))
    assert body == {"permission": {"request_id": request_id, "option_id": "allow_once", "by": "backend"}}


@pytest.mark.process
def test_stop_with_a_reason_then_cancel_leaves_the_worker_stopped(daemon):
    worker_id = ok(daemon, "create", "--role", "note taker").strip()
    assert plain(ok(daemon, "stop", worker_id, "--reason", "done for today")) == f"{worker_id}: stopped\n"
    body = json.loads(ok(daemon, "cancel", worker_id, "--json"))
    assert body["ack"]["status"] == "stopped"
    assert body["ack"]["worker_ref"] == worker(daemon, worker_id)["worker_ref"]
    other = ok(daemon, "create").strip()
    assert json.loads(ok(daemon, "cancel", other, "--json", "--reason", "wrong one"))["ack"]["status"] == "cancelled"
    assert plain(ok(daemon, "stop", other)) == f"{other}: cancelled\n"


# ------------------------------------------------------- where the daemon is


@pytest.mark.process
def test_connection_options_stand_before_or_after_the_command_and_the_commands_win(daemon):
    assert json.loads(cli("--json", "--url", daemon.base_url, "status").stdout)["runtime"]["runtime_id"]
    result = cli("--url", "http://127.0.0.1:9", "status", "--url", daemon.base_url)
    assert result.exit_code == 0 and daemon.runtime_id in result.stdout
    result = cli("--url", daemon.base_url, "status", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 1


@pytest.mark.process
def test_the_url_comes_from_the_environment_and_a_unix_socket_wins_over_it(daemon, socket_dir):
    result = cli("status", "--json", env={"RUNTIMED_URL": daemon.base_url})
    assert result.exit_code == 0 and daemon.runtime_id in result.stdout
    sock = str(socket_dir / "d.sock")
    result = cli("status", "--json", "--unix-socket", sock, "--url", "http://127.0.0.1:9")
    assert json.loads(result.stdout)["runtime"]["runtime_id"] == daemon.runtime_id
    result = cli("--unix-socket", sock, "workers", "--json")
    assert result.exit_code == 0
    result = cli("status", "--json", env={"RUNTIMED_SOCKET": sock, "RUNTIMED_URL": "http://127.0.0.1:9"})
    assert json.loads(result.stdout)["runtime"]["runtime_id"] == daemon.runtime_id


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_absent_daemon_is_one_line_and_exit_1():
    port = free_port()
    line = failed(f"http://127.0.0.1:{port}", "status")
    assert line == f"runtimed: cannot reach http://127.0.0.1:{port}: connection refused"
    with short_tmp() as directory:
        line = failed(None, "workers", "--unix-socket", str(directory / "none.sock"))
        assert line == f"runtimed: cannot reach unix:{directory / 'none.sock'}: no such file or directory"


@pytest.mark.process
def test_a_wrong_or_missing_token_says_so_in_one_line(token_daemon):
    url = token_daemon.base_url
    assert failed(url, "status") == (
        "runtimed: the daemon needs a token (401 unauthorized): set $RUNTIMED_TOKEN or use --token-env VAR"
    )
    assert failed(url, "workers", env={"RUNTIMED_TOKEN": "wrong"}) == (
        "runtimed: the daemon refused the token from $RUNTIMED_TOKEN (401 unauthorized)"
    )
    assert failed(url, "status", "--token-env", "MY_TOKEN", env={"MY_TOKEN": "wrong"}) == (
        "runtimed: the daemon refused the token from $MY_TOKEN (401 unauthorized)"
    )
    result = cli("status", "--json", "--url", url, env={"RUNTIMED_TOKEN": TOKEN})
    assert result.exit_code == 0 and TOKEN not in result.stdout + result.stderr
    result = cli("--token-env", "MY_TOKEN", "status", "--url", url, env={"MY_TOKEN": TOKEN})
    assert result.exit_code == 0


def test_a_token_variable_that_is_unset_is_a_usage_error():
    assert failed("http://127.0.0.1:9", "status", "--token-env", "NOT_SET_ANYWHERE", code=2) == (
        "runtimed: --token-env names NOT_SET_ANYWHERE, which is unset or empty"
    )


def test_a_url_that_is_not_http_is_a_usage_error():
    assert failed("ftp://127.0.0.1", "status", code=2) == (
        "runtimed: --url must be an http:// or https:// URL with a host, not 'ftp://127.0.0.1'"
    )


@pytest.mark.process
@pytest.mark.parametrize(
    "args",
    [("show",), ("send", "hello"), ("transcript",), ("stop",), ("cancel",), ("interrupt",), ("permissions",)],
    ids=lambda args: args[0],
)
def test_a_bad_worker_id_is_the_apis_error_in_one_line(daemon, args):
    command, *rest = args
    line = failed(daemon.base_url, command, "worker-ffffffff", *rest)
    assert line == f"runtimed: worker_not_found: worker worker-ffffffff was not found in runtime {daemon.runtime_id}"


@pytest.mark.process
def test_a_bad_worker_id_with_json_still_prints_nothing_on_stdout(daemon):
    line = failed(daemon.base_url, "show", "no/such worker", "--json")
    assert line.startswith("runtimed: worker_not_found: worker no/such worker was not found")


# ------------------------------------------------------------- config check


def test_config_check_accepts_a_good_file(tmp_path):
    path = tmp_path / "runtimed.toml"
    path.write_text('[server]\nbind = "127.0.0.1:7777"\n[profiles.mine]\nbuiltin = "echo"\n')
    result = cli("config", "check", str(path))
    assert result.exit_code == 0, result.stderr
    profiles = len(builtin_profiles()) + 1  # the built-in agents', and mine
    assert result.stdout == f"{path}: ok (listens on http://127.0.0.1:7777, store memory, {profiles} profiles)\n"


@pytest.mark.parametrize(
    "text",
    [
        "[server]\nbindd = 1\n",
        '[server]\nlocal_token_env = "CLIENT_TEST_UNSET_VARIABLE"\n',
        "[limits]\nmax_event_batch_items = 0\n",
        "not toml at all [",
    ],
    ids=["unknown key", "unset token variable", "bad value", "not toml"],
)
def test_config_check_refuses_a_bad_file_with_the_message_serve_gives(tmp_path, text, monkeypatch):
    path = tmp_path / "runtimed.toml"
    path.write_text(text)
    monkeypatch.delenv("CLIENT_TEST_UNSET_VARIABLE", raising=False)
    checked = cli("config", "check", str(path))
    served = cli("serve", "--config", str(path))  # refused before anything starts
    assert checked.exit_code == served.exit_code == 2
    assert checked.stderr == served.stderr and checked.stderr.count("\n") == 1
    assert checked.stderr.startswith(f"runtimed: {path}")
    assert checked.stdout == ""


def test_config_check_of_a_missing_file_exits_2(tmp_path):
    result = cli("config", "check", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2 and result.stderr == f"runtimed: {tmp_path / 'nope.toml'}: config file not found\n"


# ---------------------------------------------------------------- the package


@pytest.mark.process
def test_the_client_never_loads_the_runtime():
    code = (
        "import sys, runtimed.client.chat, runtimed.client.commands, runtimed.client.watch\n"
        "below = ('runtimed.runtime', 'runtimed.agents', 'runtimed.daemon')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(below))\n"
        "print(loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.process
def test_ctrl_c_while_waiting_for_an_answer_exits_130_without_a_traceback(tmp_path):
    # A "daemon" that takes the request and never answers: the client waits until Ctrl-C.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with ClientProcess(tmp_path, "status", "--url", url) as client:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(TIMEOUT)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096) or b"\r\n\r\n"
                assert request.startswith(b"GET /v1/runtime HTTP/1.1\r\n")
                assert client.stop(signal.SIGINT) == 130
    assert client.stdout == "" and "Traceback" not in client.stderr


def test_chat_takes_no_json():
    result = cli("chat", "--json", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "use watch --json" in result.stderr
