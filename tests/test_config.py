"""Configuration: defaults, flag > file > default, and a one-line ``ConfigError`` naming the flag
or the file and ``[section] key`` for every bad value (contract §10)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from marshmallow import ValidationError, validates_schema

import runtimed.cli
from runtimed.daemon.config import (
    BUILTIN_AGENTS,
    FLAG_KEYS,
    SECTIONS,
    Choice,
    ConfigError,
    Integer,
    LogConfig,
    LogFormat,
    LogLevel,
    NamedTables,
    Secret,
    Section,
    StoreKind,
    String,
    StringList,
    load_config,
    not_blank,
    read_toml,
)
from runtimed.domain.catalog import BuiltinProfile, NamedProfile, RuntimeDefaultProfile
from runtimed.domain.execution import (
    AgentProfile,
    ExecutionConfig,
    PermissionPolicy,
    ProfileSource,
    RestartPolicy,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
#: The known keys of each section (of each table of a section of named tables), in order.
KEYS = {
    name: list((section.section if isinstance(section, NamedTables) else section).declared_fields)
    for name, section in SECTIONS.items()
}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runtimed.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(
    path: Path | None, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> str:
    """The message of the ``ConfigError`` that loading raises (the environment is empty unless given)."""
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides, environ={} if environ is None else environ)
    return str(error.value)


# ------------------------------------------------------------------------ defaults


def test_without_file_or_flags_every_value_is_the_default():
    config = load_config(environ={})

    assert (config.server.host, config.server.port, config.server.bind) == ("127.0.0.1", 7420, "127.0.0.1:7420")
    assert config.server.is_loopback is True
    assert (config.server.local_token_env, config.server.local_token) == (None, None)
    assert config.server.max_request_body_bytes == 1024 * 1024
    assert (config.server.allowed_origins, config.server.allowed_hosts) == ((), ())
    assert config.server.ws_heartbeat_seconds == 30.0
    assert config.server.ws_max_message_bytes == 4096
    assert config.server.max_observation_sessions == 256
    assert (
        config.server.header_timeout_seconds,
        config.server.keepalive_timeout_seconds,
        config.server.body_timeout_seconds,
        config.server.max_connections,
    ) == (30.0, 20.0, 60.0, 1000)
    assert (config.runtime.runtime_id, config.runtime.display_name) == (None, None)
    assert (
        config.limits.max_transcript_projection_items,
        config.limits.max_event_batch_items,
        config.limits.observation_backlog,
        config.limits.subscriber_queue,
    ) == (256, 256, 1024, 256)
    assert (config.store.kind, config.store.root) == ("memory", None)


def test_flags_that_are_not_given_leave_the_defaults():
    overrides = dict.fromkeys(FLAG_KEYS)

    assert load_config(None, overrides, environ={}) == load_config(environ={})


# ---------------------------------------------------------------------- precedence

Getter = Callable[[Any], Any]


def token_of(config: Any) -> tuple[str | None, str | None]:
    token = config.server.local_token
    return config.server.local_token_env, token.reveal() if token is not None else None


# flag, file text (beside the key under test), flag value, what the getter sees for
# (default, file, flag), and the getter.
PRECEDENCE: list[tuple[str, str, Any, tuple[Any, Any, Any], Getter]] = [
    (
        "--bind",
        '[server]\nbind = "127.0.0.2:8001"\n',
        "127.0.0.3:8002",
        ("127.0.0.1:7420", "127.0.0.2:8001", "127.0.0.3:8002"),
        lambda config: config.server.bind,
    ),
    (
        "--runtime-id",
        '[runtime]\nruntime_id = "runtime-file"\n',
        "runtime-flag",
        (None, "runtime-file", "runtime-flag"),
        lambda config: config.runtime.runtime_id,
    ),
    (
        "--display-name",
        '[runtime]\ndisplay_name = "from the file"\n',
        "from the flag",
        (None, "from the file", "from the flag"),
        lambda config: config.runtime.display_name,
    ),
    (
        "--max-transcript-projection-items",
        "[limits]\nmax_transcript_projection_items = 17\n",
        33,
        (256, 17, 33),
        lambda config: config.limits.max_transcript_projection_items,
    ),
    (
        "--max-event-batch-items",
        "[limits]\nmax_event_batch_items = 18\n",
        34,
        (256, 18, 34),
        lambda config: config.limits.max_event_batch_items,
    ),
    (
        "--store",
        '[store]\nkind = "fs"\nroot = "/srv/runtimed"\n',
        "memory",
        ("memory", "fs", "memory"),
        lambda config: config.store.kind,
    ),
    (
        "--fs-root",
        '[store]\nroot = "/from/the/file"\n',
        "/from/the/flag",
        (None, Path("/from/the/file"), Path("/from/the/flag")),
        lambda config: config.store.root,
    ),
    (
        "--local-token-env",
        '[server]\nlocal_token_env = "FILE_TOKEN"\n',
        "FLAG_TOKEN",
        ((None, None), ("FILE_TOKEN", "file-token"), ("FLAG_TOKEN", "flag-token")),
        token_of,
    ),
]
PRECEDENCE_IDS = [case[0] for case in PRECEDENCE]
TOKENS = {"FILE_TOKEN": "file-token", "FLAG_TOKEN": "flag-token"}


@pytest.mark.parametrize(("flag", "file_text", "flag_value", "expected", "get"), PRECEDENCE, ids=PRECEDENCE_IDS)
def test_without_file_or_flag_the_default_applies(flag, file_text, flag_value, expected, get):
    assert get(load_config(None, {flag: None}, environ=TOKENS)) == expected[0]


@pytest.mark.parametrize(("flag", "file_text", "flag_value", "expected", "get"), PRECEDENCE, ids=PRECEDENCE_IDS)
def test_the_file_overrides_the_default(tmp_path, flag, file_text, flag_value, expected, get):
    path = write_config(tmp_path, file_text)

    assert get(load_config(path, {flag: None}, environ=TOKENS)) == expected[1]


@pytest.mark.parametrize(("flag", "file_text", "flag_value", "expected", "get"), PRECEDENCE, ids=PRECEDENCE_IDS)
def test_a_flag_overrides_the_file(tmp_path, flag, file_text, flag_value, expected, get):
    path = write_config(tmp_path, file_text)

    assert get(load_config(path, {flag: flag_value}, environ=TOKENS)) == expected[2]


@pytest.mark.parametrize(("flag", "file_text", "flag_value", "expected", "get"), PRECEDENCE, ids=PRECEDENCE_IDS)
def test_a_flag_overrides_the_default(flag, file_text, flag_value, expected, get):
    assert get(load_config(None, {flag: flag_value}, environ=TOKENS)) == expected[2]


def test_the_file_sets_the_keys_that_have_no_flag(tmp_path):
    path = write_config(
        tmp_path,
        "[server]\nmax_request_body_bytes = 2048\n"
        'allowed_origins = ["https://ops.example"]\nallowed_hosts = ["runtimed.internal"]\n'
        "ws_heartbeat_seconds = 0.5\nws_max_message_bytes = 512\n"
        "[limits]\nobservation_backlog = 64\nsubscriber_queue = 8\nmax_observation_sessions = 3\n",
    )

    config = load_config(path, environ={})

    assert config.server.max_request_body_bytes == 2048
    assert config.server.allowed_origins == ("https://ops.example",)
    assert config.server.allowed_hosts == ("runtimed.internal",)
    assert config.server.ws_heartbeat_seconds == 0.5
    assert config.server.ws_max_message_bytes == 512
    assert (config.limits.observation_backlog, config.limits.subscriber_queue) == (64, 8)
    # The web layer counts observation sessions: the cap is the server's, not the Runtime's.
    assert config.server.max_observation_sessions == 3


def test_the_file_sets_the_connection_timeouts_in_fractions_of_a_second_and_the_connection_cap(tmp_path):
    path = write_config(
        tmp_path,
        "[server]\nheader_timeout_seconds = 0.25\nkeepalive_timeout_seconds = 60\n"
        "body_timeout_seconds = 1.5\nmax_connections = 10\n",
    )

    server = load_config(path, environ={}).server

    assert (server.header_timeout_seconds, server.keepalive_timeout_seconds, server.body_timeout_seconds) == (
        0.25,
        60.0,
        1.5,
    )
    assert type(server.keepalive_timeout_seconds) is float
    assert server.max_connections == 10


TIMEOUTS = ["header_timeout_seconds", "keepalive_timeout_seconds", "body_timeout_seconds"]


@pytest.mark.parametrize("key", TIMEOUTS)
@pytest.mark.parametrize(
    ("value", "shown"), [("0", "0"), ("-1", "-1"), ("60.5", "60.5"), ("nan", "nan"), ("inf", "inf")]
)
def test_a_connection_timeout_not_above_0_and_at_most_60_names_the_file_and_key(tmp_path, key, value, shown):
    path = write_config(tmp_path, f"[server]\n{key} = {value}\n")

    assert config_error(path) == f"{path}: [server] {key} must be more than 0 and at most 60 seconds, not {shown}"


@pytest.mark.parametrize("key", TIMEOUTS)
def test_a_connection_timeout_that_is_not_a_number_names_the_file_and_key(tmp_path, key):
    path = write_config(tmp_path, f'[server]\n{key} = "30s"\n')

    assert config_error(path) == f"{path}: [server] {key} must be a number, not a string"


@pytest.mark.parametrize(
    ("value", "complaint"), [("0", "must be at least 1, not 0"), ("1.5", "must be an integer, not a float")]
)
def test_a_connection_cap_that_is_not_a_positive_integer_names_the_file_and_key(tmp_path, value, complaint):
    path = write_config(tmp_path, f"[server]\nmax_connections = {value}\n")

    assert config_error(path) == f"{path}: [server] max_connections {complaint}"


def test_an_integer_heartbeat_becomes_a_float_and_zero_is_allowed(tmp_path):
    path = write_config(tmp_path, "[server]\nws_heartbeat_seconds = 0\n")

    heartbeat = load_config(path, environ={}).server.ws_heartbeat_seconds

    assert (heartbeat, type(heartbeat)) == (0.0, float)


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [("localhost:0", "localhost", 0), ("[::1]:7421", "::1", 7421), ("127.9.8.7:65535", "127.9.8.7", 65535)],
)
def test_a_loopback_bind_needs_no_token(bind, host, port):
    config = load_config(None, {"--bind": bind}, environ={})

    assert (config.server.host, config.server.port, config.server.is_loopback) == (host, port, True)


def test_a_non_loopback_bind_with_a_token_is_accepted():
    config = load_config(None, {"--bind": "0.0.0.0:7420", "--local-token-env": "T"}, environ={"T": "secret"})

    assert (config.server.host, config.server.is_loopback) == ("0.0.0.0", False)


def test_the_closed_sets_are_enum_members_by_default_from_the_file_and_from_flags(tmp_path):
    path = write_config(tmp_path, '[store]\nkind = "fs"\nroot = "/srv"\n[log]\nlevel = "warning"\nformat = "json"\n')

    default = load_config(environ={})
    from_file = load_config(path, environ={})
    from_flags = load_config(path, {"--store": "memory", "--log-level": "debug", "--log-format": "text"}, environ={})

    assert (default.store.kind, default.log) == (StoreKind.MEMORY, LogConfig(LogLevel.INFO, LogFormat.TEXT, None))
    assert from_file.store.kind is StoreKind.FS
    assert (from_file.log.level, from_file.log.format) == (LogLevel.WARNING, LogFormat.JSON)
    assert from_flags.store.kind is StoreKind.MEMORY
    assert (from_flags.log.level, from_flags.log.format) == (LogLevel.DEBUG, LogFormat.TEXT)
    for config in (default, from_file, from_flags):
        assert type(config.store.kind) is StoreKind
        assert (type(config.log.level), type(config.log.format)) == (LogLevel, LogFormat)


def test_a_flag_may_be_given_an_enum_member():
    overrides = {"--store": StoreKind.FS, "--fs-root": "/srv", "--log-level": LogLevel.ERROR}

    config = load_config(None, overrides, environ={})

    assert (config.store.kind, config.log.level) == (StoreKind.FS, LogLevel.ERROR)


# -------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("section", "key", "value", "complaint"),
    [
        ("limits", "max_event_batch_items", '"10"', "must be an integer, not a string"),
        ("limits", "observation_backlog", "1.5", "must be an integer, not a float"),
        ("limits", "subscriber_queue", "true", "must be an integer, not a boolean"),
        ("limits", "max_observation_sessions", "2.0", "must be an integer, not a float"),
        ("server", "ws_max_message_bytes", '"4 KiB"', "must be an integer, not a string"),
        ("server", "max_request_body_bytes", "false", "must be an integer, not a boolean"),
        ("runtime", "display_name", "5", "must be a string, not an integer"),
        ("runtime", "runtime_id", "7", "must be a string, not an integer"),
        ("server", "bind", "7420", "must be a string, not an integer"),
        ("store", "root", '["/a"]', "must be a string, not an array"),
        ("store", "kind", "1", "must be a string, not an integer"),
        ("server", "local_token_env", "true", "must be a string, not a boolean"),
        ("server", "allowed_origins", '"https://ops.example"', "must be a list of strings, not a string"),
        ("server", "allowed_hosts", '{ name = "x" }', "must be a list of strings, not a table"),
        ("server", "ws_heartbeat_seconds", '"30"', "must be a number, not a string"),
        ("server", "ws_heartbeat_seconds", "true", "must be a number, not a boolean"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_and_key(tmp_path, section, key, value, complaint):
    path = write_config(tmp_path, f"[{section}]\n{key} = {value}\n")

    assert config_error(path) == f"{path}: [{section}] {key} {complaint}"


@pytest.mark.parametrize("key", ["allowed_origins", "allowed_hosts"])
def test_a_list_holding_a_non_string_names_the_file_and_key(tmp_path, key):
    path = write_config(tmp_path, f'[server]\n{key} = ["https://ops.example", 1]\n')

    assert config_error(path).startswith(f"{path}: [server] {key} must be a list of strings")


@pytest.mark.parametrize("key", list(KEYS["limits"]))
@pytest.mark.parametrize("value", [0, -5])
def test_a_limit_below_1_names_the_file_and_key(tmp_path, key, value):
    path = write_config(tmp_path, f"[limits]\n{key} = {value}\n")

    assert config_error(path) == f"{path}: [limits] {key} must be at least 1, not {value}"


@pytest.mark.parametrize("key", ["max_request_body_bytes", "ws_max_message_bytes"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_byte_limit_below_1_names_the_file_and_key(tmp_path, key, value):
    path = write_config(tmp_path, f"[server]\n{key} = {value}\n")

    assert config_error(path) == f"{path}: [server] {key} must be at least 1, not {value}"


@pytest.mark.parametrize(("value", "shown"), [("-1", "-1"), ("-0.5", "-0.5"), ("nan", "nan"), ("inf", "inf")])
def test_a_negative_nan_or_infinite_heartbeat_names_the_file_and_key(tmp_path, value, shown):
    path = write_config(tmp_path, f"[server]\nws_heartbeat_seconds = {value}\n")

    expected = f"{path}: [server] ws_heartbeat_seconds must be a finite number, 0 or more, not {shown}"
    assert config_error(path) == expected


@pytest.mark.parametrize(
    ("bind", "complaint"),
    [
        ("nonsense", "expected HOST:PORT, got 'nonsense'"),
        ("127.0.0.1:99999", "port must be a number from 0 to 65535, got '99999'"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535, got 'http'"),
        ("::1:80", "write an IPv6 address in brackets, as [::1]:80"),
        ("[::1:80", "unbalanced brackets in '[::1:80'"),
    ],
)
def test_a_bad_bind_names_the_file_and_key(tmp_path, bind, complaint):
    path = write_config(tmp_path, f'[server]\nbind = "{bind}"\n')

    assert config_error(path) == f"{path}: [server] bind {complaint}"


def test_a_bad_bind_flag_names_the_flag():
    assert config_error(None, {"--bind": "nonsense"}) == "--bind expected HOST:PORT, got 'nonsense'"


def test_a_non_loopback_bind_in_the_file_without_a_token_names_the_file_and_key(tmp_path):
    path = write_config(tmp_path, '[server]\nbind = "0.0.0.0:7420"\n')

    assert config_error(path) == (
        f"{path}: [server] bind: binding 0.0.0.0:7420, which is not a loopback address, "
        "requires a token ([server] local_token_env or --local-token-env)"
    )


def test_the_fs_store_without_a_root_names_the_file_and_key(tmp_path):
    path = write_config(tmp_path, '[store]\nkind = "fs"\n')

    assert config_error(path) == f"{path}: [store] kind: the fs store needs a root ([store] root or --fs-root)"


def test_the_fs_store_with_a_root_from_the_flag_is_accepted(tmp_path):
    path = write_config(tmp_path, '[store]\nkind = "fs"\n')

    store = load_config(path, {"--fs-root": str(tmp_path / "state")}, environ={}).store

    assert (store.kind, store.root) == ("fs", tmp_path / "state")


def test_an_unknown_store_kind_names_the_file_and_key(tmp_path):
    path = write_config(tmp_path, '[store]\nkind = "disk"\n')

    assert config_error(path) == f'{path}: [store] kind must be "memory" or "fs", not \'disk\''


@pytest.mark.parametrize(
    ("key", "flag", "choices"),
    [("level", "--log-level", "'debug', 'info', 'warning', 'error'"), ("format", "--log-format", "'text', 'json'")],
)
def test_an_unknown_log_level_or_format_names_the_key_or_flag_and_the_choices(tmp_path, key, flag, choices):
    path = write_config(tmp_path, f'[log]\n{key} = "loud"\n')

    assert config_error(path) == f"{path}: [log] {key} must be one of {choices}, not 'loud'"
    assert config_error(None, {flag: "loud"}) == f"{flag} must be one of {choices}, not 'loud'"


@pytest.mark.parametrize(("section", "key"), [("server", "unix_socket"), ("store", "root"), ("log", "file")])
@pytest.mark.parametrize("value", ['""', '"   "'])
def test_a_blank_path_names_the_file_and_key(tmp_path, section, key, value):
    path = write_config(tmp_path, f"[{section}]\n{key} = {value}\n")

    assert config_error(path) == f"{path}: [{section}] {key} must not be empty"


@pytest.mark.parametrize("flag", ["--fs-root", "--unix-socket", "--log-file"])
def test_a_blank_path_flag_names_the_flag(flag):
    assert config_error(None, {flag: ""}) == f"{flag} must not be empty"


@pytest.mark.parametrize(("value", "shown"), [("1", "an integer"), ('"yes"', "a string")])
def test_a_switch_that_is_not_true_or_false_names_the_file_and_key(tmp_path, value, shown):
    path = write_config(tmp_path, f"[server]\nmetrics_public = {value}\n")

    assert config_error(path) == f"{path}: [server] metrics_public must be true or false, not {shown}"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[store]\nroot = ""\nkindd = "fs"\n', "[store] root must not be empty"),
        ('[store]\nkindd = "fs"\nroot = ""\n', "unknown key [store] kindd (known: kind, root)"),
        (
            "[server]\nmetrics_public = 1\nmax_request_body_bytes = 0\n",
            "[server] metrics_public must be true or false, not an integer",
        ),
    ],
)
def test_of_several_problems_in_a_section_the_first_in_the_file_is_named(tmp_path, text, complaint):
    path = write_config(tmp_path, text)

    assert config_error(path) == f"{path}: {complaint}"


def test_an_unknown_section_names_the_file_and_section(tmp_path):
    path = write_config(tmp_path, '[serve]\nbind = "127.0.0.1:7420"\n')

    assert config_error(path) == (
        f"{path}: unknown section [serve] (known: server, runtime, limits, execution, profiles, store, log)"
    )


def test_an_unknown_key_names_the_file_section_and_key(tmp_path):
    path = write_config(tmp_path, '[server]\nbnid = "127.0.0.1:7420"\n')

    assert config_error(path) == (
        f"{path}: unknown key [server] bnid (known: bind, local_token_env, max_request_body_bytes, "
        "allowed_origins, allowed_hosts, ws_heartbeat_seconds, ws_max_message_bytes, unix_socket, metrics_public, "
        "header_timeout_seconds, keepalive_timeout_seconds, body_timeout_seconds, max_connections)"
    )


def test_a_top_level_key_outside_any_section_is_refused(tmp_path):
    path = write_config(tmp_path, 'bind = "127.0.0.1:7420"\n')

    assert config_error(path) == (
        f"{path}: unknown section [bind] (known: server, runtime, limits, execution, profiles, store, log)"
    )


def test_a_section_that_is_not_a_table_is_refused(tmp_path):
    path = write_config(tmp_path, "server = 5\n")

    assert config_error(path) == f"{path}: [server] must be a table, not an integer"


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "absent.toml"

    assert config_error(path) == f"{path}: config file not found"


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    # A directory: unreadable as a file even for root, unlike a chmod 000 file.
    assert config_error(tmp_path).startswith(f"{tmp_path}: cannot read config file: ")


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[runtime]\ndisplay_name = "caf\u00e9"\n'.encode("latin-1"))

    assert config_error(path).startswith(f"{path}: cannot read config file: ")


def test_a_file_that_is_not_toml_is_named_with_the_line(tmp_path):
    path = write_config(tmp_path, "[server]\nbind = 127.0.0.1:7420\n")

    message = config_error(path)

    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 2" in message


class ProfileSection(Section):
    """A stand-in for a later section of named tables (``[profiles.<name>]``)."""

    command = String(validate=not_blank)
    args = StringList()


class RangeSection(Section):
    """A stand-in for a later section with a check across its keys."""

    low = Integer()
    high = Integer()

    @validates_schema
    def _low_not_above_high(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("low", 0) > data.get("high", 0):
            raise ValidationError("low must not be above high")


MORE_SECTIONS = {"profiles": NamedTables(ProfileSection()), "range": RangeSection()}


def test_a_section_of_named_tables_loads_each_table_by_name(tmp_path):
    path = write_config(
        tmp_path, '[profiles.fast]\ncommand = "echo"\n[profiles.slow]\ncommand = "chat"\nargs = ["-v"]\n'
    )

    assert read_toml(path, MORE_SECTIONS) == {
        "profiles": {"fast": {"command": "echo"}, "slow": {"command": "chat", "args": ("-v",)}}
    }


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[profiles.fast]\ncommand = 5\n", "[profiles.fast] command must be a string, not an integer"),
        ('[profiles.fast]\ncommnd = "echo"\n', "unknown key [profiles.fast] commnd (known: command, args)"),
        ("[profiles]\nfast = 5\n", "[profiles.fast] must be a table, not an integer"),
        ("profiles = 5\n", "[profiles] must be a table, not an integer"),
        ("[range]\nlow = 2\nhigh = 1\n", "[range] low must not be above high"),
        ("[server]\n", "unknown section [server] (known: profiles, range)"),
    ],
)
def test_a_problem_in_a_named_table_or_across_keys_names_the_file_and_the_table(tmp_path, text, complaint):
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError) as error:
        read_toml(path, MORE_SECTIONS)

    assert str(error.value) == f"{path}: {complaint}"


# ------------------------------------------------------- execution and profiles (§9.1)


def test_without_configuration_the_builtin_agents_are_the_only_profiles_and_none_is_the_default():
    execution = load_config(environ={}).execution

    assert execution == ExecutionConfig(
        profiles=(
            AgentProfile("builtin:echo", ProfileSource.BUILTIN, (sys.executable, "-m", "runtimed.agents.echo")),
            AgentProfile("builtin:chat", ProfileSource.BUILTIN, (sys.executable, "-m", "runtimed.agents.chat")),
        )
    )
    assert (execution.workspace_roots, execution.permission_timeout_seconds) == ((), 300.0)
    assert (execution.max_agent_message_bytes, execution.agent_log_lines_per_second) == (8 * 1024 * 1024, 50)
    limits = load_config(environ={}).limits
    assert (limits.max_running_agents, limits.max_queued_inputs) == (32, 64)
    assert set(BUILTIN_AGENTS) == {"echo", "chat"}


def test_profile_tables_become_profiles_after_the_builtin_ones_in_the_files_order(tmp_path):
    path = write_config(
        tmp_path,
        '[runtime]\ndefault_profile = "gemini"\n'
        "[profiles.gemini]\n"
        'command = ["gemini", "--experimental-acp"]\ncwd = "/srv/agents/gemini"\n'
        'env = { GEMINI_MODEL = "gemini-2.5-flash" }\npass_env = ["GEMINI_API_KEY"]\n'
        'permissions = "deny"\nrestart = "never"\nstop_grace_seconds = 0.5\nstart_timeout_seconds = 10\n'
        '[profiles.careful-echo]\nbuiltin = "echo"\npermissions = "allow"\n'
        '[execution]\nworkspace_roots = ["/srv/work"]\npermission_timeout_seconds = 2.5\n'
        "[limits]\nmax_running_agents = 3\nmax_queued_inputs = 4\nmax_agent_message_bytes = 5\n"
        "agent_log_lines_per_second = 6\n",
    )

    config = load_config(path, environ={})

    echo, _chat, gemini, careful = config.execution.profiles
    assert echo.name == "builtin:echo"
    assert gemini == AgentProfile(
        "gemini",
        ProfileSource.CONFIG,
        ("gemini", "--experimental-acp"),
        cwd=Path("/srv/agents/gemini"),
        env={"GEMINI_MODEL": "gemini-2.5-flash"},
        pass_env=("GEMINI_API_KEY",),
        permissions=PermissionPolicy.DENY,
        restart=RestartPolicy.NEVER,
        stop_grace_seconds=0.5,
        start_timeout_seconds=10.0,
    )
    assert careful == AgentProfile(
        "careful-echo", ProfileSource.CONFIG, echo.command, permissions=PermissionPolicy.ALLOW
    )
    assert config.execution.default_profile == "gemini"
    assert config.execution.workspace_roots == (Path("/srv/work"),)
    assert config.execution.permission_timeout_seconds == 2.5
    assert (config.execution.max_agent_message_bytes, config.execution.agent_log_lines_per_second) == (5, 6)
    assert (config.limits.max_running_agents, config.limits.max_queued_inputs) == (3, 4)


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"builtin:echo"', "builtin:echo"), ('"echo"', "builtin:echo"), ('"mine"', "mine")],
)
def test_the_default_profile_is_a_table_or_a_builtin_agent(tmp_path, value, expected):
    path = write_config(tmp_path, f'[runtime]\ndefault_profile = {value}\n[profiles.mine]\ncommand = ["a"]\n')

    assert load_config(path, environ={}).execution.default_profile == expected


def test_a_table_named_like_a_builtin_agent_wins_for_a_bare_default(tmp_path):
    path = write_config(tmp_path, '[runtime]\ndefault_profile = "echo"\n[profiles.echo]\ncommand = ["my-echo"]\n')

    assert load_config(path, environ={}).execution.default_profile == "echo"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[profiles.x]\ncommand = []\n", "[profiles.x] command must not be empty"),
        ('[profiles.x]\ncommand = [""]\n', "[profiles.x] command must name a program first, not an empty string"),
        ('[profiles.x]\ncommand = "gemini"\n', "[profiles.x] command must be a list of strings, not a string"),
        ("[profiles.x]\n", '[profiles.x] needs command = ["program", …] or builtin = "<name>"'),
        (
            '[profiles.x]\ncommand = ["a"]\nbuiltin = "echo"\n',
            "[profiles.x] builtin must not be given beside command: a profile runs a command or a built-in agent",
        ),
        (
            '[profiles.x]\nbuiltin = "chit"\n',
            "[profiles.x] builtin names no built-in agent: 'chit' (known: echo, chat)",
        ),
        (
            '[profiles.x]\nbuiltin = "echo"\nmodle = "small"\n',
            "unknown key [profiles.x] modle (known: command, builtin, cwd, env, pass_env, permissions, restart, "
            "stop_grace_seconds, start_timeout_seconds, base_url, model, api_key_env, system_prompt, max_tokens, "
            "timeout_seconds)",
        ),
        (
            '[profiles.x]\ncommand = ["a"]\npermissions = "maybe"\n',
            "[profiles.x] permissions must be one of 'ask', 'allow', 'deny', not 'maybe'",
        ),
        (
            '[profiles.x]\ncommand = ["a"]\nrestart = "always"\n',
            "[profiles.x] restart must be one of 'on-failure', 'never', not 'always'",
        ),
        ('[profiles.x]\ncommand = ["a"]\ncwd = "agents"\n', "[profiles.x] cwd must be an absolute path, not 'agents'"),
        (
            '[profiles.x]\ncommand = ["a"]\nenv = { A = 1 }\n',
            "[profiles.x] env must be a table of strings; A is an integer",
        ),
        ('[profiles.x]\ncommand = ["a"]\nenv = ["A"]\n', "[profiles.x] env must be a table of strings, not an array"),
        (
            '[profiles.x]\ncommand = ["a"]\npass_env = ["A=B"]\n',
            "[profiles.x] pass_env item 0 must be an environment variable name, not 'A=B'",
        ),
        (
            '[profiles.x]\ncommand = ["a"]\nstop_grace_seconds = -1\n',
            "[profiles.x] stop_grace_seconds must be a finite number, 0 or more, not -1",
        ),
        (
            '[profiles.x]\ncommand = ["a"]\nstart_timeout_seconds = 0\n',
            "[profiles.x] start_timeout_seconds must be a finite number above 0, not 0",
        ),
        (
            '[profiles."builtin:x"]\ncommand = ["a"]\n',
            "[profiles.builtin:x] a profile name must not start with builtin: (it names a built-in agent)",
        ),
        ('[profiles." "]\ncommand = ["a"]\n', "[profiles. ] a profile name must not be empty"),
        ("[profiles.x]\ncommand = 5\n", "[profiles.x] command must be a list of strings, not an integer"),
        ("[profiles]\nx = 5\n", "[profiles.x] must be a table, not an integer"),
        (
            '[execution]\nworkspace_roots = ["work"]\n',
            "[execution] workspace_roots item 0 must be an absolute path, not 'work'",
        ),
        (
            "[execution]\npermission_timeout_seconds = 0\n",
            "[execution] permission_timeout_seconds must be a finite number above 0, not 0",
        ),
        ("[limits]\nmax_running_agents = 0\n", "[limits] max_running_agents must be at least 1, not 0"),
        ("[limits]\nmax_queued_inputs = 0\n", "[limits] max_queued_inputs must be at least 1, not 0"),
        ('[runtime]\ndefault_profile = ""\n', "[runtime] default_profile must not be empty"),
    ],
)
def test_every_profile_problem_names_the_file_and_the_table_and_key(tmp_path, text, complaint):
    path = write_config(tmp_path, text)

    assert config_error(path) == f"{path}: {complaint}"


def test_a_default_profile_that_names_no_profile_names_the_key_and_the_known_profiles(tmp_path):
    path = write_config(tmp_path, '[runtime]\ndefault_profile = "gemni"\n[profiles.gemini]\ncommand = ["g"]\n')

    assert config_error(path) == (
        f"{path}: [runtime] default_profile names no profile: 'gemni' (known: builtin:echo, builtin:chat, gemini)"
    )


def test_a_bad_profile_stops_serve_with_exit_2_naming_the_table_and_key(tmp_path, monkeypatch):
    async def must_not_run(config: Any, *_: object) -> None:
        raise AssertionError("serve accepted a bad config file")

    monkeypatch.setattr(runtimed.cli, "run", must_not_run)
    path = write_config(tmp_path, "[profiles.gemini]\ncommand = []\n")

    result = CliRunner().invoke(runtimed.cli.main, ["serve", "--config", str(path)], prog_name="runtimed")

    assert result.exit_code == 2
    assert result.stderr == f"runtimed: {path}: [profiles.gemini] command must not be empty\n"


def test_the_execution_config_resolves_selectors_as_the_contract_says(tmp_path):
    path = write_config(tmp_path, '[runtime]\ndefault_profile = "mine"\n[profiles.mine]\ncommand = ["a"]\n')
    execution = load_config(path, environ={}).execution

    def name(selector: Any) -> str | None:
        profile = execution.resolve(selector)
        return None if profile is None else profile.name

    assert name(BuiltinProfile("builtin:echo")) == "builtin:echo"
    assert name(BuiltinProfile("builtin:coder")) is None
    assert name(BuiltinProfile("mine")) is None  # a table is named, never built in
    assert name(NamedProfile("mine")) == "mine"
    assert name(NamedProfile("builtin:echo")) is None
    assert name(NamedProfile("other")) is None
    assert name(RuntimeDefaultProfile()) == "mine"
    assert [(profile.name, default) for profile, default in execution.listing()] == [
        ("builtin:echo", False),
        ("builtin:chat", False),
        ("mine", True),
    ]
    assert load_config(environ={}).execution.resolve(RuntimeDefaultProfile()) is None


# ----------------------------------------------------------------------- the token


def test_a_token_variable_that_is_unset_is_an_error_naming_the_file_key_and_variable(tmp_path):
    path = write_config(tmp_path, '[server]\nlocal_token_env = "RUNTIMED_TOKEN"\n')

    assert config_error(path, environ={"OTHER": "x"}) == (
        f"{path}: [server] local_token_env names RUNTIMED_TOKEN, which is unset or empty"
    )


def test_a_token_variable_that_is_empty_is_an_error_naming_the_flag_and_variable():
    assert config_error(None, {"--local-token-env": "RUNTIMED_TOKEN"}, environ={"RUNTIMED_TOKEN": ""}) == (
        "--local-token-env names RUNTIMED_TOKEN, which is unset or empty"
    )


def test_the_token_comes_from_the_given_environment():
    config = load_config(None, {"--local-token-env": "RUNTIMED_TOKEN"}, environ={"RUNTIMED_TOKEN": "t0k3n"})

    assert config.server.local_token == Secret("t0k3n")
    assert config.server.local_token.reveal() == "t0k3n"


@pytest.mark.parametrize("token", ["two words", "tab\there", "new\nline", "bell\x07"])
def test_a_token_with_whitespace_or_control_characters_is_refused_without_showing_it(token):
    message = config_error(None, {"--local-token-env": "RUNTIMED_TOKEN"}, environ={"RUNTIMED_TOKEN": token})

    assert "RUNTIMED_TOKEN" in message
    assert "contains whitespace or control characters" in message
    assert token not in message


@pytest.mark.parametrize(
    ("value", "complaint"), [('""', "must not be empty"), ('"A=B"', "must be an environment variable name")]
)
def test_a_bad_token_variable_name_names_the_file_and_key(tmp_path, value, complaint):
    path = write_config(tmp_path, f"[server]\nlocal_token_env = {value}\n")

    assert config_error(path) == f"{path}: [server] local_token_env {complaint}"


def test_the_token_never_appears_in_the_repr_of_the_config():
    token = "s3cr3t-t0k3n-value"
    config = load_config(None, {"--local-token-env": "RUNTIMED_TOKEN"}, environ={"RUNTIMED_TOKEN": token})

    assert config.server.local_token is not None and config.server.local_token.reveal() == token
    for text in (repr(config), str(config), repr(config.server), str(config.server.local_token)):
        assert token not in text
        assert "<redacted>" in text


# ------------------------------------------------------------------- the example


def example_sections() -> dict[str, list[str]]:
    """The lines of each ``[section]`` of ``config.example.toml``, comments included."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        # A table of a section of named tables is commented out (``# [profiles.gemini]``): its
        # lines count as the section's.
        if header := re.fullmatch(r"(?:# )?\[(\w+)(?:\.[\w-]+)?\]", line.strip()):
            name = header[1]
            sections.setdefault(name, [])
        elif name is not None:
            sections[name].append(line)
    return sections


def example_documentation(section: str, key: str) -> str | None:
    """The comment just above ``key = …`` (or ``# key = …``) in its section; None if the key is absent."""
    comment: list[str] = []
    for line in example_sections()[section]:
        if re.match(rf"(# )?{key} = ", line):
            return "\n".join(comment)
        if re.match(r"(# )?\w+ = ", line) or not line.strip():
            comment = []  # another key's line, or a blank line, ends a comment block
        elif line.startswith("#"):
            comment.append(line)
    return None


def test_the_example_config_loads_and_shows_the_defaults():
    assert load_config(EXAMPLE, environ={}) == load_config(environ={})


def test_the_example_config_has_exactly_the_known_sections():
    assert list(example_sections()) == list(KEYS)


@pytest.mark.parametrize(("section", "key"), [(section, key) for section in KEYS for key in KEYS[section]])
def test_every_known_key_is_documented_in_its_section_of_the_example(section, key):
    documentation = example_documentation(section, key)

    assert documentation is not None, f"[{section}] {key} is not in {EXAMPLE.name}"
    assert documentation.strip(), f"[{section}] {key} has no comment above it in {EXAMPLE.name}"


#: (section, key, Enum) of every key whose values are a closed set.
CHOICES = [
    (name, key, field.enum)
    for name, section in SECTIONS.items()
    for key, field in (section.section if isinstance(section, NamedTables) else section).fields.items()
    if isinstance(field, Choice)
]


def test_the_closed_sets_are_the_profiles_policies_the_store_kind_and_the_log_level_and_format():
    assert [(name, key, enum) for name, key, enum in CHOICES] == [
        ("profiles", "permissions", PermissionPolicy),
        ("profiles", "restart", RestartPolicy),
        ("store", "kind", StoreKind),
        ("log", "level", LogLevel),
        ("log", "format", LogFormat),
    ]


@pytest.mark.parametrize(("section", "key", "enum"), CHOICES, ids=[f"{s}.{k}" for s, k, _ in CHOICES])
def test_every_value_of_a_closed_set_is_documented_beside_its_key_in_the_example(section, key, enum):
    documentation = example_documentation(section, key) or ""

    for member in enum:
        assert re.search(rf"\b{re.escape(member.value)}\b", documentation), (
            f"[{section}] {key} = {member.value!r} is not documented in {EXAMPLE.name}"
        )


def test_every_key_in_the_example_is_known():
    for section, lines in example_sections().items():
        for line in lines:
            if assignment := re.match(r"(# )?(\w+) = ", line):
                key = assignment[2]
                assert key in KEYS[section], f"{EXAMPLE.name} documents unknown key [{section}] {key}"


@pytest.mark.parametrize(("flag", "section", "key"), [(flag, *where) for flag, where in FLAG_KEYS.items()])
def test_every_flag_is_named_beside_its_key_in_the_example(flag, section, key):
    assert f"(flag: {flag})" in (example_documentation(section, key) or "")


def test_the_commented_out_examples_are_valid_too(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented = re.sub(r"^# (\w+ = |\[profiles\.)", r"\1", text, flags=re.MULTILINE)
    assert uncommented != text
    path = write_config(tmp_path, uncommented)

    config = load_config(path, environ={"RUNTIMED_TOKEN": "from-the-example", "OPENAI_API_KEY": "sk-example"})

    assert config.server.local_token_env == "RUNTIMED_TOKEN"
    assert config.runtime.runtime_id is not None and config.runtime.display_name is not None
    assert config.store.root is not None
    assert config.execution.default_profile == "builtin:echo"
    assert [profile.name for profile in config.execution.profiles] == [
        "builtin:echo",
        "builtin:chat",
        "gemini",
        "careful-echo",
        "local",
    ]


# ------------------------------------------------------------------ through the CLI


def test_a_bad_config_file_stops_serve_with_exit_2_and_one_line_naming_the_file_and_key(tmp_path, monkeypatch):
    async def must_not_run(config: Any, *_: object) -> None:
        raise AssertionError("serve accepted a bad config file")

    monkeypatch.setattr(runtimed.cli, "run", must_not_run)
    path = write_config(tmp_path, "[limits]\nmax_event_batch_items = true\n")

    result = CliRunner().invoke(runtimed.cli.main, ["serve", "--config", str(path)], prog_name="runtimed")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"runtimed: {path}: [limits] max_event_batch_items must be an integer, not a boolean\n"


def test_an_unknown_key_in_the_config_file_stops_serve_with_exit_2(tmp_path, monkeypatch):
    async def must_not_run(config: Any, *_: object) -> None:
        raise AssertionError("serve accepted a bad config file")

    monkeypatch.setattr(runtimed.cli, "run", must_not_run)
    path = write_config(tmp_path, '[store]\nkind = "memory"\nroot_dir = "/srv"\n')

    result = CliRunner().invoke(runtimed.cli.main, ["serve", "--config", str(path)], prog_name="runtimed")

    assert result.exit_code == 2
    assert result.stderr == f"runtimed: {path}: unknown key [store] root_dir (known: kind, root)\n"


def test_the_idempotency_key_ttl_is_a_limit_of_the_runtime(tmp_path):
    assert load_config(environ={}).limits.idempotency_key_ttl_seconds == 86400
    path = write_config(tmp_path, "[limits]\nidempotency_key_ttl_seconds = 60\n")
    assert load_config(path, environ={}).limits.idempotency_key_ttl_seconds == 60
    path = write_config(tmp_path, "[limits]\nidempotency_key_ttl_seconds = 0\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={})
    assert str(refused.value) == f"{path}: [limits] idempotency_key_ttl_seconds must be at least 1, not 0"
