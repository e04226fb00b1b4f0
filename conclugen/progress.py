"""Progress lines for long loops: items done, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("conclugen")


def progress(items: Iterable[T], total: int, desc: str, every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items`` and log ``desc: done/total (rate/s, ETA)`` now and then and at the end."""
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d (%.1f/s, ETA %.0f s)", desc, done, total, rate, eta)
