"""KV events: the prefix tree's stores and evictions reach a ZMQ subscriber in vLLM's wire format."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest
import zmq

from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.sequence import Sequence
from mili.worker.kv_events import END_OF_REPLAY, KvEventPublisher, all_blocks_cleared, block_hash
from mili.worker.sampling_params import SamplingParams
from mili_testing import free_port, wait_until

BLOCK_SIZE = 4


@pytest.fixture
def wired():
    """A publisher observing a 4-block pool, and a subscriber that has joined (handshake, no sleep)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    publisher = KvEventPublisher(endpoint, BLOCK_SIZE, topic="kv")
    manager = BlockManager(4, BLOCK_SIZE, prefix_caching=True)
    manager.prefix_cache.observer = publisher
    subscriber = zmq.Context.instance().socket(zmq.SUB)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt(zmq.SUBSCRIBE, b"kv")
    subscriber.connect(endpoint)

    def joined() -> bool:
        publisher._pending.append(all_blocks_cleared())
        publisher.flush()
        return subscriber.poll(50) != 0

    wait_until(joined, timeout=10, what="the subscriber to join")
    while subscriber.poll(50):  # drop the handshake batches
        subscriber.recv_multipart()
    yield manager, publisher, subscriber
    subscriber.close()
    publisher.close()


def receive(subscriber) -> tuple[int, list]:
    assert subscriber.poll(5000), "no KV-event batch arrived"
    topic, sequence, payload = subscriber.recv_multipart()
    assert topic == b"kv"
    ts, events, dp_rank = msgpack.unpackb(payload)
    assert isinstance(ts, float) and dp_rank is None
    return int.from_bytes(sequence, "big"), events


def run_prompt(manager: BlockManager, seq_id: int, tokens: list[int]) -> Sequence:
    seq = Sequence("r", seq_id, tokens, SamplingParams())
    manager.match_prefix(seq)
    assert manager.allocate(seq, len(tokens) - seq.num_computed_tokens)
    seq.num_computed_tokens = len(tokens)
    manager.cache_full_blocks(seq)
    return seq


def test_stored_then_evicted_blocks_are_published_with_chained_hashes(wired) -> None:
    manager, publisher, subscriber = wired
    first = list(range(8))  # two full blocks
    seq = run_prompt(manager, 0, [*first, 99])
    publisher.flush()
    sequence, events = receive(subscriber)
    h0 = block_hash(None, first[:4])
    h1 = block_hash(h0, first[4:])
    common = {
        "type": "BlockStored",
        "block_size": BLOCK_SIZE,
        "lora_id": None,
        "lora_name": None,
        "medium": "GPU",
    }
    assert events == [
        {**common, "block_hashes": [h0], "parent_block_hash": None, "token_ids": first[:4]},
        {**common, "block_hashes": [h1], "parent_block_hash": h0, "token_ids": first[4:]},
    ]
    assert all(0 <= h < 2**64 for h in (h0, h1))
    manager.free(seq)

    other = [50 + t for t in range(12)]  # needs 3 blocks of a 4-block pool: evicts the leaf, then its parent
    run_prompt(manager, 1, [*other, 98])
    publisher.flush()
    next_sequence, events = receive(subscriber)
    assert next_sequence == sequence + 1
    removed = [e for e in events if e["type"] == "BlockRemoved"]
    assert removed == [
        {"type": "BlockRemoved", "block_hashes": [h1], "medium": "GPU"},
        {"type": "BlockRemoved", "block_hashes": [h0], "medium": "GPU"},
    ]
    stored = [e for e in events if e["type"] == "BlockStored"]
    assert [e["token_ids"] for e in stored] == [other[:4], other[4:8], other[8:]]


def test_a_step_that_changes_nothing_sends_nothing(wired) -> None:
    _, publisher, subscriber = wired
    publisher.flush()
    assert subscriber.poll(200) == 0


@contextmanager
def replaying_publisher(topic: str = "") -> Iterator[tuple[KvEventPublisher, str]]:
    """A publisher with a replay socket, and that socket's address; closed afterwards."""
    replay = f"tcp://127.0.0.1:{free_port()}"
    publisher = KvEventPublisher(f"tcp://127.0.0.1:{free_port()}", BLOCK_SIZE, topic, replay_endpoint=replay)
    try:
        yield publisher, replay
    finally:
        publisher.close()


def publish_batches(publisher: KvEventPublisher, count: int) -> None:
    for _ in range(count):
        publisher._pending.append(all_blocks_cleared())
        publisher.flush()


def replay_from(endpoint: str, start: int) -> list[list[bytes]]:
    """What a DEALER asking ``endpoint`` to replay from ``start`` gets back, up to the end marker."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    dealer.send_multipart([b"", start.to_bytes(8, "big")])
    replies = []
    try:
        while True:
            assert dealer.poll(5000), "the replay socket did not answer"
            replies.append(dealer.recv_multipart())
            if replies[-1][2] == END_OF_REPLAY:
                return replies
    finally:
        dealer.close()


def sequences(replies: list[list[bytes]]) -> list[int]:
    """The sequence numbers of the replayed batches (the end marker left out)."""
    return [int.from_bytes(reply[2], "big") for reply in replies[:-1]]


def test_replay_resends_the_kept_batches_from_the_asked_sequence_then_an_end_marker(monkeypatch) -> None:
    monkeypatch.setattr("mili.worker.kv_events.REPLAY_BATCHES", 3)
    with replaying_publisher(topic="kv") as (publisher, replay):
        assert replay_from(replay, 0) == [[b"", b"", END_OF_REPLAY, b""]], "nothing published yet"
        publish_batches(publisher, 5)  # 0..4: the AllBlocksCleared a new publisher starts with, then 4 more
        replies = replay_from(replay, 0)  # 0 and 1 have left the 3-batch buffer
        assert sequences(replies) == [2, 3, 4]
        assert all(reply[:2] == [b"", b"kv"] for reply in replies[:-1])
        assert msgpack.unpackb(replies[0][3])[1] == [all_blocks_cleared()]
        assert sequences(replay_from(replay, 4)) == [4]
        assert replay_from(replay, 9) == [[b"", b"", END_OF_REPLAY, b""]]


def test_a_malformed_replay_request_is_ignored_and_the_next_one_answered() -> None:
    with replaying_publisher() as (publisher, replay):
        publisher.flush()
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(replay)
        dealer.send_multipart([b"", b"short"])
        assert dealer.poll(300) == 0, "a malformed request gets no answer"
        dealer.close()
        assert sequences(replay_from(replay, 0)) == [0]


def test_a_replay_longer_than_zmqs_default_high_water_mark_arrives_whole() -> None:
    with replaying_publisher() as (publisher, replay):
        publish_batches(publisher, 5000)  # five times ZMQ's default send high-water mark (1000 messages)
        assert sequences(replay_from(replay, 0)) == list(range(5000))
