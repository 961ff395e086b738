"""``runtimed chat``: a conversation with a worker at the terminal.

A prompt line; what is typed is sent as user input, and the answer streams below it from the
worker's observation stream. Ctrl-C during a turn interrupts it (``POST …/interrupt``); a second
Ctrl-C, a Ctrl-C at the prompt, or the end of input leaves. A permission request is shown as a
question with the agent's options, and the next line typed answers it.

Everything that happens reaches one queue, in order: lines typed, Ctrl-C, the stream's frames.
One loop takes them one at a time, so the state (which turn answers which input, which question
is open) has a single owner, and an input's own ``user_message`` is always known to be its own
before it is shown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import click

from ..domain.catalog import AssistantIntent, CreateWorkerRequest, ProfileSelector
from ..domain.interaction import InputKind, WorkerInput
from . import render
from .api import Api
from .connection import ApiError, ClientFailure, Unauthorized
from .observe import Follower, Frame

PROMPT = click.style("you> ", bold=True)
#: The exit status when the user leaves with Ctrl-C.
INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Line:
    text: str


@dataclass(frozen=True, slots=True)
class EndOfInput:
    pass


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


@dataclass(frozen=True, slots=True)
class StreamEnded:
    deleted: bool
    error: BaseException | None = None


Happening = Line | EndOfInput | Interrupt | Frame | StreamEnded


@dataclass
class Conversation:
    """What the loop knows: the input whose turn it waits for, and the open question."""

    awaited_input: int | None = None  # the transcript sequence of the input being answered
    awaited_turn: int | None = None
    question: dict[str, Any] | None = None  # a pending permission request
    interrupted: bool = False
    typed_ahead: deque[str] = field(default_factory=deque)
    end_of_input: bool = False

    @property
    def waiting(self) -> bool:
        return self.awaited_input is not None


class StdinLines:
    """Lines typed on stdin, put on ``queue`` as they come, without a thread: the terminal's
    own line editing (canonical mode) hands over a line at a time."""

    def __init__(self, queue: asyncio.Queue[Happening]) -> None:
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.fd = sys.stdin.fileno()
        self.buffer = b""
        self.reading = False

    def start(self) -> None:
        try:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True
        except (PermissionError, OSError, ValueError):
            # A regular file cannot be polled, and reading it never blocks: take it whole.
            for line in sys.stdin.read().splitlines():
                self.queue.put_nowait(Line(line))
            self.queue.put_nowait(EndOfInput())

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            if self.buffer:
                self.queue.put_nowait(Line(self.buffer.decode(errors="replace")))
            self.queue.put_nowait(EndOfInput())
            return
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            self.queue.put_nowait(Line(line.decode(errors="replace").rstrip("\r")))

    def stop(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False


async def chat(api: Api, worker_id: str | None, profile: ProfileSelector) -> int:
    if worker_id is None:
        worker = (await api.create(CreateWorkerRequest(AssistantIntent(), profile))).body["worker"]
    else:
        worker = (await api.worker(worker_id)).body["worker"]
    worker_id = str(worker["worker_id"])
    if worker["status"] != "running":
        raise ClientFailure(f"{worker_id} is {worker['status']}: it takes no more input")
    session = ChatSession(api, worker_id, executing="execution" in worker)
    click.echo(
        render.dim(
            f"chatting with {worker_id} ({render.profile_text(worker['profile'])}): "
            "Ctrl-C interrupts a turn, Ctrl-D or a second Ctrl-C leaves"
        )
    )
    return await session.run(show_snapshot=worker_id is not None and worker["transcript_len"] > 0)


class ChatSession:
    def __init__(self, api: Api, worker_id: str, executing: bool) -> None:
        self.api = api
        self.worker_id = worker_id
        self.executing = executing
        self.queue: asyncio.Queue[Happening] = asyncio.Queue()
        self.renderer = render.EventRenderer(lambda text: click.echo(text, nl=False))
        self.state = Conversation()

    async def run(self, show_snapshot: bool) -> int:
        loop = asyncio.get_running_loop()
        follower = Follower(self.api, self.worker_id, notice=lambda m: self.renderer.line(render.dim(m)))
        stream = asyncio.create_task(self._follow(follower))
        stdin = StdinLines(self.queue)
        loop.add_signal_handler(signal.SIGINT, self.queue.put_nowait, Interrupt())
        try:
            # Input is sent only once the stream is open: its cursor is from before the input,
            # so the answer's events cannot be missed.
            first = await self.queue.get()
            if isinstance(first, StreamEnded):
                return self._ended(first)
            if isinstance(first, Interrupt):
                return INTERRUPTED
            if show_snapshot and isinstance(first, Frame):
                self.renderer.event(first.event, first.event_data)
            stdin.start()
            return await self._converse()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            stdin.stop()
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
            self.renderer.end_stream()

    async def _follow(self, follower: Follower) -> None:
        try:
            async for frame in follower.frames():
                if frame.kind == "event" and not frame.repeated_snapshot:
                    self.queue.put_nowait(frame)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.queue.put_nowait(StreamEnded(follower.deleted, error))
            return
        self.queue.put_nowait(StreamEnded(follower.deleted))

    def _prompt(self) -> None:
        self.renderer.end_stream()
        if self.state.question is not None:
            click.echo(f"answer 1-{len(self.state.question['options'])}: ", nl=False)
        else:
            click.echo(PROMPT, nl=False)

    async def _converse(self) -> int:
        state = self.state
        self._prompt()
        while True:
            if not state.waiting and state.question is None:
                if state.typed_ahead:
                    await self._submit(state.typed_ahead.popleft())
                    continue
                if state.end_of_input:
                    self.renderer.end_stream()
                    click.echo()
                    return 0
            happening = await self.queue.get()
            if isinstance(happening, Line):
                if state.question is not None:
                    await self._answer(happening.text)
                elif state.waiting:
                    state.typed_ahead.append(happening.text)
                elif happening.text.strip():
                    await self._submit(happening.text)
                else:
                    self._prompt()
            elif isinstance(happening, EndOfInput):
                state.end_of_input = True
            elif isinstance(happening, Interrupt):
                if not state.waiting or state.interrupted:
                    self.renderer.end_stream()
                    click.echo()
                    return INTERRUPTED
                state.interrupted = True
                self.renderer.line(render.dim("── interrupting the turn (Ctrl-C again leaves)"))
                await self.api.interrupt(self.worker_id)
            elif isinstance(happening, StreamEnded):
                return self._ended(happening)
            else:
                if self._on_event(happening.event, happening.event_data):
                    return 0

    def _on_event(self, event: str, data: dict[str, Any]) -> bool:
        """Show one event and update the state; True when the conversation is over."""
        state = self.state
        self.renderer.event(event, data)
        if event == "turn_started" and data.get("input_sequence") == state.awaited_input:
            state.awaited_turn = data.get("turn")
        elif event == "turn_ended" and state.awaited_turn is not None and data.get("turn") == state.awaited_turn:
            state.awaited_input = state.awaited_turn = None
            state.interrupted = False
            state.question = None
            if not state.typed_ahead and not state.end_of_input:
                self._prompt()
        elif event == "permission_requested":
            state.question = dict(data)
            self._prompt()
        elif event == "permission_resolved":
            if state.question is not None and state.question["request_id"] == data.get("request_id"):
                state.question = None
        elif event == "worker_status" and data.get("status") != "running":
            return True
        return False

    async def _submit(self, text: str) -> None:
        try:
            ack = (await self.api.send(self.worker_id, WorkerInput(InputKind.USER, text))).body["ack"]
        except Unauthorized:
            raise
        except ApiError as error:
            # The worker stopped meanwhile, its queue is full …: say so, and let the user go on.
            self.renderer.line(click.style(f"runtimed: {error}", fg="red"))
            self._prompt()
            return
        sequence = int(ack["transcript_sequence"])
        self.renderer.skip.add(sequence)  # the terminal shows what was typed already
        if self.executing:
            self.state.awaited_input = sequence
        else:
            self.renderer.line(render.dim("(recorded: this worker has no agent to answer)"))
            self._prompt()

    async def _answer(self, text: str) -> None:
        question = self.state.question
        assert question is not None
        options = question["options"]
        choice = text.strip()
        chosen = next((o for o in options if o["option_id"] == choice), None)
        if chosen is None and choice.isdigit() and 1 <= int(choice) <= len(options):
            chosen = options[int(choice) - 1]
        if chosen is None:
            self._prompt()
            return
        try:
            await self.api.answer_permission(self.worker_id, question["request_id"], chosen["option_id"])
        except ApiError as error:
            if error.code != "permission_not_found":
                raise
            self.renderer.line(render.dim(f"── {question['request_id']} was answered already"))
        self.state.question = None

    def _ended(self, ended: StreamEnded) -> int:
        self.renderer.end_stream()
        if ended.error is not None:
            if isinstance(ended.error, ClientFailure):
                raise ended.error
            raise ClientFailure(f"the observation stream failed: {ended.error}")
        if ended.deleted:
            self.renderer.line(render.dim(f"── {self.worker_id} was deleted"))
        return 0
