"""An ACP agent on the SDK's agent side that sends what the echo agent never does.

Run it as ``python tests/agents/sdk_agent.py``; it exits when its stdin closes. Right after
answering ``session/new`` it sends an ``available_commands_update`` (outside any turn, as real
agents do). A prompt whose whole text is one of these does something; anything else is
answered ``sdk: <text>``:

``showcase``            a thought, a tool call without kind or status (ACP's defaults apply),
                        two updates of it, a plan, a ``current_mode_update``, a user message
                        chunk, then the agent's message ``done``
``stop REASON``         ends the turn with that ACP stop reason
``ask KIND OPTIONS``    reports a tool call of KIND and asks permission for it, offering options
                        of the comma-separated OPTIONS kinds (each option's id is its kind),
                        then says ``permission: <option id or cancelled>``
"""

from __future__ import annotations

import asyncio
from typing import Any

from acp import (
    PROTOCOL_VERSION,
    Agent,
    Client,
    plan_entry,
    run_agent,
    start_tool_call,
    update_agent_message_text,
    update_agent_thought_text,
    update_plan,
    update_tool_call,
    update_user_message_text,
)
from acp.helpers import update_available_commands, update_current_mode
from acp.schema import (
    AgentCapabilities,
    AllowedOutcome,
    AvailableCommand,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PermissionOption,
    PromptResponse,
    TextContentBlock,
    ToolCallUpdate,
)


class ShowcaseAgent(Agent):
    _client: Client

    def __init__(self) -> None:
        self._background: set[asyncio.Task[None]] = set()

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(load_session=False),
            agent_info=Implementation(name="sdk-showcase", version="1.2.3"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> NewSessionResponse:
        session_id = "sdk-session"
        # Sent once the answer is on its way: an update that belongs to no turn.
        task = asyncio.create_task(self._announce_commands(session_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return NewSessionResponse(session_id=session_id)

    async def _announce_commands(self, session_id: str) -> None:
        await asyncio.sleep(0)
        commands = [AvailableCommand(name="showcase", description="send one update of each kind")]
        await self._client.session_update(session_id=session_id, update=update_available_commands(commands))

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        text = "".join(block.text for block in prompt if isinstance(block, TextContentBlock))
        words = text.split()
        if text == "showcase":
            await self._showcase(session_id)
        elif len(words) == 2 and words[0] == "stop":
            return PromptResponse(stop_reason=words[1])
        elif len(words) == 3 and words[0] == "ask":
            await self._ask(session_id, words[1], words[2].split(","))
        else:
            await self._send(session_id, update_agent_message_text(f"sdk: {text}"))
        return PromptResponse(stop_reason="end_turn")

    async def _showcase(self, session_id: str) -> None:
        await self._send(session_id, update_agent_thought_text("thinking it over"))
        await self._send(session_id, start_tool_call("call-1", "Read the notes"))
        await self._send(session_id, update_tool_call("call-1", status="in_progress"))
        await self._send(session_id, update_tool_call("call-1", status="completed", title="Read the notes (done)"))
        await self._send(
            session_id,
            update_plan([plan_entry("read", status="completed"), plan_entry("write", priority="high")]),
        )
        await self._send(session_id, update_current_mode("architect"))
        await self._send(session_id, update_user_message_text("a user chunk"))
        await self._send(session_id, update_agent_message_text("done"))

    async def _ask(self, session_id: str, kind: str, option_kinds: list[str]) -> None:
        await self._send(session_id, start_tool_call("call-2", f"ask {kind}", kind=kind, status="pending"))
        response = await self._client.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id="call-2"),
            options=[PermissionOption(option_id=k, name=k, kind=k) for k in option_kinds],
        )
        outcome = response.outcome
        answer = outcome.option_id if isinstance(outcome, AllowedOutcome) else "cancelled"
        await self._send(session_id, update_agent_message_text(f"permission: {answer}"))

    async def _send(self, session_id: str, update: Any) -> None:
        await self._client.session_update(session_id=session_id, update=update)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None


if __name__ == "__main__":
    asyncio.run(run_agent(ShowcaseAgent()))
