"""Shards: split N inputs (files or synthetic structure indices) into contiguous pieces.

Shard ``index`` of ``count`` covers ``range(*shard_range(n, index, count))``. Shards are
contiguous so that concatenating them in shard order gives the single-process order.
"""

from __future__ import annotations


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; raise ValueError with the reason."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 3/16), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N and N >= 1")
    return i, n


def shard_range(n_items: int, index: int, count: int) -> tuple[int, int]:
    """Half-open ``(start, stop)`` of shard ``index`` of ``count`` over ``n_items`` items."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return (n_items * index) // count, (n_items * (index + 1)) // count
