"""The latency link of the benches (tests/fakes/slow_link.py): bytes pass intact and in order both
ways, every round trip takes at least twice the delay, a rate limits a transfer to it, and a stop
closes the open connections."""
from __future__ import annotations

import os
import socket
import socketserver
import threading
import time

from tests.fakes.slow_link import SlowLink


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the link closed early"
        out += chunk
    return bytes(out)


def test_round_trips_take_the_delay_twice_and_bytes_pass_intact():
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            with SlowLink("127.0.0.1", echo.server_address[1], delay_s=0.05) as link:
                with socket.create_connection(("127.0.0.1", link.port)) as sock:
                    for _ in range(3):
                        t0 = time.monotonic()
                        sock.sendall(b"ping")
                        assert _recv_exactly(sock, 4) == b"ping"
                        assert time.monotonic() - t0 >= 0.1
                    payload = os.urandom(3 << 20)  # many chunks, delayed, not reordered
                    sender = threading.Thread(target=sock.sendall, args=(payload,))
                    sender.start()
                    assert _recv_exactly(sock, len(payload)) == payload
                    sender.join()
                held = socket.create_connection(("127.0.0.1", link.port))
            held.settimeout(5)
            assert held.recv(1) == b""  # the stopped link closed it
            held.close()
        finally:
            echo.shutdown()


def test_a_rate_makes_a_transfer_take_its_size_over_the_rate():
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            with SlowLink("127.0.0.1", echo.server_address[1], delay_s=0.0, rate_bytes_s=4 << 20) as link:
                with socket.create_connection(("127.0.0.1", link.port)) as sock:
                    payload = os.urandom(1 << 20)  # 0.25 s each way at 4 MB/s, the two ways overlapping
                    t0 = time.monotonic()
                    sender = threading.Thread(target=sock.sendall, args=(payload,))
                    sender.start()
                    assert _recv_exactly(sock, len(payload)) == payload
                    sender.join()
                    assert time.monotonic() - t0 >= 0.2  # the last 64 KB chunk leaves when the rest has gone
        finally:
            echo.shutdown()
