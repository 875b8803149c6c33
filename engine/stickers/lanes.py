"""Encode lanes: the threads a pack's encodes share, lent to a search while they are idle.

A pack's files are encoded on a pool of ``n`` threads, one file each
(:class:`engine.render.pack.StickerEncoder`). Early in a pack every thread has
a file; at its end one or two searches are left, each trying candidates one
after another while the other threads idle. :class:`SpareLanes` counts the
``n`` lanes: an encode holds one while it runs (:meth:`SpareLanes.hold`), and
a search may start further candidates on idle lanes (:meth:`SpareLanes.start`,
see :mod:`engine.stickers.search`). A file's own encode always comes first: a
lent lane's work is told to stop (:meth:`SpareLanes.wanted`) as soon as an
encode waits for a lane, and no lane is lent while one waits.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class SpareLanes:
    def __init__(self, lanes: int) -> None:
        if lanes < 1:
            raise ValueError(f"encode lanes must be >= 1, got {lanes}")
        self.lanes = lanes
        self._cond = threading.Condition()
        self._free = lanes
        self._waiting = 0
        # As many threads as lanes: a lent lane always finds a thread (at most ``lanes`` are lent).
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="sticker-spare")

    @contextmanager
    def hold(self) -> Iterator[None]:
        """One lane for the caller's own encode, waited for while lent lanes finish their frame."""
        with self._cond:
            self._waiting += 1
            try:
                while self._free == 0:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._free -= 1
        try:
            yield
        finally:
            self._release()

    def free(self) -> int:
        """Lanes neither held nor lent right now."""
        with self._cond:
            return self._free

    def wanted(self) -> bool:
        """Whether an encode is waiting for a lane (lent work should stop)."""
        return self._waiting > 0

    def start(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """``fn(*args)`` on an idle lane, or None when every lane is busy or an encode waits for one."""
        with self._cond:
            if self._free == 0 or self._waiting:
                return None
            self._free -= 1
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:  # shut down: the lane was never used
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def _release(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    def close(self) -> None:
        """Wait for lent work (told to stop by its searches when they ended) and stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
