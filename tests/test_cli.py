"""The command line: ``runtimed serve`` as a real process over a real socket, and the exit
statuses and one-line messages of everything that stops it from starting (contract §5, §10)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import urllib.error
from pathlib import Path

import pytest
from click.testing import CliRunner

import runtimed.cli
from runtimed import __version__
from runtimed.daemon.config import Config, LogConfig, LogFormat, LogLevel, StoreKind

from .helpers import TASK_REQUEST
from .process import RuntimedProcess, request_json, run_runtimed

SERVE_FLAGS = (
    # contract §10
    "--config",
    "--bind",
    "--store",
    "--fs-root",
    "--runtime-id",
    "--display-name",
    "--local-token-env",
    "--max-transcript-projection-items",
    "--max-event-batch-items",
    # the operations issue
    "--unix-socket",
    "--log-level",
    "--log-format",
    "--log-file",
)

TOKEN_ENV = "RUNTIMED_TEST_TOKEN"
TOKEN = "tok-5f3a9c1e-never-logged"
UNAUTHORIZED_BODY = {"error": {"code": "unauthorized", "message": "missing or invalid local Runtime bearer token"}}


# ------------------------------------------------------------------ in-process (CliRunner)


@pytest.fixture
def accepted_configs(monkeypatch) -> list[Config]:
    """Stand in for the daemon's ``run``, so a config that is wrongly accepted fails fast
    (instead of serving forever inside the test), and a test can see what serve built."""
    configs: list[Config] = []

    async def run_recorded(config: Config, *_: object) -> None:
        configs.append(config)

    monkeypatch.setattr(runtimed.cli, "run", run_recorded)
    # serve configures the root logger for the daemon; inside the test process it must not.
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    return configs


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(runtimed.cli.main, list(args), prog_name="runtimed", env=env)


@pytest.mark.process
def test_version_prints_the_version_and_exits_0():
    result = run_runtimed("--version")

    assert (result.returncode, result.stdout, result.stderr) == (0, f"runtimed, version {__version__}\n", "")


@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_lists_the_serve_command_and_the_version_flag(help_flag):
    result = invoke(help_flag)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: runtimed [OPTIONS] COMMAND [ARGS]...\n")
    assert re.search(r"^  serve\s", result.stdout, re.MULTILINE)
    assert "--version" in result.stdout


@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_serve_help_lists_every_flag_of_the_contract(help_flag):
    result = invoke("serve", help_flag)

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: runtimed serve [OPTIONS]\n")
    listed = set(re.findall(r"^ +(?:-[a-z], )?(--[a-z-]+)", result.stdout, re.MULTILINE))
    assert listed == {*SERVE_FLAGS, "--help"}


def test_serve_passes_every_flag_to_the_config_over_the_file(tmp_path, accepted_configs):
    config_file = tmp_path / "runtimed.toml"
    config_file.write_text(
        '[server]\nbind = "127.0.0.2:1"\nlocal_token_env = "FILE_TOKEN"\n'
        '[runtime]\nruntime_id = "runtime-file"\ndisplay_name = "from the file"\n'
        "[limits]\nmax_transcript_projection_items = 11\nmax_event_batch_items = 12\n"
        '[store]\nkind = "fs"\nroot = "/from/the/file"\n'
    )

    result = invoke(
        "serve",
        "--config", str(config_file),
        "--bind", "127.0.0.3:7421",
        "--store", "memory",
        "--fs-root", "/from/the/flag",
        "--runtime-id", "runtime-flag",
        "--display-name", "from the flag",
        "--local-token-env", "FLAG_TOKEN",
        "--max-transcript-projection-items", "21",
        "--max-event-batch-items", "22",
        env={"FILE_TOKEN": "file-token", "FLAG_TOKEN": "flag-token"},
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    [config] = accepted_configs
    assert (config.server.host, config.server.port) == ("127.0.0.3", 7421)
    assert config.server.local_token_env == "FLAG_TOKEN"
    assert config.server.local_token is not None and config.server.local_token.reveal() == "flag-token"
    assert (config.runtime.runtime_id, config.runtime.display_name) == ("runtime-flag", "from the flag")
    assert (config.limits.max_transcript_projection_items, config.limits.max_event_batch_items) == (21, 22)
    assert (config.store.kind, config.store.root) == ("memory", Path("/from/the/flag"))


def test_a_token_variable_that_is_unset_exits_2_naming_the_flag_and_variable(accepted_configs):
    result = invoke("serve", "--local-token-env", "RUNTIMED_TEST_UNSET", env={"RUNTIMED_TEST_UNSET": None})

    assert result.exit_code == 2
    assert result.stderr == "runtimed: --local-token-env names RUNTIMED_TEST_UNSET, which is unset or empty\n"
    assert accepted_configs == []


def test_a_token_variable_that_is_empty_exits_2(accepted_configs):
    result = invoke("serve", "--local-token-env", "RUNTIMED_TEST_EMPTY", env={"RUNTIMED_TEST_EMPTY": ""})

    assert result.exit_code == 2
    assert result.stderr == "runtimed: --local-token-env names RUNTIMED_TEST_EMPTY, which is unset or empty\n"
    assert accepted_configs == []


def test_a_non_loopback_bind_without_a_token_exits_2(accepted_configs):
    result = invoke("serve", "--bind", "0.0.0.0:0")

    assert result.exit_code == 2
    assert result.stderr == (
        "runtimed: --bind: binding 0.0.0.0:0, which is not a loopback address, "
        "requires a token ([server] local_token_env or --local-token-env)\n"
    )
    assert accepted_configs == []


def test_a_non_loopback_bind_with_a_token_is_accepted(accepted_configs):
    result = invoke("serve", "--bind", "0.0.0.0:0", "--local-token-env", TOKEN_ENV, env={TOKEN_ENV: TOKEN})

    assert result.exit_code == 0, result.output
    [config] = accepted_configs
    assert (config.server.host, config.server.is_loopback) == ("0.0.0.0", False)


@pytest.mark.parametrize(
    ("bind", "complaint"),
    [
        ("nonsense", "expected HOST:PORT, got 'nonsense'"),
        ("127.0.0.1:99999", "port must be a number from 0 to 65535, got '99999'"),
        ("::1:80", "write an IPv6 address in brackets, as [::1]:80"),
        ("127.0.0.1:", "port must be a number from 0 to 65535, got ''"),
        (":7420", "expected HOST:PORT, got ':7420'"),
        ("[::1:80", "unbalanced brackets in '[::1:80'"),
        ("[not-v6]:80", "'not-v6' is not an IPv6 address"),
    ],
)
def test_a_bad_bind_exits_2_naming_the_flag(bind, complaint, accepted_configs):
    result = invoke("serve", "--bind", bind)

    assert result.exit_code == 2
    assert result.stderr == f"runtimed: --bind {complaint}\n"
    assert accepted_configs == []


def test_the_fs_store_without_a_root_exits_2_naming_the_flags(accepted_configs):
    result = invoke("serve", "--store", "fs")

    assert result.exit_code == 2
    assert result.stderr == "runtimed: --store: the fs store needs a root ([store] root or --fs-root)\n"
    assert accepted_configs == []


def test_an_unknown_store_kind_is_a_usage_error(accepted_configs):
    result = invoke("serve", "--store", "disk")

    assert result.exit_code == 2
    assert "Invalid value for '--store'" in result.stderr
    assert accepted_configs == []


@pytest.mark.parametrize("flag", ["--log-level", "--log-format"])
def test_an_unknown_log_level_or_format_is_a_usage_error(flag, accepted_configs):
    result = invoke("serve", flag, "loud")

    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.stderr
    assert accepted_configs == []


def test_serve_hands_the_closed_sets_on_as_enum_members(tmp_path, accepted_configs, monkeypatch):
    logging_configs: list[LogConfig] = []
    monkeypatch.setattr(runtimed.cli, "configure_logging", lambda config: logging_configs.append(config))

    result = invoke(
        "serve", "--store", "fs", "--fs-root", str(tmp_path / "root"), "--log-level", "debug", "--log-format", "json"
    )

    assert result.exit_code == 0, result.output
    [config] = accepted_configs
    assert config.store.kind is StoreKind.FS
    assert logging_configs == [LogConfig(LogLevel.DEBUG, LogFormat.JSON, None)]
    assert (config.log.level, config.log.format) == (LogLevel.DEBUG, LogFormat.JSON)


@pytest.mark.parametrize("flag", ["--max-transcript-projection-items", "--max-event-batch-items"])
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_limit_flag_that_is_not_a_positive_integer_exits_2_naming_the_flag(flag, value, accepted_configs):
    result = invoke("serve", flag, value)

    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.stderr
    assert accepted_configs == []


def test_a_blank_runtime_id_exits_2_naming_the_flag(accepted_configs):
    result = invoke("serve", "--runtime-id", "  ")

    assert result.exit_code == 2
    assert result.stderr == "runtimed: --runtime-id must not be empty\n"
    assert accepted_configs == []


# ------------------------------------------------------------ real processes, real sockets


@pytest.mark.process
def test_a_port_already_in_use_exits_1_with_one_line_naming_the_address():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]

        result = run_runtimed("serve", "--bind", f"127.0.0.1:{port}")

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    # Log lines may come first (the runtime starts before the socket is bound); the failure is
    # the last line, said once.
    line = result.stderr.splitlines()[-1]
    assert line == f"runtimed: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert result.stderr.count("cannot listen") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.process
def test_the_process_helper_fails_with_the_stderr_of_a_daemon_that_never_starts():
    daemon = RuntimedProcess("--bind", "nonsense")

    with pytest.raises(AssertionError) as failure:
        daemon.start()

    assert "did not print its start-up line" in str(failure.value)
    assert "(exit code 2)" in str(failure.value)
    assert "runtimed: --bind expected HOST:PORT, got 'nonsense'" in str(failure.value)
    assert daemon.process is not None and daemon.process.returncode == 2


@pytest.mark.process
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_names_its_port_serves_a_worker_and_exits_0_on_a_signal(signum, tmp_path):
    config_file = tmp_path / "runtimed.toml"
    config_file.write_text('[runtime]\ndisplay_name = "from the file"\n[limits]\nmax_event_batch_items = 9\n')

    with RuntimedProcess(
        "--bind", "127.0.0.1:0", "--config", str(config_file), "--runtime-id", "runtime-cli-test"
    ) as daemon:  # fmt: skip
        assert daemon.start_line == (
            f"runtimed listening on http://127.0.0.1:{daemon.port} (runtime runtime-cli-test, store memory)"
        )
        assert daemon.port != 0
        ref = {"runtime_id": "runtime-cli-test", "worker_id": "worker-00000001"}

        status, _, body = request_json("GET", daemon.base_url + "/v1/runtime")
        assert status == 200
        assert body["runtime"]["display_name"] == "from the file"
        assert body["runtime"]["limits"] == {"max_transcript_projection_items": 256, "max_event_batch_items": 9}

        status, _, body = request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST)
        assert (status, body["worker"]["worker_ref"], body["worker"]["status"]) == (200, ref, "running")

        status, _, body = request_json(
            "POST", daemon.base_url + "/v1/workers/worker-00000001/input", {"kind": "user", "content": "hello"}
        )
        assert (status, body) == (
            200,
            {"ack": {"worker_ref": ref, "status": "running", "transcript_sequence": 1, "event_id": 3}},
        )

        status, _, body = request_json("GET", daemon.base_url + "/v1/workers/worker-00000001/transcript")
        assert (status, body) == (
            200,
            {
                "transcript": {
                    "worker_ref": ref,
                    "start": 0,
                    "limit": 256,
                    "total_items": 1,
                    "items": [{"sequence": 1, "worker_ref": ref, "role": "user", "content": "hello", "event_id": 3}],
                    "next_start": None,
                }
            },
        )

        assert daemon.stop(signum, timeout=5.0) == 0
        assert "Traceback" not in daemon.stderr
        with pytest.raises(urllib.error.URLError):
            request_json("GET", daemon.base_url + "/healthz", timeout=1.0)


def token_daemon_process() -> RuntimedProcess:
    return RuntimedProcess(
        "--bind", "127.0.0.1:0", "--local-token-env", TOKEN_ENV, env={**os.environ, TOKEN_ENV: TOKEN}
    )  # fmt: skip


@pytest.fixture(scope="module")
def token_daemon():
    """One daemon with a token for the tests that only read from it."""
    with token_daemon_process() as daemon:
        yield daemon


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["no header", "wrong token", "no scheme", "other scheme"],
)
def test_with_a_token_configured_a_request_without_it_is_unauthorized(token_daemon, headers):
    status, response_headers, body = request_json("GET", token_daemon.base_url + "/v1/runtime", headers=headers)

    assert (status, body) == (401, UNAUTHORIZED_BODY)
    assert response_headers["WWW-Authenticate"] == 'Bearer realm="runtimed"'


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_with_a_token_configured_a_request_bearing_it_is_served(token_daemon, scheme):
    status, _, body = request_json(
        "GET", token_daemon.base_url + "/v1/runtime", headers={"Authorization": f"{scheme} {TOKEN}"}
    )

    assert status == 200
    assert body["runtime"]["runtime_id"] == token_daemon.runtime_id


def test_with_a_token_configured_healthz_answers_without_it(token_daemon):
    status, _, body = request_json("GET", token_daemon.base_url + "/healthz")

    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.process
def test_the_token_appears_nowhere_in_the_daemon_log():
    with token_daemon_process() as daemon:
        url = daemon.base_url + "/v1/runtime"
        assert request_json("GET", url, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert request_json("GET", url, headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
        assert request_json("GET", url, headers={"Authorization": TOKEN})[0] == 401
        assert request_json("POST", daemon.base_url + "/v1/workers", TASK_REQUEST)[0] == 401

        # Stop first: the access log line is written after the response has gone out.
        assert daemon.stop() == 0
        log = daemon.stderr

    assert log.count("runtimed.access: GET /v1/runtime 200 ") == 1, log
    assert log.count("runtimed.access: GET /v1/runtime 401 ") == 2, log
    assert log.count("runtimed.access: POST /v1/workers 401 ") == 1, log
    assert TOKEN not in log


@pytest.mark.process
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_right_after_the_start_up_line_still_exits_zero(signum):
    for _ in range(3):
        with RuntimedProcess("--bind", "127.0.0.1:0") as daemon:
            assert daemon.stop(signum) == 0
