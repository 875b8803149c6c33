"""The engine makes a Telegram pack's custom emoji from the sticker renders, and none when config says no; a bot's
pack gets the contact sheet but not the preview page."""
from __future__ import annotations

import dataclasses

from emoji3d.config import TelegramConfig
from emoji3d.orders import RerenderOrder
from engine.stickers.verify import verify
from tests.engine.test_rerender import engine, finished_pack, run_rerender, stored_avatar  # noqa: F401


def test_a_telegram_pack_gets_a_custom_emoji_per_sticker_and_none_when_off(engine):  # noqa: F811
    cfg, db, blobs, res = engine
    user_id, pack_id, source = finished_pack(db, blobs, stored_avatar(res, db, blobs))
    job = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=1.0,
                                                          platform="telegram"))
    assert job.status == "succeeded", job.error
    stickers = job.result["stickers"]
    assert [s["name"] for s in stickers] == ["turn", "nod"]
    assert job.result["preview_html"] is None and job.result["preview_png"]  # a bot's pack: the sheet, no page
    for s in stickers:
        assert set(s["files"]) == {"telegram_video", "telegram_emoji"}
        emoji = blobs.read_bytes(s["files"]["telegram_emoji"])
        report = verify(emoji, "telegram_emoji")
        assert report.ok, report.summary()
        assert (report.props.width, report.props.height) == (100, 100) and len(emoji) <= 64_000
    res.cfg = dataclasses.replace(res.cfg, telegram=TelegramConfig(custom_emoji=False))
    try:
        off = run_rerender(cfg, db, blobs, res, RerenderOrder(user_id, pack_id, source, strength=0.5,
                                                              platform="telegram"))
    finally:
        res.cfg = cfg
    assert off.status == "succeeded", off.error
    assert all(set(s["files"]) == {"telegram_video"} for s in off.result["stickers"])
