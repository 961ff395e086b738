"""Connections: how many may be open at once, and how long one may hold its place doing nothing.

Every open connection holds a file descriptor. Clients that connect and then never finish a
request, or keep an idle connection forever, would otherwise use up the daemon's open-file
limit, and then nobody is served. So:

- ``Connection`` (aiohttp's ``RequestHandler`` with a deadline) closes a connection that has not
  sent complete request headers within ``[server] header_timeout_seconds`` of opening or of the
  end of its previous response, and one that sends no byte of a next request within
  ``[server] keepalive_timeout_seconds`` of a response. A connection is busy, and has no
  deadline, while a request is handled: a WebSocket session is one long request, so these
  timeouts never cut it. (The body has its own timeout, in ``handlers.read_body``.)
- ``ConnectionGuard`` caps the open connections. At the cap, a new connection takes the place of
  the one idle longest; when every one is busy, the new one is answered ``503
  too_many_connections`` and closed at once. Both are counted, and logged in one WARNING at most
  every ``REFUSAL_WARNING_SECONDS``.
- ``ConnectionRunner`` is the ``web.AppRunner`` whose sites make connections through the guard.

aiohttp's own ``keepalive_timeout`` starts at connect in current versions, but not in all the
versions runtimed allows, and it cannot tell a connection that sends nothing from one that sends
slowly; it stays on, set to the longest deadline here, as a backstop.

Two aiohttp internals are read here, and the tests of this module exercise both: the keyword
arguments a ``Server`` gives its protocols (``Server._kwargs``), and the requests a
``RequestHandler`` has parsed but not yet handed to a handler (``RequestHandler._messages``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from .encoding import dumps
from .errors import STATUS_BY_CODE, TooManyConnections, error_body
from .keys import SERVER_CONFIG

log = logging.getLogger("runtimed.connections")

#: At most one WARNING about connections closed or refused at the cap per this many seconds
#: (each says how many).
REFUSAL_WARNING_SECONDS = 10.0
#: aiohttp's own default: how long it reads the rest of a body nobody read, after the response.
LINGERING_SECONDS = 10.0


def _refusal() -> bytes:
    body = dumps(error_body(TooManyConnections()))
    head = (
        f"HTTP/1.1 {STATUS_BY_CODE[TooManyConnections.code]} Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


#: The whole answer on a refused connection, written before its request is read.
REFUSAL = _refusal()


class RefusedConnection(asyncio.Protocol):
    """A connection at the cap when every open one is busy: answered ``503 too_many_connections``
    and closed at once, so its file descriptor is free again on the next turn of the event loop."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class ConnectionGuard:
    """The open connections of one runner: at most ``cap`` of them.

    At the cap, a new connection takes the place of the one that has been idle the longest (not
    handling a request: waiting for its headers, or kept alive after a response), which is
    closed; when every open connection is handling a request, the new one is refused. Clients
    that open connections and send nothing thus cannot keep a working client out. Both are
    counted, and told in a WARNING at most once per ``warning_seconds``.
    """

    def __init__(self, cap: int, warning_seconds: float = REFUSAL_WARNING_SECONDS) -> None:
        if cap < 1:
            raise ValueError(f"the connection cap must be at least 1, not {cap}")
        self.cap = cap
        self.replaced = 0  # idle connections closed to make room, since the start
        self.refused = 0  # since the start
        self._warning_seconds = warning_seconds
        # Counted when the protocol is made, before its connection_made: asyncio accepts a whole
        # batch of sockets before it makes the first protocol, so counting any later would let a
        # batch through past the cap. Weak, so that a protocol whose transport never came to be
        # (asyncio drops it silently) does not hold a place for ever.
        self._open: weakref.WeakSet[Connection] = weakref.WeakSet()
        #: The idle connections, the longest idle first (a dict keeps insertion order).
        self._idle: dict[Connection, None] = {}
        self._unreported = (0, 0)  # (replaced, refused) not yet in a WARNING
        self._next_warning: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def busy(self) -> int:
        """Open connections with a request being handled."""
        return len(self._open) - len(self._idle)

    def connect(self, make: Callable[[], Connection]) -> Connection | RefusedConnection:
        """The protocol of a connection just accepted: one ``make`` makes, or a refusal."""
        if len(self._open) >= self.cap:
            if self._close_longest_idle():
                self.replaced += 1
                self._count(replaced=1)
            else:
                self.refused += 1
                self._count(refused=1)
                return RefusedConnection()
        connection = make()
        self._open.add(connection)
        return connection

    def idle(self, connection: Connection) -> None:
        self._idle.pop(connection, None)
        self._idle[connection] = None

    def not_idle(self, connection: Connection) -> None:
        self._idle.pop(connection, None)

    def release(self, connection: Connection) -> None:
        self._idle.pop(connection, None)
        self._open.discard(connection)

    def _close_longest_idle(self) -> bool:
        while self._idle:
            connection = next(iter(self._idle))
            del self._idle[connection]
            if connection.close_if_idle():
                self._open.discard(connection)  # its descriptor is closed on the next turn of the loop
                return True
        return False

    def _count(self, replaced: int = 0, refused: int = 0) -> None:
        self._unreported = (self._unreported[0] + replaced, self._unreported[1] + refused)
        if self._next_warning is None:
            # The first one after a quiet spell is told at once; those that follow it are told
            # together, one WARNING per interval, for as long as they keep coming.
            self._warn()

    def _warn(self) -> None:
        if self._tell():
            self._next_warning = asyncio.get_running_loop().call_later(self._warning_seconds, self._warn)
        else:
            self._next_warning = None

    def _tell(self) -> bool:
        """Log what has not been told yet, if anything; whether there was anything."""
        replaced, refused = self._unreported
        if not (replaced or refused):
            return False
        log.warning(
            "at the cap of %d open connections: closed %d idle to make room, refused %d "
            "(since the start: %d closed, %d refused)",
            self.cap,
            replaced,
            refused,
            self.replaced,
            self.refused,
        )
        self._unreported = (0, 0)
        return True

    def close(self) -> None:
        """Stop the WARNING timer, telling what it had not told yet."""
        if self._next_warning is not None:
            self._next_warning.cancel()
            self._next_warning = None
        self._tell()


class Connection(web.RequestHandler):
    """aiohttp's HTTP/1 connection, closed when it idles past its deadline (see the module).

    The deadline moves with every request, so it is not a timer of its own: a connection keeps
    at most one timer, which is left running when the deadline moves later (or goes, while a
    request is handled) and, when it fires, closes the connection if the deadline has come, or
    is set again for the deadline as it now stands. A request thus costs no timer of the event
    loop (each one set and cancelled cost a few microseconds of its heap)."""

    __slots__ = (
        "__weakref__",
        "_awaiting_first_byte",
        "_busy",
        "_deadline",
        "_guard",
        "_header_timeout",
        "_idle_since",
        "_idle_timeout",
        "_timer",
        "_timer_at",
    )

    def __init__(
        self,
        manager: web.Server,
        guard: ConnectionGuard,
        *,
        header_timeout: float,
        idle_timeout: float,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout  # aiohttp's own keepalive_timeout (in kwargs) is the backstop
        self._busy = False
        self._idle_since = 0.0
        self._awaiting_first_byte = False
        self._deadline: float | None = None  # when the connection is closed unless a request comes
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A new connection has the header timeout for its first request, whether or not it sends a byte.
        self._idle(self._header_timeout, awaiting_first_byte=False)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_first_byte and data:
            # The next request has begun: from the previous response it has the header timeout.
            self._awaiting_first_byte = False
            if not self._busy:
                self._set_deadline(self._idle_since + self._header_timeout)
        super().data_received(data)

    def request_started(self) -> None:
        """A request's headers are in and it is being handled: no deadline until its response is sent."""
        self._busy = True
        self._awaiting_first_byte = False
        self._deadline = None
        self._guard.not_idle(self)

    def close_if_idle(self) -> bool:
        """Close the connection unless a request is being handled or waits to be; whether it was
        closed (``False`` too when it is closing already)."""
        if self._busy or self._messages or self.transport is None:
            return False
        self._cancel_timer()
        self.force_close()
        return True

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        # aiohttp calls this once a response has been written (or the peer is gone): the one
        # hook that marks the end of every request, those that fail included.
        super().log_access(request, response, time)
        self._busy = False
        if self.transport is None:
            return  # the peer is gone (aiohttp tells of a response it could not finish too)
        # A byte of a pipelined request that came in during this one is not noticed here, so
        # that request gets the keep-alive timeout for its headers when it is the shorter.
        self._idle(min(self._idle_timeout, self._header_timeout), awaiting_first_byte=True)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._guard.release(self)
        super().connection_lost(exc)

    def _idle(self, timeout: float, *, awaiting_first_byte: bool) -> None:
        self._idle_since = self._loop.time()
        self._awaiting_first_byte = awaiting_first_byte
        self._set_deadline(self._idle_since + timeout)
        self._guard.idle(self)

    def _set_deadline(self, when: float) -> None:
        self._deadline = when
        if self._timer is not None:
            if self._timer_at <= when:
                return  # it fires first, and then waits on for the deadline
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        # Complete headers aiohttp has parsed but not yet handed to a handler make the connection
        # busy already: the handler starts on the next turn of the loop.
        if deadline is None or self._busy or self._messages:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._expire)
            self._timer_at = deadline
            return
        self._deadline = None
        self._guard.not_idle(self)
        self.force_close()


class ConnectionServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory the sites listen with) making ``Connection``s
    through a ``ConnectionGuard``. It takes over everything else from the server aiohttp made
    for the app: the handler, the request factory and the keyword arguments of each protocol."""

    def __init__(self, server: web.Server, guard: ConnectionGuard, header_timeout: float, idle_timeout: float) -> None:
        self._app_request_factory = server.request_factory
        super().__init__(
            server.request_handler,
            request_factory=self._start_request,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,  # what AppRunner and the app give each protocol (debug, access log, …)
        )
        self.guard = guard
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout

    def _start_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # Called for every request aiohttp hands to a handler, those it answers 400 itself included.
        if isinstance(protocol, Connection):
            protocol.request_started()
        return self._app_request_factory(message, payload, protocol, writer, task)

    # asyncio takes any protocol from the factory; a refused connection needs none of aiohttp's.
    def __call__(self) -> Connection | RefusedConnection:  # type: ignore[override]
        return self.guard.connect(self._connection)

    def _connection(self) -> Connection:
        return Connection(
            self,
            self.guard,
            header_timeout=self._header_timeout,
            idle_timeout=self._idle_timeout,
            loop=self._loop,
            **self._kwargs,
        )


class ConnectionRunner(web.AppRunner):
    """A ``web.AppRunner`` whose connections are capped at ``max_connections`` (by default the
    app's ``[server] max_connections``) and closed when idle past the app's header and
    keep-alive timeouts."""

    def __init__(self, app: web.Application, *, max_connections: int | None = None, **kwargs: Any) -> None:
        config = app[SERVER_CONFIG]
        self._header_timeout = config.header_timeout_seconds
        self._idle_timeout = config.keepalive_timeout_seconds
        # aiohttp's keep-alive timer, the backstop: it never fires before the deadlines here.
        kwargs.setdefault("keepalive_timeout", max(self._header_timeout, self._idle_timeout))
        # After a response to a request whose body was not read (a 408, a 401 to a POST), aiohttp
        # reads and drops what is left of it, so that the client gets to read the response: a
        # body has no more time for that than the body timeout. (aiohttp lingers on for its whole
        # time even when the client is gone, and a shutdown waits for it.)
        kwargs.setdefault("lingering_time", min(LINGERING_SECONDS, config.body_timeout_seconds))
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(config.max_connections if max_connections is None else max_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ConnectionServer(server, self.guard, self._header_timeout, self._idle_timeout)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self.guard.close()
