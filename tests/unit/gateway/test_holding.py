"""The holding room: bounded, released by the first ready worker, each request up to its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from mili.gateway.holding import Admission, HoldingRoom, is_no_workers_answer


async def test_a_request_passes_at_once_when_a_worker_is_ready() -> None:
    room = HoldingRoom(capacity=0)
    room.set_ready(True)
    assert await room.wait_for_worker(time.monotonic()) is Admission.READY


async def test_held_requests_are_counted_and_all_released_by_a_ready_worker() -> None:
    counts: list[int] = []
    room = HoldingRoom(capacity=3, on_change=counts.append)
    deadline = time.monotonic() + 30
    waits = [asyncio.create_task(room.wait_for_worker(deadline)) for _ in range(3)]
    while room.held < 3:
        await asyncio.sleep(0)
    assert not any(wait.done() for wait in waits)
    room.set_ready(True)
    assert await asyncio.gather(*waits) == [Admission.READY] * 3
    assert counts == [1, 2, 3, 2, 1, 0]


async def test_beyond_capacity_a_request_is_refused_at_once() -> None:
    room = HoldingRoom(capacity=1)
    deadline = time.monotonic() + 30
    first = asyncio.create_task(room.wait_for_worker(deadline))
    while room.held < 1:
        await asyncio.sleep(0)
    assert await room.wait_for_worker(deadline) is Admission.FULL
    assert room.held == 1
    room.set_ready(True)
    assert await first is Admission.READY


async def test_a_request_times_out_at_its_deadline_and_leaves_the_room() -> None:
    room = HoldingRoom(capacity=1)
    started = time.monotonic()
    assert await room.wait_for_worker(started + 0.05) is Admission.TIMED_OUT
    assert time.monotonic() - started >= 0.05
    assert room.held == 0


async def test_closing_the_door_holds_the_next_request_again() -> None:
    room = HoldingRoom(capacity=1)
    room.set_ready(True)
    room.set_ready(False)
    assert await room.wait_for_worker(time.monotonic() + 0.01) is Admission.TIMED_OUT


def test_a_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        HoldingRoom(capacity=-1)


def test_only_the_routers_no_worker_answer_counts_as_no_worker() -> None:
    assert is_no_workers_answer(503, b"No available workers (all circuits open or unhealthy)")
    assert not is_no_workers_answer(503, b'{"error": "queue full"}')
    assert not is_no_workers_answer(500, b"No available workers")
