"""Geometry expression scorers on perturbed canonical-face landmarks and a real photo."""
import dataclasses
import pathlib

import numpy as np
import pytest
import torch

from engine.render import expressions

CANONICAL = pathlib.Path(__file__).parent / "data" / "canonical_face_landmarks.txt"

LOWER_LIP = [14, 87, 178, 88, 95, 317, 402, 318, 324, 17, 84, 181, 91, 146, 314, 405, 321, 375, 15, 16, 86, 85, 316, 315]
UPPER_BROWS = [70, 63, 105, 66, 107, 300, 293, 334, 296, 336, 46, 53, 52, 65, 55, 276, 283, 282, 295, 285]


def canonical_image_points(scale=20.0, roll_deg=0.0, offset=(256.0, 256.0)):
    """The canonical face as image pixels (y down), optionally rolled and scaled."""
    v = np.loadtxt(CANONICAL)  # (468, 3) cm, y up
    assert v.shape == (468, 3)
    xy = np.stack([v[:, 0], -v[:, 1]], 1) * scale
    a = np.radians(roll_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return xy @ rot.T + np.asarray(offset)


def test_scores_invariant_to_translation_roll_and_scale():
    a = expressions.geometry_scores(canonical_image_points())
    b = expressions.geometry_scores(canonical_image_points(scale=7.0, roll_deg=25.0, offset=(40.0, 900.0)))
    for k in expressions.GEOMETRY_EXPRESSIONS:
        assert a[k] == pytest.approx(b[k], abs=1e-9)


def test_raised_mouth_corners_score_a_higher_smile():
    base = canonical_image_points(scale=1.0)
    s0 = expressions.geometry_scores(base)["smile"]
    prev = s0
    for lift in (0.2, 0.4, 0.8):  # cm, corners (and their neighbours) moved up
        pts = base.copy()
        for i, w in ((61, 1.0), (291, 1.0), (146, 0.5), (375, 0.5), (185, 0.5), (409, 0.5)):
            pts[i, 1] -= w * lift
        s = expressions.geometry_scores(pts)["smile"]
        assert s > prev
        prev = s
    pts = base.copy()
    pts[[61, 291], 1] += 0.5  # corners down: a frown
    assert expressions.geometry_scores(pts)["smile"] < s0


def test_opened_mouth_and_raised_brows_score_higher_surprise_lowered_brows_anger():
    base = canonical_image_points(scale=1.0)
    s0 = expressions.geometry_scores(base)
    opened = base.copy()
    opened[LOWER_LIP, 1] += 1.0
    s1 = expressions.geometry_scores(opened)
    assert s1["surprise"] > s0["surprise"] + 0.05
    raised = base.copy()
    raised[UPPER_BROWS, 1] -= 0.6
    assert expressions.geometry_scores(raised)["surprise"] > s0["surprise"]
    knit = base.copy()
    knit[UPPER_BROWS, 1] += 0.5
    knit[[107, 55, 65], 0] += 0.4   # image-left inner brow moves towards the centre
    knit[[336, 285, 295], 0] -= 0.4
    sk = expressions.geometry_scores(knit)
    assert sk["anger"] > s0["anger"] and sk["surprise"] < s0["surprise"]
    closed = base.copy()
    closed[[159, 158, 160, 386, 385, 387], 1] = base[[145, 153, 144, 374, 380, 373], 1]
    assert expressions.geometry_scores(closed)["blink"] > s0["blink"]


def test_bad_landmarks_are_refused():
    with pytest.raises(ValueError, match="468"):
        expressions.geometry_scores(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="coincide"):
        expressions.geometry_scores(np.zeros((478, 2)))


def test_astronaut_real_detector_and_perturbation():
    skimage_data = pytest.importorskip("skimage.data")
    from engine.face.landmarks import LandmarkDetector

    img = skimage_data.astronaut()  # 512x512 RGB, Eileen Collins, smiling
    with LandmarkDetector(max_faces=1) as det:
        scores = expressions.score_frames([img, np.zeros((64, 64, 3), np.uint8)], det)
        faces = det.detect(img)
    assert np.isfinite(scores["smile"][0]) and np.isnan(scores["smile"][1])
    xy = faces[0].xy
    s0 = expressions.geometry_scores(xy)
    assert s0["smile"] == pytest.approx(scores["smile"][0])
    iod = np.linalg.norm(xy[263] - xy[33])
    # she smiles: higher than the neutral canonical face (scores are scale/roll invariant, so comparable)
    assert s0["smile"] > expressions.geometry_scores(canonical_image_points())["smile"]
    assert expressions.face_features(xy).corner_lift > 0
    opened = xy.copy()
    opened[LOWER_LIP, 1] += 0.15 * iod
    assert expressions.geometry_scores(opened)["surprise"] > s0["surprise"]
    lifted = xy.copy()
    lifted[[61, 291], 1] -= 0.08 * iod
    assert expressions.geometry_scores(lifted)["smile"] > s0["smile"]


def test_attribute_classifiers_installed_missing_or_broken(tmp_path):
    from engine.nets import progan_classifier
    from tests.engine.nets.progan_reference import install_classifier

    avail, missing = expressions.classifier_scorers(tmp_path)
    assert avail == {} and set(missing) == set(expressions.CLASSIFIER_ATTRIBUTES)
    assert "emoji3d weights fetch attribute_age --convert" in missing["age"]

    install_classifier(tmp_path, "glasses")
    install_classifier(tmp_path, "age")
    (tmp_path / "attribute_gender").mkdir()
    (tmp_path / "attribute_gender" / "config.json").write_text("{not json")
    avail, missing = expressions.classifier_scorers(tmp_path)
    assert sorted(avail) == ["age", "glasses"] and list(missing) == ["gender"]
    assert "unusable" in missing["gender"] and "corrupt config.json" in missing["gender"]

    # renders of any size are box-downsampled / resampled to the classifier's input, scored in groups of 4
    images = torch.tanh(torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    glasses, age = avail["glasses"](images), avail["age"](images)
    assert glasses.shape == (6,) and torch.isfinite(glasses).all()
    net = progan_classifier.ProGANClassifier.from_pretrained(tmp_path / "attribute_glasses")
    with torch.no_grad():
        # a negative logit = glasses
        assert torch.allclose(glasses, -progan_classifier.score_in_groups(net, images), atol=1e-6)
    assert torch.allclose(age, -glasses, atol=1e-6)  # same weights here; age is the "young" logit itself

    class Fixed:
        name = "gender"

        def __call__(self, images):
            return images.mean((1, 2, 3))

    avail, missing = expressions.classifier_scorers(tmp_path, loaders={"gender": lambda folder: Fixed()})
    assert isinstance(avail["gender"], Fixed) and not missing  # a loader may replace the default architecture


def test_renders_are_aligned_like_ffhq_for_the_classifiers(tmp_path):
    """The classifiers read the FFHQ (= CelebA-HQ) framing: our fast warp matches the recipe's crop."""
    from skimage import data as skimage_data

    from engine.render.scorers import face_scorer
    from engine.face.align import FfhqCropConfig, ffhq_anchor_points, ffhq_crop
    from engine.face.landmarks import LandmarkDetector
    from tests.engine.nets.progan_reference import install_classifier

    img = skimage_data.astronaut()
    with LandmarkDetector(max_faces=1) as det:
        face = det.detect(img, max_faces=1)[0]
        images = torch.from_numpy(np.stack([img, np.zeros_like(img)])).permute(0, 3, 1, 2).float() / 127.5 - 1
        aligned, kept = expressions.align_to_ffhq(images, [face, None], 256)
        assert aligned.shape == (1, 3, 256, 256) and kept == [0]
        recipe = ffhq_crop(img, ffhq_anchor_points(face), FfhqCropConfig(output_size=256)).image
        ours = ((aligned[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).numpy()
        mse = float(((ours - recipe.astype(np.float64)) ** 2).mean())
        assert 10 * np.log10(255**2 / mse) > 45  # 49 dB: the filters differ a little, the geometry agrees
        assert expressions.align_to_ffhq(images[1:], [None], 256)[0].shape == (0, 3, 256, 256)
        squashed = dataclasses.replace(face, points=np.zeros_like(face.points))  # degenerate: skipped, not fatal
        assert expressions.align_to_ffhq(images, [squashed, face], 256)[1] == [1]

        install_classifier(tmp_path, "glasses")
        clf = expressions.classifier_scorers(tmp_path)[0]["glasses"]
        scores = face_scorer(det, ["smile"], {"glasses": clf})(images)
    assert np.isfinite(scores["smile"][0]) and np.isnan(scores["smile"][1])
    assert np.isnan(scores["glasses"][1])
    assert np.isclose(scores["glasses"][0], float(clf(aligned)[0]), atol=1e-5)
