"""``runtimed watch``: a worker's observation stream, rendered for a person or as JSON lines.

It follows the stream across dropped connections and daemon restarts (``observe.Follower``),
and ends with status 0 on SIGINT, SIGTERM or the worker's deletion, writing ``last cursor: wo_…``
to stderr so that ``watch --cursor`` continues where it stopped.
"""

from __future__ import annotations

import click

from . import render
from .api import Api
from .commands import notice, until_signalled
from .observe import Follower, ObservationEnded


async def watch(api: Api, worker_id: str, cursor: str | None, as_json: bool) -> int:
    renderer = render.EventRenderer(lambda text: click.echo(text, nl=False))

    def remark(message: str) -> None:
        renderer.end_stream()
        notice(message)

    follower = Follower(api, worker_id, cursor, notice=remark)

    async def follow() -> None:
        async for frame in follower.frames():
            if frame.repeated_snapshot:
                continue  # after a reconnection: the events after the cursor say what changed
            if as_json:
                click.echo(frame.text)
            elif frame.kind == "event":
                renderer.event(frame.event, frame.event_data)
        if follower.deleted and not as_json:
            renderer.line(render.dim(f"── {worker_id} was deleted"))

    try:
        await until_signalled(follow())
    except ObservationEnded as error:
        renderer.end_stream()
        click.echo(click.style(f"runtimed: {error}", fg="red"), err=True)
        return 1
    finally:
        renderer.end_stream()
        if follower.cursor is not None:
            click.echo(f"last cursor: {follower.cursor}", err=True)
    return 0
