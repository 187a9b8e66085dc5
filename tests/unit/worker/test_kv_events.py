"""KV events: the prefix tree's stores and evictions reach a ZMQ subscriber in vLLM's wire format."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.sequence import Sequence
from mili.worker.kv_events import KvEventPublisher, all_blocks_cleared, block_hash
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
