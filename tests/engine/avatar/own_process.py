"""Running a check in a fresh interpreter: for checks whose compile fails on purpose.

torch 2.11 on Python 3.12 (the GPU machines') leaves dynamo's frame evaluator
installed after a compile fails, and from then on every Python call recurses on
the C stack: about 750 nested calls at most, in that process (the pickle-bomb
tests nest 5,000 deep)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys


def in_a_process_of_its_own(module: str, check: str) -> None:
    """Runs ``module.check()`` in a fresh interpreter; its failure fails the caller."""
    repo = pathlib.Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", f"from {module} import {check}; {check}()"],
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
