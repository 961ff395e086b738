"""An ACP agent written by hand, one raw JSON-RPC line at a time (no SDK), that can misbehave.

Run it as ``python tests/agents/raw_agent.py [FLAGS]``. It answers ``initialize`` (version 1, no
``loadSession``, and no ``agentInfo``), ``session/new`` and ``session/prompt``; other requests get
"method not found". It exits when its stdin closes.

Flags:

``--mute``         reads stdin and never answers anything, not even ``initialize``
``--stubborn``     ignores SIGTERM and the end of stdin: only SIGKILL ends it
``--flood N``      writes N lines to stderr as it starts
``--grandchild``   starts a child of its own that sleeps (in its process group, holding its
                   pipes) and writes ``grandchild <pid>`` to stderr
``--escapee``      the same, but the child leaves the group (a session of its own) and writes
                   ``escapee <pid>``: no signal to the agent's group reaches it

A prompt whose whole text is one of these does something else than answer ``raw: <text>``:

``env``               answers with the JSON object of the environment it was started with
``garbage``           writes a line that is not JSON
``oversize N``        writes one ``session/update`` line of N bytes
``error``             answers the prompt with a JSON-RPC error
``exit N``            exits with status N without answering
``unknown``           sends an update of a kind no ACP version has, then answers
``permission KINDS``  asks permission for an ``execute`` tool call, offering options of the
                      comma-separated KINDS (each option's id is its kind); says the answer
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

SESSION_ID = "raw-session"


def write(message: dict[str, Any]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def answer(request_id: Any, result: Any) -> None:
    write({"jsonrpc": "2.0", "id": request_id, "result": result})


def update(update: dict[str, Any]) -> None:
    write({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": SESSION_ID, "update": update}})


def say(text: str) -> None:
    update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}})


class Agent:
    def __init__(self, stdin: Any) -> None:
        self.stdin = stdin
        self.next_id = 1000

    def read(self) -> dict[str, Any] | None:
        line = self.stdin.readline()
        return json.loads(line) if line else None

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Send a request to the client and wait for its answer (messages before it are dropped)."""
        self.next_id += 1
        write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while (message := self.read()) is not None:
            if message.get("id") == self.next_id and "method" not in message:
                return message
        return None

    def handle(self, message: dict[str, Any]) -> None:
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            answer(request_id, {"protocolVersion": 1, "agentCapabilities": {"loadSession": False}})
        elif method == "session/new":
            answer(request_id, {"sessionId": SESSION_ID})
        elif method == "session/prompt":
            text = "".join(block.get("text", "") for block in message["params"]["prompt"])
            self.prompt(request_id, text)
        elif request_id is not None:
            error = {"code": -32601, "message": "Method not found", "data": {"method": method}}
            write({"jsonrpc": "2.0", "id": request_id, "error": error})

    def prompt(self, request_id: Any, text: str) -> None:
        command, _, argument = text.partition(" ")
        if command == "env":
            with open("/proc/self/environ", "rb") as environ:
                pairs = [item.decode().split("=", 1) for item in environ.read().split(b"\0") if item]
            say(json.dumps(dict(pairs)))
        elif command == "garbage":
            os.write(1, b"this is not json\n")
        elif command == "oversize":
            say("x" * int(argument))
        elif command == "error":
            error = {"code": -32603, "message": "Internal error", "data": {"details": "the model is on fire"}}
            write({"jsonrpc": "2.0", "id": request_id, "error": error})
            return
        elif command == "exit":
            say("exiting")
            os._exit(int(argument))
        elif command == "unknown":
            update({"sessionUpdate": "brand_new_kind", "payload": {"answer": 42}})
            say("after the unknown update")
        elif command == "permission":
            kinds = argument.split(",")
            options = [{"optionId": kind, "name": kind, "kind": kind} for kind in kinds]
            tool_call = {"toolCallId": "raw-call", "title": "Run it", "kind": "execute", "status": "pending"}
            response = self.request(
                "session/request_permission", {"sessionId": SESSION_ID, "toolCall": tool_call, "options": options}
            )
            outcome = (response or {}).get("result", {}).get("outcome", {})
            say(f"permission: {outcome.get('optionId', outcome.get('outcome'))}")
        else:
            say(f"raw: {text}")
        answer(request_id, {"stopReason": "end_turn"})


def main(argv: list[str]) -> None:
    mute = "--mute" in argv
    stubborn = "--stubborn" in argv
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--flood" in argv:
        count = int(argv[argv.index("--flood") + 1])
        sys.stderr.write("".join(f"flood line {n}\n" for n in range(count)))
        sys.stderr.flush()
    for flag, leaves_the_group in (("--grandchild", False), ("--escapee", True)):
        if flag in argv:
            sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
            child = subprocess.Popen(sleeper, start_new_session=leaves_the_group)
            sys.stderr.write(f"{flag[2:]} {child.pid}\n")
            sys.stderr.flush()
    agent = Agent(sys.stdin)
    while (message := agent.read()) is not None:
        if not mute:
            agent.handle(message)
    while stubborn:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
