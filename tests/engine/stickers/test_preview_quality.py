"""The quality report in the preview page."""
import pytest

from engine.stickers.preview import HtmlEntry, pack_html, with_quality


def test_the_quality_line_and_notes_sit_under_the_title_escaped():
    page = pack_html("pack", [HtmlEntry("turn", b"GIF89a", "image/gif")]).encode()
    shown = with_quality(page, "Quality: likeness 0.62 <b>", ["multiview: no opaque pixels"]).decode()
    assert shown.index("</h1>") < shown.index('<div class="quality">') < shown.index('<div class="grid">')
    assert "Quality: likeness 0.62 &lt;b&gt;" in shown and "<li>multiview: no opaque pixels</li>" in shown
    assert "not measured" in with_quality(page, "").decode()
    with pytest.raises(ValueError, match="no <h1>"):
        with_quality(b"<html></html>", "x")
