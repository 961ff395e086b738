"""The built-in echo agent as a real child process, driven through the ACP SDK's client side (§9.6)."""

from __future__ import annotations

import asyncio

import pytest
from acp import PROTOCOL_VERSION, RequestError, text_block

from runtimed import __version__

from .acp_client import TIMEOUT, AgentProcess, RecordingClient
from .helpers import wait_until

pytestmark = pytest.mark.process


async def open_session(agent: AgentProcess) -> str:
    await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
    return (await agent.connection.new_session(cwd="/")).session_id


async def prompt(agent: AgentProcess, session_id: str, text: str, **meta: object) -> str:
    """Send one prompt turn and return its stop reason."""
    response = await asyncio.wait_for(
        agent.connection.prompt(session_id=session_id, prompt=[text_block(text)], **meta), TIMEOUT
    )
    return response.stop_reason


async def test_initialize_advertises_load_session_and_names_the_agent():
    async with AgentProcess(RecordingClient()) as agent:
        answer = await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)

    assert answer.protocol_version == PROTOCOL_VERSION
    assert answer.agent_capabilities is not None and answer.agent_capabilities.load_session is True
    assert answer.agent_info is not None
    assert (answer.agent_info.name, answer.agent_info.version) == ("runtimed-echo", __version__)


async def test_a_prompt_is_echoed_in_two_or_more_chunks_and_ends_the_turn():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        assert await prompt(agent, session_id, "hello") == "end_turn"

    assert len(client.message_chunks()) >= 2
    assert client.message_text() == "echo: hello"
    assert {r.session_id for r in client.received} == {session_id}


async def test_a_long_prompt_is_echoed_whole_in_a_bounded_number_of_chunks():
    client = RecordingClient()
    text = " ".join(f"word{i}" for i in range(1000)) + "\n  and the end  "
    async with AgentProcess(client) as agent:
        assert await prompt(agent, await open_session(agent), text) == "end_turn"

    assert client.message_text() == f"echo: {text}"
    assert 2 <= len(client.message_chunks()) <= 64


async def test_a_system_input_is_echoed_as_system_and_never_run_as_a_command():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        assert await prompt(agent, session_id, "/exit 3", runtimed={"kind": "system"}) == "end_turn"
        assert client.message_text() == "system: /exit 3"
        assert agent.process.returncode is None


async def test_stream_sends_as_many_chunks_as_asked():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        assert await prompt(agent, await open_session(agent), "/stream 100") == "end_turn"

    assert len(client.message_chunks()) == 100


async def test_permission_reports_the_tool_call_before_asking_and_answers_the_option_chosen():
    client = RecordingClient(permission_answer="allow_once")
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        assert await prompt(agent, session_id, "/permission edit") == "end_turn"

    kinds = [r.kind if r.kind == "permission" else r.payload.session_update for r in client.received]
    assert kinds.index("tool_call") < kinds.index("permission") < kinds.index("tool_call_update")
    [tool_call] = client.updates("tool_call")
    assert (tool_call.kind, tool_call.status) == ("edit", "pending")
    [request] = [r.payload for r in client.received if r.kind == "permission"]
    assert request["tool_call"].tool_call_id == tool_call.tool_call_id
    assert [(o.option_id, o.kind) for o in request["options"]] == [
        ("allow_once", "allow_once"),
        ("allow_always", "allow_always"),
        ("reject_once", "reject_once"),
        ("reject_always", "reject_always"),
    ]
    [closed] = client.updates("tool_call_update")
    assert (closed.tool_call_id, closed.status) == (tool_call.tool_call_id, "completed")
    assert client.message_text() == "permission: allow_once"


@pytest.mark.parametrize(
    ("answer", "text"), [("reject_always", "permission: reject_always"), (None, "permission: cancelled")]
)
async def test_permission_refused_or_cancelled_fails_the_tool_call(answer, text):
    client = RecordingClient(permission_answer=answer)
    async with AgentProcess(client) as agent:
        assert await prompt(agent, await open_session(agent), "/permission execute") == "end_turn"

    [closed] = client.updates("tool_call_update")
    assert closed.status == "failed"
    assert client.message_text() == text


async def test_cancel_ends_a_sleeping_turn_as_cancelled_before_it_is_over():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        turn = asyncio.create_task(prompt(agent, session_id, "/sleep 5"))
        await wait_until(lambda: "." in client.message_chunks(), what="the first dot")
        await agent.connection.cancel(session_id=session_id)
        assert await turn == "cancelled"
        assert 1 <= client.message_chunks().count(".") < 5
        # The agent is still there, and the session takes the next prompt.
        client.clear()
        assert await prompt(agent, session_id, "again") == "end_turn"
        assert client.message_text() == "echo: again"


async def test_cancel_while_permission_is_pending_ends_the_turn_as_cancelled_once_it_is_answered():
    client = RecordingClient(hold_permissions=True)
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        turn = asyncio.create_task(prompt(agent, session_id, "/permission delete"))
        await wait_until(lambda: any(r.kind == "permission" for r in client.received), what="the permission request")
        await agent.connection.cancel(session_id=session_id)
        # ACP has the client answer its pending requests `cancelled` after a session/cancel.
        client.permission_answer = None
        client.release_permissions.set()
        assert await turn == "cancelled"

    [closed] = client.updates("tool_call_update")
    assert closed.status == "failed"
    assert client.message_chunks() == []


async def test_sleep_zero_ends_the_turn_without_a_dot():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        assert await prompt(agent, await open_session(agent), "/sleep 0") == "end_turn"

    assert client.message_chunks() == []


BAD_COMMANDS = {
    "/sleep abc": "'abc' is not a number of seconds from 0 to 86400 (usage: /sleep <seconds>)",
    "/sleep nan": "'nan' is not a number of seconds from 0 to 86400 (usage: /sleep <seconds>)",
    "/sleep": "usage: /sleep <seconds>",
    "/stream -1": "'-1' is not a number of chunks from 0 to 100000 (usage: /stream <n>)",
    "/exit 256": "'256' is not an exit status from 0 to 255 (usage: /exit <status>)",
    "/exit 1 2": "usage: /exit <status>",
    "/permission fly": "'fly' is not an ACP tool kind (read, edit, ",
}


async def test_a_command_with_a_bad_argument_is_answered_with_a_readable_message():
    client = RecordingClient()
    answers = {}
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        for text in BAD_COMMANDS:
            client.clear()
            assert await prompt(agent, session_id, text) == "end_turn"
            answers[text] = client.message_text()[: len(BAD_COMMANDS[text])]
        assert agent.process.returncode is None

    assert answers == BAD_COMMANDS


async def test_exit_makes_the_process_exit_with_that_status_at_once():
    async with AgentProcess(RecordingClient()) as agent:
        session_id = await open_session(agent)
        turn = asyncio.create_task(prompt(agent, session_id, "/exit 3"))
        assert await agent.wait() == 3
        with pytest.raises(ConnectionError):
            await turn


@pytest.mark.parametrize("during", ["idle", "a sleeping turn"])
async def test_the_agent_exits_with_status_0_when_its_stdin_closes(during):
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        if during == "a sleeping turn":
            turn = asyncio.create_task(prompt(agent, session_id, "/sleep 60"))
            await wait_until(lambda: "." in client.message_chunks(), what="the first dot")
        agent.close_stdin()
        assert await agent.wait() == 0
        if during == "a sleeping turn":
            with pytest.raises(ConnectionError):
                await turn


async def test_load_of_an_unknown_session_is_accepted_as_an_empty_session():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        await agent.connection.load_session(cwd="/", session_id="from-before-a-restart")
        assert client.received == []
        assert await prompt(agent, "from-before-a-restart", "still here") == "end_turn"

    assert client.message_text() == "echo: still here"


async def test_load_of_a_known_session_replays_its_history():
    client = RecordingClient()
    async with AgentProcess(client) as agent:
        session_id = await open_session(agent)
        await prompt(agent, session_id, "hello")
        await prompt(agent, session_id, "note this", runtimed={"kind": "system"})
        client.clear()
        await agent.connection.load_session(cwd="/", session_id=session_id)

    replayed = [(u.session_update, u.content.text, u.field_meta) for u in client.updates()]
    assert replayed == [
        ("user_message_chunk", "hello", None),
        ("agent_message_chunk", "echo: hello", None),
        ("user_message_chunk", "note this", {"runtimed": {"kind": "system"}}),
        ("agent_message_chunk", "system: note this", None),
    ]


async def test_a_prompt_to_a_session_never_opened_is_an_error():
    async with AgentProcess(RecordingClient()) as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        with pytest.raises(RequestError) as error:
            await prompt(agent, "no-such-session", "hello")

    assert error.value.code == -32602


async def test_the_wire_format_is_one_json_rpc_message_a_line():
    async with AgentProcess() as agent:
        await agent.send_line(
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1,"clientCapabilities":{}}}\n'
        )
        before, initialized = await agent.receive_until_response(1)
        assert before == []
        assert initialized["result"]["protocolVersion"] == 1
        assert initialized["result"]["agentCapabilities"]["loadSession"] is True
        assert initialized["result"]["agentInfo"] == {
            "name": "runtimed-echo",
            "title": "runtimed echo agent",
            "version": __version__,
        }

        await agent.send({"jsonrpc": "2.0", "id": 2, "method": "session/new", "params": {"cwd": "/", "mcpServers": []}})
        _, created = await agent.receive_until_response(2)
        session_id = created["result"]["sessionId"]

        await agent.send(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "session/prompt",
                "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": "hello"}]},
            }
        )
        updates, answered = await agent.receive_until_response(3)
        assert answered == {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn"}}
        assert {(u["method"], "id" in u, u["params"]["sessionId"]) for u in updates} == {
            ("session/update", False, session_id)
        }
        chunks = [u["params"]["update"] for u in updates]
        assert {c["sessionUpdate"] for c in chunks} == {"agent_message_chunk"}
        assert "".join(c["content"]["text"] for c in chunks) == "echo: hello"
        assert all(c["content"]["type"] == "text" for c in chunks)

        await agent.send({"jsonrpc": "2.0", "id": 4, "method": "session/list", "params": {}})
        _, refused = await agent.receive_until_response(4)
        assert refused["error"]["code"] == -32601

        agent.close_stdin()
        assert await agent.wait() == 0
        assert await agent.process.stdout.read() == b""  # nothing after the last answer, not even a blank line
