"""Shared styles' analysed faces kept between jobs (engine/face_memo.py through engine.tasks._style_face):
a house style's image is analysed once, not by every job; a user's own style upload never is kept; a
kept face cannot be changed by the job that reads it."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from emoji3d.errors import NoFaceError
from emoji3d.images import DecodeLimits
from engine.face.analyze import FaceConfig, analyze_face
from engine.face.landmarks import LandmarkDetector
from engine.face_memo import FaceMemo
from engine.tasks import _style_face
from engine.worker import JobContext
from storage import jobs
from storage.blobs import BlobStore
from storage.db import open_database


@pytest.fixture(scope="module")
def detector():
    with LandmarkDetector() as det:
        yield det


@pytest.fixture(scope="module")
def toon_face(repo_root, detector):
    from PIL import Image

    return analyze_face(np.asarray(Image.open(repo_root / "styles" / "toon" / "exemplar.png").convert("RGB")),
                        FaceConfig(), detector)


def test_the_memo_keeps_the_most_recently_used_faces(toon_face):
    """Each digest analysed once while kept; over capacity the least recently used goes."""
    calls: list[str] = []

    def analyse(name):
        def run():
            calls.append(name)
            return toon_face
        return run

    memo = FaceMemo(capacity=2)
    for digest in ("a", "b", "a", "c", "b"):  # c pushes out b (a was used after it); b is analysed again
        assert memo.get_or_analyse(digest, analyse(digest)) is toon_face
    assert calls == ["a", "b", "c", "b"] and len(memo) == 2
    off = FaceMemo(0)
    off.get_or_analyse("a", analyse("a"))
    off.get_or_analyse("a", analyse("a"))
    assert len(off) == 0 and calls[-2:] == ["a", "a"]
    with pytest.raises(ValueError):
        FaceMemo(-1)


def test_a_failed_analysis_is_not_kept(detector):
    memo = FaceMemo()
    blank = np.full((256, 256, 3), 128, np.uint8)
    for _ in range(2):  # analysed (and refused) each time
        with pytest.raises(NoFaceError):
            memo.get_or_analyse("blank", lambda: analyze_face(blank, FaceConfig(), detector))
    assert len(memo) == 0


def test_a_kept_faces_arrays_are_read_only(detector):
    from skimage import data

    face = analyze_face(data.astronaut(), FaceConfig(), detector)
    memo = FaceMemo()
    kept = memo.get_or_analyse("astronaut", lambda: face)
    for array in (kept.ffhq.image, kept.eg3d.image, kept.camera_label, kept.landmarks.points, kept.ffhq_to_eg3d):
        with pytest.raises(ValueError, match="read-only"):
            array[(0,) * array.ndim] = 0


def test_a_house_style_is_analysed_once_and_an_own_upload_every_time(tmp_path, repo_root, detector):
    """Through the engine's own path (``_style_face``: the blob's bytes, decoded and analysed with
    the engine's limits): the house style's later jobs read neither its bytes nor run the detector;
    a user's own style image is read and analysed in every job and never kept."""
    db = open_database(f"sqlite:///{tmp_path / 'faces.db'}")
    blobs = BlobStore(db, tmp_path / "blobs")
    digest = blobs.put_bytes((repo_root / "styles" / "toon" / "exemplar.png").read_bytes())
    reads = []
    read_bytes = blobs.read_bytes
    blobs.read_bytes = lambda d: reads.append(d) or read_bytes(d)
    res = SimpleNamespace(style_faces=FaceMemo(), decode_limits=DecodeLimits(), face_cfg=FaceConfig(),
                          detector=detector)
    jobs.enqueue(db, "make_pack", {}, "job-1")
    job = jobs.claim(db, "engine", 60, kinds=["make_pack"])
    jc = JobContext(job, db, blobs, job.lease_token, threading.Event(), threading.Event(), True)
    try:
        first = _style_face(res, jc, digest, shared=True)
        assert _style_face(res, jc, digest, shared=True) is first and reads == [digest]
        own = [_style_face(res, jc, digest, shared=False) for _ in range(2)]
        assert own[0] is not own[1] and own[0] is not first and reads == [digest] * 3
        assert np.array_equal(own[0].eg3d.image, first.eg3d.image)  # the same analysis
        assert len(res.style_faces) == 1
    finally:
        db.dispose()
