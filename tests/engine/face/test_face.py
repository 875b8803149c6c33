"""analyze_face on real photos: acceptance on the astronaut, refusals with exact keys, the CLI."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from emoji3d.errors import EyesClosedError, FaceTooSmallError, HeadTurnedTooFarError, NoFaceError
from emoji3d.texts import message
from engine.face.analyze import WARNING_SEVERAL_FACES, FaceConfig, analyze_face, check_eyes_open, result_to_json
from engine.face.landmarks import EYE_LEFT_CONTOUR, EYE_RIGHT_CONTOUR, FaceLandmarks, detect_landmarks


def test_astronaut_acceptance(astronaut_result, reference_fixtures, artefact_dir):
    r = astronaut_result
    assert r.landmarks.points.shape == (478, 3) and r.n_faces == 1 and r.warnings == ()
    assert r.ffhq.image.shape == (1024, 1024, 3) and r.e4e_image.shape == (256, 256, 3)
    assert r.eg3d.image.shape == (512, 512, 3)
    assert abs(r.pose.yaw_degrees) < 20 and abs(r.pose.pitch_degrees) < 20
    assert r.camera_label.shape == (25,) and np.isclose(np.linalg.norm(r.camera_label[[3, 7, 11]]), 2.7)
    assert min(r.eye_aspect_ratios) > 0.2  # open eyes
    # the five points agree with the ones the official fixture was made from (same MediaPipe)
    from safetensors.numpy import load_file

    ref = load_file(str(reference_fixtures / "eg3d_crop" / "io.safetensors"))["astronaut__five_points"]
    assert np.abs(r.landmarks.five_points() - ref).max() < 0.5
    doc = json.loads(json.dumps(result_to_json(r)))
    assert len(doc["camera_label"]) == 25 and len(doc["landmarks_px"]) == 478
    (artefact_dir / "astronaut_face.json").write_text(json.dumps(doc))


def test_landmarks_from_a_worker_thread(astronaut, detector, astronaut_result):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("faces", detector.detect(astronaut)))
    th.start()
    th.join()
    assert np.allclose(out["faces"][0].points, astronaut_result.landmarks.points)
    own = detect_landmarks(astronaut, max_faces=1)  # a detector made for the call
    assert np.abs(own[0].points - astronaut_result.landmarks.points).max() < 1e-3


@pytest.mark.parametrize("kind", ["blank", "landscape"])
def test_no_face(kind, detector):
    skdata = pytest.importorskip("skimage.data")
    rgb = np.full((480, 640, 3), 128, np.uint8) if kind == "blank" else np.ascontiguousarray(skdata.coffee())
    with pytest.raises(NoFaceError) as e:
        analyze_face(rgb, detector=detector)
    assert e.value.key == "no_face"


def test_two_faces_uses_largest_and_warns(astronaut, detector, astronaut_result):
    small = np.asarray(Image.fromarray(astronaut).resize((320, 320), Image.LANCZOS))
    canvas = np.full((512, 900, 3), 230, np.uint8)
    canvas[:, :512] = astronaut
    canvas[100:420, 560:880] = small
    r = analyze_face(canvas, FaceConfig(min_face_px=64), detector)
    assert r.n_faces == 2
    assert [(w.key, w.params) for w in r.warnings] == [(WARNING_SEVERAL_FACES, {"count": 2})]
    d = np.linalg.norm(r.landmarks.xy - astronaut_result.landmarks.xy, axis=1)
    assert d.mean() < 1.0 and d.max() < 5.0  # the big one (the small one is hundreds of px away)
    assert "2 faces" in message(r.warnings[0].key, **r.warnings[0].params)


def test_small_face_found_by_window_search(astronaut, detector, astronaut_result):
    canvas = np.full((1800, 2400, 3), 200, np.uint8)
    canvas[1100:1612, 300:812] = astronaut  # about 4% of the photo's width: the detector alone misses it
    assert detector.detect(canvas) == []
    r = analyze_face(canvas, detector=detector)
    d = np.linalg.norm(r.landmarks.xy - (astronaut_result.landmarks.xy + [300, 1100]), axis=1)
    assert d.mean() < 1.0 and d.max() < 4.0  # same face; MediaPipe sees a different surrounding


def test_tiny_face(astronaut, detector):
    tiny = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))
    with pytest.raises(FaceTooSmallError) as e:
        analyze_face(tiny, detector=detector)
    assert e.value.key == "face_too_small"
    assert 70 < e.value.params["face_px"] < 110 and e.value.params["min_face_px"] == 128
    assert message(e.value.key, **e.value.params) != message("internal")


def test_head_turned_limit_is_configurable(astronaut, detector, astronaut_result):
    pitch = abs(astronaut_result.pose.pitch_degrees)
    with pytest.raises(HeadTurnedTooFarError) as e:
        analyze_face(astronaut, FaceConfig(max_pitch_degrees=pitch - 1.0), detector)
    assert e.value.key == "head_turned_too_far" and abs(e.value.params["angle"] - pitch) < 0.1
    assert "°" in message(e.value.key, **e.value.params)


def test_eyes_closed_from_mesh(astronaut_result):
    face = astronaut_result.landmarks
    check_eyes_open(face, 0.12)  # the astronaut's eyes are open
    pts = face.points.copy()
    for c in (EYE_LEFT_CONTOUR, EYE_RIGHT_CONTOUR):
        # close the lids: upper lid points onto the lower ones (contour order: corner, 2 upper, corner, 2 lower)
        pts[c[1]] = 0.8 * pts[c[5]] + 0.2 * pts[c[1]]
        pts[c[2]] = 0.8 * pts[c[4]] + 0.2 * pts[c[2]]
    closed = FaceLandmarks(points=pts, image_size=face.image_size)
    with pytest.raises(EyesClosedError) as e:
        check_eyes_open(closed, 0.12)
    assert e.value.key == "eyes_closed"
    check_eyes_open(closed, None)  # disabled


def test_cli_writes_outputs(tmp_path, astronaut):
    from shell.commands.face import main

    photo = tmp_path / "selfie.jpg"
    Image.fromarray(astronaut).save(photo, quality=95)
    out = tmp_path / "out"
    assert main([str(photo), "--out", str(out)]) == 0
    for name in ("ffhq_1024.png", "e4e_256.png", "eg3d_512.png", "landmarks.png", "face.json"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "face.json").read_text())
    assert set(doc) >= {"landmarks_px", "pose", "camera_label", "crops"}
    assert Image.open(out / "eg3d_512.png").size == (512, 512)


def test_cli_bad_input_friendly_exit_2(tmp_path, capsys):
    from shell.commands.face import main

    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are not pixels" * 20)
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert message("not_an_image") in capsys.readouterr().err
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 300), (128, 128, 128)).save(blank)
    assert main([str(blank), "--out", str(tmp_path / "o")]) == 2
    assert message("no_face") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_face_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, engine.face.analyze, shell.commands.face, engine.checks.face_geometry, engine.face.pose, engine.face.align; "
        "print(int('torch' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "0"


def test_check_face_agrees_with_analyze(astronaut, detector, astronaut_result):
    from engine.face.analyze import check_face

    c = check_face(astronaut, detector=detector)
    assert np.array_equal(c.camera_label, astronaut_result.camera_label)
    assert c.face_px == astronaut_result.face_px and c.n_faces == 1


def test_eyes_closed_detected_on_painted_photo(astronaut, detector, astronaut_result):
    """The astronaut with both eyes painted over in skin colour plus a lid line: the real detector
    follows the paint and the eye aspect ratio collapses (about 0.04-0.09 vs 0.32 open)."""
    from PIL import ImageDraw

    from engine.face.analyze import check_face

    img = Image.fromarray(astronaut.copy())
    draw = ImageDraw.Draw(img)
    for contour in (EYE_LEFT_CONTOUR, EYE_RIGHT_CONTOUR):
        p = astronaut_result.landmarks.xy[list(contour)]
        (x0, y0), (x1, y1) = p.min(0) - [2, 3], p.max(0) + [2, 2]
        skin = tuple(int(v) for v in astronaut[int(y1) + 6, int((x0 + x1) / 2)])
        draw.rectangle((x0, y0, x1, y1), fill=skin)
        draw.line((x0 + 1, (y0 + y1) / 2 + 1, (x0 + x1) / 2, y1 - 1, x1 - 1, (y0 + y1) / 2 + 1), fill=(60, 40, 35), width=2)
    with pytest.raises(EyesClosedError) as e:
        check_face(np.asarray(img), detector=detector)
    assert e.value.key == "eyes_closed"
