"""The command line: ``runtimed serve`` builds config -> store -> Runtime -> app and runs it.

Thin by design: every decision about values lives in ``config``; every behaviour in the
Runtime and the web app. Problems at start are one line on stderr and an exit status:
2 for usage and configuration, 1 for a failure while starting or running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import click
from aiohttp import web

from . import __version__
from .config import Config, ConfigError, format_host_port, load_config
from .errors import RuntimedError
from .runtime import Runtime
from .fs_store import FsStore
from .store import MemoryStore, Store
from .web.app import create_app

log = logging.getLogger("runtimed")

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


class _OneLineFailure(click.ClickException):
    def show(self, file: object = None) -> None:
        click.echo(self.format_message(), err=True)


class ConfigProblem(_OneLineFailure):
    """A bad flag or config value: one line, exit status 2."""

    exit_code = 2


class StartFailure(_OneLineFailure):
    """The daemon could not start or run: one line, exit status 1."""

    exit_code = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runtimed")
def main() -> None:
    """runtimed: a local host for long-lived AI agent workers."""


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="TOML config file (see config.example.toml).")
@click.option("--bind", metavar="HOST:PORT", help="Address to listen on [default: 127.0.0.1:7420]; port 0 picks one.")
@click.option("--store", type=click.Choice(["memory", "fs"]), help="Where state is kept [default: memory].")
@click.option("--fs-root", metavar="DIR", help="Root directory of the fs store.")
@click.option("--runtime-id", metavar="ID", help="Runtime id [default: generated].")
@click.option("--display-name", metavar="NAME", help="Display name shown in the runtime summary.")
@click.option("--local-token-env", metavar="VAR", help="Environment variable that holds the bearer token.")
@click.option("--max-transcript-projection-items", type=click.IntRange(min=1), metavar="N", help="Largest transcript page [default: 256].")
@click.option("--max-event-batch-items", type=click.IntRange(min=1), metavar="N", help="Largest event poll batch [default: 256].")
@click.option("--bench-flush-delay-ms", type=click.FloatRange(min=0), default=0.0, hidden=True,
              help="Benchmarks only: sleep this long in every fs store flush (a simulated slow disk).")
def serve(config_path: str | None, bench_flush_delay_ms: float, **flags: object) -> None:
    """Serve the REST API and observation WebSocket until SIGTERM or SIGINT."""
    overrides = {"--" + name.replace("_", "-"): value for name, value in flags.items()}
    try:
        config = load_config(Path(config_path) if config_path is not None else None, overrides)
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(run(config, build_store(config, bench_flush_delay_ms / 1000)))
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    except (OSError, RuntimedError) as error:
        raise StartFailure(f"runtimed: {error}") from None


def build_store(config: Config, flush_delay: float = 0.0) -> Store:
    if config.store.kind == "fs":
        assert config.store.root is not None  # load_config requires it
        return FsStore(config.store.root, config.limits.observation_backlog, flush_delay=flush_delay)
    return MemoryStore()


async def run(config: Config, store: Store) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in order: HTTP first, then the store.

    The signal handlers go in before anything else, so a signal that arrives while the store
    is being restored or the socket bound still ends in an orderly shutdown and exit 0.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        runtime = await Runtime.open(store, config.runtime)
        try:
            await serve_app(runtime, config, stop)
        finally:
            await runtime.close()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def serve_app(runtime: Runtime, config: Config, stop: asyncio.Event) -> None:
    server = config.server
    if not server.is_loopback:
        log.warning(
            "listening on %s, which is not loopback: the bearer token travels in clear text "
            "unless a TLS-terminating proxy is in front",
            server.bind,
        )
    app = create_app(runtime, server)
    runner = web.AppRunner(app, handle_signals=False, access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=10.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise StartFailure(f"runtimed: cannot listen on {server.bind}: {reason}") from None
        host, port = runner.addresses[0][:2]
        print(
            f"runtimed listening on http://{format_host_port(host, port)} "
            f"(runtime {runtime.runtime_id}, store {runtime.summary().backend})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
