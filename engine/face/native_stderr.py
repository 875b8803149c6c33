"""MediaPipe's native log lines, moved from the process's stderr into the Python log.

MediaPipe 0.10.21's C++ graph (absl logging, which nothing here initialises, and
TensorFlow Lite) writes a few lines straight to file descriptor 2 when a graph
first processes an image and when it first meets a face: an XNNPACK notice, an
absl preamble, two "feedback manager" warnings and a NORM_RECT warning about
MediaPipe's own graph configuration. They tell our users and operators nothing,
and a ``emoji3d make`` user reads them as trouble.

:func:`native_stderr_to_log` points fd 2 at a temporary file for the length of
a block, then logs the lines that match :data:`NATIVE_NOISE` at DEBUG (logger
``emoji3d.mediapipe``) and writes every other line back to stderr in its order:
what another thread wrote meanwhile is delayed, not lost. fd 2 belongs to the
whole process, so one lock serialises the blocks. (A crash inside a block loses
what the block wrote: keep the blocks to the calls that print.)
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

log = logging.getLogger("emoji3d.mediapipe")

# The lines MediaPipe 0.10.21 prints on its own (absl's "W0000 <time> <thread> file.cc:line] ..." form,
# its preamble, and TensorFlow Lite's delegate notice).
NATIVE_NOISE = re.compile(
    r"^(?:[IWE]\d{4} [\d:. ]+\s+\d+ \w+\.cc:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)$")

_FD2_LOCK = threading.Lock()  # fd 2 is process-wide: two blocks must not swap it under each other


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Within the block, native writes to stderr are held; after it, MediaPipe's own lines go to the
    DEBUG log and any other line back to stderr."""
    with _FD2_LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            passed_on = []
            for line in held.read().decode("utf-8", errors="replace").splitlines():
                if NATIVE_NOISE.match(line):
                    log.debug("%s", line)
                else:
                    passed_on.append(line + "\n")
            if passed_on:
                sys.stderr.write("".join(passed_on))
                sys.stderr.flush()
