"""Shared inputs of the avatar tests: the slim random-weight networks, and the real face crops of
``skimage.data.astronaut()`` (portrait) and of the bundled 'toon' exemplar."""
from __future__ import annotations

import pytest

@pytest.fixture(scope="module")
def nets():
    from engine.avatar.networks import slim_networks

    return slim_networks(seed=0)


@pytest.fixture(scope="module")
def faces(repo_root):
    import numpy as np
    from PIL import Image
    from skimage import data

    from engine.face.analyze import analyze_face
    from engine.face.landmarks import LandmarkDetector
    from engine.avatar.portrait import portrait_inputs

    exemplar = np.asarray(Image.open(repo_root / "styles" / "toon" / "exemplar.png").convert("RGB"))
    with LandmarkDetector() as det:
        return (portrait_inputs(analyze_face(data.astronaut(), detector=det), "astronaut"),
                portrait_inputs(analyze_face(exemplar, detector=det), "toon"))


@pytest.fixture(scope="session")
def unaligned_faces(repo_root):
    """Portrait and exemplar without the face front end (MediaPipe is not installed on the GPU
    machines): centre crops at the crop sizes, frontal camera. Host syncs do not depend on pixels."""
    from PIL import Image
    from skimage import data

    from bench.inputs import centre_crop_inputs

    return (centre_crop_inputs(Image.fromarray(data.astronaut()), "astronaut"),
            centre_crop_inputs(Image.open(repo_root / "styles" / "toon" / "exemplar.png"), "toon"))
