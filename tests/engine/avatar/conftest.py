"""Shared inputs of the avatar tests: the real face crops of ``skimage.data.astronaut()``
(portrait) and of the bundled 'toon' exemplar."""
from __future__ import annotations

import pytest

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
