"""Unmasked client frames fail the connection (RFC 6455 §5.1), which aiohttp does not check.

"The server MUST close the connection upon receiving a frame that is not masked", with close
code 1002 (protocol error). aiohttp's frame reader reads both directions alike and, as of 3.14,
takes an unmasked client frame as any other (its threat model lists the check as not done), and
it has no setting for it. So ``ObservationSocket`` puts ``MaskedFramesOnly`` between the
connection and the reader it installs: every byte the client sends passes ``MaskCheck`` first,
which follows the frames' headers through the stream. At the first header without the mask bit
the reader gets the frames before it and then a protocol error, which aiohttp's ``receive()``
answers as it answers its own: close frame 1002, then the connection is closed.

This leans on aiohttp internals (``WebSocketResponse._post_start`` and ``_reader``, the request
handler's ``_payload_parser`` and ``_message_tail``); the tests that send unmasked frames over a
raw socket fail if they move.
"""

from __future__ import annotations

from aiohttp import WSCloseCode, web
from aiohttp.http import WebSocketError, WebSocketReader, WebSocketWriter

MASK_BIT = 0x80
LENGTH_BITS = 0x7F


class MaskCheck:
    """Follows client frames through a byte stream, fed in chunks of any size, and finds the
    first frame whose header has no mask bit. It validates nothing else: aiohttp's reader does."""

    def __init__(self) -> None:
        self._header = bytearray()  # the current frame header, as far as it has arrived
        self._payload_left = 0  # bytes of the current frame's payload still to pass over

    def first_unmasked(self, data: bytes) -> int | None:
        """The offset in ``data`` where the first unmasked frame's header starts (0 when it
        started in an earlier chunk), or ``None`` if every frame so far is masked."""
        position, end = 0, len(data)
        while position < end:
            if self._payload_left:
                step = min(self._payload_left, end - position)
                self._payload_left -= step
                position += step
                continue
            start = position - len(self._header)
            take = min(self._header_length() - len(self._header), end - position)
            self._header += data[position : position + take]
            position += take
            if len(self._header) >= 2 and not self._header[1] & MASK_BIT:
                return max(start, 0)
            if len(self._header) == self._header_length():
                self._payload_left = self._payload_length()
                self._header.clear()
        return None

    def _header_length(self) -> int:
        """2 until the length byte has arrived; then with the extended length and the mask key."""
        if len(self._header) < 2:
            return 2
        length = self._header[1] & LENGTH_BITS
        extended = 2 if length == 126 else 8 if length == 127 else 0
        return 2 + extended + (4 if self._header[1] & MASK_BIT else 0)

    def _payload_length(self) -> int:
        length = self._header[1] & LENGTH_BITS
        if length == 126:
            return int.from_bytes(self._header[2:4], "big")
        if length == 127:
            return int.from_bytes(self._header[2:10], "big")
        return length


class MaskedFramesOnly:
    """What the connection feeds instead of aiohttp's reader: ``MaskCheck``, then the reader."""

    def __init__(self, reader: WebSocketReader, socket: web.WebSocketResponse) -> None:
        self._reader = reader
        self._socket = socket  # whose message queue gets the protocol error
        self._check = MaskCheck()
        self._failed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        """As ``WebSocketReader.feed_data``: ``(True, b"")`` tells the connection to stop reading."""
        if self._failed:
            return True, b""
        unmasked = self._check.first_unmasked(data)
        if unmasked is None:
            return self._reader.feed_data(data)
        self._failed = True
        if unmasked:  # the frames before it are masked: the reader takes them first
            eof, tail = self._reader.feed_data(data[:unmasked])
            if eof:
                return eof, tail
        queue = self._socket._reader
        if queue is not None:
            queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, "unmasked frame from a client"))
        return True, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class ObservationSocket(web.WebSocketResponse):
    """A ``WebSocketResponse`` whose connection fails on the first unmasked client frame."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: WebSocketWriter) -> None:
        handler = request.protocol
        # What the client sent after the upgrade request, before the reader is installed, is
        # fed to it as the reader is installed: take it, to check it first.
        early, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        check = MaskedFramesOnly(handler._payload_parser, self)
        handler._payload_parser = check
        if early and check.feed_data(early)[0]:
            handler.close()
