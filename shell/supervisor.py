"""Keep a child process alive: start it, restart it when it dies, stop it cleanly.

``emoji3d serve`` runs the engine as a separate process (a CUDA crash or an
out-of-memory kill must not take the chat front ends down) and uses this
class to supervise it.

- A child that exits while we are not stopping is restarted after a backoff
  that doubles with each quick death (capped), and resets once the child has
  stayed up for ``stable_seconds``.
- ``stop()`` sends SIGTERM (the engine then finishes or releases its job, so
  nothing is lost), waits ``grace_seconds``, then SIGKILLs.
- Restarts are counted and logged; ``pids`` lists every child started.
- A child that exits with a code in ``fatal_codes`` (2: the ``emoji3d``
  convention for bad configuration, e.g. weights that are not installed) is not
  restarted, since it would fail the same way for ever: supervision ends,
  ``fatal_reason`` holds the child's last line on stderr, and ``on_fatal`` is
  called with it. The child's stderr is passed through to ours as it comes.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

log = logging.getLogger("shell.supervisor")


class Supervisor:
    def __init__(self, name: str, argv: Sequence[str], *, backoff_seconds: float = 5.0,
                 max_backoff_seconds: float = 300.0, stable_seconds: float = 60.0,
                 grace_seconds: float = 30.0, env: dict[str, str] | None = None,
                 fatal_codes: tuple[int, ...] = (2,), on_fatal: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.stable_seconds = stable_seconds
        self.grace_seconds = grace_seconds
        self.env = env
        self.fatal_codes = fatal_codes
        self.on_fatal = on_fatal
        self.fatal_reason: str | None = None
        self._last_stderr_line = ""
        self.pids: list[int] = []
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv, env=self.env, stderr=subprocess.PIPE)
        self.pids.append(proc.pid)
        threading.Thread(target=self._pass_stderr, args=(proc,), name=f"{self.name}-stderr", daemon=True).start()
        log.info("%s started (pid %d)", self.name, proc.pid)
        return proc

    def _pass_stderr(self, proc: subprocess.Popen) -> None:
        """Copy the child's stderr to ours, remembering its last non-empty line."""
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._last_stderr_line = line

    def _loop(self) -> None:
        delay = self.backoff_seconds
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = self._spawn()
            started = time.monotonic()
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            if code in self.fatal_codes:
                time.sleep(0.2)  # let the stderr reader take the child's last words
                self.fatal_reason = self._last_stderr_line or f"{self.name} exited with code {code}"
                log.error("%s cannot run (exit code %s): %s; not restarting it", self.name, code, self.fatal_reason)
                if self.on_fatal is not None:
                    self.on_fatal(self.fatal_reason)
                return
            uptime = time.monotonic() - started
            if uptime >= self.stable_seconds:
                delay = self.backoff_seconds
            log.warning("%s exited with code %s after %.1f s; restarting in %.1f s",
                        self.name, code, uptime, delay)
            self.restarts += 1
            if self._stopping.wait(delay):
                return
            delay = min(self.max_backoff_seconds, max(delay * 2, 0.1))

    def stop(self) -> int | None:
        """Stop supervising and terminate the child. Returns its exit code."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        code = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(self.grace_seconds)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it", self.name, self.grace_seconds)
                proc.kill()
                code = proc.wait()
        elif proc is not None:
            code = proc.returncode
        if self._thread is not None:
            self._thread.join(timeout=5)
        return code

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def kill_hard(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
