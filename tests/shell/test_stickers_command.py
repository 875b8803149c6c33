"""Contact sheet, HTML page and the ``emoji3d stickers`` CLI."""
import base64
import io
import re

import numpy as np
from PIL import Image

from shell.commands.stickers import load_frames_dir, main
from engine.stickers.preview import HtmlEntry, PackItem, build_pack_preview, contact_sheet, pack_html
from engine.stickers.verify import verify

from tests.engine.stickers.content import cartoon


def test_contact_sheet_layout_and_transparency():
    items = [PackItem("smile", cartoon(10, 64, 96), 30), PackItem("wave", cartoon(3, 80, 80), 30)]
    png = contact_sheet(items, columns=4, cell=48, label_width=60)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size == (60 + 4 * 52 + 4, 2 * 52 + 4)
    arr = np.asarray(im.convert("RGB"))
    corner = arr[4:10, 64:70]  # a transparent corner of the first tile shows the checkerboard
    assert set(np.unique(corner)) <= {153, 204}


def test_pack_page_is_self_contained_and_escaped():
    items = [PackItem("<b>joy</b>", cartoon(6, 64, 64), 30)]
    extra = [HtmlEntry("tg", b"\x1a\x45\xdf\xa3fake", "video/webm", "telegram file")]
    pv = build_pack_preview("Pack & co", items, extra=extra)
    html = pv.html
    assert "<b>joy</b>" not in html and "&lt;b&gt;joy&lt;/b&gt;" in html and "Pack &amp; co" in html
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # nothing loaded from outside
    assert "<script" not in html and "<video" in html
    uris = re.findall(r'src="data:image/webp;base64,([^"]+)"', html)
    assert len(uris) == 1
    assert verify(base64.b64decode(uris[0]), "preview").ok
    assert pv.previews["<b>joy</b>"].report.container == "webp"
    assert pack_html("t", []).startswith("<!doctype html>")


def test_a_pack_page_from_previews_encoded_elsewhere_is_the_one_it_encodes_itself():
    import pytest

    from engine.stickers.encode import encode

    items = [PackItem("smile", cartoon(6, 64, 64), 30), PackItem("wave", cartoon(4, 48, 48), 15)]
    own = build_pack_preview("pack", items)
    given = build_pack_preview("pack", items, encoded=[encode(i.frames, i.fps, "preview") for i in items])
    assert given.html == own.html and given.sheet_png == own.sheet_png
    with pytest.raises(ValueError, match="1 preview encodes for 2 stickers"):
        build_pack_preview("pack", items, encoded=[own.previews["smile"]])


def _write_frames(d, frames, names=None):
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        name = names[i] if names else f"frame_{i + 1}.png"
        Image.fromarray(f, "RGBA").save(d / name)


def test_frames_dir_is_read_in_numeric_order(tmp_path):
    frames = cartoon(12, 32, 32)
    _write_frames(tmp_path / "f", frames)  # frame_1 .. frame_12: lexical order would put 10 before 2
    got = load_frames_dir(tmp_path / "f")
    assert len(got) == 12 and all((a == b).all() for a, b in zip(got, frames))


def test_cli_encode_verify_roundtrip(tmp_path, capsys):
    _write_frames(tmp_path / "f", cartoon(6, 60, 90))
    out = tmp_path / "s.webm"
    assert main(["encode", str(tmp_path / "f"), "--target", "telegram_emoji", "--out", str(out),
                 "--json", str(tmp_path / "r.json")]) == 0
    assert verify(out, "telegram_emoji").ok and (tmp_path / "r.json").stat().st_size > 0
    assert main(["verify", str(out), "--target", "telegram_emoji"]) == 0
    assert main(["verify", str(out), "--target", "discord_emoji"]) == 1
    text = capsys.readouterr().out
    assert "OK" in text and "wrong_container" in text
    assert main(["verify", str(tmp_path / "missing.webm"), "--target", "telegram_emoji"]) == 2
    assert main(["encode", str(tmp_path / "nothing"), "--target", "telegram_emoji", "--out", str(out)]) == 2
    assert main(["encode", str(tmp_path / "f"), "--target", "nope", "--out", str(out)]) == 2


def test_cli_preview(tmp_path):
    _write_frames(tmp_path / "a", cartoon(4, 40, 40))
    _write_frames(tmp_path / "b", cartoon(4, 40, 40))
    assert main(["preview", str(tmp_path / "a"), str(tmp_path / "b"), "--out-dir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "o" / "index.html").read_text().count('class="card"') == 2
