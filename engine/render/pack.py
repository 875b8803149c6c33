"""From an avatar to the configured pack: still renders, sticker files per platform, previews, mesh.

``make_pack_files`` is the whole step after the avatar pipeline. It works on
tensors and returns bytes; storing them (blobs) and describing them
(:class:`emoji3d.orders.PackResult`) is the job handler's business
(:mod:`engine.tasks`).

Conventions
-----------
* The avatar is its W latent ``w_3d`` [1, L, 512], its backbone noise maps and
  the EG3D parameter dict ``params`` at the ordered style strength
  (:meth:`engine.avatar.pipeline.Pipeline.generator_params`).
* Stickers come from ``[pack]`` in config.toml, in order. A sticker whose
  expression has no boundary is left out: silently when it is ``optional``,
  otherwise with a note saying why (the notes reach the user).
* Every sticker file is encoded by :func:`engine.stickers.encode.encode`,
  which verifies it against the platform's rules before returning it. A
  sticker's files are encoded on a bounded thread pool
  (:class:`StickerEncoder`) while the next sticker renders; the bytes and
  their order are those of the serial path.
* A custom emoji (``emoji_target``, e.g. ``telegram_emoji``) is made per
  sticker from the same rendered frames, on the same encoder, and stored in
  the sticker's ``files`` under its target name, like the stickers.
* The thumbnail (from the first sticker) and each sticker's ``preview``
  animation go on the same pool as soon as their frames exist; the preview
  page and sheet are built there after the last sticker renders, while the
  caller waits for the sticker files. Same bytes as the serial path.
* ``progress(stage, done, total)`` is called with the stages ``render`` and
  ``encode``; it may raise to stop the work (the engine's cancellation). While
  the files are waited for, the last ``encode`` report is repeated every
  ``WAIT_POLL_S`` seconds, so that a cancel reaches the pack's encode tail too;
  a cancel stops the files being encoded at their next frame.
"""
from __future__ import annotations

import io
import os
import pathlib
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch import nn

from emoji3d.config import PackConfig
from engine.nets.camera import orbit_label
from engine.render.edits import BoundarySet
from engine.render.frames import (RenderSettings, StickerFrames, StickerSpec, render_frames, render_pack,
                                  spec_from_entry, to_rgba)
from engine.render.mesh import export_glb
from engine.stickers.codecs import Stop
from engine.stickers.encode import EncodeConfig, EncodeResult, encode
from engine.stickers.lanes import SpareLanes
from engine.stickers.preview import PackItem, PackPreview, build_pack_preview, contact_sheet

STILL_YAWS = (-0.35, 0.0, 0.35)  # radians: a three-quarter view each side and the front

PackProgress = Callable[[str, int, int], None]

# Seconds between two calls of the caller's check while it waits for a sticker file: a cancel reaches a
# pack in its encode tail within about this (plus the check's own interval, a second in the engine).
WAIT_POLL_S = 0.25


@dataclass
class AvatarPose:
    """What rendering needs of an avatar."""

    params: Mapping[str, torch.Tensor] | None  # EG3D weights at the ordered strength
    w_3d: torch.Tensor                         # [1, L, 512]
    noise: Mapping[str, torch.Tensor] | None   # backbone noise maps


@dataclass
class StickerOutput:
    name: str
    emoji: str
    files: dict[str, bytes]  # platform target -> file


@dataclass
class PackFiles:
    stills: list[bytes]                                  # RGBA PNGs, one per STILL_YAWS
    stickers: list[StickerOutput]
    thumbnail: dict[str, bytes] = field(default_factory=dict)  # thumbnail target -> file
    preview_png: bytes = b""
    preview_html: bytes = b""
    mesh: bytes | None = None                            # GLB, when asked for
    notes: list[str] = field(default_factory=list)       # what could not be made, and why


def sticker_specs(pack: PackConfig, boundaries: BoundarySet | None,
                  boundaries_problem: str = "") -> tuple[list[StickerSpec], list[str]]:
    """The configured stickers this avatar can get, and a note for each required one it cannot."""
    have = set(boundaries.names()) if boundaries is not None else set()
    specs, notes = [], []
    for entry in pack.stickers:
        if entry.expression and entry.expression not in have:
            if not entry.optional:
                why = boundaries_problem or f"the boundary file has no {entry.expression!r} direction"
                notes.append(f"the {entry.name} sticker needs the {entry.expression} expression: {why}")
            continue
        specs.append(spec_from_entry(entry))
    return specs, notes


def render_stills(generator: nn.Module, avatar: AvatarPose, settings: RenderSettings) -> list[bytes]:
    """RGBA PNG renders of the avatar from ``STILL_YAWS`` (one plane set, matted)."""
    cams = orbit_label(torch.tensor(STILL_YAWS), torch.zeros(len(STILL_YAWS)))  # [V, 25]
    with torch.no_grad():
        batch = render_frames(generator, avatar.params, avatar.w_3d, avatar.noise, cams, settings)
    pngs = []
    for rgba in to_rgba(batch.rgb, batch.alpha):
        buf = io.BytesIO()
        Image.fromarray(rgba).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs


def mesh_glb(generator: nn.Module, avatar: AvatarPose) -> bytes:
    """The avatar's surface as GLB bytes; ValueError when the density field has no surface."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "avatar.glb"
        export_glb(generator, avatar.params, avatar.w_3d, avatar.noise, str(path))
        return path.read_bytes()


# A Telegram pack has about 24 files to encode (each sticker's video, custom emoji and preview, the
# thumbnail, the stills); more threads than that find nothing to do.
MAX_ENCODE_WORKERS = 12


def default_encode_workers() -> int:
    """Encoder threads beside the render: every core but the one that drives the render, up to
    ``MAX_ENCODE_WORKERS``. libvpx and the image writers run with the GIL released
    (``bench/stickers.py --pack`` measures serial against parallel), one file per thread. On the
    H200 host (16 cores) the whole Telegram pack took 10.7 s with 4 threads, the earlier cap,
    against 1.8 s for the render alone (bench/results/2026-12-04-h200-run5-graphs.md)."""
    return max(1, min(MAX_ENCODE_WORKERS, (os.cpu_count() or 1) - 1))


def _encoded_bytes(frames: StickerFrames, target: str, config: EncodeConfig | None = None,
                   lanes: SpareLanes | None = None, stop: Stop = None) -> bytes:
    return encode(frames.frames, frames.fps, target, config, lanes, stop).data


def _preview_encode(frames: StickerFrames, lanes: SpareLanes | None = None, stop: Stop = None) -> EncodeResult:
    return encode(frames.frames, frames.fps, "preview", lanes=lanes, stop=stop)


def _waited(future: Future, while_waiting: Callable[[], None]) -> Any:
    while not wait([future], timeout=WAIT_POLL_S).done:
        while_waiting()
    return future.result()


def _sheet_only(rendered: list[StickerFrames], _encodes: list[Future]) -> PackPreview:
    """The contact sheet without the preview page (nothing was encoded for it)."""
    return PackPreview(contact_sheet([PackItem(f.name, f.frames, f.fps) for f in rendered]), "", {})


def _pack_preview(rendered: list[StickerFrames], encodes: list[Future]) -> PackPreview:
    """The pack's preview from its stickers' ``preview`` encodes (futures submitted before this job,
    so on a FIFO pool they are running or done when it waits on them)."""
    return build_pack_preview("emoji3d pack", [PackItem(f.name, f.frames, f.fps) for f in rendered],
                              encoded=[f.result() for f in encodes])


class StickerEncoder:
    """Encodes sticker files while the caller renders the next sticker: at most ``workers`` files at
    once on a thread pool (``workers`` = 1: at once in the calling thread). Files come back in the
    order they were submitted, so the pack is byte-identical to the serial path (each encode is pure:
    same frames, fps, target and ``config`` give the same bytes; None: the encoder's defaults).

    With ``speculate`` (and more than one worker) the encodes share the workers as lanes
    (:class:`engine.stickers.lanes.SpareLanes`): a search whose lanes would idle, typically the
    last stickers' at the end of a pack, encodes the candidates it may need next on them
    (:mod:`engine.stickers.search`). The same files, sooner where workers idle
    (``bench/stickers.py --photographed-pack --ahead off on``).

    A cancelled pack (``close(cancel=True)``) stops its running encodes too: each is told to stop
    (``stop``, passed to the encodes) and gives up before its next frame, so a cancel or an engine's
    shutdown does not wait for the files of a pack nobody will receive."""

    def __init__(self, workers: int, config: EncodeConfig | None = None, speculate: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"encode workers must be >= 1, got {workers}")
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="sticker-encode") if workers > 1 else None
        self.lanes = SpareLanes(workers) if speculate and workers > 1 else None
        self.config = config
        self.pending: list[tuple[int, str, Future | bytes]] = []  # (sticker index, target, file or its future)
        self._cancelled = threading.Event()
        self.stop: Callable[[], bool] = self._cancelled.is_set  # for the encodes: true once the pack is cancelled

    def submit(self, index: int, frames: StickerFrames, target: str) -> None:
        if self.pool is None:
            self.pending.append((index, target, _encoded_bytes(frames, target, self.config)))
        else:
            self.pending.append((index, target, self.pool.submit(_encoded_bytes, frames, target, self.config,
                                                                 self.lanes, self.stop)))

    def later(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` on the pool behind the files submitted so far (with one worker: now, here)."""
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # kept for .result(), as the pool would
            done.set_exception(exc)
        return done

    def results(self, on_sticker_done: Callable[[int], None],
                while_waiting: Callable[[], None] = lambda: None) -> dict[int, dict[str, bytes]]:
        """{sticker index: {target: file}}, waiting for each; ``on_sticker_done(i)`` after sticker i's
        last file, and ``while_waiting()`` every ``WAIT_POLL_S`` seconds while a file is still being
        encoded (either may raise, e.g. the engine's cancellation: the caller then closes with
        ``cancel=True``)."""
        out: dict[int, dict[str, bytes]] = {}
        last = {index: n for n, (index, _target, _file) in enumerate(self.pending)}
        for n, (index, target, item) in enumerate(self.pending):
            out.setdefault(index, {})[target] = _waited(item, while_waiting) if isinstance(item, Future) else item
            if last[index] == n:
                on_sticker_done(index)
        return out

    def close(self, *, cancel: bool) -> None:
        """Stop the threads; ``cancel`` drops the files not started yet and stops those being encoded
        at their next frame (a cancelled job)."""
        if cancel:
            self._cancelled.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)
        if self.lanes is not None:
            self.lanes.close()


def make_pack_files(generator: nn.Module, avatar: AvatarPose, pack: PackConfig, targets: tuple[str, ...],
                    *, thumbnail_target: str | None, boundaries: BoundarySet | None, boundaries_problem: str = "",
                    mesh: bool = False, progress: PackProgress, emoji_target: str | None = None,
                    encode_workers: int | None = None, preview_page: bool = True) -> PackFiles:
    """Stills, every configured sticker in every target, a thumbnail, the contact sheet, (with
    ``preview_page``) the preview page and (optionally) a mesh.

    A sticker's files (one per name in ``per_sticker``: each platform target; a further per-sticker
    output is one more name there) are encoded on ``encode_workers`` threads (None:
    :func:`default_encode_workers`; 1: serially) while the next sticker renders. The preview page
    needs an animated ``preview`` encode of every sticker, the costliest encode of a sticker on the
    CPU: without ``preview_page`` none is made and ``preview_html`` is empty."""
    settings = RenderSettings(size=pack.size, views_per_pass=pack.views_per_pass or None)
    specs, notes = sticker_specs(pack, boundaries, boundaries_problem)
    per_sticker = tuple(targets) + ((emoji_target,) if emoji_target else ())
    encoder = StickerEncoder(default_encode_workers() if encode_workers is None else int(encode_workers),
                             EncodeConfig(threads=pack.encode_threads))
    try:
        progress("render", 0, len(specs) + 1)
        stills = render_stills(generator, avatar, settings)
        rendered: list[StickerFrames] = []
        previews: list[Future] = []  # each sticker's ``preview`` encode
        thumbnail_job: Future | None = None
        for i, spec in enumerate(specs):
            with torch.no_grad():
                made = render_pack(generator, avatar.params, avatar.w_3d, avatar.noise, boundaries, [spec],
                                   fps=pack.fps, size=pack.size, settings=settings)
            for frames in made:
                for target in per_sticker:
                    encoder.submit(len(rendered), frames, target)
                if preview_page:
                    previews.append(encoder.later(_preview_encode, frames, encoder.lanes, encoder.stop))
                if thumbnail_target and thumbnail_job is None:
                    thumbnail_job = encoder.later(_encoded_bytes, frames, thumbnail_target, encoder.config,
                                                  encoder.lanes, encoder.stop)
                rendered.append(frames)
            progress("render", i + 2, len(specs) + 1)
        preview_job = encoder.later(_pack_preview if preview_page else _sheet_only, list(rendered), previews)
        stickers_encoded = 0

        def sticker_encoded(i: int) -> None:
            nonlocal stickers_encoded
            stickers_encoded = i + 1
            progress("encode", stickers_encoded, len(rendered) + 1)

        def waiting() -> None:  # the same report again: the caller's chance to stop the pack
            progress("encode", stickers_encoded, len(rendered) + 1)

        files = encoder.results(sticker_encoded, waiting)
        thumbnail = {thumbnail_target: _waited(thumbnail_job, waiting)} if thumbnail_job is not None else {}
        preview = _waited(preview_job, waiting)
    except BaseException:
        encoder.close(cancel=True)
        raise
    encoder.close(cancel=False)
    stickers = [StickerOutput(f.name, f.emoji, files.get(i, {})) for i, f in enumerate(rendered)]
    glb = None
    if mesh:
        try:
            glb = mesh_glb(generator, avatar)
        except ValueError as exc:  # e.g. no surface in the density field (random slim weights)
            notes.append(f"mesh: {exc}")
    progress("encode", 1, 1)
    return PackFiles(stills=stills, stickers=stickers, thumbnail=thumbnail, preview_png=preview.sheet_png,
                     preview_html=preview.html.encode("utf-8"), mesh=glb, notes=notes)
