"""The REST API (contract §4, §6) against the real app and a real Runtime."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtimed.web import schemas

from .helpers import ECHO_REQUEST, TASK_REQUEST, create_worker, run_turn


def assert_shape(schema: schemas.BaseSchema, body: Any) -> None:
    """The body loads with the contract's schema and has no field the schema does not know."""
    schema.load(body)
    assert schema.unknown_paths(body) == []


async def get_json(client, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def post_json(client, path: str, body: Any = None, status: int = 200) -> Any:
    response = await client.post(path, json=body) if body is not None else await client.post(path)
    assert response.status == status, await response.text()
    return await response.json()


# -------------------------------------------------------------- the scenario


async def test_seed_scenario_end_to_end(client, runtime):
    worker = await create_worker(client)
    wid = worker["worker_id"]
    ack = await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "hello from backend"})
    assert ack["ack"]["transcript_sequence"] == 1

    detail = await get_json(client, f"/v1/workers/{wid}")
    assert detail["worker"]["transcript_len"] == 1

    page = await get_json(client, f"/v1/workers/{wid}/transcript?start=0&limit=1")
    assert page["transcript"]["items"][0]["content"] == "hello from backend"

    stop = await post_json(client, f"/v1/workers/{wid}/stop")
    assert stop["ack"]["status"] == "stopped"
    cancel = await post_json(client, f"/v1/workers/{wid}/cancel")
    assert cancel["ack"] == stop["ack"]

    workers = await get_json(client, "/v1/workers")
    assert [(w["worker_id"], w["status"], w["transcript_len"]) for w in workers["workers"]] == [(wid, "stopped", 1)]

    summary = (await get_json(client, "/v1/runtime"))["runtime"]
    assert (summary["worker_count"], summary["stopped_worker_count"]) == (1, 1)


# ------------------------------------------------------------------- shapes


async def test_runtime_summary_shape(client, runtime):
    body = await get_json(client, "/v1/runtime")
    assert_shape(schemas.RuntimeResponseSchema(), body)
    assert body == {
        "runtime": {
            "runtime_id": runtime.runtime_id,
            "display_name": None,
            "backend": "memory",
            "status": "running",
            "worker_count": 0,
            "active_worker_count": 0,
            "stopped_worker_count": 0,
            "cancelled_worker_count": 0,
            "diagnostic_count": 0,
            "limits": {"max_transcript_projection_items": 256, "max_event_batch_items": 256},
        }
    }


async def test_create_returns_full_detail_and_omits_absent_optionals(client, runtime):
    response = await client.post(
        "/v1/workers",
        json={"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}},
    )
    assert response.status == 200
    body = await response.json()
    assert_shape(schemas.WorkerResponseSchema(), body)
    ref = {"runtime_id": runtime.runtime_id, "worker_id": "worker-00000001"}
    assert body == {
        "worker": {
            "worker_ref": ref,
            "runtime_id": runtime.runtime_id,
            "worker_id": "worker-00000001",
            "status": "running",
            "intent": {"kind": "assistant"},
            "profile": {"kind": "runtime_default"},
            "transcript_len": 0,
            "last_event_id": 2,
        }
    }
    assert "Warning" not in response.headers


async def test_create_echoes_every_optional_field_it_was_given(client):
    request = {
        "intent": {"kind": "role", "role": "reviewer", "purpose": "review PRs"},
        "profile": {"kind": "named", "value": "careful"},
        "config_bundle": {"id": "bundle-7"},
        "requested_capabilities": [{"name": "read", "reason": "to read code"}, {"name": "write"}],
        "workspace_refs": [{"name": "repo", "reference": "git:main"}],
        "mount_refs": [{"name": "data", "reference": "/srv/data"}],
    }
    worker = await create_worker(client, request)
    for key, value in request.items():
        assert worker[key] == value
    detail = (await get_json(client, f"/v1/workers/{worker['worker_id']}"))["worker"]
    assert detail == worker
    summary = (await get_json(client, "/v1/workers"))["workers"][0]
    assert_shape(schemas.WorkerSummarySchema(), summary)
    assert (summary["requested_capability_count"], summary["has_config_bundle"]) == (2, True)
    assert set(summary) == {
        "worker_ref", "runtime_id", "worker_id", "status", "intent", "profile",
        "requested_capability_count", "has_config_bundle", "transcript_len", "last_event_id",
    }  # fmt: skip


@pytest.mark.parametrize(
    "intent",
    [
        {"kind": "assistant", "purpose": "help"},
        {"kind": "task", "objective": "do it"},
        {"kind": "role", "role": "critic"},
    ],
)
async def test_every_intent_kind_round_trips(client, intent):
    worker = await create_worker(client, {"intent": intent, "profile": {"kind": "builtin", "value": "builtin:coder"}})
    assert worker["intent"] == intent


async def test_input_ack_and_transcript_entry_shapes(client, runtime):
    worker = await create_worker(client)
    wid = worker["worker_id"]
    ref = {"runtime_id": runtime.runtime_id, "worker_id": wid}
    body = await post_json(client, f"/v1/workers/{wid}/input", {"kind": "system", "content": "be brief"})
    assert_shape(schemas.WorkerInteractionAckResponseSchema(), body)
    assert body == {"ack": {"worker_ref": ref, "status": "running", "transcript_sequence": 1, "event_id": 3}}
    page = await get_json(client, f"/v1/workers/{wid}/transcript")
    assert_shape(schemas.TranscriptResponseSchema(), page)
    assert page == {
        "transcript": {
            "worker_ref": ref,
            "start": 0,
            "limit": 256,
            "total_items": 1,
            "items": [{"sequence": 1, "worker_ref": ref, "role": "system", "content": "be brief", "event_id": 3}],
            "next_start": None,
        }
    }


async def test_transcript_pagination_over_http(client):
    wid = (await create_worker(client))["worker_id"]
    for i in range(5):
        await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": f"m{i}"})
    page = (await get_json(client, f"/v1/workers/{wid}/transcript?start=1&limit=2"))["transcript"]
    assert ([e["sequence"] for e in page["items"]], page["next_start"], page["total_items"]) == ([2, 3], 3, 5)
    page = (await get_json(client, f"/v1/workers/{wid}/transcript?start=9"))["transcript"]
    assert (page["items"], page["next_start"]) == ([], None)
    page = (await get_json(client, f"/v1/workers/{wid}/transcript?limit=256"))["transcript"]
    assert len(page["items"]) == 5
    body = await get_json(client, f"/v1/workers/{wid}/transcript?limit=257", status=400)
    assert body == {"error": {"code": "limit_too_large", "message": "limit 257 exceeds maximum 256"}}


async def test_stop_with_reason_and_lifecycle_ack_shape(client, runtime):
    wid = (await create_worker(client))["worker_id"]
    body = await post_json(client, f"/v1/workers/{wid}/stop", {"reason": "maintenance"})
    assert_shape(schemas.WorkerLifecycleAckResponseSchema(), body)
    assert body == {
        "ack": {"worker_ref": {"runtime_id": runtime.runtime_id, "worker_id": wid}, "status": "stopped", "event_id": 3}
    }
    assert runtime.events(3).events[0].message == "maintenance"


@pytest.mark.parametrize("body", [b"", b"   \n", b'{"reason": null}', b"{}"])
async def test_lifecycle_body_may_be_empty_or_carry_no_reason(client, runtime, body):
    wid = (await create_worker(client))["worker_id"]
    response = await client.post(f"/v1/workers/{wid}/cancel", data=body)
    assert response.status == 200, await response.text()
    assert (await response.json())["ack"]["status"] == "cancelled"
    assert runtime.events(3).events[0].message == "worker cancelled"


async def test_events_poll_shape_and_paging(client, runtime):
    wid = (await create_worker(client))["worker_id"]
    body = await get_json(client, "/v1/events?cursor=0&limit=1")
    assert_shape(schemas.EventBatchSchema(), body)
    assert body == {
        "runtime_id": runtime.runtime_id,
        "events": [{"id": 1, "kind": "runtime_started", "message": "runtime started"}],
        "next_cursor": 2,
        "has_more": True,
    }
    body = await get_json(client, "/v1/events?cursor=2")
    assert body["events"] == [
        {
            "id": 2,
            "worker_ref": {"runtime_id": runtime.runtime_id, "worker_id": wid},
            "kind": "worker_created",
            "message": f"worker {wid} created",
        }
    ]
    assert (body["next_cursor"], body["has_more"]) == (3, False)
    body = await get_json(client, "/v1/events?cursor=3&limit=0")
    assert (body["events"], body["next_cursor"], body["has_more"]) == ([], 3, False)
    body = await get_json(client, "/v1/events?limit=257", status=400)
    assert body["error"]["code"] == "limit_too_large"


async def test_diagnostics_shape(client, runtime):
    wid = (await create_worker(client, {"intent": {"kind": "assistant"}, "profile": {"kind": "runtime_default"}}))[
        "worker_id"
    ]
    body = await get_json(client, "/v1/diagnostics")
    assert_shape(schemas.DiagnosticsResponseSchema(), body)
    ref = {"runtime_id": runtime.runtime_id, "worker_id": wid}
    assert body == {
        "diagnostics": [
            {
                "id": 1,
                "severity": "info",
                "code": "runtime.local_default_resources",
                "message": "worker created without ConfigBundleRef; runtime-local defaults are assumed",
                "worker_ref": ref,
            },
            {
                "id": 2,
                "severity": "info",
                "code": "worker.tools_less",
                "message": "worker created without requested tool capabilities",
                "worker_ref": ref,
            },
        ]
    }
    assert (await get_json(client, "/v1/runtime"))["runtime"]["diagnostic_count"] == 2


async def test_runtime_stop_and_start_over_http(client, runtime):
    wid = (await create_worker(client))["worker_id"]
    body = await post_json(client, "/v1/runtime/stop", status=200)
    assert_shape(schemas.RuntimeResponseSchema(), body)
    assert (body["runtime"]["status"], body["runtime"]["stopped_worker_count"]) == ("stopped", 1)
    refused = await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "x"}, status=409)
    assert refused == {"error": {"code": "runtime_stopped", "message": f"runtime {runtime.runtime_id} is stopped"}}
    assert (await get_json(client, f"/v1/workers/{wid}"))["worker"]["status"] == "stopped"
    again = await post_json(client, "/v1/runtime/stop")
    assert again == body
    # Any body is ignored by stop/start.
    response = await client.post("/v1/runtime/start", data=b"not json at all")
    assert response.status == 200
    assert (await response.json())["runtime"]["status"] == "running"
    await create_worker(client)


async def test_healthz(client):
    assert await get_json(client, "/healthz") == {"status": "ok"}


# ------------------------------------------------------------ input handling


async def test_content_type_is_not_required(client):
    response = await client.post("/v1/workers", data=json.dumps(TASK_REQUEST).encode(), headers={"Content-Type": ""})
    assert response.status == 200


@pytest.mark.parametrize(
    "content",
    [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🎉🧪",
        'tab\tnewline\nquote"backslash\\',
        "\u0000nul",
        "lone \ud83d surrogate",
    ],
)
async def test_unicode_content_is_kept_exactly(client, content):
    wid = (await create_worker(client))["worker_id"]
    await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": content})
    page = await get_json(client, f"/v1/workers/{wid}/transcript")
    assert page["transcript"]["items"][0]["content"] == content


async def test_non_ascii_is_sent_as_utf8_not_escaped(client):
    wid = (await create_worker(client))["worker_id"]
    await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "héllo"})
    raw = await (await client.get(f"/v1/workers/{wid}/transcript")).read()
    assert "héllo".encode() in raw


async def test_unknown_fields_are_ignored_but_named_in_warning_headers(client):
    body = {
        **TASK_REQUEST,
        "intent": {"kind": "task", "objective": "x", "objectiv": "typo"},
        "requested_capabilities": [{"name": "read", "reason_typo": "x"}],
        "extra": {"nested": True},
    }
    response = await client.post("/v1/workers", json=body)
    assert response.status == 200
    assert response.headers.getall("Warning") == [
        '299 runtimed "unknown field: intent.objectiv"',
        '299 runtimed "unknown field: requested_capabilities[0].reason_typo"',
        '299 runtimed "unknown field: extra"',
    ]
    worker = (await response.json())["worker"]
    assert worker["requested_capabilities"] == [{"name": "read"}]


async def test_warning_headers_escape_quotes_and_stop_at_twenty(client):
    wid = (await create_worker(client))["worker_id"]
    body = {"kind": "user", "content": "x", 'we"ird\\': 1, **{f"f{i:02d}": i for i in range(30)}}
    response = await client.post(f"/v1/workers/{wid}/input", json=body)
    assert response.status == 200
    warnings = response.headers.getall("Warning")
    assert len(warnings) == 20
    assert warnings[0] == '299 runtimed "unknown field: we\\"ird\\\\"'


async def test_warning_headers_escape_control_and_non_ascii_characters(client):
    wid = (await create_worker(client))["worker_id"]
    body = {"kind": "user", "content": "x", "a\u001fb": 1, "line\nbreak": 2, "café": 3, "🎉": 4}
    response = await client.post(f"/v1/workers/{wid}/input", data=json.dumps(body).encode())
    assert response.status == 200
    assert response.headers.getall("Warning") == [
        '299 runtimed "unknown field: a\\u001fb"',
        '299 runtimed "unknown field: line\\u000abreak"',
        '299 runtimed "unknown field: caf\\u00e9"',
        '299 runtimed "unknown field: \\U0001f389"',
    ]


async def test_unknown_query_parameters_are_named_too(client):
    wid = (await create_worker(client))["worker_id"]
    response = await client.get(f"/v1/workers/{wid}/transcript?limt=5")
    assert response.status == 200
    assert response.headers.getall("Warning") == ['299 runtimed "unknown field: limt"']


# ------------------------------------------------------- executing workers (§9)


async def test_profiles_list_the_backends_profiles_without_env_values(client, backend):
    body = await get_json(client, "/v1/profiles")

    assert_shape(schemas.ProfilesResponseSchema(), body)
    assert body == {
        "profiles": [
            {
                "name": "builtin:echo",
                "source": "builtin",
                "command": ["python", "-m", "runtimed.agents.echo"],
                "permissions": "ask",
                "restart": "on-failure",
                "default": False,
            },
            {
                "name": "careful",
                "source": "config",
                "command": ["careful-agent", "--acp"],
                "permissions": "ask",
                "restart": "on-failure",
                "default": False,
            },
        ]
    }
    assert "not shown" not in json.dumps(body)  # the careful profile's env value


async def test_without_a_backend_there_are_no_profiles(client):
    assert await get_json(client, "/v1/profiles") == {"profiles": []}


async def test_an_agent_backed_worker_shows_its_execution_and_a_record_only_one_none(client, runtime, backend):
    agent = await create_worker(client, ECHO_REQUEST)
    record_only = await create_worker(client, TASK_REQUEST)

    assert agent["execution"] == {
        "profile": "builtin:echo",
        "state": "starting",
        "turns": 0,
        "queued_inputs": 0,
        "pending_permissions": 0,
    }
    assert "execution" not in record_only
    ref = runtime.worker_ref(agent["worker_id"])
    await runtime.update_execution(ref, pid=321, session_id="s-1")
    await post_json(client, f"/v1/workers/{agent['worker_id']}/input", {"kind": "user", "content": "hi"})
    await post_json(client, f"/v1/workers/{agent['worker_id']}/input", {"kind": "user", "content": "again"})
    await run_turn(runtime, ref)
    await runtime.begin_turn(ref)

    detail = await get_json(client, f"/v1/workers/{agent['worker_id']}")
    assert_shape(schemas.WorkerResponseSchema(), detail)
    assert detail["worker"]["execution"] == {
        "profile": "builtin:echo",
        "state": "busy",
        "pid": 321,
        "session_id": "s-1",
        "turns": 1,
        "queued_inputs": 0,
        "pending_permissions": 0,
    }  # turns_started, delivered_sequence and open_turn stay inside
    workers = await get_json(client, "/v1/workers")
    assert_shape(schemas.WorkersResponseSchema(), workers)
    assert [w.get("execution") for w in workers["workers"]] == [detail["worker"]["execution"], None]
    transcript = await get_json(client, f"/v1/workers/{agent['worker_id']}/transcript")
    assert [(e["role"], e["content"]) for e in transcript["transcript"]["items"]] == [
        ("user", "hi"),
        ("user", "again"),
        ("assistant", "echo: hi"),
    ]
    events = await get_json(client, "/v1/events")
    assert_shape(schemas.EventBatchSchema(), events)
    turn_ended = events["events"][-1]
    assert (turn_ended["kind"], turn_ended["message"]) == ("worker_turn_ended", "turn 1 ended: end_turn")
    assert transcript["transcript"]["items"][-1]["event_id"] == turn_ended["id"]


@pytest.mark.parametrize("body", [None, b"", b" \n", b"{}", b'{"drop_queued": false}'])
async def test_interrupt_takes_an_empty_body_or_an_object(client, runtime, backend, body):
    wid = (await create_worker(client, ECHO_REQUEST))["worker_id"]
    await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "a"})
    await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "b"})
    await runtime.begin_turn(runtime.worker_ref(wid))

    response = await client.post(f"/v1/workers/{wid}/interrupt", data=body)

    assert response.status == 200, await response.text()
    answer = await response.json()
    assert_shape(schemas.InterruptAckResponseSchema(), answer)
    assert answer == {
        "ack": {
            "worker_ref": {"runtime_id": runtime.runtime_id, "worker_id": wid},
            "status": "running",
            "turn": 1,
            "dropped_inputs": 0,
        }
    }
    assert runtime.events().events[-1].kind.value == "worker_interrupted"


async def test_interrupt_dropping_queued_inputs_with_no_turn_omits_the_turn(client, runtime, backend):
    wid = (await create_worker(client, ECHO_REQUEST))["worker_id"]
    await post_json(client, f"/v1/workers/{wid}/input", {"kind": "user", "content": "a"})

    response = await client.post(f"/v1/workers/{wid}/interrupt", json={"drop_queued": True, "force": 1})

    assert response.headers.getall("Warning") == ['299 runtimed "unknown field: force"']
    assert (await response.json())["ack"] == {
        "worker_ref": {"runtime_id": runtime.runtime_id, "worker_id": wid},
        "status": "running",
        "dropped_inputs": 1,
    }
    detail = await get_json(client, f"/v1/workers/{wid}")
    assert detail["worker"]["execution"]["queued_inputs"] == 0


async def test_pending_permissions_and_answering_one(client, runtime, backend):
    wid = (await create_worker(client, ECHO_REQUEST))["worker_id"]
    ref = runtime.worker_ref(wid)
    backend.ask(ref, "perm-1")
    backend.ask(ref, "perm-2", turn=None)

    body = await get_json(client, f"/v1/workers/{wid}/permissions")

    assert_shape(schemas.PermissionsResponseSchema(), body)
    options = [
        {"option_id": "allow", "name": "Allow", "kind": "allow_once"},
        {"option_id": "reject", "name": "Reject", "kind": "reject_once"},
    ]
    tool_call = {"tool_call_id": "call-1", "title": "rm -rf build", "kind": "delete"}
    assert body == {
        "permissions": [
            {"turn": 1, "request_id": "perm-1", "tool_call": tool_call, "options": options},
            {"request_id": "perm-2", "tool_call": tool_call, "options": options},
        ]
    }
    answer = await post_json(client, f"/v1/workers/{wid}/permissions/perm-1", {"option_id": "reject"})
    assert_shape(schemas.PermissionAnswerResponseSchema(), answer)
    assert answer == {"permission": {"request_id": "perm-1", "option_id": "reject", "by": "backend"}}
    assert backend.named("answer_permission") == [(wid, "perm-1", "reject")]
    assert [p["request_id"] for p in (await get_json(client, f"/v1/workers/{wid}/permissions"))["permissions"]] == [
        "perm-2"
    ]
