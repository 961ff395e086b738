"""The observation bus on its own: cursors, retention, replay and bounded subscriptions."""

from __future__ import annotations

import pytest

from runtimed.domain.errors import CursorExpired, CursorMalformed, CursorUnknown, Overrun
from runtimed.domain.identity import WorkerRef
from runtimed.domain.observation import decode_cursor, encode_cursor
from runtimed.runtime.bus import ObservationBus

A = WorkerRef("runtime-t", "worker-a")
B = WorkerRef("runtime-t", "worker-b")


def publish(bus: ObservationBus, ref: WorkerRef, event: str = "text_delta") -> int:
    observation = bus.reserve(ref, event, {"text": "x"})
    bus.publish(observation)
    return observation.sequence


def test_cursors_are_wo_and_sixteen_lowercase_hex_digits():
    assert encode_cursor(255) == "wo_00000000000000ff"
    assert decode_cursor("wo_00000000000000ff") == 255
    for raw in ("wo_FF", "wo_00000000000000FF", "00000000000000ff", "wo_00000000000000ff ", "wo_-000000000000001"):
        with pytest.raises(CursorMalformed):
            decode_cursor(raw)


def test_one_sequence_is_shared_by_every_worker():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    assert [publish(bus, A), publish(bus, B), publish(bus, A)] == [1, 2, 3]
    assert (bus.cursor_now("worker-a"), bus.cursor_now("worker-b"), bus.cursor_now("worker-c")) == (3, 2, 0)


def test_replay_returns_only_that_workers_events_after_the_cursor():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    for ref in (A, B, A, B, A):
        publish(bus, ref)
    assert [o.sequence for o in bus.replay("worker-a", 1)] == [3, 5]
    assert bus.replay("worker-a", 5) == []
    assert [o.sequence for o in bus.replay("worker-b", 0)] == [2, 4]


def test_replay_beyond_the_newest_sequence_is_unknown():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    publish(bus, A)
    with pytest.raises(CursorUnknown):
        bus.replay("worker-a", 2)


def test_replay_older_than_the_retained_backlog_is_expired_with_a_resume_point():
    bus = ObservationBus(backlog=2, subscriber_queue=8)
    for ref in (A, B, A, A):  # worker-a: 1, 3, 4; retained 3, 4
        publish(bus, ref)
    with pytest.raises(CursorExpired) as caught:
        bus.replay("worker-a", 0)
    assert caught.value.resume_from == 2
    assert [o.sequence for o in bus.replay("worker-a", 2)] == [3, 4]
    assert [o.sequence for o in bus.replay("worker-a", 1)] == [3, 4]  # saw 1, nothing lost


def test_resume_point_never_goes_behind_what_the_reader_has_seen():
    bus = ObservationBus(backlog=2, subscriber_queue=8)
    for _ in range(5):
        publish(bus, A)
    assert bus.resume_point("worker-a", 0) == 3
    assert bus.resume_point("worker-a", 4) == 4


async def test_a_subscription_gets_its_workers_events_in_order():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    with bus.subscribe("worker-a") as subscription:
        publish(bus, A)
        publish(bus, B)
        publish(bus, A)
        assert [(await subscription.get()).sequence, (await subscription.get()).sequence] == [1, 3]
    assert bus.subscriber_count() == 0


async def test_a_full_subscription_overruns_instead_of_blocking_the_publisher():
    bus = ObservationBus(backlog=100, subscriber_queue=3)
    with bus.subscribe("worker-a") as slow, bus.subscribe("worker-a") as fast:
        for i in range(10):
            publish(bus, A)
            if i < 9:
                assert (await fast.get()).sequence == i + 1
        with pytest.raises(Overrun):
            await slow.get()
        assert (await fast.get()).sequence == 10


async def test_closing_the_bus_ends_subscriptions():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    with bus.subscribe("worker-a") as subscription:
        publish(bus, A)
        bus.close()
        assert (await subscription.get()).sequence == 1
        assert await subscription.get() is None


def test_unreserve_gives_back_sequences_of_a_failed_change():
    bus = ObservationBus(backlog=8, subscriber_queue=8)
    publish(bus, A)
    first = bus.reserve(A, "text_delta")
    bus.reserve(A, "text_delta")
    bus.unreserve(first.sequence)
    assert bus.sequence == 1
    assert bus.reserve(A, "text_delta").sequence == 2
