"""Configuration: dataclasses, TOML loading, precedence and validation.

A value comes from a command-line flag, else the TOML file, else the built-in default. Every
problem raises ``ConfigError`` with a message naming where the bad value came from (the flag,
or the file and ``[section] key``), so the CLI can print one line and exit 2. Unknown keys are
errors: the operator of this very daemon wrote the file, so a typo must stop it.

Each ``[section]`` of the file is a marshmallow schema (``SECTIONS``); a flag's value is checked
by the same field as the key it overrides (``FLAG_KEYS``), so the two cannot disagree.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, cast

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate, validates_schema

from ..domain.execution import (
    BUILTIN_PREFIX,
    AgentProfile,
    ExecutionConfig,
    PermissionPolicy,
    ProfileSource,
    RestartPolicy,
)
from ..domain.management import RuntimeLimits, RuntimeOptions
from ..web.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_TIMEOUT_SECONDS,
    Secret,
    ServerConfig,
)


class ConfigError(Exception):
    """A configuration that runtimed refuses to start with; the message is the whole story."""


class StoreKind(str, Enum):
    """Where state is kept: in the process only, or durably under ``[store] root``."""

    MEMORY = "memory"
    FS = "fs"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    kind: StoreKind = StoreKind.MEMORY
    root: Path | None = None


class LogLevel(str, Enum):
    """The least severe level written. The members' names are the ``logging`` module's level names."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(str, Enum):
    """One readable line per record, or one JSON object."""

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.TEXT
    #: Log to this file instead of stderr (SIGHUP reopens it, for logrotate).
    file: Path | None = None


#: The built-in agents (§9.1, §9.6): name -> the command that runs it, with the daemon's own
#: interpreter. Each is the profile ``builtin:<name>``, and ``builtin = "<name>"`` in a profile.
BUILTIN_AGENTS: Mapping[str, tuple[str, ...]] = {
    "echo": (sys.executable, "-m", "runtimed.agents.echo"),
    "chat": (sys.executable, "-m", "runtimed.agents.chat"),
}

#: The settings a built-in agent takes from its profile (``[profiles.<name>]`` keys beside
#: ``builtin``), and those it cannot do without. The supervisor hands them to the agent
#: (``runtimed.agents.supervisor.setting_environment``).
BUILTIN_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "echo": (),
    "chat": ("base_url", "model", "api_key_env", "system_prompt", "max_tokens", "timeout_seconds"),
}
REQUIRED_SETTINGS: Mapping[str, tuple[str, ...]] = {"chat": ("model",)}
#: Every key that is a built-in agent's setting, not a key of every profile.
SETTING_KEYS: tuple[str, ...] = tuple(dict.fromkeys(key for keys in BUILTIN_SETTINGS.values() for key in keys))


def builtin_profiles() -> tuple[AgentProfile, ...]:
    """The profiles of the built-in agents, as they exist without any configuration."""
    return tuple(
        AgentProfile(name=BUILTIN_PREFIX + name, source=ProfileSource.BUILTIN, command=command)
        for name, command in BUILTIN_AGENTS.items()
    )


def default_execution() -> ExecutionConfig:
    return ExecutionConfig(profiles=builtin_profiles())


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: Profiles, the default profile and the supervisor's settings, for the agent supervisor.
    execution: ExecutionConfig = field(default_factory=default_execution)

    @property
    def limits(self) -> RuntimeLimits:
        return self.runtime.limits


# ----------------------------------------------------------------- addresses


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; raises ``ValueError``."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as [{host}]:{port_text}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    if not host.strip() or any(c.isspace() for c in host):
        raise ValueError(f"invalid host in {text!r}")
    return host, int(port_text)


# ------------------------------------------------------------- TOML values


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be empty")


def env_name(value: str) -> None:
    if "=" in value:
        raise ValidationError("must be an environment variable name")


def finite_and_not_negative(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValidationError(f"must be a finite number, 0 or more, not {value}")


def finite_and_positive(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValidationError(f"must be a finite number above 0, not {value}")


def absolute_path(value: str) -> None:
    if not os.path.isabs(value):
        raise ValidationError(f"must be an absolute path, not {value!r}")


def http_url(value: str) -> None:
    if (
        not value.startswith(("http://", "https://"))
        or len(value) <= len("https://")
        or any(c.isspace() for c in value)
    ):
        raise ValidationError(f"must be an http:// or https:// URL, not {value!r}")


def env_names(values: tuple[str, ...]) -> None:
    for index, value in enumerate(values):
        if not value.strip() or "=" in value:
            raise ValidationError(f"item {index} must be an environment variable name, not {value!r}")


def a_command(values: tuple[str, ...]) -> None:
    if not values:
        raise ValidationError("must not be empty")
    if not values[0].strip():
        raise ValidationError("must name a program first, not an empty string")


def timeout_up_to(most: float) -> Callable[[float], None]:
    """A timeout: more than 0 seconds (it cannot be turned off) and at most ``most``."""

    def check(value: float) -> None:
        if not (math.isfinite(value) and 0 < value <= most):
            raise ValidationError(f"must be more than 0 and at most {most:g} seconds, not {value}")

    return check


at_least_1 = validate.Range(min=1, error="must be at least {min}, not {input}")


class TomlValue(fields.Field[Any]):
    """A field that takes exactly one kind of TOML value, and says what it got instead.

    marshmallow's own fields coerce (``"10"`` loads as 10, ``true`` passes for a number) and their
    messages do not name the type found. A config file is checked strictly, so the fields here
    check the TOML type first, then hand the value to the marshmallow field they extend, then to
    their validators, and finally ``convert`` it to what the dataclass holds. Messages complete the
    sentence "``[section] key`` ..." (or "``--flag`` ...").
    """

    #: The Python types ``tomllib`` reads the accepted TOML values as (``bool`` only if named).
    toml_types: ClassVar[tuple[type, ...]] = ()
    #: The accepted values, as a message names them.
    expected: ClassVar[str] = ""
    # marshmallow merges the messages of every class in the MRO (it is not a ClassVar to mypy).
    default_error_messages = {"wrong_type": "must be {expected}, not {type}"}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        if not isinstance(value, self.toml_types) or (isinstance(value, bool) and bool not in self.toml_types):
            raise self.make_error("wrong_type", expected=self.expected, type=_type_name(value))
        return self._load_value(value, attr, data, **kwargs)

    def _load_value(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        """Load a value of the right type: the marshmallow field this one extends, if any."""
        return super()._deserialize(value, attr, data, **kwargs)

    def deserialize(
        self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        # Validators see the value as written, so that a message shows what the operator wrote.
        loaded = super().deserialize(value, attr, data, **kwargs)
        return loaded if loaded is missing else self.convert(loaded)

    def convert(self, value: Any) -> Any:
        """What the config holds for a valid value."""
        return value


class String(TomlValue, fields.String):
    toml_types = (str,)
    expected = "a string"


class FilePath(String):
    """A path to a file or directory: a string that is not blank, held as a ``Path``."""

    def __init__(self, validate: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(validate=[not_blank] if validate is None else [not_blank, validate], **kwargs)

    def convert(self, value: str) -> Path:
        return Path(value)


class Bind(String):
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), held as ``(host, port)``."""

    def _load_value(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        try:
            return parse_bind(super()._load_value(value, attr, data, **kwargs))
        except ValueError as error:
            raise ValidationError(str(error)) from None


class Integer(TomlValue, fields.Integer):
    toml_types = (int,)
    expected = "an integer"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class Seconds(TomlValue):
    """A duration in seconds, an integer or a float, held as a float."""

    toml_types = (int, float)
    expected = "a number"

    def convert(self, value: float) -> float:
        return float(value)


class Boolean(TomlValue, fields.Boolean):
    toml_types = (bool,)
    expected = "true or false"


class StringList(TomlValue, fields.List[Any]):
    """An array of strings, held as a tuple."""

    toml_types = (list,)
    expected = "a list of strings"
    default_error_messages = {"item": "must be a list of strings; item {index} is {type}"}  # noqa: RUF012

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(String(), **kwargs)

    def _load_value(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        try:
            return tuple(super()._load_value(value, attr, data, **kwargs))
        except ValidationError as error:
            # fields.List reports its items' errors by index; a String item can only be of the wrong type.
            index = min(cast(dict[int, Any], error.messages))
            raise self.make_error("item", index=index, type=_type_name(value[index])) from None


class PathList(StringList):
    """An array of absolute paths, held as a tuple of ``Path``."""

    expected = "a list of absolute paths"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=self._absolute, **kwargs)

    @staticmethod
    def _absolute(values: tuple[str, ...]) -> None:
        for index, value in enumerate(values):
            if not os.path.isabs(value):
                raise ValidationError(f"item {index} must be an absolute path, not {value!r}")

    def convert(self, value: tuple[str, ...]) -> tuple[Path, ...]:
        return tuple(Path(item) for item in value)


class StringTable(TomlValue):
    """A table of strings keyed by environment variable names (``env = { MODEL = "x" }``), held as a dict."""

    toml_types = (dict,)
    expected = "a table of strings"
    default_error_messages = {  # noqa: RUF012 - marshmallow's own attribute
        "name": "must be keyed by environment variable names, not {name!r}",
        "item": "must be a table of strings; {name} is {type}",
    }

    def _load_value(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        for key, item in value.items():
            if not key.strip() or "=" in key:
                raise self.make_error("name", name=key)
            if not isinstance(item, str):
                raise self.make_error("item", name=key, type=_type_name(item))
        return dict(value)


class Choice(TomlValue):
    """One value of a closed set, written as the ``Enum`` member's value and held as the member."""

    toml_types = (str,)
    expected = "a string"
    default_error_messages = {"unknown": "must be one of {choices}, not {input!r}"}  # noqa: RUF012

    def __init__(self, enum: type[Enum], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enum = enum

    def _load_value(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        try:
            return self.enum(value)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in self.enum)
            raise self.make_error("unknown", input=value, choices=choices) from None


# -------------------------------------------------------------- TOML sections


class Section(Schema):
    """The keys of one ``[section]``: each a field named as the dataclass attribute it sets.

    Every key is optional: a key the file leaves out is left out of what the schema loads, so a
    flag or the dataclass's default fills it in. Keys the schema does not know are errors.
    """

    class Meta:
        unknown = RAISE


class ServerSection(Section):
    bind = Bind()
    local_token_env = String(validate=[not_blank, env_name])
    max_request_body_bytes = Integer(validate=at_least_1)
    allowed_origins = StringList()
    allowed_hosts = StringList()
    ws_heartbeat_seconds = Seconds(validate=finite_and_not_negative)
    ws_max_message_bytes = Integer(validate=at_least_1)
    unix_socket = FilePath()
    metrics_public = Boolean()
    header_timeout_seconds = Seconds(validate=timeout_up_to(MAX_TIMEOUT_SECONDS))
    keepalive_timeout_seconds = Seconds(validate=timeout_up_to(MAX_TIMEOUT_SECONDS))
    body_timeout_seconds = Seconds(validate=timeout_up_to(MAX_TIMEOUT_SECONDS))
    max_connections = Integer(validate=at_least_1)


class RuntimeSection(Section):
    runtime_id = String(validate=not_blank)
    display_name = String()
    default_profile = String(validate=not_blank)


#: ``[runtime]`` keys that belong to the ``ExecutionConfig``: the Runtime never resolves profiles.
EXECUTION_RUNTIME_KEYS = ("default_profile",)


class LimitsSection(Section):
    """The fields of ``RuntimeLimits``, and the limits the web layer enforces (``WEB_LIMITS``)."""

    max_transcript_projection_items = Integer(validate=at_least_1)
    max_event_batch_items = Integer(validate=at_least_1)
    observation_backlog = Integer(validate=at_least_1)
    subscriber_queue = Integer(validate=at_least_1)
    max_observation_sessions = Integer(validate=at_least_1)
    max_running_agents = Integer(validate=at_least_1)
    max_queued_inputs = Integer(validate=at_least_1)
    max_agent_message_bytes = Integer(validate=at_least_1)
    agent_log_lines_per_second = Integer(validate=at_least_1)
    idempotency_key_ttl_seconds = Integer(validate=at_least_1)


#: ``[limits]`` keys that set a ``ServerConfig`` attribute of the same name, not a ``RuntimeLimits``
#: one: the web layer counts observation sessions, the Runtime never sees them.
WEB_LIMITS = ("max_observation_sessions",)
#: ``[limits]`` keys of the agent supervisor (``ExecutionConfig``): it reads agents' output.
EXECUTION_LIMITS = ("max_agent_message_bytes", "agent_log_lines_per_second")


class ExecutionSection(Section):
    workspace_roots = PathList()
    permission_timeout_seconds = Seconds(validate=finite_and_positive)


class ProfileSection(Section):
    """One ``[profiles.<name>]`` table (§9.1): an agent run by ``command``, or a built-in agent
    named by ``builtin``; the keys from ``cwd`` to ``start_timeout_seconds`` apply to both, the
    keys after them are settings of one built-in agent (``BUILTIN_SETTINGS``) and only allowed
    beside its ``builtin``."""

    command = StringList(validate=a_command)
    builtin = String(validate=not_blank)
    cwd = FilePath(validate=absolute_path)
    env = StringTable()
    pass_env = StringList(validate=env_names)
    permissions = Choice(PermissionPolicy)
    restart = Choice(RestartPolicy)
    stop_grace_seconds = Seconds(validate=finite_and_not_negative)
    start_timeout_seconds = Seconds(validate=finite_and_positive)
    # builtin = "chat" (runtimed.agents.chat)
    base_url = String(validate=[not_blank, http_url])
    model = String(validate=not_blank)
    api_key_env = String(validate=[not_blank, env_name])
    system_prompt = String()
    max_tokens = Integer(validate=at_least_1)
    timeout_seconds = Seconds(validate=finite_and_positive)

    @validates_schema
    def _one_agent(self, data: dict[str, Any], **_: Any) -> None:
        if "command" in data and "builtin" in data:
            raise ValidationError(
                "must not be given beside command: a profile runs a command or a built-in agent", "builtin"
            )
        builtin = data.get("builtin")
        if builtin is not None and builtin not in BUILTIN_AGENTS:
            known = ", ".join(BUILTIN_AGENTS)
            raise ValidationError(f"names no built-in agent: {builtin!r} (known: {known})", "builtin")
        if "command" not in data and builtin is None:
            raise ValidationError('needs command = ["program", …] or builtin = "<name>"')
        for key in SETTING_KEYS:
            if key in data and key not in BUILTIN_SETTINGS.get(builtin or "", ()):
                owners = " or ".join(f'builtin = "{name}"' for name, keys in BUILTIN_SETTINGS.items() if key in keys)
                runs = f'builtin = "{builtin}"' if builtin is not None else "a command"
                raise ValidationError(f"is a setting of {owners} only, and this profile runs {runs}", key)
        for key in REQUIRED_SETTINGS.get(builtin or "", ()):
            if key not in data:
                raise ValidationError(f'needs {key} = "…": builtin = "{builtin}" has no default {key}')


def profile_name(name: str) -> None:
    if not name.strip():
        raise ValidationError("a profile name must not be empty")
    if name.startswith(BUILTIN_PREFIX):
        raise ValidationError(f"a profile name must not start with {BUILTIN_PREFIX} (it names a built-in agent)")


class StoreSection(Section):
    kind = Choice(StoreKind, error_messages={"unknown": 'must be "memory" or "fs", not {input!r}'})
    root = FilePath()


class LogSection(Section):
    level = Choice(LogLevel)
    format = Choice(LogFormat)
    file = FilePath()


@dataclass(frozen=True, slots=True)
class NamedTables:
    """A section made of named tables, such as ``[profiles.<name>]``, each holding the keys of ``section``.

    It loads as ``{name: values}`` in the file's order; messages name a key as
    ``[profiles.<name>] key``. ``name`` checks a table's name (raising ``ValidationError``)."""

    section: Section
    name: Callable[[str], None] | None = None


#: Every section of the file, in the order ``config.example.toml`` documents them. A new key is a
#: field on its section plus the dataclass attribute it sets; a new section is a schema here, its
#: dataclass, and the line of ``load_config`` that builds it.
SECTIONS: dict[str, Section | NamedTables] = {
    "server": ServerSection(),
    "runtime": RuntimeSection(),
    "limits": LimitsSection(),
    "execution": ExecutionSection(),
    "profiles": NamedTables(ProfileSection(), name=profile_name),
    "store": StoreSection(),
    "log": LogSection(),
}

#: Command-line flag -> (section, key) it overrides, for ``load_config``'s ``overrides``.
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "--bind": ("server", "bind"),
    "--local-token-env": ("server", "local_token_env"),
    "--runtime-id": ("runtime", "runtime_id"),
    "--display-name": ("runtime", "display_name"),
    "--max-transcript-projection-items": ("limits", "max_transcript_projection_items"),
    "--max-event-batch-items": ("limits", "max_event_batch_items"),
    "--store": ("store", "kind"),
    "--fs-root": ("store", "root"),
    "--unix-socket": ("server", "unix_socket"),
    "--log-level": ("log", "level"),
    "--log-format": ("log", "format"),
    "--log-file": ("log", "file"),
}


def _complaint(messages: Any) -> str:
    """The first of a field's messages (a list of them, or a dict of lists for a container)."""
    while not isinstance(messages, str):
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return messages


def _expect_table(path: Path, header: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{header}] must be a table, not {_type_name(value)}")


def _load_table(path: Path, header: str, section: Section, table: dict[str, Any]) -> dict[str, Any]:
    """The values of the keys ``table`` holds, as ``section`` loads them; the first problem, in
    the file's order, is the ``ConfigError``."""
    try:
        loaded: dict[str, Any] = section.load(table)
    except ValidationError as error:
        errors = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
        for key in table:
            if key not in section.fields:
                known = ", ".join(section.declared_fields)
                raise ConfigError(f"{path}: unknown key [{header}] {key} (known: {known})") from None
            if key in errors:
                raise ConfigError(f"{path}: [{header}] {key} {_complaint(errors[key])}") from None
        raise ConfigError(f"{path}: [{header}] {_complaint(errors)}") from None  # a whole-section check
    return loaded


def read_toml(path: Path, sections: Mapping[str, Section | NamedTables] | None = None) -> dict[str, Any]:
    """Read and check a config file: only known sections and keys, each of the right type.

    Returns each section's values as its fields load them (``bind`` as ``(host, port)``, a path as
    a ``Path``, a closed set as its ``Enum`` member); ``sections`` defaults to ``SECTIONS``."""
    sections = SECTIONS if sections is None else sections
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    loaded: dict[str, Any] = {}
    for name, table in data.items():
        section = sections.get(name)
        if section is None:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(sections)})")
        _expect_table(path, name, table)
        if isinstance(section, NamedTables):
            loaded[name] = {}
            for table_name, named_table in table.items():
                header = f"{name}.{table_name}"
                _expect_table(path, header, named_table)
                if section.name is not None:
                    try:
                        section.name(table_name)
                    except ValidationError as error:
                        raise ConfigError(f"{path}: [{header}] {_complaint(error.messages)}") from None
                loaded[name][table_name] = _load_table(path, header, section.section, named_table)
        else:
            loaded[name] = _load_table(path, name, section, table)
    return loaded


def _flag_value(flag: str, value: Any) -> Any:
    """A flag's value, checked and loaded by the field of the key it overrides."""
    section_name, key = FLAG_KEYS[flag]
    section = SECTIONS[section_name]
    assert isinstance(section, Section), f"{flag} overrides a key of a section of named tables"
    try:
        return section.fields[key].deserialize(value)
    except ValidationError as error:
        raise ConfigError(f"{flag} {_complaint(error.messages)}") from None


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the config: ``overrides`` (flag -> value, ``None`` = not given) > file > defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    sources: dict[tuple[str, str], str] = {}
    if path is not None:
        for section, table in read_toml(path).items():
            values[section].update(table)
            if isinstance(SECTIONS[section], NamedTables):
                sources.update({(section, name): f"{path}: [{section}.{name}]" for name in table})
            else:
                sources.update({(section, key): f"{path}: [{section}] {key}" for key in table})
    for flag, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = FLAG_KEYS[flag]
        values[section][key] = _flag_value(flag, value)
        sources[(section, key)] = flag

    def where(section: str, key: str) -> str:
        return sources.get((section, key), f"[{section}] {key}")

    limits = dict(values["limits"])
    web_limits = {key: limits.pop(key) for key in WEB_LIMITS if key in limits}
    execution_limits = {key: limits.pop(key) for key in EXECUTION_LIMITS if key in limits}
    runtime_values = dict(values["runtime"])
    default_profile = runtime_values.pop("default_profile", None)
    server = _server_config({**values["server"], **web_limits}, where, environ)
    runtime = RuntimeOptions(**runtime_values, limits=RuntimeLimits(**limits))
    store = StoreConfig(**values["store"])
    if store.kind is StoreKind.FS and store.root is None:
        raise ConfigError(f"{where('store', 'kind')}: the fs store needs a root ([store] root or --fs-root)")
    execution = _execution_config(
        values["profiles"], default_profile, {**values["execution"], **execution_limits}, where
    )
    _check_api_keys(execution, server, where, environ)
    return Config(server=server, runtime=runtime, store=store, log=LogConfig(**values["log"]), execution=execution)


def _execution_config(
    tables: Mapping[str, Mapping[str, Any]],
    default_profile: str | None,
    values: Mapping[str, Any],
    where: Callable[[str, str], str],
) -> ExecutionConfig:
    """The profiles (built-in, then ``[profiles.<name>]`` in the file's order) and the default.

    ``default_profile`` is a table's name or ``builtin:<name>``; a bare name no table has that
    a built-in agent has (``"echo"``) means that built-in agent."""
    profiles = list(builtin_profiles())
    for name, table in tables.items():
        keys = dict(table)
        builtin = keys.pop("builtin", None)
        command = BUILTIN_AGENTS[builtin] if builtin is not None else keys.pop("command")
        # A built-in agent's settings travel as text (in its environment): 1024, not 1024.0.
        settings = {key: _setting_text(keys.pop(key)) for key in SETTING_KEYS if key in keys}
        profiles.append(
            AgentProfile(name=name, source=ProfileSource.CONFIG, command=command, settings=settings, **keys)
        )
    names = [profile.name for profile in profiles]
    if default_profile is not None and default_profile not in names:
        if default_profile in BUILTIN_AGENTS:
            default_profile = BUILTIN_PREFIX + default_profile
        else:
            raise ConfigError(
                f"{where('runtime', 'default_profile')} names no profile: {default_profile!r} "
                f"(known: {', '.join(names)})"
            )
    return ExecutionConfig(profiles=tuple(profiles), default_profile=default_profile, **values)


def _setting_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_api_keys(
    execution: ExecutionConfig, server: ServerConfig, where: Callable[[str, str], str], environ: Mapping[str, str]
) -> None:
    """A profile's ``api_key_env`` names a variable the daemon has, and not its own token's."""
    for profile in execution.profiles:
        name = profile.settings.get("api_key_env")
        if name is None:
            continue
        if name == server.local_token_env:
            raise ConfigError(
                f"{where('profiles', profile.name)} api_key_env names {name}, the daemon's own token "
                "([server] local_token_env), which never reaches an agent"
            )
        key = environ.get(name, "")
        if not key:
            raise ConfigError(f"{where('profiles', profile.name)} api_key_env names {name}, which is unset or empty")
        if any(c.isspace() or ord(c) < 32 for c in key):
            raise ConfigError(
                f"{where('profiles', profile.name)} api_key_env: the key in {name} "
                "contains whitespace or control characters"
            )


def _server_config(
    values: Mapping[str, Any], where: Callable[[str, str], str], environ: Mapping[str, str]
) -> ServerConfig:
    """The ``[server]`` section, its token read from ``environ``; a non-loopback bind needs one."""
    values = dict(values)
    bind_given = "bind" in values
    host, port = values.pop("bind", (DEFAULT_HOST, DEFAULT_PORT))
    token_env = values.get("local_token_env")
    token = None
    if token_env is not None:
        raw = environ.get(token_env, "")
        if not raw:
            raise ConfigError(f"{where('server', 'local_token_env')} names {token_env}, which is unset or empty")
        if any(c.isspace() or ord(c) < 32 for c in raw):
            raise ConfigError(
                f"{where('server', 'local_token_env')}: the token in {token_env} "
                "contains whitespace or control characters"
            )
        token = Secret(raw)
    # With a Unix socket, TCP is off unless a bind was given explicitly.
    listen_tcp = values.get("unix_socket") is None or bind_given
    server = ServerConfig(host=host, port=port, local_token=token, listen_tcp=listen_tcp, **values)
    if server.listen_tcp and not server.is_loopback and server.local_token is None:
        raise ConfigError(
            f"{where('server', 'bind')}: binding {server.bind}, which is not a loopback address, "
            "requires a token ([server] local_token_env or --local-token-env)"
        )
    return server
