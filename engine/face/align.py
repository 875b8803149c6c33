"""Face crops for the two generators, and the similarity between them.

- **FFHQ crop** (StyleGAN2 / e4e branch): the FFHQ alignment recipe (NVlabs
  ffhq-dataset ``recreate_aligned_images``, as e4e uses it): an oriented square
  from the eye centres and the mouth corners, shrink the photo when the square
  is much larger than the output, crop with a border, pad with a blurred
  reflection that fades to the median colour, then sample the square
  (bilinear at ``transform_size``) and resize to ``output_size`` (Lanczos).
  By default (``FfhqCropConfig.supersample``) a square larger than twice the
  output is not sampled at 4096: the cropped region is shrunk (Lanczos) so
  that the square spans 2 x ``output_size``, sampled there and resized;
  a 12 MP selfie's crop costs a fraction of the recipe's (``bench/face.py``).
  When the square is enlarged anyway, it is sampled at ``output_size``
  directly (``adaptive_transform``; see ``FfhqCropConfig``).
  Eye centres are the means of the six eye-contour points (the dlib-68 eye
  points the recipe averages), mouth corners are mesh points 61 and 291.
- **EG3D crop** (3D branch): EG3D's in-the-wild preprocessing
  (``crop_images_in_the_wild.py`` with Deep3DFaceRecon's ``align_img``):
  five points flipped to y-up, POS least-squares fit to the 5-point 3D
  template, ``s' = rescale_factor / s`` (300), the photo resized by ``s'``
  (``int(w*s')``, ``int(h*s')``, Pillow bicubic) and cropped to 1024 at the
  recipe's integer offsets, then the centre 700 resized to 512 (Lanczos).
  Only the window that is actually used is resampled (Pillow's ``box``), with
  the same filter positions as a full resize, so a 40 MP photo is never
  enlarged as a whole; area outside the photo is black, as in the recipe.

Conventions
- Images are RGB ``uint8`` (H, W, 3). Points are (x, y) pixels, x right,
  y down, with **pixel centres at integer coordinates** (pixel (0, 0) covers
  [-0.5, 0.5]^2), the convention of numpy indexing.
- A crop's ``matrix`` is a 2x3 float64 affine ``A`` mapping source-photo points
  to crop points: ``[u, v] = A @ [x, y, 1]``. It describes the pixels as
  actually resampled (resize scale ``int(w*s')/w`` etc.), not an idealisation.
  The FFHQ matrix is a similarity; the EG3D matrix is a scale + translation with
  x and y scales equal up to the integer rounding of the resized size
  (relative difference < 1/w).
- :func:`crop_to_crop` composes two such matrices into the map from one
  crop's pixels to the other's (e.g. FFHQ 1024 → EG3D 512, needed by Eq. 5);
  :func:`rescale_output` / :func:`rescale_input` adapt a matrix to another
  crop size (e.g. 1024 → 256 for e4e, 512 → 128 for the neural render);
  :func:`affine_grid_theta` converts a matrix into the normalised ``theta``
  of ``torch.nn.functional.affine_grid(..., align_corners=False)``.

No torch here (numpy, scipy, Pillow only).
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.face.landmarks import EYE_LEFT_CONTOUR, EYE_RIGHT_CONTOUR, MOUTH_LEFT, MOUTH_RIGHT, FaceLandmarks, check_rgb

# Standard 5-point 3D template (left eye, right eye, nose tip, left and right mouth corner as
# seen in the image; y up), from Deep3DFaceRecon BFM/similarity_Lm3D_all.mat as EG3D loads it.
# Same numbers as shared/data/deep3dface_5point_template.txt (a test checks they agree).
DEEP3D_5POINT_TEMPLATE = np.array(
    [
        [-0.31148657, 0.29036078, 0.13377953],
        [0.30979887, 0.28972036, 0.13179526],
        [0.00325350, -0.04617932, 0.55244243],
        [-0.25216928, -0.38133916, 0.22405732],
        [0.24846619, -0.38128236, 0.22235769],
    ],
    dtype=np.float64,
)  # (5, 3)


# ---------------------------------------------------------------- affine helpers


def _h(a: np.ndarray) -> np.ndarray:
    """2x3 -> 3x3 homogeneous."""
    return np.vstack([np.asarray(a, dtype=np.float64), [0.0, 0.0, 1.0]])


def compose(second: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The 2x3 affine applying ``first`` then ``second``."""
    return (_h(second) @ _h(first))[:2]


def invert(a: np.ndarray) -> np.ndarray:
    return np.linalg.inv(_h(a))[:2]


def apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, 2) points with a 2x3 affine."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ np.asarray(a)[:, :2].T + np.asarray(a)[:, 2]


def resize_matrix(src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Pixel map of a resize from (w, h) to (W, H) with pixel-centre alignment."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def translate_matrix(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def rescale_output(a: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """``a`` maps into a square crop of ``from_size``; return the map into the same crop resized to ``to_size``."""
    return compose(resize_matrix((from_size, from_size), (to_size, to_size)), a)


def rescale_input(a: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """``a`` maps from a square crop of ``from_size``; return the map from that crop resized to ``to_size``."""
    return compose(a, resize_matrix((to_size, to_size), (from_size, from_size)))


def crop_to_crop(src_matrix: np.ndarray, dst_matrix: np.ndarray) -> np.ndarray:
    """Map from the pixels of crop ``src`` to those of crop ``dst``, both given as photo→crop matrices."""
    return compose(dst_matrix, invert(src_matrix))


def affine_grid_theta(a: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """``theta`` (2x3) for ``affine_grid(theta, [N, C, H_dst, W_dst], align_corners=False)`` +
    ``grid_sample(src)`` that warps an image of ``src_size`` (W, H) into ``dst_size`` (W, H) where ``a``
    maps src pixels to dst pixels. Normalised coords: x_n = (2 x + 1) / W - 1."""

    def norm(size: tuple[int, int]) -> np.ndarray:  # pixels -> normalised
        w, h = size
        return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0]])

    return compose(norm(src_size), compose(invert(a), invert(norm(dst_size))))


def is_similarity(a: np.ndarray, rtol: float = 1e-6) -> bool:
    m = np.asarray(a)[:, :2]
    return bool(np.allclose(m[0, 0], m[1, 1], rtol=rtol, atol=rtol) and np.allclose(m[0, 1], -m[1, 0], rtol=rtol, atol=rtol))


# ---------------------------------------------------------------- FFHQ crop


@dataclass(frozen=True)
class FfhqCropConfig:
    output_size: int = 1024
    transform_size: int = 4096  # the recipe samples at 4096 then resizes (FFHQ); lower is faster
    enable_padding: bool = True
    # Sample directly at output_size when the square is enlarged (its side in the working image is at
    # most output_size): the 4096 detour only antialiases a reduction. Measured on the astronaut
    # (enlarged 5.9x): 57 dB PSNR against the 4096 path, 30x faster.
    adaptive_transform: bool = True
    # Sample a reduced square at most supersample x output_size instead of transform_size, shrinking
    # only the cropped region first (Lanczos) when the square is larger than that; this replaces the
    # recipe's whole-photo integer shrink. 0 = the recipe as it is. Measured by bench/face.py on the
    # astronaut upscaled to 12 MP: PSNR against the recipe's crop stated there, about 4x faster.
    supersample: float = 2.0

    def __post_init__(self) -> None:
        if self.output_size < 8 or self.transform_size < self.output_size:
            raise ValueError(f"need 8 <= output_size <= transform_size, got {self.output_size}, {self.transform_size}")
        if self.supersample != 0 and self.supersample < 1:
            raise ValueError(f"supersample must be 0 (off) or >= 1, got {self.supersample}")


@dataclass(frozen=True)
class FfhqCrop:
    image: np.ndarray  # (S, S, 3) uint8
    matrix: np.ndarray  # (2, 3) photo -> crop pixels
    quad: np.ndarray  # (4, 2) corners of the square in the photo: UL, LL, LR, UR
    qsize: float  # side of the square in photo pixels


def ffhq_anchor_points(face: FaceLandmarks) -> np.ndarray:
    """(4, 2): image-left eye centre, image-right eye centre, image-left and image-right mouth corner."""
    xy = face.xy
    return np.stack(
        [xy[list(EYE_LEFT_CONTOUR)].mean(0), xy[list(EYE_RIGHT_CONTOUR)].mean(0), xy[MOUTH_LEFT], xy[MOUTH_RIGHT]]
    )


def ffhq_square_side(anchors: np.ndarray) -> float:
    """Side (pixels) of the recipe's square for (eye_l, eye_r, mouth_l, mouth_r), however small."""
    eye_l, eye_r, mouth_l, mouth_r = np.asarray(anchors, dtype=np.float64)
    eye_to_mouth = 0.5 * (mouth_l + mouth_r) - 0.5 * (eye_l + eye_r)
    return 2.0 * max(math.hypot(*(eye_r - eye_l)) * 2.0, math.hypot(*eye_to_mouth) * 1.8)


def ffhq_quad(anchors: np.ndarray) -> tuple[np.ndarray, float]:
    """The recipe's oriented square from (eye_l, eye_r, mouth_l, mouth_r): corners UL, LL, LR, UR and its side."""
    anchors = np.asarray(anchors, dtype=np.float64)
    if anchors.shape != (4, 2) or not np.all(np.isfinite(anchors)):
        raise ValueError(f"expected 4 finite (x, y) anchor points, got {anchors.shape}")
    eye_l, eye_r, mouth_l, mouth_r = anchors
    eye_avg = 0.5 * (eye_l + eye_r)
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = 0.5 * (mouth_l + mouth_r) - eye_avg
    # x axis of the square: the eye line, bent by the perpendicular of the eye-mouth line
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = math.hypot(*x)
    if norm < 1e-6:
        raise ValueError("degenerate face anchors (eyes and mouth coincide)")
    x = x / norm * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(math.hypot(*x) * 2.0)
    if qsize < 8.0:
        raise ValueError(f"face anchors span only {qsize:.1f} px; too small to crop")
    return quad, qsize


def ffhq_crop(rgb: np.ndarray, anchors: np.ndarray, cfg: FfhqCropConfig = FfhqCropConfig()) -> FfhqCrop:
    """The FFHQ-aligned crop of ``rgb`` from the 4 anchors of :func:`ffhq_anchor_points`."""
    check_rgb(rgb, min_side=1)
    quad0, qsize0 = ffhq_quad(anchors)
    quad, qsize = quad0.copy(), qsize0
    img = Image.fromarray(rgb)
    photo_to_work = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # photo -> working image pixels

    # Shrink a large photo first (the recipe's integer factor; with supersample, the crop is shrunk below).
    shrink = int(math.floor(qsize / cfg.output_size * 0.5))
    if shrink > 1 and not cfg.supersample:
        rsize = (int(round(img.size[0] / shrink)), int(round(img.size[1] / shrink)))
        photo_to_work = compose(resize_matrix(img.size, rsize), photo_to_work)
        img = img.resize(rsize, Image.LANCZOS)
        quad = apply(photo_to_work, quad0)
        qsize = qsize0 * rsize[0] / rgb.shape[1]

    # Crop to the square plus a border.
    border = max(int(round(qsize * 0.1)), 3)
    lo = np.floor(quad.min(0)).astype(int)
    hi = np.ceil(quad.max(0)).astype(int)
    box = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        img = img.crop(box)
        quad = quad - np.array(box[:2], dtype=np.float64)
        photo_to_work = compose(translate_matrix(-box[0], -box[1]), photo_to_work)

    # Shrink the cropped region so that the square spans supersample x output_size (antialiased).
    reduced = cfg.output_size * cfg.supersample
    if cfg.supersample and qsize > reduced:
        k = reduced / qsize
        rsize = (max(1, int(round(img.size[0] * k))), max(1, int(round(img.size[1] * k))))
        to_small = resize_matrix(img.size, rsize)
        img = img.resize(rsize, Image.LANCZOS)
        quad = apply(to_small, quad)
        qsize = float(math.hypot(*(quad[3] - quad[0])))
        photo_to_work = compose(to_small, photo_to_work)
        border = max(int(round(qsize * 0.1)), 3)

    # Pad with a blurred reflection where the square leaves the photo.
    lo = np.floor(quad.min(0)).astype(int)
    hi = np.ceil(quad.max(0)).astype(int)
    pad = [max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)]
    if cfg.enable_padding and max(pad) > border - 4:
        pad = [max(p, int(round(qsize * 0.3))) for p in pad]
        img = Image.fromarray(_blurred_reflection_pad(np.asarray(img), pad, qsize))
        quad = quad + np.array(pad[:2], dtype=np.float64)
        photo_to_work = compose(translate_matrix(pad[0], pad[1]), photo_to_work)

    # Sample the square: output pixel centre (i + 0.5) / T along UL->UR and UL->LL.
    t = cfg.transform_size
    if cfg.supersample:
        t = min(t, int(math.ceil(reduced)))
    if cfg.adaptive_transform and qsize <= cfg.output_size:
        t = cfg.output_size
    img = img.transform((t, t), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    if cfg.output_size < t:
        img = img.resize((cfg.output_size, cfg.output_size), Image.LANCZOS)

    # work -> crop: p = UL + E [(i + 0.5)/T, (j + 0.5)/T]; after the resize, o = S E^-1 (p - UL) - 0.5.
    e = np.stack([quad[3] - quad[0], quad[1] - quad[0]], axis=1)  # columns: crop x and y axes in work pixels
    lin = cfg.output_size * np.linalg.inv(e)
    work_to_crop = np.hstack([lin, (-lin @ quad[0] - 0.5)[:, None]])
    out = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (S, S, 3)
    return FfhqCrop(image=out, matrix=compose(work_to_crop, photo_to_work), quad=quad0, qsize=qsize0)


def _blurred_reflection_pad(arr: np.ndarray, pad: list[int], qsize: float) -> np.ndarray:
    """The recipe's padding: reflect, blend towards a Gaussian blur and the median colour near the edges."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = pad  # each >= 1 (the caller raises them to 0.3 * qsize, qsize >= 8)
    img = np.pad(arr.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")  # (H', W', 3)
    h, w, _ = img.shape
    yy, xx = np.ogrid[:h, :w]
    xx = xx.astype(np.float32)[:, :, None]  # (1, W', 1)
    yy = yy.astype(np.float32)[:, :, None]  # (H', 1, 1)
    fx = np.minimum(xx / left, (w - 1 - xx) / right)
    fy = np.minimum(yy / top, (h - 1 - yy) / bottom)
    mask = np.maximum(1.0 - fx, 1.0 - fy)  # (H', W', 1): 1 at the outer edge, <= 0 inside the photo
    blur = qsize * 0.02
    img += (gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- EG3D crop


@dataclass(frozen=True)
class Eg3dCropConfig:
    target_size: int = 1024  # align_img target
    rescale_factor: float = 300.0
    center_crop_size: int = 700
    output_size: int = 512


@dataclass(frozen=True)
class Eg3dCrop:
    image: np.ndarray  # (S, S, 3) uint8
    matrix: np.ndarray  # (2, 3) photo -> crop pixels
    trans_params: np.ndarray  # (5,) align_img's [w0, h0, s', tx, ty] (t in y-up photo pixels)


def load_5point_template(path: str | pathlib.Path) -> np.ndarray:
    """Read a 5x3 template file (``x y z`` per row, ``#`` comments)."""
    t = np.loadtxt(path, comments="#", dtype=np.float64)
    if t.shape != (5, 3):
        raise ValueError(f"{path}: expected a 5x3 template, got {t.shape}")
    return t


def pos_fit(points_yup: np.ndarray, template: np.ndarray = DEEP3D_5POINT_TEMPLATE) -> tuple[np.ndarray, float]:
    """Deep3DFaceRecon POS: least-squares affine camera ``p = [R1; R2] X + t`` from 3D template to 2D
    points (y up). Returns (t (2,), s) with ``s`` the mean norm of the two rows."""
    p = np.asarray(points_yup, dtype=np.float64)
    x = np.asarray(template, dtype=np.float64)
    n = p.shape[0]
    if p.shape != (n, 2) or x.shape != (n, 3) or n < 4:
        raise ValueError(f"pos_fit needs matching (N, 2) points and (N, 3) template, N >= 4; got {p.shape}, {x.shape}")
    a = np.zeros((2 * n, 8))  # rows alternate x, y equations
    a[0::2, 0:3] = x
    a[0::2, 3] = 1.0
    a[1::2, 4:7] = x
    a[1::2, 7] = 1.0
    b = p.reshape(2 * n)  # x0, y0, x1, y1, ...
    k = np.linalg.lstsq(a, b, rcond=None)[0]
    s = 0.5 * (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7]))
    if not s > 0:
        raise ValueError("degenerate five points: POS scale is zero")
    return np.array([k[3], k[7]]), float(s)


def eg3d_trans_params(
    five_points: np.ndarray, image_size: tuple[int, int], cfg: Eg3dCropConfig = Eg3dCropConfig(),
    template: np.ndarray = DEEP3D_5POINT_TEMPLATE,
) -> np.ndarray:
    """align_img's [w0, h0, s', tx, ty] for five points (y down) in a photo of (w0, h0)."""
    w0, h0 = image_size
    # float32 like the recipe's landmark file (np.loadtxt(...).astype(np.float32)), flipped to y up in
    # float32 too: this keeps s, tx, ty within ~1e-7 of the official values, so the recipe's integer
    # crop offsets come out the same.
    p = np.asarray(five_points, dtype=np.float32).copy()
    if p.shape != (5, 2):
        raise ValueError(f"five_points must be (5, 2), got {p.shape}")
    p[:, 1] = np.float32(h0 - 1) - p[:, 1]
    t, s = pos_fit(p.astype(np.float64), template)
    return np.array([w0, h0, cfg.rescale_factor / s, t[0], t[1]], dtype=np.float64)


def eg3d_matrix(trans_params: np.ndarray, cfg: Eg3dCropConfig = Eg3dCropConfig()) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """Photo -> crop matrix of the official pipeline for given trans params, with the centre
    window (left, up, right, low) in the resized photo and the resized size (w, h)."""
    w0, h0, s, tx, ty = (float(v) for v in trans_params)
    w, h = int(w0 * s), int(h0 * s)
    if w < 1 or h < 1:
        raise ValueError(f"EG3D crop scale {s} shrinks the photo to nothing")
    half = cfg.target_size / 2
    left = int(w / 2 - half + (tx - w0 / 2) * s)  # int() truncates toward zero like the recipe's astype
    up = int(h / 2 - half + (h0 / 2 - ty) * s)
    c0 = int(cfg.target_size / 2 - cfg.center_crop_size / 2)
    win = (left + c0, up + c0, left + c0 + cfg.center_crop_size, up + c0 + cfg.center_crop_size)
    m = compose(
        resize_matrix((cfg.center_crop_size, cfg.center_crop_size), (cfg.output_size, cfg.output_size)),
        compose(translate_matrix(-win[0], -win[1]), resize_matrix((int(w0), int(h0)), (w, h))),
    )
    return m, win, (w, h)


def eg3d_crop(
    rgb: np.ndarray, five_points: np.ndarray, cfg: Eg3dCropConfig = Eg3dCropConfig(),
    template: np.ndarray = DEEP3D_5POINT_TEMPLATE,
) -> Eg3dCrop:
    """EG3D's in-the-wild crop from five points (y down; image-left eye, image-right eye, nose tip,
    image-left mouth corner, image-right mouth corner)."""
    check_rgb(rgb, min_side=1)
    h0, w0 = rgb.shape[:2]
    params = eg3d_trans_params(five_points, (w0, h0), cfg, template)
    matrix, win, (w, h) = eg3d_matrix(params, cfg)
    img = Image.fromarray(rgb)
    n = cfg.center_crop_size
    window = Image.new("RGB", (n, n), (0, 0, 0))  # outside the photo stays black, as in the recipe
    # Part of the window inside the resized photo, resampled with a full resize's filter positions.
    x0, y0 = max(win[0], 0), max(win[1], 0)
    x1, y1 = min(win[2], w), min(win[3], h)
    if x1 > x0 and y1 > y0:
        sx, sy = w0 / w, h0 / h
        part = img.resize((x1 - x0, y1 - y0), Image.BICUBIC, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        window.paste(part, (x0 - win[0], y0 - win[1]))
    out = window.resize((cfg.output_size, cfg.output_size), Image.LANCZOS)
    return Eg3dCrop(image=np.asarray(out, dtype=np.uint8), matrix=matrix, trans_params=params)


