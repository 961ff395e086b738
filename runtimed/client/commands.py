"""The bodies of the client's one-shot subcommands: one or a few API calls, then the answer
printed for a person, or (``as_json``) exactly as the API sent it.

Each takes an open ``Api`` and returns the exit status; failures are ``ClientFailure``s that
``runtimed.cli`` prints as one line. ``run`` opens the session and runs a body in a new event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import click

from ..domain.catalog import CreateWorkerRequest, WorkerStatus
from ..domain.interaction import InputKind, WorkerInput
from . import render
from .api import Answer, Api
from .connection import BadAnswer, Connection
from .observe import Follower

Body = Callable[[Api], Awaitable[int]]

#: Observation events that mean a new transcript entry (§7, §9.3).
ENTRY_EVENTS = frozenset({"user_message", "system_item", "assistant_message"})


def run(connection: Connection, body: Body) -> int:
    """Run ``body`` with an ``Api`` to ``connection`` in a new event loop; its exit status."""

    async def main() -> int:
        async with Api(connection) as api:
            return await body(api)

    return asyncio.run(main())


def echo_json(data: Any) -> None:
    """A body the client put together (merged pages), written as compactly as the daemon writes."""
    click.echo(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def echo_lines(lines: Sequence[str]) -> None:
    for line in lines:
        click.echo(line)


def notice(message: str) -> None:
    """A remark on stderr (a reconnection, a gap), which keeps stdout pure for scripts."""
    click.echo(click.style(f"runtimed: {message}", fg="yellow"), err=True)


async def until_signalled(work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work`` until it ends or SIGINT/SIGTERM arrives; True if a signal stopped it."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signalled = False

    def stop() -> None:
        nonlocal signalled
        signalled = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return signalled


# ------------------------------------------------------------------------- commands


async def status(api: Api, as_json: bool) -> int:
    answer = await api.runtime()
    if as_json:
        click.echo(answer.text)
        return 0
    diagnostics = (await api.diagnostics()).body["diagnostics"]
    echo_lines(render.runtime_summary(answer.body["runtime"], diagnostics))
    return 0


async def workers(api: Api, statuses: Sequence[WorkerStatus], page_size: int | None, as_json: bool) -> int:
    """Every worker (of ``statuses``), through as many pages as the API hands out (§11)."""
    answer = await api.workers(statuses, page_size)
    first = answer.body
    found = list(first["workers"])
    after = first.get("next_after")
    while after is not None:
        page = (await api.workers(statuses, page_size, after)).body
        if page.get("next_after") == after:
            raise BadAnswer(f"the daemon's worker pages do not advance past {after}")
        found.extend(page["workers"])
        after = page.get("next_after")
    if as_json:
        if first.get("next_after") is None:
            click.echo(answer.text)  # one page: the body as sent
        else:
            echo_json({**first, "workers": found, "next_after": None})
        return 0
    echo_lines(render.workers_table(found))
    return 0


async def create(api: Api, request: CreateWorkerRequest, as_json: bool) -> int:
    answer = await api.create(request)
    click.echo(answer.text if as_json else answer.body["worker"]["worker_id"])
    return 0


async def show(api: Api, worker_id: str, as_json: bool) -> int:
    answer = await api.worker(worker_id)
    if as_json:
        click.echo(answer.text)
    else:
        echo_lines(render.worker_detail(answer.body["worker"]))
    return 0


async def send(api: Api, worker_id: str, content: str, kind: InputKind, as_json: bool) -> int:
    answer = await api.send(worker_id, WorkerInput(kind, content))
    if as_json:
        click.echo(answer.text)
    else:
        ack = answer.body["ack"]
        click.echo(f"{worker_id}: input accepted as transcript entry #{ack['transcript_sequence']}")
    return 0


async def lifecycle(api: Api, action: str, worker_id: str, reason: str | None, as_json: bool) -> int:
    """``stop`` or ``cancel``: the worker's status afterwards (unchanged if it was not running)."""
    call = api.stop if action == "stop" else api.cancel
    answer = await call(worker_id, reason)
    if as_json:
        click.echo(answer.text)
    else:
        click.echo(f"{worker_id}: {render.status_style(str(answer.body['ack']['status']))}")
    return 0


async def interrupt(api: Api, worker_id: str, drop_queued: bool, as_json: bool) -> int:
    answer = await api.interrupt(worker_id, drop_queued)
    if as_json:
        click.echo(answer.text)
        return 0
    ack = answer.body["ack"]
    what = f"interrupted turn {ack['turn']}" if "turn" in ack else "no turn was running"
    if ack["dropped_inputs"]:
        what += f"; dropped {ack['dropped_inputs']} queued inputs"
    click.echo(f"{worker_id}: {what}")
    return 0


async def delete(api: Api, worker_id: str, as_json: bool) -> int:
    answer = await api.delete(worker_id)
    click.echo(answer.text if as_json else f"{answer.body['deleted']['worker_id']}: deleted")
    return 0


async def permissions(api: Api, worker_id: str, as_json: bool) -> int:
    answer = await api.permissions(worker_id)
    if as_json:
        click.echo(answer.text)
    else:
        echo_lines(render.permissions_table(answer.body["permissions"]))
    return 0


async def approve(api: Api, worker_id: str, request_id: str, option_id: str, as_json: bool) -> int:
    answer = await api.answer_permission(worker_id, request_id, option_id)
    if as_json:
        click.echo(answer.text)
    else:
        permission = answer.body["permission"]
        click.echo(f"{worker_id}: answered {permission['request_id']} with {permission['option_id']}")
    return 0


# ---------------------------------------------------------------------- transcript


async def transcript_pages(api: Api, worker_id: str, start: int, page_size: int | None) -> list[Answer]:
    """The pages of the transcript from ``start`` to its end, as the API sends them."""
    pages = []
    while True:
        answer = await api.transcript(worker_id, start, page_size)
        pages.append(answer)
        next_start = answer.body["transcript"]["next_start"]
        if next_start is None:
            return pages
        if next_start <= start:
            raise BadAnswer(f"the daemon's transcript pages do not advance past {start}")
        start = next_start


def merged_transcript(pages: Sequence[Answer]) -> dict[str, Any]:
    """One body holding every item of ``pages``, as one page of them all would be."""
    first = pages[0].body["transcript"]
    items = [item for page in pages for item in page.body["transcript"]["items"]]
    last = pages[-1].body["transcript"]
    merged = {**first, "limit": len(items), "total_items": last["total_items"], "items": items, "next_start": None}
    return {"transcript": merged}


def print_entries(pages: Sequence[Answer]) -> None:
    for page in pages:
        for item in page.body["transcript"]["items"]:
            click.echo(render.transcript_entry(item))


async def transcript(api: Api, worker_id: str, page_size: int | None, as_json: bool) -> int:
    pages = await transcript_pages(api, worker_id, 0, page_size)
    if as_json:
        echo_json(merged_transcript(pages)) if len(pages) > 1 else click.echo(pages[0].text)
        return 0
    lines = [render.transcript_entry(item) for page in pages for item in page.body["transcript"]["items"]]
    if sys.stdout.isatty() and lines:
        click.echo_via_pager("\n".join(lines) + "\n")
    else:
        echo_lines(lines or [render.dim("the transcript is empty")])
    return 0


async def follow_transcript(api: Api, worker_id: str, page_size: int | None, as_json: bool) -> int:
    """The whole transcript, then each new entry as it is made, until a signal or the worker's
    deletion. ``--json`` writes each page as the API sent it, one a line.

    The observation WebSocket only says *that* entries were made: they are read through the REST
    transcript, so what is printed is exactly the API's entries, whatever the stream dropped."""
    follower = Follower(api, worker_id, notice=notice)
    printed = 0

    def output(pages: Sequence[Answer]) -> None:
        for page in pages:
            if as_json:
                if page.body["transcript"]["items"]:
                    click.echo(page.text)
            else:
                print_entries([page])

    async def follow() -> None:
        nonlocal printed
        frames = follower.frames()
        # Connect first: every entry made after the snapshot's cursor comes as an event, so the
        # pages read now and the events after them leave nothing out.
        async for _snapshot in frames:
            break
        pages = await transcript_pages(api, worker_id, 0, page_size)
        output(pages)
        printed = pages[-1].body["transcript"]["total_items"]
        async for frame in frames:
            entry = frame.kind == "event" and frame.event in ENTRY_EVENTS
            if entry and int(frame.event_data.get("sequence", 0)) > printed:
                pages = await transcript_pages(api, worker_id, printed, page_size)
                output(pages)
                printed = pages[-1].body["transcript"]["total_items"]

    await until_signalled(follow())
    if follower.deleted and not as_json:
        click.echo(render.dim(f"── {worker_id} was deleted"))
    return 0
