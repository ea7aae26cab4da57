"""Progress lines for long work: done/total, rate and time left."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Progress:
    """Logs `done/total`, rate and time left at most every `every` seconds."""

    def __init__(self, total: int, what: str, every: float = 2.0):
        self.total, self.what, self.every = total, what, every
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            log.info(f"{self.what}: {self.done}/{self.total} ({rate:.0f}/s, {left:.0f}s left)")
