"""Stable assignment of samples to shards.

A sample's shard depends only on its id and the shard count (a hash, not a position), so adding or
removing other samples never moves it: finished shards stay valid when a dataset grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def stable_hash(sample_id: str) -> int:
    """A 64-bit hash of a sample id that is the same in every process (BLAKE2b, not Python's
    salted ``hash``)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(sample_id: str, num_shards: int) -> int:
    """Shard index in ``[0, num_shards)`` of one sample id."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return stable_hash(sample_id) % num_shards


def shard_ids(sample_ids: Iterable[str], num_shards: int) -> list[int]:
    """:func:`shard_of` for many ids."""
    return [shard_of(s, num_shards) for s in sample_ids]
