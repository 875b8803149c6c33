"""Shared face fixtures: one MediaPipe detector and one astronaut analysis per test session."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from engine.face.analyze import FaceResult, analyze_face
from engine.face.landmarks import LandmarkDetector


@pytest.fixture(scope="session")
def detector():
    det = LandmarkDetector(max_faces=4)
    yield det
    det.close()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())  # (512, 512, 3) uint8


@pytest.fixture(scope="session")
def astronaut_result(astronaut, detector) -> FaceResult:
    return analyze_face(astronaut, detector=detector)


@pytest.fixture(scope="session")
def artefact_dir(tmp_path_factory) -> pathlib.Path:
    """Where tests leave images for a person to look at ($EMOJI3D_TEST_ARTEFACTS or a pytest temp dir)."""
    root = os.environ.get("EMOJI3D_TEST_ARTEFACTS")
    path = pathlib.Path(root) / "face" if root else tmp_path_factory.mktemp("face_artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
