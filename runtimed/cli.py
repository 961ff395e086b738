"""The command line: the click group. ``runtimed serve`` hands a loaded config to ``daemon.serve``;
``runtimed config check`` loads one and stops there; the client's commands (``status``,
``workers``, ``watch``, ``chat`` …) hand their arguments to ``runtimed.client``.

Thin by design: every decision about values lives in ``daemon.config``; every behaviour in the
Runtime and the web app; every call and rendering of the client in ``runtimed.client``. Problems
are one line on stderr and an exit status: 2 for usage and configuration, 1 for a failure while
starting or running, or when the daemon said no; 130 when Ctrl-C ends a client command.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .client import chat as client_chat
from .client import commands
from .client import watch as client_watch
from .client.connection import ClientFailure, Connection, UsageProblem, resolve
from .daemon.config import ConfigError, LogFormat, LogLevel, StoreKind, load_config
from .daemon.logs import configure_logging
from .daemon.serve import StartError, build_store, run
from .domain.catalog import (
    AssistantIntent,
    BuiltinProfile,
    CapabilityRequest,
    CreateWorkerRequest,
    NamedProfile,
    ProfileSelector,
    RoleIntent,
    RuntimeDefaultProfile,
    TaskIntent,
    WorkerIntent,
    WorkerStatus,
    WorkspaceRef,
)
from .domain.errors import CursorMalformed, RuntimedError
from .domain.interaction import InputKind
from .domain.observation import decode_cursor


class _OneLineFailure(click.ClickException):
    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)


class ConfigProblem(_OneLineFailure):
    """A bad flag or config value: one line, exit status 2."""

    exit_code = 2


class StartFailure(_OneLineFailure):
    """The daemon could not start or run: one line, exit status 1."""

    exit_code = 1


class ClientProblem(_OneLineFailure):
    """The daemon could not be reached or said no: one line, exit status 1."""

    exit_code = 1


def _choice(enum: type[Enum]) -> click.Choice[str]:
    """A flag taking one of a config ``Enum``'s values (the config loads the member)."""
    return click.Choice([member.value for member in enum])


#: The sections of ``runtimed --help``, each listing its commands in this order.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Daemon commands": ("serve", "config"),
    "Client commands (talk to a running daemon)": (
        "status",
        "workers",
        "create",
        "show",
        "send",
        "transcript",
        "watch",
        "chat",
        "interrupt",
        "permissions",
        "approve",
        "stop",
        "cancel",
        "delete",
    ),
}


class RuntimedGroup(click.Group):
    """``runtimed --help`` lists the daemon's commands, then the client's, in the order of use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = [name for names in SECTIONS.values() for name in names]
        return sorted(self.commands, key=lambda name: order.index(name) if name in order else len(order))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        width = formatter.width - 6 - max(len(name) for name in self.commands)
        placed: set[str] = set()
        for title, names in SECTIONS.items():
            rows = [(name, self.commands[name].get_short_help_str(width)) for name in names if name in self.commands]
            placed.update(names)
            with formatter.section(title):
                formatter.write_dl(rows)
        others = [(name, self.commands[name].get_short_help_str(width)) for name in self.commands if name not in placed]
        if others:
            with formatter.section("Other commands"):
                formatter.write_dl(others)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """The connection options and ``--json``, as given before or after the subcommand."""

    url: str | None = None
    unix_socket: str | None = None
    token_env: str | None = None
    as_json: bool = False

    def under(self, outer: ClientOptions) -> ClientOptions:
        """These options (the subcommand's) over ``outer`` (the group's): the subcommand's win."""
        return ClientOptions(
            url=self.url if self.url is not None else outer.url,
            unix_socket=self.unix_socket if self.unix_socket is not None else outer.unix_socket,
            token_env=self.token_env if self.token_env is not None else outer.token_env,
            as_json=self.as_json or outer.as_json,
        )


F = TypeVar("F", bound=Callable[..., Any])


def client_options(function: F) -> F:
    """The connection options and ``--json``, on the group and on every client command."""
    for option in reversed(
        [
            click.option(
                "--url",
                metavar="URL",
                help="The daemon's address [default: $RUNTIMED_URL, else http://127.0.0.1:7420].",
            ),
            click.option(
                "--unix-socket",
                metavar="PATH",
                help="Connect to this Unix socket instead (wins over a URL) [default: $RUNTIMED_SOCKET].",
            ),
            click.option(
                "--token-env",
                metavar="VAR",
                help="Environment variable holding the bearer token [default: RUNTIMED_TOKEN].",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the API's JSON bodies as they are."),
        ]
    ):
        function = option(function)
    return function


@click.group(cls=RuntimedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runtimed")
@client_options
@click.pass_context
def main(ctx: click.Context, /, **options: Any) -> None:
    """runtimed: a local host for long-lived AI agent workers.

    `runtimed serve` runs the daemon; the client commands talk to a running one, found at
    $RUNTIMED_URL or $RUNTIMED_SOCKET (with the token in $RUNTIMED_TOKEN) unless the
    connection options say otherwise, before or after the command.
    """
    ctx.obj = ClientOptions(**options)


def client(options: dict[str, Any]) -> tuple[Connection, bool]:
    """The connection and ``--json`` of the running client command: its options over the group's."""
    outer = click.get_current_context().find_root().obj
    merged = ClientOptions(**options).under(outer if isinstance(outer, ClientOptions) else ClientOptions())
    try:
        connection = resolve(merged.url, merged.unix_socket, merged.token_env, os.environ)
    except UsageProblem as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    return connection, merged.as_json


def run_client(connection: Connection, body: commands.Body) -> None:
    """Run a client command's body; its failures become one line and an exit status."""
    try:
        code = commands.run(connection, body)
    except ClientFailure as error:
        raise ClientProblem(f"runtimed: {error}") from None
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
    except Exception as error:  # a bug of the client's: still one line, never a traceback
        raise ClientProblem(f"runtimed: internal error of the client: {type(error).__name__}: {error}") from None
    if code:
        raise click.exceptions.Exit(code)


@main.command(short_help="Run the daemon until SIGTERM or SIGINT.")
@click.option("--config", "config_path", metavar="FILE", help="TOML config file (see config.example.toml).")
@click.option("--bind", metavar="HOST:PORT", help="Address to listen on [default: 127.0.0.1:7420]; port 0 picks one.")
@click.option("--store", type=_choice(StoreKind), help="Where state is kept [default: memory].")
@click.option("--fs-root", metavar="DIR", help="Root directory of the fs store.")
@click.option("--runtime-id", metavar="ID", help="Runtime id [default: generated].")
@click.option("--display-name", metavar="NAME", help="Display name shown in the runtime summary.")
@click.option("--local-token-env", metavar="VAR", help="Environment variable that holds the bearer token.")
@click.option(
    "--max-transcript-projection-items",
    type=click.IntRange(min=1),
    metavar="N",
    help="Largest transcript page [default: 256].",
)
@click.option(
    "--max-event-batch-items", type=click.IntRange(min=1), metavar="N", help="Largest event poll batch [default: 256]."
)
@click.option(
    "--unix-socket", metavar="PATH", help="Also serve on this Unix socket (mode 0600); alone unless --bind is given."
)
@click.option("--log-level", type=_choice(LogLevel), help="Least severe log level written [default: info].")
@click.option("--log-format", type=_choice(LogFormat), help="Log lines as text or JSON [default: text].")
@click.option("--log-file", metavar="FILE", help="Log to FILE instead of stderr; SIGHUP reopens it.")
def serve(config_path: str | None, **flags: object) -> None:
    """Serve the REST API and observation WebSocket until SIGTERM or SIGINT."""
    overrides = {"--" + name.replace("_", "-"): value for name, value in flags.items()}
    try:
        config = load_config(Path(config_path) if config_path is not None else None, overrides)
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    try:
        log_handler = configure_logging(config.log)
    except OSError as error:
        raise ConfigProblem(f"runtimed: cannot open log file {config.log.file}: {error.strerror or error}") from None
    try:
        asyncio.run(run(config, build_store(config), log_handler))
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    except (OSError, RuntimedError, StartError) as error:
        raise StartFailure(f"runtimed: {error}") from None


@main.group()
def config() -> None:
    """Check a config file without starting anything."""


@config.command("check")
@click.argument("file", metavar="FILE")
def config_check(file: str) -> None:
    """Load FILE as `serve --config FILE` would; exit 0, or 2 with serve's message."""
    try:
        loaded = load_config(Path(file))
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    store = loaded.store.kind.value + (f" at {loaded.store.root}" if loaded.store.root is not None else "")
    listens = [f"http://{loaded.server.bind}"] if loaded.server.listen_tcp else []
    if loaded.server.unix_socket is not None:
        listens.append(f"unix:{loaded.server.unix_socket}")
    click.echo(
        f"{file}: ok (listens on {' and '.join(listens)}, store {store}, {len(loaded.execution.profiles)} profiles)"
    )


# ---------------------------------------------------------------- client commands


def parse_profile(text: str | None) -> ProfileSelector:
    """``builtin:<name>`` names a built-in agent, anything else a configured profile; none given:
    the runtime's default."""
    if text is None:
        return RuntimeDefaultProfile()
    if text.startswith("builtin:"):
        return BuiltinProfile(text)
    return NamedProfile(text)


@main.command()
@client_options
def status(**options: Any) -> None:
    """Show the runtime: status, store, workers, diagnostics."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.status(api, as_json))


@main.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([status.value for status in WorkerStatus]),
    help="Only workers of this status (repeat for several).",
)
@click.option("--page-size", type=click.IntRange(min=1), metavar="N", help="Workers asked for per request.")
@client_options
def workers(statuses: tuple[str, ...], page_size: int | None, **options: Any) -> None:
    """List the workers, one row each."""
    connection, as_json = client(options)
    wanted = [WorkerStatus(value) for value in statuses]
    run_client(connection, lambda api: commands.workers(api, wanted, page_size, as_json))


@main.command()
@click.option("--task", metavar="TEXT", help="A worker with a task: its objective.")
@click.option("--assistant", is_flag=True, help="An assistant worker (the default intent).")
@click.option("--role", metavar="ROLE", help="A worker in a role.")
@click.option("--purpose", metavar="TEXT", help="The purpose of an assistant or a role.")
@click.option("--profile", metavar="PROFILE", help="builtin:echo, or a configured profile [default: the runtime's].")
@click.option("--capability", "capabilities", multiple=True, metavar="NAME", help="A requested capability (repeat).")
@click.option("--workspace", "workspaces", multiple=True, metavar="NAME=PATH", help="A workspace reference (repeat).")
@client_options
def create(
    task: str | None,
    assistant: bool,
    role: str | None,
    purpose: str | None,
    profile: str | None,
    capabilities: tuple[str, ...],
    workspaces: tuple[str, ...],
    **options: Any,
) -> None:
    """Create a worker and print its id."""
    if sum([task is not None, assistant, role is not None]) > 1:
        raise click.UsageError("give one of --task, --assistant and --role")
    intent: WorkerIntent
    if task is not None:
        if purpose is not None:
            raise click.UsageError("--purpose goes with --assistant or --role, not --task")
        intent = TaskIntent(task)
    elif role is not None:
        intent = RoleIntent(role, purpose)
    else:
        intent = AssistantIntent(purpose)
    refs = []
    for workspace in workspaces:
        name, equals, reference = workspace.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{workspace!r} is not NAME=PATH", param_hint="--workspace")
        refs.append(WorkspaceRef(name, reference))
    request = CreateWorkerRequest(
        intent=intent,
        profile=parse_profile(profile),
        requested_capabilities=tuple(CapabilityRequest(name) for name in capabilities),
        workspace_refs=tuple(refs),
    )
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.create(api, request, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@client_options
def show(worker_id: str, **options: Any) -> None:
    """Show one worker: intent, profile, status, execution."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.show(api, worker_id, as_json))


#: The most ``send ID -`` reads from stdin (the daemon's own limit on a body is lower by default).
MAX_STDIN_BYTES = 16 * 1024 * 1024


@main.command()
@click.argument("worker_id", metavar="ID")
@click.argument("text", metavar="TEXT")
@click.option("--system", is_flag=True, help="Send it as a system item, not user input.")
@client_options
def send(worker_id: str, text: str, system: bool, **options: Any) -> None:
    """Send input to a worker (TEXT, or - to read it from stdin)."""
    if text == "-":
        data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
        if len(data) > MAX_STDIN_BYTES:
            raise ConfigProblem(f"runtimed: stdin holds more than {MAX_STDIN_BYTES} bytes")
        text = data.decode("utf-8", errors="replace").rstrip("\n")
    connection, as_json = client(options)
    kind = InputKind.SYSTEM if system else InputKind.USER
    run_client(connection, lambda api: commands.send(api, worker_id, text, kind, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries until Ctrl-C.")
@click.option("--page-size", type=click.IntRange(min=1), metavar="N", help="Entries asked for per request.")
@client_options
def transcript(worker_id: str, follow: bool, page_size: int | None, **options: Any) -> None:
    """Print a worker's whole transcript; -f follows it."""
    connection, as_json = client(options)
    if follow:
        run_client(connection, lambda api: commands.follow_transcript(api, worker_id, page_size, as_json))
    else:
        run_client(connection, lambda api: commands.transcript(api, worker_id, page_size, as_json))


def _cursor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            decode_cursor(value)
        except CursorMalformed:
            raise click.BadParameter(f"{value!r} is not a cursor (wo_ and 16 lowercase hex digits)") from None
    return value


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("--cursor", metavar="CURSOR", callback=_cursor, help="Continue after this cursor (wo_…).")
@client_options
def watch(worker_id: str, cursor: str | None, **options: Any) -> None:
    """Follow a worker's events live, reconnecting by itself."""
    connection, as_json = client(options)
    run_client(connection, lambda api: client_watch.watch(api, worker_id, cursor, as_json))


@main.command()
@click.argument("worker_id", metavar="[ID]", required=False)
@click.option("--profile", metavar="PROFILE", default="builtin:echo", show_default=True, help="For a new worker.")
@client_options
def chat(worker_id: str | None, profile: str, **options: Any) -> None:
    """Talk with a worker (a new one without ID) at the terminal."""
    connection, as_json = client(options)
    if as_json:
        raise click.UsageError("chat is a conversation, not a body to print: use watch --json for the frames")
    selector = parse_profile(profile)
    run_client(connection, lambda api: client_chat.chat(api, worker_id, selector))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("--drop-queued", is_flag=True, help="Also drop the inputs waiting for a turn.")
@client_options
def interrupt(worker_id: str, drop_queued: bool, **options: Any) -> None:
    """End the running turn of a worker's agent."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.interrupt(api, worker_id, drop_queued, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@client_options
def permissions(worker_id: str, **options: Any) -> None:
    """List a worker's pending permission requests."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.permissions(api, worker_id, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.argument("request_id", metavar="REQUEST_ID")
@click.argument("option_id", metavar="OPTION_ID")
@client_options
def approve(worker_id: str, request_id: str, option_id: str, **options: Any) -> None:
    """Answer a permission request with one of its options."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.approve(api, worker_id, request_id, option_id, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("--reason", metavar="TEXT", help="Why, for the worker's events.")
@client_options
def stop(worker_id: str, reason: str | None, **options: Any) -> None:
    """Stop a worker (its agent is stopped too)."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.lifecycle(api, "stop", worker_id, reason, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("--reason", metavar="TEXT", help="Why, for the worker's events.")
@client_options
def cancel(worker_id: str, reason: str | None, **options: Any) -> None:
    """Cancel a worker (its agent is killed at once)."""
    connection, as_json = client(options)
    run_client(connection, lambda api: commands.lifecycle(api, "cancel", worker_id, reason, as_json))


@main.command()
@click.argument("worker_id", metavar="ID")
@click.option("-y", "--yes", is_flag=True, help="Do not ask first (asked only at a terminal).")
@client_options
def delete(worker_id: str, yes: bool, **options: Any) -> None:
    """Delete a worker that is not running, with its transcript."""
    connection, as_json = client(options)
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete {worker_id} with its transcript and events?", abort=True)
    run_client(connection, lambda api: commands.delete(api, worker_id, as_json))
