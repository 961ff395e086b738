"""``serve``: build config -> store -> Runtime -> agent supervisor -> app, run it, and shut it
down in order.

Start-up: the open-file limit is raised and the connection cap set from it (before the store
opens its files), then signal handlers (so a signal during restore still ends in an orderly
stop), then the store is restored into a Runtime, the agent supervisor is attached to it and
starts restoring the agents of running workers in the background (``/readyz`` answers 503 until
each has been attempted), then the sites listen and systemd hears ``READY=1``.

Shutdown, the one place its order is written down:

1. HTTP stops: no new connections, the WebSocket sessions are closed (``upstream_closed``), and
   in-flight requests finish (``SHUTDOWN_SECONDS`` at most) — so no request changes anything
   from here on;
2. the Runtime closes, which closes the agent supervisor first: running turns are cancelled
   and given their ``stop_grace_seconds`` to end (their ends are still made durable), then every
   agent gets the stop sequence and is reaped, workers staying ``running`` in the store;
3. then the Runtime flushes and closes the store;
4. last, the agents' temporary directories (memory store) are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from ..agents.supervisor import Supervisor
from ..runtime import Runtime
from ..store import FsStore, MemoryStore, Store
from ..web.app import create_app
from ..web.connections import ConnectionRunner
from ..web.middleware import AccessLog, log_access
from ..web.settings import ServerConfig, format_host_port
from .config import Config, StoreKind
from .logs import BatchingHandler, ReopenableFileHandler
from .openfiles import LISTEN_BACKLOG, AcceptErrors, OpenFileLimit, raise_open_file_limit, reserved
from .systemd import notify

log = logging.getLogger("runtimed")

#: How long in-flight requests may take to finish once a shutdown begins.
SHUTDOWN_SECONDS = 10.0


class StartError(Exception):
    """The daemon could not start (a socket, a file): the message is the one line to print."""


def build_store(config: Config) -> Store:
    """The store ``config`` asks for, not yet opened."""
    if config.store.kind is StoreKind.FS:
        assert config.store.root is not None  # the config requires it
        return FsStore(config.store.root, config.limits.observation_backlog, config.limits.idempotency_key_ttl_seconds)
    return MemoryStore()


class Signals:
    """SIGTERM/SIGINT ask for an orderly stop; a second SIGINT exits at once; SIGHUP reopens
    the log file. Installed before anything else, so a signal that arrives while the store is
    restored or the socket bound still ends in an orderly shutdown."""

    def __init__(self, log_handler: BatchingHandler | None) -> None:
        self.stop = asyncio.Event()
        self._log_handler = log_handler
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
        if not isinstance(self._log_handler, ReopenableFileHandler):
            log.info("SIGHUP: logging to stderr, no log file to reopen")
            return
        self._log_handler.reopen()  # what is pending goes to the old file first
        log.info("SIGHUP: reopened the log file")

    def remove(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.remove_signal_handler(signum)


def connection_cap(server: ServerConfig, limit: OpenFileLimit) -> int:
    """How many connections may be open at once: at most ``[server] max_connections``, and few
    enough under the open-file limit that the descriptors kept for the rest stay free."""
    listeners = int(server.listen_tcp) + int(server.unix_socket is not None)
    cap = limit.connection_cap(server.max_connections, listeners)
    kept = reserved(listeners)
    if cap < 1:
        raise StartError(
            f"the open file limit of {limit.soft} leaves no room for connections: {kept} file descriptors "
            "are kept for the store, the log and the listening sockets; raise it (LimitNOFILE=, ulimit -n)"
        )
    raised = f" (raised from {limit.was})" if limit.soft != limit.was else ""
    if cap < server.max_connections:
        log.info(
            "open file limit %d%s: at most %d connections at once, fewer than [server] max_connections = %d "
            "(%d file descriptors are kept for the store, the log and the listening sockets)",
            limit.soft,
            raised,
            cap,
            server.max_connections,
            kept,
        )
    else:
        log.info("open file limit %d%s: at most %d connections at once", limit.soft, raised, cap)
    return cap


@contextlib.contextmanager
def agent_workdirs(config: Config) -> Iterator[Path]:
    """Where runtimed makes the directory of a worker whose agent has none of its own (§9.3):
    ``<fs root>/workdirs`` with the fs store (kept, like the rest of the root); with the memory
    store, a temporary directory removed when the block ends."""
    if config.store.kind is StoreKind.FS:
        assert config.store.root is not None  # the config requires it
        yield config.store.root / "workdirs"
        return
    with tempfile.TemporaryDirectory(prefix="runtimed-workdirs-", ignore_cleanup_errors=True) as path:
        yield Path(path)


async def run(config: Config, store: Store, log_handler: BatchingHandler | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in the order of the module's docstring.
    ``log_handler`` (``configure_logging``'s) batches its lines while the loop runs."""
    if log_handler is not None:
        log_handler.start_batching(asyncio.get_running_loop())
    try:
        await _run(config, store, log_handler)
    finally:
        if log_handler is not None:
            log_handler.stop_batching()  # what is pending is written before the loop ends


async def _run(config: Config, store: Store, log_handler: BatchingHandler | None) -> None:
    # Before the store opens its files: they count against the limit it sets.
    open_files = raise_open_file_limit()
    max_connections = connection_cap(config.server, open_files)
    signals = Signals(log_handler)
    try:
        with AcceptErrors(asyncio.get_running_loop()), agent_workdirs(config) as workdirs:
            runtime = await Runtime.open(store, config.runtime)
            try:
                supervisor = Supervisor(
                    runtime,
                    config.execution,
                    workdirs=workdirs,
                    withheld=[config.server.local_token_env] if config.server.local_token_env else [],
                    # Agents get the limit the daemon started with, not the one it raised for itself.
                    open_file_limit=open_files.was,
                )
                runtime.attach(supervisor)
                supervisor.restore()
                access_log = log_handler.access_log() if log_handler is not None else log_access
                await serve_app(runtime, config, signals.stop, max_connections, access_log)
            finally:
                # Closes the supervisor (turns cancelled, agents stopped), then the store.
                await runtime.close()
    finally:
        signals.remove()


async def serve_app(
    runtime: Runtime,
    config: Config,
    stop: asyncio.Event,
    max_connections: int | None = None,
    access_log: AccessLog = log_access,
) -> None:
    """Serve ``runtime`` on the configured sites until ``stop`` is set; ``max_connections``
    defaults to ``[server] max_connections``."""
    server = config.server
    if server.listen_tcp and not server.is_loopback:
        log.warning(
            "listening on %s, which is not loopback: the bearer token travels in clear text "
            "unless a TLS-terminating proxy is in front",
            server.bind,
        )
    app = create_app(runtime, server, access_log)
    # One log line per request comes from the app's own middleware, so aiohttp's is off.
    runner = ConnectionRunner(
        app, max_connections=max_connections, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS
    )
    await runner.setup()
    unix_socket = None
    try:
        addresses = []
        if server.listen_tcp:
            site = web.TCPSite(runner, server.host, server.port, backlog=LISTEN_BACKLOG)
            try:
                await site.start()
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise StartError(f"cannot listen on {server.bind}: {reason}") from None
            host, port = runner.addresses[0][:2]
            addresses.append(f"http://{format_host_port(host, port)}")
        if server.unix_socket is not None:
            await start_unix_site(runner, server.unix_socket)
            unix_socket = server.unix_socket
            addresses.append(f"unix:{server.unix_socket}")
        where = f"(runtime {runtime.runtime_id}, store {runtime.summary().backend})"
        for handler in logging.getLogger().handlers:
            handler.flush()  # the log lines of the start-up come before the start-up line
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
            raise StartError(f"{path} exists and is not a socket; refusing to replace it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                log.info("replacing stale socket %s", path)
                path.unlink(missing_ok=True)
            else:
                raise StartError(f"another process is listening on {path}")
    # Created with mode 0600 from the start: no moment where others could connect.
    previous = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path), backlog=LISTEN_BACKLOG).start()
    except OSError as error:
        raise StartError(f"cannot listen on unix:{path}: {error.strerror or error}") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
