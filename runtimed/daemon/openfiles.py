"""The open-file limit, and how many connections it leaves room for.

Every connection holds a file descriptor, and so do the store's files, the log file, the event
loop's own, and the pipes of agent processes. When ``accept()`` finds no descriptor free, nobody
is served until connections close, and asyncio logs a traceback for every failed ``accept()``.
So the daemon raises its soft limit to the hard limit at start (systemd gives services a soft
limit of 1024, a value for ``select()``-era programs), and caps the open connections below that
limit: past the cap a connection is accepted and closed at once (``web.connections``), so
descriptors stay free for everything else.

Child processes inherit the raised soft limit. One that still uses ``select()`` breaks on
descriptors past 1024, so agents get back the limit the daemon started with
(``OpenFileLimit.was``, handed to the agent supervisor by ``serve``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("runtimed")

#: Descriptors kept for everything but connections: standard streams, the event loop's, the
#: listening sockets, the log file, the fs store's files, and the pipes of agent processes.
FD_RESERVE = 64
#: The listen backlog of each site, which is also how many connections asyncio accepts in one
#: go before it makes a protocol for any of them.
LISTEN_BACKLOG = 32
#: How many such batches a listener may hold at once: a refused connection's descriptor is
#: closed a few turns of the event loop after its ``accept()``, and each turn may accept a batch.
ACCEPT_BATCHES = 4
#: At most one WARNING per this many seconds when ``accept()`` fails for want of descriptors.
ACCEPT_ERROR_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class OpenFileLimit:
    soft: int
    #: The soft limit before ``raise_open_file_limit`` raised it.
    was: int

    def connection_cap(self, max_connections: int, listeners: int) -> int:
        """The most connections open at once: ``max_connections``, or fewer if the limit leaves
        less room above the descriptors kept for the rest (``reserved``); may be 0 or less."""
        return min(max_connections, self.soft - reserved(listeners))


def reserved(listeners: int) -> int:
    """Descriptors kept out of the connection cap with ``listeners`` listening sockets."""
    return FD_RESERVE + listeners * LISTEN_BACKLOG * ACCEPT_BATCHES


def raise_open_file_limit() -> OpenFileLimit:
    """Raise the soft limit on open files to the hard limit, as far as the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= soft:
        return OpenFileLimit(soft, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.warning("could not raise the open file limit from %d to %d: %s", soft, hard, error)
        return OpenFileLimit(soft, soft)
    return OpenFileLimit(hard, soft)


class AcceptErrors:
    """An event loop exception handler that turns asyncio's traceback for a failed ``accept()``
    (no descriptor free) into one line, at most once per ``ACCEPT_ERROR_SECONDS``; anything else
    goes to the handler it replaces. The connection cap should make it never fire."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
        seconds: float = ACCEPT_ERROR_SECONDS,
    ) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._clock = clock
        self._seconds = seconds
        self._last: float | None = None
        self._suppressed = 0

    def __enter__(self) -> AcceptErrors:
        self._loop.set_exception_handler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = self._clock()
        if self._last is not None and now - self._last < self._seconds:
            self._suppressed += 1
            return
        error = context.get("exception")
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        more = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        log.warning("cannot accept connections: %s; retrying in a second%s", reason, more)
        self._last = now
        self._suppressed = 0
