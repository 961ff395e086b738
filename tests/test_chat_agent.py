"""The built-in chat agent as a real child process, driven through the ACP SDK's client side and
talking to a local OpenAI-compatible server (``tests/openai_server.py``) over a real socket.

The agent's settings reach it through its environment, as runtimed hands them over
(``RUNTIMED_AGENT_*``, ``setting_environment``); here the test sets them itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from acp import PROTOCOL_VERSION, RequestError, text_block

from runtimed import __version__
from runtimed.agents import chat, supervisor
from runtimed.domain.catalog import AssistantIntent, RoleIntent, TaskIntent
from runtimed.domain.execution import ExecutionConfig

from .acp_client import TIMEOUT, AgentProcess, RecordingClient
from .openai_server import OpenAIServer, Reply

CHAT_AGENT = (sys.executable, "-m", "runtimed.agents.chat")
KEY = "sk-test-4f9a2c7e1d"


def chat_agent(client: RecordingClient | None, **settings: str) -> AgentProcess:
    """The chat agent with exactly these settings (``model="m"`` → ``RUNTIMED_AGENT_MODEL=m``)."""
    variables = [f"RUNTIMED_AGENT_{key.upper()}={value}" for key, value in settings.items()]
    # `env -i`: nothing of the test's own environment (no OPENAI_* variable) reaches the agent.
    return AgentProcess(client, ("env", "-i", "PATH=/usr/bin:/bin", *variables, *CHAT_AGENT))


@asynccontextmanager
async def session(
    tmp_path: Path, client: RecordingClient | None = None, **settings: str
) -> AsyncIterator[tuple[AgentProcess, str]]:
    """A started chat agent and a new session in ``tmp_path``."""
    async with chat_agent(client or RecordingClient(), **settings) as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        session_id = (await agent.connection.new_session(cwd=str(tmp_path))).session_id
        yield agent, session_id


async def prompt(agent: AgentProcess, session_id: str, text: str, **meta: object) -> str:
    response = await asyncio.wait_for(
        agent.connection.prompt(session_id=session_id, prompt=[text_block(text)], **meta), TIMEOUT
    )
    return response.stop_reason


async def failure(agent: AgentProcess, session_id: str, text: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        await prompt(agent, session_id, text)
    return caught.value


def history(tmp_path: Path, session_id: str) -> list[dict[str, str]]:
    lines = (tmp_path / f".runtimed-chat-{session_id}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------ settings (no process)


@pytest.mark.parametrize(
    ("intent", "sentence"),
    [
        (TaskIntent(objective="write the release notes"), "Your task: write the release notes"),
        (RoleIntent(role="reviewer", purpose="catch bugs"), "Your role: reviewer. Its purpose: catch bugs"),
        (RoleIntent(role="reviewer"), "Your role: reviewer."),
        (AssistantIntent(purpose="answer questions about runtimed"), "Your purpose: answer questions about runtimed"),
        (AssistantIntent(), None),
    ],
)
def test_the_workers_intent_is_handed_over_as_json_and_read_back_as_a_sentence(intent, sentence):
    env = supervisor.setting_environment({"model": "m"}, intent, source={})

    assert chat.intent_text(env["RUNTIMED_AGENT_INTENT"]) == sentence
    assert chat.Settings.from_environment(env).intent == sentence


def test_settings_travel_as_variables_and_the_key_only_by_value_from_the_named_variable():
    settings = {"model": "qwen2.5:0.5b", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "MY_KEY"}

    env = supervisor.setting_environment(settings, AssistantIntent(), source={"MY_KEY": KEY, "OTHER": "x"})

    assert env == {
        "RUNTIMED_AGENT_MODEL": "qwen2.5:0.5b",
        "RUNTIMED_AGENT_BASE_URL": "http://127.0.0.1:9/v1",
        "RUNTIMED_AGENT_API_KEY": KEY,
        "RUNTIMED_AGENT_INTENT": '{"kind": "assistant"}',
    }
    assert supervisor.SETTING_PREFIX == chat.SETTING_PREFIX
    # A variable the daemon does not have (or withholds: its token) hands over no key.
    assert "RUNTIMED_AGENT_API_KEY" not in supervisor.setting_environment(settings, AssistantIntent(), source={})


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("MAX_TOKENS", "0", "RUNTIMED_AGENT_MAX_TOKENS must be a whole number above 0, not '0'"),
        ("MAX_TOKENS", "1e3", "RUNTIMED_AGENT_MAX_TOKENS must be a whole number above 0, not '1e3'"),
        ("TIMEOUT_SECONDS", "nan", "RUNTIMED_AGENT_TIMEOUT_SECONDS must be a number above 0, not 'nan'"),
        ("TIMEOUT_SECONDS", "-1", "RUNTIMED_AGENT_TIMEOUT_SECONDS must be a number above 0, not '-1'"),
    ],
)
def test_a_bad_setting_is_refused_by_name(name, value, complaint):
    with pytest.raises(chat.SettingsError) as caught:
        chat.Settings.from_environment({f"RUNTIMED_AGENT_{name}": value})

    assert str(caught.value) == complaint


def test_the_key_is_never_in_a_log_line_a_traceback_or_a_repr_of_the_settings():
    key = "sk-test-0123456789"
    settings = chat.Settings(model="tiny", api_key=key)
    assert key not in repr(settings)
    formatter = chat.Redacting("%(levelname)s %(message)s", key)
    try:
        raise RuntimeError(f"the server refused key {key}")
    except RuntimeError:
        record = logging.LogRecord("openai", logging.ERROR, __file__, 1, "failed with %s", (key,), sys.exc_info())
    line = formatter.format(record)
    assert key not in line
    assert line.startswith("ERROR failed with ***") and "the server refused key ***" in line


async def test_failures_name_the_server_without_credentials_written_into_its_url():
    agent = chat.ChatAgent(chat.Settings(model="tiny", base_url="http://user:s3cret@127.0.0.1:9/v1"))
    try:
        assert agent.endpoint == "http://***@127.0.0.1:9/v1"
    finally:
        await agent.openai_client.close()
    assert chat.without_credentials("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434/v1"
    assert chat.without_credentials("https://key@[::1]:8080/v1/") == "https://***@[::1]:8080/v1/"


def test_without_settings_there_is_no_model_and_the_timeout_is_120_seconds():
    settings = chat.Settings.from_environment({})

    assert (settings.model, settings.base_url, settings.api_key, settings.timeout_seconds) == (None, None, None, 120.0)
    assert settings.system_message() is None


# ------------------------------------------------------------------ the agent process


@pytest.mark.process
async def test_initialize_advertises_load_session_and_names_the_agent():
    async with chat_agent(RecordingClient()) as agent:
        answer = await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)

    assert answer.protocol_version == PROTOCOL_VERSION
    assert answer.agent_capabilities is not None and answer.agent_capabilities.load_session is True
    assert answer.agent_info is not None
    assert (answer.agent_info.name, answer.agent_info.version) == ("runtimed-chat", __version__)


@pytest.mark.process
async def test_the_answer_streams_as_deltas_and_the_request_carries_the_settings_and_the_intent(tmp_path):
    client = RecordingClient()
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["Hel", "lo ", "there"], usage=(21, 3)))
        settings = {
            "model": "tiny",
            "base_url": server.base_url,
            "system_prompt": "You are careful.",
            "max_tokens": "64",
            "intent": '{"kind": "task", "objective": "greet"}',
        }
        async with session(tmp_path, client, **settings) as (agent, session_id):
            assert await prompt(agent, session_id, "hi") == "end_turn"

    assert client.message_chunks() == ["Hel", "lo ", "there"]
    (request,) = server.requests
    assert request.body["model"] == "tiny"
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["max_tokens"] == 64
    assert request.messages == [
        {"role": "system", "content": "You are careful.\n\nYour task: greet"},
        {"role": "user", "content": "hi"},
    ]
    # The usage the server reported, sent before the prompt was answered.
    (usage,) = client.updates("usage_update")
    assert (usage.used, usage.size) == (24, 0)
    assert usage.field_meta == {"openai": {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}}
    assert history(tmp_path, session_id) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there"},
    ]


@pytest.mark.process
async def test_the_conversation_grows_turn_by_turn_and_a_new_process_loads_it(tmp_path):
    async with OpenAIServer() as server:
        async with session(tmp_path, model="tiny", base_url=server.base_url) as (agent, session_id):
            assert await prompt(agent, session_id, "one") == "end_turn"
            assert await prompt(agent, session_id, "be brief", runtimed={"kind": "system"}) == "end_turn"
            assert await prompt(agent, session_id, "two") == "end_turn"
        # A system input is a message of the conversation, not a request of its own.
        assert len(server.requests) == 2
        assert server.requests[1].messages == [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "you said: one"},
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "two"},
        ]

        client = RecordingClient()
        async with chat_agent(client, model="tiny", base_url=server.base_url) as agent:
            await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
            await agent.connection.load_session(cwd=str(tmp_path), session_id=session_id, mcp_servers=[])
            assert await prompt(agent, session_id, "three") == "end_turn"
        assert server.requests[2].messages == [
            *server.requests[1].messages,
            {"role": "assistant", "content": "you said: two"},
            {"role": "user", "content": "three"},
        ]
    assert client.message_text() == "you said: three"


@pytest.mark.process
async def test_the_history_file_is_private_whatever_the_umask(tmp_path):
    # The file holds the whole conversation; a profile cwd or a workspace may be readable by others.
    previous = os.umask(0o022)
    try:
        async with session(tmp_path, model="tiny") as (_, session_id):
            mode = (tmp_path / f".runtimed-chat-{session_id}.jsonl").stat().st_mode
    finally:
        os.umask(previous)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.process
async def test_a_session_without_its_history_file_fails_to_load(tmp_path):
    async with session(tmp_path, model="tiny") as (agent, session_id):
        (tmp_path / f".runtimed-chat-{session_id}.jsonl").unlink()
        with pytest.raises(RequestError) as caught:
            await agent.connection.load_session(cwd=str(tmp_path), session_id=session_id, mcp_servers=[])
        assert "the conversation is lost" in json.dumps(caught.value.data)
        with pytest.raises(RequestError):
            await agent.connection.load_session(cwd=str(tmp_path), session_id="../../etc/passwd", mcp_servers=[])


@pytest.mark.process
async def test_a_history_file_cut_short_by_a_crash_loads_without_its_last_line(tmp_path):
    session_id = "0123456789abcdef0123456789abcdef"
    path = tmp_path / f".runtimed-chat-{session_id}.jsonl"
    path.write_text('{"role": "user", "content": "kept"}\n{"role": "assist')
    async with OpenAIServer() as server, chat_agent(RecordingClient(), model="m", base_url=server.base_url) as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        await agent.connection.load_session(cwd=str(tmp_path), session_id=session_id, mcp_servers=[])
        assert await prompt(agent, session_id, "next") == "end_turn"
    assert server.requests[0].messages == [
        {"role": "user", "content": "kept"},
        {"role": "user", "content": "next"},
    ]


@pytest.mark.process
async def test_a_model_stopped_on_its_length_ends_the_turn_max_tokens(tmp_path):
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["a long"], finish_reason="length"))
        async with session(tmp_path, model="m", base_url=server.base_url, max_tokens="2") as (agent, session_id):
            assert await prompt(agent, session_id, "go on") == "max_tokens"
        assert history(tmp_path, session_id)[-1] == {"role": "assistant", "content": "a long"}


@pytest.mark.process
async def test_a_content_filter_ends_the_turn_refusal_and_no_usage_means_no_usage_update(tmp_path):
    client = RecordingClient()
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["I can"], finish_reason="content_filter", usage=None))
        async with session(tmp_path, client, model="m", base_url=server.base_url) as (agent, session_id):
            assert await prompt(agent, session_id, "something bad") == "refusal"
    assert client.message_text() == "I can"
    assert client.updates("usage_update") == []


@pytest.mark.process
async def test_cancel_closes_the_stream_at_once_and_keeps_what_was_said(tmp_path):
    client = RecordingClient()
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["first ", "never sent"], hang_after=1))
        async with session(tmp_path, client, model="m", base_url=server.base_url) as (agent, session_id):
            turn = asyncio.create_task(prompt(agent, session_id, "talk"))
            while client.message_text() != "first ":
                await asyncio.sleep(0.01)
                assert not turn.done()
            # The server would hang for 30 s: the turn ends (within the prompt's 10 s bound) only
            # because the cancel aborted the request.
            await agent.connection.cancel(session_id=session_id)
            assert await turn == "cancelled"
            await asyncio.wait_for(_until(lambda: server.disconnects == 1), TIMEOUT)
            # The agent goes on: the next turn is answered.
            assert await prompt(agent, session_id, "again") == "end_turn"
    assert history(tmp_path, session_id)[:2] == [
        {"role": "user", "content": "talk"},
        {"role": "assistant", "content": "first "},
    ]


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


@pytest.mark.process
@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(status=500, message="the model crashed"), "answered HTTP 500 Internal Server Error: the model crashed"),
        (Reply(status=404, message="model 'm' not found"), "answered HTTP 404 Not Found: model 'm' not found"),
    ],
)
async def test_an_http_error_is_an_error_answer_naming_the_status_and_the_servers_message(tmp_path, reply, message):
    async with OpenAIServer() as server:
        server.script.append(reply)
        async with session(tmp_path, model="m", base_url=server.base_url) as (agent, session_id):
            error = await failure(agent, session_id, "hi")
            assert str(error) == f"the model server at {server.base_url} {message}"
            assert (error.code, error.data) == (-32000, {"status": reply.status})
            assert await prompt(agent, session_id, "again") == "end_turn"
        # One request per turn: no retry.
        assert len(server.requests) == 2
        # A failed turn that said nothing is not part of the conversation.
        assert server.requests[1].messages == [{"role": "user", "content": "again"}]


@pytest.mark.process
async def test_a_wrong_key_is_a_401_and_the_key_is_never_written(tmp_path):
    async with OpenAIServer(api_key="the-right-key") as server:
        async with session(tmp_path, model="m", base_url=server.base_url, api_key=KEY) as (agent, session_id):
            error = await failure(agent, session_id, "hi")
            assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"
        stderr = "\n".join(agent.stderr_lines)
    assert str(error) == (
        f"the model server at {server.base_url} answered HTTP 401 Unauthorized: Incorrect API key provided: Bearer ***"
    )
    assert "Bearer ***" in stderr
    assert KEY not in stderr


@pytest.mark.process
async def test_a_server_that_does_not_answer_times_out(tmp_path):
    async with OpenAIServer() as server:
        server.script.append(Reply(hang_after=-1))
        settings = {"model": "m", "base_url": server.base_url, "timeout_seconds": "0.5"}
        async with session(tmp_path, **settings) as (agent, session_id):
            error = await failure(agent, session_id, "hi")
            assert str(error) == f"the model server at {server.base_url} did not answer within 0.5 s (timeout_seconds)"
            assert await prompt(agent, session_id, "again") == "end_turn"


@pytest.mark.process
async def test_a_server_that_stalls_between_pieces_times_out(tmp_path):
    client = RecordingClient()
    async with OpenAIServer() as server:
        server.script.append(Reply(pieces=["half ", "never"], hang_after=1))
        settings = {"model": "m", "base_url": server.base_url, "timeout_seconds": "0.5"}
        async with session(tmp_path, client, **settings) as (agent, session_id):
            error = await failure(agent, session_id, "hi")
    assert "did not answer within 0.5 s" in str(error)
    # What it said before it stalled is kept.
    assert history(tmp_path, session_id) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "half "},
    ]


@pytest.mark.process
async def test_a_server_that_refuses_the_connection_fails_the_turn(tmp_path):
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    async with session(tmp_path, model="m", base_url=base_url) as (agent, session_id):
        error = await failure(agent, session_id, "hi")
        assert str(error).startswith(f"cannot connect to the model server at {base_url}: ")
        assert agent.process.returncode is None


@pytest.mark.process
async def test_without_a_model_every_turn_fails_and_the_agent_stays(tmp_path):
    async with session(tmp_path) as (agent, session_id):
        error = await failure(agent, session_id, "hi")
        assert str(error).startswith("no model configured")
        error = await failure(agent, session_id, "hi again")
        assert str(error).startswith("no model configured")
        assert agent.process.returncode is None


@pytest.mark.process
async def test_a_relative_cwd_is_refused(tmp_path):
    async with chat_agent(RecordingClient(), model="m") as agent:
        await agent.connection.initialize(protocol_version=PROTOCOL_VERSION)
        with pytest.raises(RequestError) as caught:
            await agent.connection.new_session(cwd="state/workdirs/worker-00000001")
    assert caught.value.data == {
        "cwd": "state/workdirs/worker-00000001",
        "reason": "the session's cwd must be an absolute path",
    }


async def test_the_supervisor_opens_sessions_in_absolute_directories_even_under_a_relative_fs_root(runtime):
    made = supervisor.Supervisor(runtime, ExecutionConfig(), workdirs=Path("state") / "workdirs")

    assert made.workdirs == Path.cwd() / "state" / "workdirs"
