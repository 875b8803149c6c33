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


@pytest.fixture(scope="session")
def unaligned_faces(repo_root):
    """Portrait and exemplar without the face front end (MediaPipe is not installed on the GPU
    machines): centre crops at the crop sizes, frontal camera. Host syncs do not depend on pixels."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    from engine.avatar.pipeline import PortraitInputs
    from engine.avatar.portrait import to_tensor
    from engine.nets.camera import orbit_label

    def crops(img: Image.Image, key: str) -> "PortraitInputs":
        side = min(img.size)
        square = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                           (img.width + side) // 2, (img.height + side) // 2))
        return PortraitInputs(image_2d=to_tensor(np.asarray(square.resize((1024, 1024)))),
                              image_3d=to_tensor(np.asarray(square.resize((512, 512)))),
                              camera=orbit_label(torch.zeros(1), torch.zeros(1)).float(),
                              crop2d_to_crop3d=torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64),
                              key=key)

    exemplar = Image.open(repo_root / "styles" / "toon" / "exemplar.png").convert("RGB")
    return crops(Image.fromarray(data.astronaut()), "astronaut"), crops(exemplar, "toon")
