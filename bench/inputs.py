"""Sample inputs for the GPU benches and tests: portraits without the face front end.

MediaPipe is not installed on the GPU machines, so these inputs skip face
analysis: an image's centre square resized to the crop sizes, the frontal
camera, and the fixed FFHQ-to-EG3D crop map of a centred face. The
arithmetic of an optimisation step does not depend on the pixels. Images are
[1, 3, S, S] in [-1, 1].
"""
from __future__ import annotations

import pathlib

import numpy as np
import torch


def centre_crop_inputs(img, key: str):
    """PortraitInputs from a PIL image without the face front end (MediaPipe is not installed on the
    GPU machines): its centre square resized to the crop sizes, the frontal camera. The arithmetic of
    a step does not depend on the pixels."""
    from PIL import Image

    from engine.avatar.pipeline import PortraitInputs
    from engine.avatar.portrait import to_tensor
    from engine.avatar.warm_up import CENTRED_CROP2D_TO_CROP3D
    from engine.nets.camera import orbit_label

    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return PortraitInputs(
        image_2d=to_tensor(np.asarray(square.resize((1024, 1024), Image.LANCZOS))),  # [1, 3, 1024, 1024]
        image_3d=to_tensor(np.asarray(square.resize((512, 512), Image.LANCZOS))),    # [1, 3, 512, 512]
        camera=orbit_label(torch.zeros(1), torch.zeros(1)).float(),                    # [1, 25] frontal
        crop2d_to_crop3d=CENTRED_CROP2D_TO_CROP3D.clone(), key=key)


def sample_inputs(repo: pathlib.Path):
    """(portrait, exemplar) PortraitInputs from the bundled images (:func:`centre_crop_inputs`)."""
    from PIL import Image

    return (centre_crop_inputs(Image.open(repo / "samples" / "selfie.jpg"), "bench-selfie"),
            centre_crop_inputs(Image.open(repo / "styles" / "toon" / "exemplar.png"), "bench-toon"))
