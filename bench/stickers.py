"""Sticker encoder bench: encode time, chosen settings and size per target, on easy and hard content.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python bench/stickers.py            # all targets, easy + hard
    .venv/bin/python bench/stickers.py --content cartoon --targets telegram_video discord_sticker
    .venv/bin/python bench/stickers.py --frames 30 --size 256        # quicker

Content (from tests/engine/stickers/content.py): ``cartoon`` (easy: a shaded disc
drifting over transparency), ``portrait`` (a photographed head turning to and fro,
cut out by a soft matte: real texture, as a real avatar's sticker), ``motion`` (hard:
random blocks jumping every frame), ``noise`` (hardest: full-frame random colour).
Every file is verified; a target where nothing fits prints the error key.

    OMP_NUM_THREADS=1 .venv/bin/python bench/stickers.py --vp9-speed --content portrait cartoon --frames 30 --fps 15

``--vp9-speed`` runs the Telegram sticker's whole VP9 search at libvpx speeds side by side (the
engine's "good" deadline at cpu-used 4, 5 and 6, "realtime" at 8, and cpu-used 4 on two threads)
and prints seconds, tries, the CRF found, bytes and PSNR against the encoded frames. On this
project's 2-core machine, a pack's 2 s sticker of the portrait: cpu-used 5 and 6 were slower than 4
(0.79x, same CRF), realtime 8 was 2.2x faster but settled 6 CRF worse at 1.8 dB less, and two
threads were 1.48x faster with the same CRF. So the engine stays at good / cpu-used 4, one thread
per file; whether two threads per sticker shorten a pack's encode tail on a GPU host's 16 cores
(where the pool already runs a file per core) is for a run there:

    .venv/bin/python bench/stickers.py --photographed-pack --pack-stickers 7 --frames 30 --fps 15 \
        [--pack-workers 0 7] [--vp9-threads 1 2] [--ahead off on] [--render-gap 0.2]

``--photographed-pack`` encodes a Telegram pack's files (each sticker's video and custom emoji, the
thumbnail) on ``engine.render.pack``'s encoder pool as ``make_pack_files`` does, from photographed
frames (the ``portrait`` content; the random weights' renders are noise, far harder to encode than a
face), one sticker submitted every ``--render-gap`` seconds like the render loop, for each number of
encode workers (0: the engine's default, cores - 1 up to 12), libvpx threads per file, and with the
searches running candidates ahead on idle workers or not (``--ahead``; ``engine.stickers.search``),
and prints the seconds to the last file and after the last submission. ``make gpu-check`` runs it on
the GPU host. Here (2 cores, 7 stickers): 1 worker 36.9 s, 1 worker on 2 threads 26.5 s, 2 workers
19.9 s, 2 workers on 2 threads each 21.4 s. Running ahead needs idle workers: with 7 stickers every
0.2 s both cores are busy to the end (19.7 s without, 20.0 with), but with the render slower than
the encodes (``--pack-stickers 2 --render-gap 6``, 2 workers, in one run) the files were done
4.59 s after the last render without and 2.96 s with (the same files), as at the end of a pack on
a host with cores to spare.

    OMP_NUM_THREADS=1 .venv/bin/python bench/stickers.py --lanes 2 --content portrait noise --frames 30 --fps 15

``--lanes N`` encodes each content for each target one candidate after another, and with the search
running candidates ahead on N lanes (``engine.stickers.search``: its own and N - 1 idle ones), side
by side: tries, the encodes waited for in a row, spare tries (run ahead, not needed), seconds, and
whether the file and the tries are the same.

    .venv/bin/python bench/stickers.py --cancel 0.5 --pack-stickers 2 --pack-workers 2 --frames 30 --fps 15

``--cancel AFTER_S`` cancels a Telegram pack's encodes (photographed stickers) that many seconds
after they were submitted, and prints how long the encoder took to stop: before, when the running
encodes were waited for, and now, when they are told to stop at their next frame. Here (2 cores, 2
workers, 2 stickers of 30 frames, cancelled after 0.5 s): 4.43 s before, 0.02 s now.

    .venv/bin/python bench/stickers.py --search [--content cartoon motion] [--frames 30 --fps 15]

``--search`` encodes each content for each target twice, side by side: with the search as it was
(``EncodeConfig(best_first=False)``: the start value first, then the best) and as now (the best
knob first, one encode where it fits), and prints tries, seconds, the chosen settings and whether
the files are byte-identical; the last rows sum a Telegram and a Discord pack's per-sticker files.

    .venv/bin/python bench/stickers.py --over-limit [--content cartoon] [--frames 30 --fps 15]

``--over-limit`` times a candidate too big for its target, the way the search meets it: written in
full and then refused by its size (before), and stopped by the writer once the bytes pass the limit
(now), for the APNG writer with full RGBA (the Discord sticker's first try) and the GIF writer.

    .venv/bin/python bench/stickers.py --pack [--pack-workers 1 3] [--pack-stickers 4]

``--pack`` compares, side by side in one run, encoding a pack's sticker files one after another
(``encode_workers=1``, the path before) with the bounded thread pool of ``engine.render.pack``:
(a) encode only: ``--pack-stickers`` cartoon stickers x the Telegram and Discord targets through
``StickerEncoder``; (b) the whole ``make_pack_files`` at the pack's 15 fps on the slim EG3D (random weights, 64 px
renders of a 2 s head turn, upscaled by the encoders to 512 px like real stickers, torch on one
thread), where the encoding overlaps the next sticker's render, with the Telegram thumbnail and the
preview page: first as before (:func:`make_pack_files_before`: thumbnail and preview encoded one
after another once the sticker files are done), then as now (thumbnail and each sticker's preview on
the same pool as the sticker files). All check that the files are byte-identical. libvpx and the PNG writers release the GIL (two encodes on two threads take the wall
time of one), so the gain is bounded by the free cores; the GPU engine renders on the GPU and
leaves the cores to the encoders. ``engine.render.pack.default_encode_workers`` is cores - 1, at most 12.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/queue.py would shadow the stdlib's
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

from engine.stickers.encode import EncodeConfig, encode  # noqa: E402
from engine.stickers.errors import StickerEncodeError  # noqa: E402
from engine.stickers.targets import TARGETS  # noqa: E402
from tests.engine.stickers import content  # noqa: E402
from tests.engine.stickers.measure import premultiplied_psnr  # noqa: E402


def make(kind: str, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "cartoon":
        return content.cartoon(n, size, size)
    if kind == "portrait":
        return content.portrait(n, size, size)
    if kind == "motion":
        return content.motion(n, size, size, rng)
    if kind == "noise":
        return content.noise(n, size, size, rng)
    raise SystemExit(f"unknown content {kind!r}")


def make_pack_files_before(generator, avatar, pack, targets: tuple[str, ...], thumbnail_target: str,
                           workers: int):
    """``engine.render.pack.make_pack_files`` as it was before the thumbnail and the preview went on the
    encoder pool (no boundaries, no mesh, no emoji): only for the before/after comparison."""
    import torch

    from engine.render.frames import RenderSettings, render_pack
    from engine.render.pack import PackFiles, StickerEncoder, StickerOutput, render_stills, sticker_specs
    from engine.stickers.preview import PackItem, build_pack_preview

    settings = RenderSettings(size=pack.size, views_per_pass=pack.views_per_pass or None)
    specs, notes = sticker_specs(pack, None)
    encoder = StickerEncoder(workers)
    stills = render_stills(generator, avatar, settings)
    rendered = []
    for spec in specs:
        with torch.no_grad():
            made = render_pack(generator, avatar.params, avatar.w_3d, avatar.noise, None, [spec], fps=pack.fps,
                               size=pack.size, settings=settings)
        for frames in made:
            for target in targets:
                encoder.submit(len(rendered), frames, target)
            rendered.append(frames)
    files = encoder.results(lambda i: None)
    encoder.close(cancel=False)
    thumbnail = {thumbnail_target: encode(rendered[0].frames, rendered[0].fps, thumbnail_target).data}
    preview = build_pack_preview("emoji3d pack", [PackItem(f.name, f.frames, f.fps) for f in rendered])
    return PackFiles(stills=stills, stickers=[StickerOutput(f.name, f.emoji, files.get(i, {}))
                                              for i, f in enumerate(rendered)], thumbnail=thumbnail,
                     preview_png=preview.sheet_png, preview_html=preview.html.encode("utf-8"), notes=notes)


def _pack_bytes(files) -> tuple:
    return ([s.files for s in files.stickers], files.thumbnail, files.preview_png, files.preview_html, files.stills)


def pack_table(workers: list[int], n_stickers: int, n_frames: int, fps: float) -> None:
    import torch

    from emoji3d.config import PackConfig, StickerEntry
    from engine.nets import camera, eg3d
    from engine.render.frames import StickerFrames
    from engine.render.pack import AvatarPose, StickerEncoder, make_pack_files

    torch.set_num_threads(1)  # the render keeps one core, as a GPU engine's render leaves the cores to the encoders
    targets = ("telegram_video", "discord_sticker")
    frames = content.cartoon(n_frames, 512, 512)
    print(f"cores: {os.cpu_count()}; encode only: {n_stickers} stickers x {targets}, {n_frames} frames at 512 px")
    print("| path | workers | encode only s | make_pack_files s, thumbnail + preview after the stickers (before) | "
          "make_pack_files s, thumbnail + preview on the pool (after) | files identical to serial |")
    print("|---|---|---|---|---|---|")
    G = eg3d.slim_generator("slim128", seed=3).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5)), camera.conditioning_label(1))
    pack = PackConfig(fps=fps, size=64, stickers=tuple(
        StickerEntry(f"turn{i}", "😎", motion="orbit", yaw_degrees=20.0 + 5 * i, seconds=2.0) for i in range(n_stickers)))
    reference = None
    for w in workers:
        enc = StickerEncoder(w)
        t0 = time.perf_counter()
        for i in range(n_stickers):
            for t in targets:
                enc.submit(i, StickerFrames(f"s{i}", "😎", frames, fps), t)
        encoded = enc.results(lambda i: None)
        enc.close(cancel=False)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        before = make_pack_files_before(G, AvatarPose(None, ws, None), pack, targets, "telegram_thumb", w)
        before_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = make_pack_files(G, AvatarPose(None, ws, None), pack, targets, thumbnail_target="telegram_thumb",
                                boundaries=None, progress=lambda *a: None, encode_workers=w)
        pack_s = time.perf_counter() - t0
        got = (encoded, _pack_bytes(files))
        reference = got if reference is None else reference
        same = got == reference and _pack_bytes(before) == got[1]
        print(f"| {'serial' if w == 1 else 'thread pool'} | {w} | {encode_s:.1f} | {before_s:.1f} | {pack_s:.1f} | "
              f"{'yes' if same else 'NO'} |", flush=True)


# The files a pack encodes per sticker on each platform (engine.render.pack: targets + custom emoji).
PACK_TARGETS = {"Telegram": ("telegram_video", "telegram_emoji"), "Discord": ("discord_sticker", "discord_emoji")}


def search_table(kinds: list[str], targets: list[str], n_frames: int, fps: float, size: int) -> None:
    """Each target encoded with the search before (start value first) and now (best knob first)."""
    configs = {"before": EncodeConfig(best_first=False), "now": EncodeConfig()}
    print(f"search: before = start value first, now = best knob first; {n_frames} frames at {fps:g} fps, {size} px")
    print("| content | target | tries before | tries now | s before | s now | ratio | settings now | same file |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    seconds: dict[tuple[str, str, str], float] = {}
    for kind in kinds:
        frames = make(kind, n_frames, size)
        for name in targets:
            got = {}
            for label, cfg in configs.items():
                t0 = time.perf_counter()
                try:
                    got[label] = encode(frames, fps, name, cfg)
                except StickerEncodeError as e:
                    got[label] = e.key
                seconds[kind, name, label] = time.perf_counter() - t0
            b, n = got["before"], got["now"]
            sb, sn = seconds[kind, name, "before"], seconds[kind, name, "now"]
            if isinstance(b, str) or isinstance(n, str):
                print(f"| {kind} | {name} | - | - | {sb:.2f} | {sn:.2f} | - | {b if isinstance(b, str) else n} | - |")
                continue
            st = " ".join(f"{k}={v}" for k, v in n.report.settings.items() if k != "fps")
            print(f"| {kind} | {name} | {len(b.report.attempts)} | {len(n.report.attempts)} | {sb:.2f} | {sn:.2f} | "
                  f"{sb / sn:.2f}x | {st} | {'yes' if b.data == n.data else 'NO'} |", flush=True)
    for kind in kinds:
        for platform, names in PACK_TARGETS.items():
            if not all((kind, t, "now") in seconds for t in names):
                continue
            sb = sum(seconds[kind, t, "before"] for t in names)
            sn = sum(seconds[kind, t, "now"] for t in names)
            print(f"| {kind} | {platform} pack, per sticker ({' + '.join(names)}) | | | {sb:.2f} | {sn:.2f} | "
                  f"{sb / sn:.2f}x | | |")


def ahead_table(kinds: list[str], targets: list[str], n_frames: int, fps: float, size: int, lanes: int,
                repeat: int = 2) -> None:
    """Each target encoded one candidate after another, and with its search running candidates ahead
    on ``lanes`` lanes (its own and ``lanes - 1`` idle ones), side by side; best of ``repeat``."""
    from engine.stickers.lanes import SpareLanes

    print(f"search one candidate after another, and running ahead on {lanes} lanes; {n_frames} frames at "
          f"{fps:g} fps, {size} px; {os.cpu_count()} CPU cores, best of {repeat}")
    print("| content | target | tries | encodes in a row, serial | encodes in a row, ahead | spare tries | "
          "s serial | s ahead | ratio | same file and tries |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in kinds:
        frames = make(kind, n_frames, size)
        for name in targets:
            runs: dict[str, list] = {"serial": [], "ahead": []}
            try:
                for _ in range(repeat):
                    for label in runs:
                        lane_set = SpareLanes(lanes) if label == "ahead" else None
                        t0 = time.perf_counter()
                        try:
                            res = encode(frames, fps, name, lanes=lane_set)
                        finally:
                            if lane_set is not None:
                                lane_set.close()
                        runs[label].append((time.perf_counter() - t0, res))
            except StickerEncodeError as e:
                print(f"| {kind} | {name} | - | - | - | - | - | - | - | {e.key} |")
                continue
            (ss, serial), (sa, ahead) = min(runs["serial"], key=lambda r: r[0]), min(runs["ahead"], key=lambda r: r[0])
            same = all(r.data == serial.data and [a.settings for a in r.report.attempts] ==
                       [a.settings for a in serial.report.attempts] for _, r in runs["serial"] + runs["ahead"])
            print(f"| {kind} | {name} | {len(serial.report.attempts)} | {serial.report.rounds} | {ahead.report.rounds} | "
                  f"{ahead.report.spare_tries} | {ss:.2f} | {sa:.2f} | {ss / sa:.2f}x | {'yes' if same else 'NO'} |",
                  flush=True)


def over_limit_table(kinds: list[str], n_frames: int, fps: float, size: int, repeat: int = 3) -> None:
    """A too-big candidate written in full (before) and stopped at the limit (now), best of ``repeat``."""
    from engine.stickers import codecs, palette
    from engine.stickers.frames import fit_frame, layout
    from engine.stickers.targets import get_target

    print(f"over-limit candidates: {n_frames} frames at {fps:g} fps from {size} px, best of {repeat}")
    print("| content | writer (target) | full file bytes | limit | s written in full | s stopped at the limit "
          "| ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in kinds:
        frames = make(kind, n_frames, size)
        for target, container in (("discord_sticker", "apng"), ("discord_emoji", "gif")):
            tgt = get_target(target)
            lay = layout(size, size, tgt.side, tgt.square)
            seq = [fit_frame(f, lay) for f in frames]
            if container == "apng":
                def write(cap, seq=seq):
                    return codecs.write_apng(seq, fps, max_bytes=cap)
            else:
                quantized = palette.quantize_gif(seq, 256, 128)

                def write(cap, quantized=quantized):
                    return codecs.write_gif(*quantized, fps, max_bytes=cap)
            full = write(None)
            limit = tgt.rules_for(container, True).max_bytes
            if len(full) <= limit:  # fits: this content does not meet the case; show it against a limit it passes
                limit = len(full) // 2
            times = {"full": [], "stopped": []}
            for _ in range(repeat):
                t0 = time.perf_counter()
                write(None)
                times["full"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                try:
                    write(limit)
                except codecs.OverBudget:
                    pass
                times["stopped"].append(time.perf_counter() - t0)
            tf, ts = min(times["full"]), min(times["stopped"])
            print(f"| {kind} | {container} ({target}) | {len(full)} | {limit} | {tf:.3f} | {ts:.3f} | {tf / ts:.2f}x |")


# (label, deadline, cpu-used, libvpx threads): libvpx's "good" deadline from the speed the engine uses up,
# its "realtime" deadline at its fastest, and the engine's speed on two threads (row-mt).
VP9_SPEEDS = (("good 4", "good", 4, 1), ("good 5", "good", 5, 1), ("good 6", "good", 6, 1),
              ("realtime 8", "realtime", 8, 1), ("good 4, 2 threads", "good", 4, 2))


def vp9_speed_table(kinds: list[str], n_frames: int, fps: float, size: int, repeat: int = 2) -> None:
    """The Telegram sticker's VP9 encode (the whole search, as the engine runs it) at each libvpx
    speed, side by side: seconds (best of ``repeat``), tries, the CRF the search settled on, the
    file's bytes and its PSNR against the frames it encodes."""
    from engine.stickers.frames import fit_frame, layout
    from engine.stickers.probe import probe

    target = TARGETS["telegram_video"]
    print(f"VP9 speed: telegram_video, {n_frames} frames at {fps:g} fps from {size} px, best of {repeat}, "
          f"{os.cpu_count()} CPU cores")
    print("| content | libvpx deadline, cpu-used | s | vs good 4 | tries | CRF | bytes | PSNR dB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        frames = make(kind, n_frames, size)
        base = None
        for label, deadline, cpu_used, threads in VP9_SPEEDS:
            cfg = EncodeConfig(vp9_deadline=deadline, vp9_cpu_used=cpu_used, threads=threads)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                res = encode(frames, fps, "telegram_video", cfg)
                times.append(time.perf_counter() - t0)
            r = res.report
            lay = layout(size, size, target.side, target.square, content_scale=r.content_scale, even=True)
            sources = [fit_frame(frames[i], lay) for i in r.source_frames]  # the frames as encoded
            psnr = premultiplied_psnr(probe(res.data, keep_frames=True).frames, sources)
            t = min(times)
            base = base or t
            print(f"| {kind} | {label} | {t:.2f} | {base / t:.2f}x | {len(r.attempts)} | {r.settings['crf']} | "
                  f"{r.byte_size} | {psnr:.1f} |", flush=True)


def photographed_stickers(n_stickers: int, n_frames: int, fps: float) -> list:
    """The ``portrait`` content as a pack's stickers, each turning a little further."""
    from engine.render.frames import StickerFrames

    return [StickerFrames(f"turn{i}", "😎", content.portrait(n_frames, 512, 512, degrees=5.0 + 2 * i), fps)
            for i in range(n_stickers)]


def photographed_pack(stickers: list, render_gap_s: float, workers: int, vp9_threads: int, ahead: bool = True) -> dict:
    """A Telegram pack's files (each sticker's video and custom emoji, the thumbnail) encoded as
    ``engine.render.pack.make_pack_files`` encodes them, on the same pool, from ``stickers``' frames
    (photographed: :func:`photographed_stickers`) instead of renders: a sticker's files are submitted
    every ``render_gap_s`` seconds, the pace of a render loop. ``vp9_threads``: libvpx threads per
    file; ``ahead``: searches run candidates ahead on idle workers (``StickerEncoder(speculate=)``).
    Returns the seconds to the last file, how long after the last submission that was (none with
    one worker, which encodes each file as it is submitted), and the files."""
    from emoji3d.orders import CUSTOM_EMOJI_TARGETS, THUMBNAIL_TARGETS
    from engine.render.pack import StickerEncoder, _encoded_bytes

    per_sticker = ("telegram_video", CUSTOM_EMOJI_TARGETS["telegram"])
    encoder = StickerEncoder(workers, EncodeConfig(threads=vp9_threads), speculate=ahead)
    t0 = time.perf_counter()
    try:
        for i, frames in enumerate(stickers):
            time.sleep(render_gap_s)  # this sticker's render
            for target in per_sticker:
                encoder.submit(i, frames, target)
            if i == 0:
                thumbnail = encoder.later(_encoded_bytes, frames, THUMBNAIL_TARGETS["telegram"], encoder.config,
                                          encoder.lanes)
        submitted = time.perf_counter() - t0
        files = encoder.results(lambda i: None)
        files["thumbnail"] = thumbnail.result()
        seconds = time.perf_counter() - t0
    finally:
        encoder.close(cancel=False)
    return {"seconds": seconds, "tail_seconds": seconds - submitted, "files": files}


def photographed_pack_table(workers: list[int], threads: list[int], n_stickers: int, n_frames: int, fps: float,
                            render_gap_s: float, ahead: list[bool], repeat: int = 2) -> None:
    """:func:`photographed_pack` for each number of encode workers (0: the engine's default), libvpx
    threads per file and running ahead or not, side by side."""
    print(f"a Telegram pack's files from photographed frames: {n_stickers} stickers of {n_frames} frames at "
          f"{fps:g} fps (video + custom emoji each, thumbnail), one submitted every {render_gap_s:g} s; "
          f"{os.cpu_count()} CPU cores, best of {repeat}")
    print("| encode workers | libvpx threads per file | searches run ahead on idle workers | s to the last file "
          "| s after the last render | vs the first row | same files each run, and as the first row on as many threads |")
    print("|---:|---:|---|---:|---:|---:|---|")
    from engine.render.pack import default_encode_workers

    stickers = photographed_stickers(n_stickers, n_frames, fps)
    base = None
    first_files: dict[int, dict] = {}  # libvpx threads -> the files of the first row with them
    for w in [w or default_encode_workers() for w in workers]:
        for t in threads:
            for run_ahead in ahead:
                runs = [photographed_pack(stickers, render_gap_s, w, t, run_ahead) for _ in range(repeat)]
                best = min(runs, key=lambda r: r["seconds"])
                base = base or best
                # libvpx's bytes may depend on its thread count, never on the workers or on running ahead
                reference = first_files.setdefault(t, runs[0]["files"])
                same = all(r["files"] == reference for r in runs)
                print(f"| {w} | {t} | {'yes' if run_ahead and w > 1 else 'no'} | {best['seconds']:.2f} | "
                      f"{best['tail_seconds']:.2f} | {base['seconds'] / best['seconds']:.2f}x | "
                      f"{'yes' if same else 'NO'} |", flush=True)


def cancel_table(n_stickers: int, n_frames: int, fps: float, workers: int, after_s: float, repeat: int = 3) -> None:
    """A pack cancelled while its files are encoded (``StickerEncoder.close(cancel=True)``, as
    ``make_pack_files`` closes on the engine's cancel or shutdown): the seconds from the cancel until
    the encoder has stopped, when its running encodes are waited for (before: nothing told them to
    stop) and when they are told to stop at their next frame (now), side by side."""
    from emoji3d.orders import CUSTOM_EMOJI_TARGETS
    from engine.render.pack import StickerEncoder

    per_sticker = ("telegram_video", CUSTOM_EMOJI_TARGETS["telegram"])
    stickers = photographed_stickers(n_stickers, n_frames, fps)
    print(f"a Telegram pack's files ({n_stickers} photographed stickers of {n_frames} frames at {fps:g} fps) on "
          f"{workers} encode workers, cancelled {after_s:g} s after they were submitted; median of {repeat}")
    print("| running encodes on a cancel | s from the cancel until the encoder stopped | vs before |")
    print("|---|---:|---:|")
    base = None
    for label, told in (("waited for (before)", False), ("told to stop at their next frame (now)", True)):
        times = []
        for _ in range(repeat):
            encoder = StickerEncoder(workers)
            if not told:
                encoder.stop = lambda: False  # the encoder before: nothing reached a running encode
            for i, frames in enumerate(stickers):
                for target in per_sticker:
                    encoder.submit(i, frames, target)
            time.sleep(after_s)
            t0 = time.perf_counter()
            encoder.close(cancel=True)
            times.append(time.perf_counter() - t0)
        median = sorted(times)[len(times) // 2]
        base = base or median
        print(f"| {label} | {median:.2f} | {base / max(median, 1e-6):.1f}x |", flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", action="store_true", help="serial vs parallel encoding of a pack (see above)")
    ap.add_argument("--search", action="store_true", help="the encoder's search before and now (see above)")
    ap.add_argument("--over-limit", action="store_true", help="too-big candidates: finished vs stopped (see above)")
    ap.add_argument("--photographed-pack", action="store_true",
                    help="a Telegram pack's files from photographed frames, by libvpx threads per file (see above)")
    ap.add_argument("--vp9-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--render-gap", type=float, default=0.2, help="seconds between stickers submitted (a render)")
    ap.add_argument("--lanes", type=int, default=0,
                    help="each target serially and running ahead on this many lanes, side by side (see above)")
    ap.add_argument("--ahead", nargs="+", choices=["off", "on"], default=["off", "on"],
                    help="--photographed-pack: searches run candidates ahead on idle workers or not")
    ap.add_argument("--vp9-speed", action="store_true", help="the VP9 encode at each libvpx speed (see above)")
    ap.add_argument("--cancel", type=float, default=None, metavar="AFTER_S",
                    help="a pack cancelled this many seconds into its encodes: running encodes waited for vs "
                         "stopped (see above)")
    ap.add_argument("--pack-workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--pack-stickers", type=int, default=4)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--content", nargs="+", default=["cartoon", "motion", "noise"])
    ap.add_argument("--frames", type=int, default=90, help="input frames at --fps (default 90 = 3 s)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=512, help="input frame side in px")
    a = ap.parse_args(argv)
    if a.pack:
        pack_table(a.pack_workers, a.pack_stickers, 30, 15.0)  # the pack's 2 s at its 15 fps
        return 0
    if a.search:
        search_table(a.content, a.targets, a.frames, a.fps, a.size)
        return 0
    if a.lanes:
        ahead_table(a.content, a.targets, a.frames, a.fps, a.size, a.lanes)
        return 0
    if a.photographed_pack:
        photographed_pack_table(a.pack_workers, a.vp9_threads, a.pack_stickers, a.frames, a.fps, a.render_gap,
                                [x == "on" for x in a.ahead])
        return 0
    if a.vp9_speed:
        vp9_speed_table(a.content, a.frames, a.fps, a.size)
        return 0
    if a.cancel is not None:
        cancel_table(a.pack_stickers, a.frames, a.fps, max(a.pack_workers), a.cancel)
        return 0
    if a.over_limit:
        over_limit_table(a.content, a.frames, a.fps, a.size)
        return 0
    head = f"{'content':8} {'target':16} {'time s':>7} {'file':5} {'bytes':>8} {'limit':>8} {'fill':>5} {'frames':>6} {'fps':>5} {'tries':>5}  settings / adjustments"
    print(head)
    print("-" * len(head))
    for kind in a.content:
        frames = make(kind, a.frames, a.size)
        for name in a.targets:
            t0 = time.perf_counter()
            try:
                res = encode(frames, a.fps, name)
            except StickerEncodeError as e:
                print(f"{kind:8} {name:16} {time.perf_counter() - t0:7.2f} {'-':5} {'-':>8} {'-':>8} {'-':>5} {'-':>6} {'-':>5} {'-':>5}  {e.key}: {e}")
                continue
            dt = time.perf_counter() - t0
            r = res.report
            st = " ".join(f"{k}={v}" for k, v in r.settings.items() if k not in ("fps",))
            adj = [x for x in r.adjustments if not x.startswith("resized")]
            fps = f"{r.fps_out:g}" if r.fps_out else "-"
            print(f"{kind:8} {name:16} {dt:7.2f} {r.container:5} {r.byte_size:8d} {r.max_bytes:8d} {r.byte_size / r.max_bytes:5.0%}"
                  f" {r.frames_out:6d} {fps:>5} {len(r.attempts):5d}  {st}" + (f" | {'; '.join(adj)}" if adj else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
