"""Pack previews for the local demo: a contact-sheet PNG and a self-contained HTML page.

Conventions
-----------
* Input stickers are :class:`PackItem` (name, RGBA uint8 frames ``(H, W, 4)``, fps).
* Contact sheet: one row per sticker, ``columns`` frames sampled evenly in
  time (first and last included), each fitted into a ``cell`` x ``cell`` square
  and composited over a grey checkerboard so transparency is visible; the
  sticker's name is written left of its row. Output: PNG bytes (RGB).
* HTML page: one card per sticker; each animation is encoded with the
  ``preview`` target (animated WEBP, looping, alpha kept) and embedded as a
  ``data:`` URI, so the page is one file with no external requests (no
  scripts, no fonts, no network). Already encoded platform files (e.g. the
  Telegram WEBM) can be embedded too: WEBM as ``<video autoplay loop muted>``,
  images as ``<img>``. All text is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.stickers.encode import EncodeConfig, EncodeResult, encode
from engine.stickers.frames import fit_frame, layout, validate_frames


@dataclass(frozen=True)
class PackItem:
    name: str
    frames: list[np.ndarray]  # each (H, W, 4) uint8 RGBA
    fps: float


@dataclass(frozen=True)
class HtmlEntry:
    name: str
    data: bytes
    mime: str  # video/webm, image/webp, image/png, image/apng, image/gif
    caption: str = ""


@dataclass(frozen=True)
class PackPreview:
    sheet_png: bytes
    html: str
    previews: dict[str, EncodeResult]


def checkerboard(h: int, w: int, square: int = 8) -> np.ndarray:
    """Grey checkerboard ``(h, w, 3)`` uint8, the usual backdrop for transparency."""
    yy, xx = np.mgrid[0:h, 0:w]
    on = ((yy // square + xx // square) % 2).astype(bool)
    out = np.full((h, w, 3), 204, np.uint8)
    out[on] = 153
    return out


def over(rgba: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA ``(H, W, 4)`` over an RGB backdrop ``(H, W, 3)``."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + backdrop.astype(np.float32) * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _sample(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def contact_sheet(items: list[PackItem], *, columns: int = 6, cell: int = 128, label_width: int = 140) -> bytes:
    """PNG bytes: one row per sticker, ``columns`` frames across time."""
    if not items:
        raise ValueError("contact_sheet needs at least one sticker")
    if columns < 1 or cell < 8:
        raise ValueError(f"columns must be >= 1 and cell >= 8, got {columns}, {cell}")
    pad = 4
    width = label_width + columns * (cell + pad) + pad
    height = len(items) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    board = checkerboard(cell, cell)
    for r, item in enumerate(items):
        h, w = validate_frames(item.frames, item.fps)
        lay = layout(h, w, cell, True)
        y = pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 6), item.name[:22], fill=(0, 0, 0))
        for c, i in enumerate(_sample(len(item.frames), columns)):
            tile = over(fit_frame(item.frames[i], lay), board)  # (cell, cell, 3)
            sheet.paste(Image.fromarray(tile, "RGB"), (label_width + pad + c * (cell + pad), y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px;width:276px}
.media{width:256px;height:256px;display:flex;align-items:center;justify-content:center;
background-color:#ccc;background-image:linear-gradient(45deg,#999 25%,transparent 25%,transparent 75%,#999 75%),
linear-gradient(45deg,#999 25%,transparent 25%,transparent 75%,#999 75%);background-size:16px 16px;
background-position:0 0,8px 8px}
.media img,.media video{max-width:256px;max-height:256px}
.cap{font-size:12px;color:#555;margin-top:4px;word-break:break-word}
.sheet{max-width:100%;margin-top:24px;border:1px solid #ddd}
"""


def pack_html(title: str, entries: list[HtmlEntry], *, sheet_png: bytes | None = None) -> str:
    """A single self-contained HTML page embedding every entry (and the sheet) as data URIs."""
    cards = []
    for e in entries:
        uri = data_uri(e.data, e.mime)
        if e.mime.startswith("video/"):
            media = f'<video src="{uri}" autoplay loop muted playsinline></video>'
        else:
            media = f'<img src="{uri}" alt="{html.escape(e.name, quote=True)}">'
        cap = html.escape(e.name) + (f"<br>{html.escape(e.caption)}" if e.caption else "")
        cards.append(f'<div class="card"><div class="media">{media}</div><div class="cap">{cap}</div></div>')
    sheet = (f'<h2>Contact sheet</h2><img class="sheet" src="{data_uri(sheet_png, "image/png")}" alt="contact sheet">'
             if sheet_png else "")
    t = html.escape(title)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head><body><h1>{t}</h1>"
            f'<div class="grid">{"".join(cards)}</div>{sheet}</body></html>\n')


def build_pack_preview(title: str, items: list[PackItem], *, extra: list[HtmlEntry] | None = None,
                       config: EncodeConfig | None = None, columns: int = 6,
                       encoded: list[EncodeResult] | None = None) -> PackPreview:
    """Encode every sticker with the ``preview`` target and build the sheet and the page. ``encoded``:
    the items' ``preview`` encodes already made (one per item, in order; e.g. on an encoder pool)."""
    if encoded is not None and len(encoded) != len(items):
        raise ValueError(f"{len(encoded)} preview encodes for {len(items)} stickers")
    previews: dict[str, EncodeResult] = {}
    entries: list[HtmlEntry] = []
    for i, item in enumerate(items):
        if item.name in previews:
            raise ValueError(f"duplicate sticker name {item.name!r} in the pack")
        res = encoded[i] if encoded is not None else encode(item.frames, item.fps, "preview", config)
        previews[item.name] = res
        r = res.report
        entries.append(HtmlEntry(item.name, res.data, res.mime,
                                 f"{r.frames_out} frames, {r.byte_size / 1000:.1f} kB preview"))
    entries.extend(extra or [])
    sheet = contact_sheet(items, columns=columns)
    return PackPreview(sheet, pack_html(title, entries, sheet_png=sheet), previews)


def with_quality(page: bytes, summary: str, notes: list[str] | tuple[str, ...] = ()) -> bytes:
    """The preview page with the pack's quality report (one line, plus why any measure is missing)
    shown under its title. The page is the one :func:`pack_html` writes."""
    html_text = page.decode("utf-8")
    marker = "</h1>"
    at = html_text.find(marker)
    if at < 0:
        raise ValueError("not a pack preview page: it has no <h1> title")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    section = (f'<div class="quality"><h2>Quality</h2><p>{html.escape(summary or "not measured")}</p>'
               + (f"<ul>{items}</ul>" if items else "") + "</div>")
    at += len(marker)
    return (html_text[:at] + section + html_text[at:]).encode("utf-8")
