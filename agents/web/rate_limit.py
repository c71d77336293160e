"""Token buckets: each key (a REST API token) may make ``burst`` requests at once and ``rate``
more per second after that."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class TokenBuckets:
    """One bucket per key, full at first; ``rate`` 0: no limit. ``clock``: seconds, monotonic."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, as of)

    def take(self, key: Hashable) -> float:
        """Take one token from ``key``'s bucket: 0.0 when there was one, else the seconds until
        there is one (nothing is taken then)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, since = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate
