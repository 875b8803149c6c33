"""A TCP link with latency: a forwarder on 127.0.0.1 that holds every chunk ``delay_s`` before
passing it on, in both directions, so a server on this machine answers as one on another host
would (a round trip costs ``2 * delay_s`` more). Chunks keep their order. With ``rate_bytes_s``
each direction of each connection also carries at most that many bytes a second (a transfer takes
its size over the rate longer); without it a transfer in flight is delayed, not slowed.

    with SlowLink("127.0.0.1", pg_port, delay_s=0.005) as link:
        url = f"postgresql+psycopg://emoji3d@127.0.0.1:{link.port}/emoji3d"

The forwarder runs its own event loop in a background thread, so sync and async callers can use it.
"""
from __future__ import annotations

import asyncio
import threading


class SlowLink:
    def __init__(self, host: str, port: int, delay_s: float, rate_bytes_s: float | None = None) -> None:
        if delay_s < 0 or (rate_bytes_s is not None and not rate_bytes_s > 0):
            raise ValueError(f"need delay_s >= 0 and rate_bytes_s > 0, got {delay_s}, {rate_bytes_s}")
        self.target, self.delay_s, self.rate_bytes_s = (host, int(port)), float(delay_s), rate_bytes_s
        self.port = 0  # where to connect instead, once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._open: dict[asyncio.Task, list[asyncio.StreamWriter]] = {}  # connection task -> its two ends

    def __enter__(self) -> "SlowLink":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="slow-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        await asyncio.sleep(0.05)  # connections made just before the stop get accepted, see it and close
        server.close()
        for writers in list(self._open.values()):  # closed ends read as EOF: every pump, then connection, ends
            for w in writers:
                w.close()
        if self._open:
            await asyncio.wait(list(self._open), timeout=5)

    async def _connection(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        self._open[me] = writers = [client_w]
        try:
            if self._stopped.is_set():
                return
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            writers.append(server_w)
            if self._stopped.is_set():
                return
            await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w),
                                 return_exceptions=True)
        finally:
            del self._open[me]
            for w in writers:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, every chunk ``delay_s`` after it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            free_at = 0.0  # when the link has sent what it was given (with a rate)
            while True:
                due, chunk = await queue.get()
                if self.rate_bytes_s:
                    due = max(due, free_at)
                    free_at = due + len(chunk) / self.rate_bytes_s
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        sending = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(1 << 16)
                queue.put_nowait((loop.time() + self.delay_s, chunk))
                if not chunk:
                    break
            await sending
        except OSError:  # a reset on one side: drop the other too, so its pump ends as well
            writer.close()
        finally:
            sending.cancel()
