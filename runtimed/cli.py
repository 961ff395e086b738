"""The command line: the click group. ``runtimed serve`` hands a loaded config to ``daemon.serve``.

Thin by design: every decision about values lives in ``daemon.config``; every behaviour in the
Runtime and the web app. Problems at start are one line on stderr and an exit status:
2 for usage and configuration, 1 for a failure while starting or running.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from pathlib import Path

import click

from . import __version__
from .daemon.config import ConfigError, LogFormat, LogLevel, StoreKind, load_config
from .daemon.logs import configure_logging
from .daemon.serve import StartError, build_store, run
from .domain.errors import RuntimedError


class _OneLineFailure(click.ClickException):
    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)


class ConfigProblem(_OneLineFailure):
    """A bad flag or config value: one line, exit status 2."""

    exit_code = 2


class StartFailure(_OneLineFailure):
    """The daemon could not start or run: one line, exit status 1."""

    exit_code = 1


def _choice(enum: type[Enum]) -> click.Choice[str]:
    """A flag taking one of a config ``Enum``'s values (the config loads the member)."""
    return click.Choice([member.value for member in enum])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runtimed")
def main() -> None:
    """runtimed: a local host for long-lived AI agent workers."""


@main.command()
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
