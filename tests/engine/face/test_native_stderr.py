"""MediaPipe's native log lines go to the DEBUG log instead of the process's stderr, and nothing else
written to stderr meanwhile is lost."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from engine.face.native_stderr import native_stderr_to_log
from tests.conftest import REPO

MEDIAPIPE_LINES = (
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "W0000 00:00:1796455127.274659   21615 inference_feedback_manager.cc:114] Feedback manager requires a model "
    "with a single signature inference. Disabling support for feedback tensors.",
)


def test_the_blocks_native_lines_go_to_the_debug_log_and_other_lines_back_to_stderr(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="emoji3d.mediapipe"):
        with native_stderr_to_log():
            os.write(2, (MEDIAPIPE_LINES[0] + "\n").encode())
            os.write(2, b"someone else's line, written meanwhile\n")
            os.write(2, "\n".join(MEDIAPIPE_LINES[1:]).encode() + b"\n")
        os.write(2, b"after the block\n")
    err = capfd.readouterr().err
    assert err == "someone else's line, written meanwhile\nafter the block\n"
    assert [r.getMessage() for r in caplog.records if r.name == "emoji3d.mediapipe"] == list(MEDIAPIPE_LINES)


def test_a_block_that_raises_gives_stderr_back(capfd):
    try:
        with native_stderr_to_log():
            os.write(2, b"the error's context\n")
            raise ValueError("inside")
    except ValueError:
        pass
    os.write(2, b"later\n")
    assert capfd.readouterr().err == "the error's context\nlater\n"


def test_the_landmark_detector_prints_nothing_of_its_own():
    """Real MediaPipe in a fresh process (its notices come once per process and graph): two detectors,
    a blank image and a face each; stderr holds only what the script itself writes."""
    script = (
        "import sys, numpy as np\n"
        "from skimage import data\n"
        "from engine.face.landmarks import LandmarkDetector\n"
        "for _ in range(2):\n"
        "    with LandmarkDetector() as d:\n"
        "        assert d.detect(np.zeros((128, 128, 3), np.uint8)) == []\n"
        "        assert len(d.detect(data.astronaut())) == 1\n"
        "print('done', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "done\n"
