"""`WaitLog`: the latest queue waits in a fixed ring, for Batcher.stats()."""
from __future__ import annotations

import numpy as np


class WaitLog:
    """Waits (seconds) of the latest `size` frames: percentiles describe recent traffic,
    and memory stays bounded however long the service runs."""

    def __init__(self, size: int = 1 << 16):
        self._a = np.zeros(size)
        self._n = 0  # waits added so far

    def add(self, now: float, arrivals) -> None:
        """The waits of frames that arrived at `arrivals` and start at `now`."""
        w = now - np.asarray(arrivals)
        size = len(self._a)
        w = w[-size:]
        i = self._n % size
        head = min(len(w), size - i)
        self._a[i:i + head] = w[:head]
        self._a[:len(w) - head] = w[head:]
        self._n += len(w)

    def percentiles(self, qs) -> list:
        n = min(self._n, len(self._a))
        if not n:
            return [0.0 for _ in qs]
        return [float(v) for v in np.percentile(self._a[:n], qs)]
