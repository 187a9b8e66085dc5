"""Radix tree over token ids at block granularity (RadixAttention), for sharing KV across requests.

Each node is one full KV block: the path from the root spells the token ids that produced it. The tree
holds no reference of its own: a block is *used* while sequences reference it and *cached* when it sits
in the tree with no reference; cached blocks are evicted least-recently-used first, leaves before their
parents. Reference counts live in the block manager; this module only reads them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(eq=False)
class RadixNode:
    block_id: int
    tokens: tuple[int, ...]
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    last_access: int = 0

    @property
    def is_root(self) -> bool:
        return self.parent is None


class CacheObserver(Protocol):
    """Told of every block the tree starts or stops sharing (the KV-event publisher)."""

    def stored(self, node: RadixNode) -> None: ...

    def removed(self, node: RadixNode) -> None: ...


class RadixCache:
    """The tree, its LRU eviction order and its block → node index."""

    def __init__(self, block_size: int, ref_counts: Sequence[int]) -> None:
        self.block_size = block_size
        self.root = RadixNode(block_id=-1, tokens=(), parent=None)
        self._ref_counts = ref_counts
        self._clock = itertools.count(1)
        self._node_of_block: dict[int, RadixNode] = {}
        self._eviction_heap: list[tuple[int, int, RadixNode]] = []  # (last_access, tiebreak, node)
        self._tiebreak = itertools.count()
        self.observer: CacheObserver | None = None

    def __len__(self) -> int:
        return len(self._node_of_block)

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._node_of_block

    def match(self, token_ids: Sequence[int], max_blocks: int) -> list[RadixNode]:
        """Longest chain of cached blocks spelling a prefix of ``token_ids`` (at most ``max_blocks``)."""
        node, chain = self.root, []
        now = next(self._clock)
        for i in range(max_blocks):
            key = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            child = node.children.get(key)
            if child is None:
                break
            child.last_access = now
            chain.append(child)
            node = child
        return chain

    def insert(self, parent: RadixNode, tokens: tuple[int, ...], block_id: int) -> RadixNode | None:
        """Add ``block_id`` (a full, referenced block) under ``parent``. Returns the new node, or None when
        the same tokens are already cached there under another block (the caller keeps its copy private)."""
        assert len(tokens) == self.block_size
        if tokens in parent.children:
            return None
        node = RadixNode(block_id, tokens, parent, last_access=next(self._clock))
        parent.children[tokens] = node
        self._node_of_block[block_id] = node
        if self.observer is not None:
            self.observer.stored(node)
        return node

    def on_unreferenced(self, block_id: int) -> None:
        """A cached block just lost its last reference: it becomes evictable once it is a leaf."""
        node = self._node_of_block[block_id]
        node.last_access = next(self._clock)
        if not node.children:
            self._push(node)

    def evict(self) -> int | None:
        """Remove the least-recently-used unreferenced leaf; returns its block id, or None if none."""
        while self._eviction_heap:
            last_access, _, node = heapq.heappop(self._eviction_heap)
            if not self._evictable(node) or node.last_access != last_access:
                continue
            parent = node.parent
            assert parent is not None
            del parent.children[node.tokens]
            del self._node_of_block[node.block_id]
            if self.observer is not None:
                self.observer.removed(node)
            if not parent.is_root and not parent.children and self._ref_counts[parent.block_id] == 0:
                self._push(parent)
            return node.block_id
        return None

    def _evictable(self, node: RadixNode) -> bool:
        return (
            self._node_of_block.get(node.block_id) is node
            and not node.children
            and self._ref_counts[node.block_id] == 0
        )

    def _push(self, node: RadixNode) -> None:
        heapq.heappush(self._eviction_heap, (node.last_access, next(self._tiebreak), node))
