"""What a person reads: the API's JSON shapes and observation events as lines of text.

Everything here takes JSON as the API sends it (already checked against its schema) and returns
text styled with ``click.style``; ``click.echo`` drops the styles when the output is not a
terminal. ``EventRenderer`` streams a worker's events: assistant text as it arrives, thoughts and
tool calls dimmed, turn ends and status changes as short lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

#: The longest intent shown in a table cell, and the transcript entries a snapshot shows.
INTENT_WIDTH = 40
SNAPSHOT_ENTRIES = 10


def dim(text: str) -> str:
    return click.style(text, dim=True)


def profile_text(profile: Mapping[str, Any]) -> str:
    """``builtin:echo``, ``gemini`` (a named profile) or ``(runtime default)``."""
    if profile.get("kind") == "runtime_default":
        return "(runtime default)"
    return str(profile.get("value", "?"))


def intent_text(intent: Mapping[str, Any]) -> str:
    """``assistant``, ``assistant: <purpose>``, ``task: <objective>`` or ``role <role>: <purpose>``."""
    kind = str(intent.get("kind", "?"))
    if kind == "task":
        return f"task: {intent.get('objective', '')}"
    if kind == "role":
        purpose = intent.get("purpose")
        return f"role {intent.get('role', '')}" + (f": {purpose}" if purpose else "")
    purpose = intent.get("purpose")
    return kind + (f": {purpose}" if purpose else "")


def one_line(text: str, width: int | None = None) -> str:
    """``text`` on one line (newlines shown as ``⏎``), cut to ``width`` characters with ``…``."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎")
    if width is not None and len(flat) > width:
        return flat[: width - 1] + "…"
    return flat


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell; the header bold."""
    rows = [list(row) for row in rows]
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return [click.style(line(header), bold=True), *(line(row) for row in rows)]


def status_style(status: str) -> str:
    colour = {"running": "green", "stopped": "yellow", "cancelled": "red"}.get(status)
    return click.style(status, fg=colour) if colour else status


def runtime_summary(runtime: Mapping[str, Any], diagnostics: Sequence[Mapping[str, Any]]) -> list[str]:
    """``runtimed status``: the runtime's id, name, status, store, worker counts and diagnostics."""
    name = runtime.get("display_name")
    lines = [
        f"runtime      {runtime['runtime_id']}" + (f"  ({name})" if name else ""),
        f"status       {status_style(str(runtime['status']))}",
        f"store        {runtime['backend']}",
        f"workers      {runtime['worker_count']}: {runtime['active_worker_count']} running, "
        f"{runtime['stopped_worker_count']} stopped, {runtime['cancelled_worker_count']} cancelled",
        f"diagnostics  {runtime['diagnostic_count']}",
    ]
    notable = [d for d in diagnostics if d.get("severity") in ("warning", "error")]
    for diagnostic in notable[-5:]:
        colour = "red" if diagnostic["severity"] == "error" else "yellow"
        worker = diagnostic.get("worker_ref", {}).get("worker_id")
        text = f"  {diagnostic['severity']} {diagnostic['code']}" + (f" ({worker})" if worker else "")
        lines.append(click.style(f"{text}: {one_line(str(diagnostic['message']))}", fg=colour))
    if len(notable) > 5:
        lines.append(dim(f"  … {len(notable) - 5} earlier warnings and errors (GET /v1/diagnostics)"))
    return lines


def execution_state(worker: Mapping[str, Any]) -> str:
    execution = worker.get("execution")
    return str(execution["state"]) if isinstance(execution, Mapping) else "-"


def workers_table(workers: Sequence[Mapping[str, Any]]) -> list[str]:
    """``runtimed workers``: one row a worker."""
    if not workers:
        return [dim("no workers")]
    rows = [
        (
            str(w["worker_id"]),
            str(w["status"]),
            execution_state(w),
            profile_text(w["profile"]),
            one_line(intent_text(w["intent"]), INTENT_WIDTH),
            str(w["transcript_len"]),
        )
        for w in workers
    ]
    # Styles add invisible characters: pad the plain text, then colour the status in place.
    lines = table(("ID", "STATUS", "STATE", "PROFILE", "INTENT", "TRANSCRIPT"), rows)
    styled = [lines[0]]
    at = max(len("ID"), *(len(row[0]) for row in rows)) + 2  # where the status column starts
    for line, row in zip(lines[1:], rows, strict=True):
        styled.append(line[:at] + status_style(row[1]) + line[at + len(row[1]) :])
    return styled


def worker_detail(worker: Mapping[str, Any]) -> list[str]:
    """``runtimed show``: the worker's detail, one field a line."""
    lines = [
        f"worker        {worker['worker_id']}  (runtime {worker['runtime_id']})",
        f"status        {status_style(str(worker['status']))}",
        f"intent        {intent_text(worker['intent'])}",
        f"profile       {profile_text(worker['profile'])}",
        f"transcript    {worker['transcript_len']} entries",
        f"last event    {worker['last_event_id']}",
    ]
    if "config_bundle" in worker:
        lines.append(f"config        {worker['config_bundle']['id']}")
    for capability in worker.get("requested_capabilities", ()):
        reason = capability.get("reason")
        lines.append(f"capability    {capability['name']}" + (f" ({reason})" if reason else ""))
    for workspace in worker.get("workspace_refs", ()):
        lines.append(f"workspace     {workspace['name']} = {workspace['reference']}")
    for mount in worker.get("mount_refs", ()):
        lines.append(f"mount         {mount['name']} = {mount['reference']}")
    execution = worker.get("execution")
    if isinstance(execution, Mapping):
        agent = execution.get("agent")
        lines.append(
            f"execution     {execution['state']}, profile {execution['profile']}"
            + (f", pid {execution['pid']}" if "pid" in execution else "")
            + (f", agent {agent['name']} {agent.get('version', '')}".rstrip() if agent else "")
        )
        lines.append(
            f"turns         {execution['turns']} ended, {execution['queued_inputs']} inputs queued, "
            f"{execution['pending_permissions']} permissions pending"
        )
        if "exit" in execution:
            end = execution["exit"]
            how = f"status {end['code']}" if "code" in end else f"signal {end.get('signal', '?')}"
            lines.append(f"last exit     {how}")
    else:
        lines.append(dim("execution     none: a record-only worker"))
    return lines


ROLE_COLOURS = {"user": "blue", "system": "magenta", "assistant": "green"}


def transcript_entry(entry: Mapping[str, Any]) -> str:
    """``#3 assistant: echo: hello`` (the role coloured; content as it is, newlines included)."""
    role = str(entry["role"])
    label = click.style(f"{role}:", fg=ROLE_COLOURS.get(role), bold=True)
    return f"{dim('#' + str(entry['sequence']))} {label} {entry['content']}"


def permissions_table(permissions: Sequence[Mapping[str, Any]]) -> list[str]:
    if not permissions:
        return [dim("no pending permission requests")]
    return table(
        ("REQUEST", "TOOL", "KIND", "OPTIONS"),
        [
            (
                str(p["request_id"]),
                one_line(str(p["tool_call"]["title"]), INTENT_WIDTH),
                str(p["tool_call"]["kind"]),
                ", ".join(str(option["option_id"]) for option in p["options"]),
            )
            for p in permissions
        ],
    )


def permission_question(request: Mapping[str, Any]) -> list[str]:
    """A permission request as a question with numbered options."""
    tool = request["tool_call"]
    lines = [
        click.style(f"permission {request['request_id']}: ", fg="yellow", bold=True)
        + f"{tool['title']} ({tool['kind']})"
    ]
    for number, option in enumerate(request["options"], 1):
        lines.append(f"  {number}) {option['name']} {dim('[' + str(option['option_id']) + ']')}")
    return lines


class EventRenderer:
    """Renders observation events as they arrive, through ``write(text)`` (no newline added).

    Deltas are streamed without newlines; any other line first ends a streamed one. ``skip``
    names user and system inputs (by transcript sequence) not to show, such as the ones a chat
    typed itself."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self.streaming: str | None = None  # "text" or "thought" while a delta line is open
        self._streamed_turns: set[int] = set()
        self.skip: set[int] = set()

    def line(self, text: str) -> None:
        self.end_stream()
        self._write(text + "\n")

    def end_stream(self) -> None:
        if self.streaming is not None:
            self._write("\n")
            self.streaming = None

    def _stream(self, kind: str, text: str, prefix: str) -> None:
        if self.streaming != kind:
            self.end_stream()
            self._write(prefix)
            self.streaming = kind
        self._write(click.style(text, dim=True) if kind == "thought" else text)

    def snapshot(self, data: Mapping[str, Any]) -> None:
        worker = data["worker"]
        self.line(
            dim(
                f"── {worker['worker_id']}: {data['status']}, execution {execution_state(worker)}, "
                f"{worker['transcript_len']} transcript entries"
            )
        )
        entries = data.get("entries", [])
        if len(entries) > SNAPSHOT_ENTRIES:
            self.line(dim(f"   … {worker['transcript_len'] - SNAPSHOT_ENTRIES} earlier (runtimed transcript)"))
        for entry in entries[-SNAPSHOT_ENTRIES:]:
            self.line(transcript_entry(entry))

    def event(self, event: str, data: Mapping[str, Any]) -> None:
        turn = data.get("turn")
        if event == "snapshot":
            self.snapshot(data)
        elif event in ("user_message", "system_item"):
            if data.get("sequence") not in self.skip:
                role = "user" if event == "user_message" else "system"
                self.line(transcript_entry({"role": role, **data}))
        elif event == "turn_started":
            self.end_stream()
        elif event == "text_delta":
            self._stream("text", str(data.get("text", "")), click.style("assistant: ", fg="green", bold=True))
            if isinstance(turn, int):
                self._streamed_turns.add(turn)
        elif event == "thought_delta":
            self._stream("thought", str(data.get("text", "")), dim("thinking: "))
        elif event == "assistant_message":
            if turn not in self._streamed_turns:
                self.line(transcript_entry({"role": "assistant", **data}))
        elif event == "turn_ended":
            self._streamed_turns.discard(turn)
            stop_reason = str(data.get("stop_reason"))
            colour = None if stop_reason == "end_turn" else "yellow"
            self.line(click.style(f"── turn {turn} ended: {stop_reason}", dim=colour is None, fg=colour))
        elif event == "tool_call":
            self.line(dim(f"[tool] {data.get('title')} ({data.get('kind')}, {data.get('status')})"))
        elif event == "tool_call_update":
            change = ", ".join(f"{key} {data[key]}" for key in ("title", "status") if key in data)
            self.line(dim(f"[tool] {data.get('tool_call_id')}: {change}"))
        elif event == "plan":
            steps = "; ".join(str(entry.get("content", entry)) for entry in data.get("entries", []))
            self.line(dim(f"[plan] {one_line(steps)}"))
        elif event == "agent_update":
            pass  # the agent's own bookkeeping (available commands, modes): noise for a person
        elif event == "worker_status":
            why = data.get("reason")
            self.line(click.style(f"── status {data.get('status')}" + (f": {why}" if why else ""), fg="yellow"))
        elif event == "permission_requested":
            for text in permission_question(data):
                self.line(text)
        elif event == "permission_resolved":
            answer = data.get("option_id") or data.get("outcome")
            self.line(dim(f"── permission {data.get('request_id')}: {answer} (by {data.get('by')})"))
        elif event == "log":
            self.line(dim(f"[{data.get('stream', 'log')}] {data.get('line', '')}"))
        else:
            self.line(dim(f"[{event}] {json.dumps(dict(data), ensure_ascii=False)}"))
