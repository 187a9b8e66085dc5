"""KV-cache events in vLLM's wire format, published over ZMQ PUB for a KV-aware router.

The engine's prefix tree reports each block it starts or stops sharing; this module turns those into
vLLM's ``KVEventBatch`` messages so a router that consumes vLLM's events (vllm-router's ``kv_aware``
policy, ``--kv-event-source``) follows what this worker really holds.

Wire format (vLLM ``vllm/distributed/kv_events.py``): a ZMQ multipart message
``[topic, sequence number (8 bytes, big-endian), payload]`` whose payload is the msgpack array
``[ts, [event, ...], data_parallel_rank]``, each event a map tagged by ``type``:

- ``{"type": "BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
  lora_name}``
- ``{"type": "BlockRemoved", "block_hashes", "medium"}``
- ``{"type": "AllBlocksCleared"}``

(vllm-router 0.1.17's decoder accepts only the map form of events: "KV event must be a tagged map".)

Replay (vLLM's ``replay_endpoint``): with a replay address the publisher also binds a ZMQ ROUTER
socket and keeps its last ``REPLAY_BATCHES`` batches. A subscriber that joined late or saw a gap in
the sequence numbers sends ``[start sequence (8 bytes, big-endian)]`` (after the empty delimiter frame
a DEALER adds) and gets back ``["", topic, sequence, payload]`` for every kept batch from there on,
then the end marker ``["", "", -1 (8 bytes, signed), ""]``. Replay runs on its own thread, so an
idle engine (no steps) still answers.

Block hashes are unsigned 64-bit integers chained over the prefix (vLLM's integer form of its block
hash: the low 8 bytes of a SHA-256 over the parent's hash and the block's token ids). A subscriber must
treat them as opaque ids and key its own index by the ``token_ids`` it is sent, as vLLM's do, because
vLLM's own digest also covers its pickled/CBOR'd extra keys, which no other engine reproduces.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgpack

from mili.worker.engine.radix_cache import RadixNode

logger = logging.getLogger(__name__)

MEDIUM = "GPU"  # vLLM's name for the tier the engine computes in; the router weighs tiers by it
REPLAY_BATCHES = 10_000  # batches kept for replay (vLLM's default buffer_steps)
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)


def block_hash(parent_hash: int | None, tokens: Sequence[int]) -> int:
    """Chained 64-bit hash of one full block given its parent's (None for the first block)."""
    digest = hashlib.sha256()
    digest.update(struct.pack("<Q", parent_hash or 0))
    digest.update(struct.pack(f"<{len(tokens)}i", *tokens))
    return int.from_bytes(digest.digest()[-8:], "big")


def block_stored(hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int) -> dict:
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent_hash,
        "token_ids": token_ids,
        "block_size": block_size,
        "lora_id": None,
        "medium": MEDIUM,
        "lora_name": None,
    }


def block_removed(hashes: list[int]) -> dict:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": MEDIUM}


def all_blocks_cleared() -> dict:
    return {"type": "AllBlocksCleared"}


def encode_batch(events: list[dict[str, Any]], ts: float, data_parallel_rank: int | None = None) -> bytes:
    """One ``KVEventBatch`` payload."""
    return msgpack.packb([ts, events, data_parallel_rank], use_bin_type=True)


class KvEventPublisher:
    """Observer of the prefix tree that batches its events and publishes one batch per engine step,
    answering replay requests on ``replay_endpoint`` when given one."""

    def __init__(
        self, endpoint: str, block_size: int, topic: str = "", replay_endpoint: str | None = None
    ) -> None:
        import zmq  # only workers that publish need pyzmq

        self.block_size = block_size
        self.topic = topic.encode()
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self._sequence = 0
        self._hash_of_block: dict[int, int] = {}
        self._pending: list[dict[str, Any]] = [all_blocks_cleared()]  # a (re)started worker holds nothing
        self._replay: _ReplayServer | None = None
        if replay_endpoint is not None:
            self._replay = _ReplayServer(self._context, replay_endpoint, self.topic)

    # --- RadixCache observer --------------------------------------------------------------------
    def stored(self, node: RadixNode) -> None:
        parent = node.parent
        parent_hash = None if parent is None or parent.is_root else self._hash_of_block[parent.block_id]
        this_hash = block_hash(parent_hash, node.tokens)
        self._hash_of_block[node.block_id] = this_hash
        self._pending.append(block_stored([this_hash], parent_hash, list(node.tokens), self.block_size))

    def removed(self, node: RadixNode) -> None:
        self._pending.append(block_removed([self._hash_of_block.pop(node.block_id)]))

    # --- publishing -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send what the last step changed (nothing when it changed nothing)."""
        if not self._pending:
            return
        payload = encode_batch(self._pending, time.time())
        self._pending = []
        if self._replay is not None:
            self._replay.keep(self._sequence, payload)  # before sending: a gap seen is already replayable
        self._socket.send_multipart([self.topic, self._sequence.to_bytes(8, "big"), payload])
        self._sequence += 1

    def close(self) -> None:
        if self._replay is not None:
            self._replay.close()
        self._socket.close()


class _ReplayServer:
    """The ROUTER socket that resends kept batches from a requested sequence number on, on its own thread."""

    POLL_MS = 100  # how often the thread looks up from the socket to see whether it should stop

    def __init__(self, context: Any, endpoint: str, topic: bytes) -> None:
        import zmq

        self.topic = topic
        self._batches: deque[tuple[int, bytes]] = deque(maxlen=REPLAY_BATCHES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # A ROUTER drops what passes its high-water mark (1000 by default): room for one whole replay.
        self._socket.setsockopt(zmq.SNDHWM, REPLAY_BATCHES + 1)
        self._socket.bind(endpoint)  # here, so a bad address fails the worker's start-up
        self._thread = threading.Thread(target=self._serve, name="kv-event-replay", daemon=True)
        self._thread.start()

    def keep(self, sequence: int, payload: bytes) -> None:
        with self._lock:
            self._batches.append((sequence, payload))

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(self.POLL_MS):
                continue
            frames = self._socket.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                logger.warning("ignoring a malformed KV-event replay request: %d frames", len(frames))
                continue
            client, delimiter, start = frames
            start_sequence = int.from_bytes(start, "big")
            with self._lock:
                batches = [(seq, payload) for seq, payload in self._batches if seq >= start_sequence]
            for seq, payload in batches:
                self._socket.send_multipart([client, delimiter, self.topic, seq.to_bytes(8, "big"), payload])
            self._socket.send_multipart([client, delimiter, b"", END_OF_REPLAY, b""])
            logger.info("replayed %d KV-event batches from sequence %d", len(batches), start_sequence)
        self._socket.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
