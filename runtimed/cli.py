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
import socket
import stat
import sys
from pathlib import Path

import click
from aiohttp import web

from . import __version__
from .config import LOG_FORMATS, LOG_LEVELS, Config, ConfigError, format_host_port, load_config
from .errors import RuntimedError
from .runtime import Runtime
from .fs_store import FsStore
from .logs import ReopenableFileHandler, configure_logging
from .systemd import notify
from .store import MemoryStore, Store
from .web.app import create_app

log = logging.getLogger("runtimed")

#: How long in-flight requests may take to finish once a shutdown begins.
SHUTDOWN_SECONDS = 10.0


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
@click.option("--unix-socket", metavar="PATH", help="Also serve on this Unix socket (mode 0600); alone unless --bind is given.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Least severe log level written [default: info].")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help="Log lines as text or JSON [default: text].")
@click.option("--log-file", metavar="FILE", help="Log to FILE instead of stderr; SIGHUP reopens it.")
@click.option("--bench-flush-delay-ms", type=click.FloatRange(min=0), default=0.0, hidden=True,
              help="Benchmarks only: sleep this long in every fs store flush (a simulated slow disk).")
def serve(config_path: str | None, bench_flush_delay_ms: float, **flags: object) -> None:
    """Serve the REST API and observation WebSocket until SIGTERM or SIGINT."""
    overrides = {"--" + name.replace("_", "-"): value for name, value in flags.items()}
    try:
        config = load_config(Path(config_path) if config_path is not None else None, overrides)
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    try:
        log_file = configure_logging(config.log)
    except OSError as error:
        raise ConfigProblem(f"runtimed: cannot open log file {config.log.file}: {error.strerror or error}") from None
    try:
        asyncio.run(run(config, build_store(config, bench_flush_delay_ms / 1000), log_file))
    except ConfigError as error:
        raise ConfigProblem(f"runtimed: {error}") from None
    except (OSError, RuntimedError) as error:
        raise StartFailure(f"runtimed: {error}") from None


def build_store(config: Config, flush_delay: float = 0.0) -> Store:
    if config.store.kind == "fs":
        assert config.store.root is not None  # load_config requires it
        return FsStore(config.store.root, config.limits.observation_backlog, flush_delay=flush_delay)
    return MemoryStore()


class Signals:
    """SIGTERM/SIGINT ask for an orderly stop; a second SIGINT exits at once; SIGHUP reopens
    the log file. Installed before anything else, so a signal that arrives while the store is
    restored or the socket bound still ends in an orderly shutdown."""

    def __init__(self, log_file: ReopenableFileHandler | None) -> None:
        self.stop = asyncio.Event()
        self._log_file = log_file
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGTERM, self._terminate, signal.SIGTERM)
        self._loop.add_signal_handler(signal.SIGINT, self._terminate, signal.SIGINT)
        self._loop.add_signal_handler(signal.SIGHUP, self._reopen_log)

    def _terminate(self, signum: int) -> None:
        if self.stop.is_set():
            if signum == signal.SIGINT:
                log.warning("second interrupt: exiting now, without a graceful shutdown")
                logging.shutdown()
                os._exit(128 + signal.SIGINT)
            return
        log.info("%s: shutting down", signal.Signals(signum).name)
        notify("STOPPING=1", "STATUS=shutting down")
        self.stop.set()

    def _reopen_log(self) -> None:
        if self._log_file is None:
            log.info("SIGHUP: logging to stderr, no log file to reopen")
            return
        self._log_file.reopen()
        log.info("SIGHUP: reopened the log file")

    def remove(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)


async def run(config: Config, store: Store, log_file: ReopenableFileHandler | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in order: stop accepting, close the
    WebSocket sessions, let in-flight requests finish (10 s at most), then flush the store."""
    signals = Signals(log_file)
    try:
        runtime = await Runtime.open(store, config.runtime)
        try:
            await serve_app(runtime, config, signals.stop)
        finally:
            await runtime.close()
    finally:
        signals.remove()


async def serve_app(runtime: Runtime, config: Config, stop: asyncio.Event) -> None:
    server = config.server
    if server.listen_tcp and not server.is_loopback:
        log.warning(
            "listening on %s, which is not loopback: the bearer token travels in clear text "
            "unless a TLS-terminating proxy is in front",
            server.bind,
        )
    app = create_app(runtime, server)
    # One log line per request comes from the app's own middleware, so aiohttp's is off.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    unix_socket = None
    try:
        addresses = []
        if server.listen_tcp:
            site = web.TCPSite(runner, server.host, server.port)
            try:
                await site.start()
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise StartFailure(f"runtimed: cannot listen on {server.bind}: {reason}") from None
            host, port = runner.addresses[0][:2]
            addresses.append(f"http://{format_host_port(host, port)}")
        if server.unix_socket is not None:
            await start_unix_site(runner, server.unix_socket)
            unix_socket = server.unix_socket
            addresses.append(f"unix:{server.unix_socket}")
        where = f"(runtime {runtime.runtime_id}, store {runtime.summary().backend})"
        for address in addresses:
            print(f"runtimed listening on {address} {where}", file=sys.stderr, flush=True)
        notify("READY=1", f"STATUS=listening on {' and '.join(addresses)}")
        await stop.wait()
    finally:
        await runner.cleanup()
        if unix_socket is not None:
            unix_socket.unlink(missing_ok=True)


async def start_unix_site(runner: web.AppRunner, path: Path) -> None:
    """Listen on a Unix socket only this user may connect to (mode 0600). A stale socket file
    (nobody listening) is replaced; a live one belongs to another daemon and is refused."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise StartFailure(f"runtimed: {path} exists and is not a socket; refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                log.info("replacing stale socket %s", path)
                path.unlink(missing_ok=True)
            else:
                raise StartFailure(f"runtimed: another process is listening on {path}")
    # Created with mode 0600 from the start: no moment where others could connect.
    previous = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    except OSError as error:
        raise StartFailure(f"runtimed: cannot listen on unix:{path}: {error.strerror or error}") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
