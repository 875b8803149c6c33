"""Per-user upload rate limit of a bot process: uploads per key in a rolling window.

Keys are whatever identifies an uploader (e.g. ``("telegram", user id)``); times are
UNIX seconds from the caller's clock. The count is per process: several bot
processes each allow the limit (documented with the deployment modes).
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Any

from emoji3d.errors import UserFacingError


class UploadRateLimited(UserFacingError):
    """params: ``seconds`` (until the next upload is accepted)."""

    key = "upload_rate_limited"


UPLOAD_WINDOW_SECONDS = 60.0


class UploadCounter:
    """Uploads per key in a rolling window (this process; thread-safe): the bots'
    decodes run in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[Any, collections.deque] = {}

    def take(self, key: Any, now: float, limit: int, window: float = UPLOAD_WINDOW_SECONDS) -> None:
        """Count one upload for ``key`` at ``now``, or raise :class:`UploadRateLimited`
        when ``limit`` uploads already fell within the last ``window`` seconds."""
        with self._lock:
            times = self._times.setdefault(key, collections.deque())
            while times and times[0] <= now - window:
                times.popleft()
            if len(times) >= limit:
                wait = max(1, math.ceil(times[0] + window - now))
                raise UploadRateLimited(f"{key}: {len(times)} uploads in {window:g} s", seconds=wait)
            times.append(now)
            if len(self._times) > 10_000:  # forget idle keys now and then
                for k in [k for k, t in self._times.items() if not t or t[-1] <= now - window]:
                    del self._times[k]
