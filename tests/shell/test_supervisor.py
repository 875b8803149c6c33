import os
import signal
import sys
import time

from shell.supervisor import Supervisor

def child(ready_dir) -> list[str]:
    """A child that handles SIGTERM, then announces itself with a file named after its pid."""
    return [sys.executable, "-c",
            "import os, pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            f"pathlib.Path({str(ready_dir)!r}, str(os.getpid())).touch()\n"
            "time.sleep(120)\n"]


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_child_is_restarted_and_stop_terminates_it(tmp_path):
    sup = Supervisor("child", child(tmp_path), backoff_seconds=0.1, grace_seconds=10)
    sup.start()
    try:
        assert wait_for(lambda: sup.alive() and (tmp_path / str(sup.pid)).exists())
        first = sup.pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: sup.alive() and sup.pid != first and (tmp_path / str(sup.pid)).exists())
        assert sup.restarts == 1 and len(sup.pids) == 2
    finally:
        code = sup.stop()
    assert code == 0  # SIGTERM handled: a clean exit, not a kill
    assert not sup.alive()


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    stubborn = [sys.executable, "-c",
                "import os, pathlib, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                f"pathlib.Path({str(tmp_path)!r}, str(os.getpid())).touch()\ntime.sleep(120)\n"]
    sup = Supervisor("stubborn", stubborn, backoff_seconds=0.1, grace_seconds=1.0)
    sup.start()
    assert wait_for(lambda: sup.alive() and (tmp_path / str(sup.pid)).exists())  # its handler is installed
    code = sup.stop()
    assert code == -signal.SIGKILL


def test_a_child_exiting_with_a_fatal_code_is_not_restarted_and_says_why(tmp_path):
    misconfigured = [sys.executable, "-c",
                     "import sys\nprint('loading...', file=sys.stderr)\n"
                     "print('A model file is missing or damaged: eg3d_ffhq not installed', file=sys.stderr)\n"
                     "sys.exit(2)\n"]
    reasons = []
    sup = Supervisor("engine", misconfigured, backoff_seconds=0.05, grace_seconds=1.0, on_fatal=reasons.append)
    sup.start()
    assert wait_for(lambda: reasons)
    time.sleep(0.5)  # time enough for several restarts, were there any
    assert len(sup.pids) == 1 and sup.restarts == 0
    assert reasons == ["A model file is missing or damaged: eg3d_ffhq not installed"] == [sup.fatal_reason]
    sup.stop()
