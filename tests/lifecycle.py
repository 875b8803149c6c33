"""Test set-up that moves packs through the real life-cycle transitions of :mod:`storage.packs`."""
from __future__ import annotations

from storage import packs


def make_ready(db, pack_id: int, job_id: int | None = None) -> None:
    """The engine's steps for a pack whose job ``job_id`` (default: the pack's) succeeded: a pack not
    made yet renders, then becomes ready; a made pack (a remake) becomes ready showing ``job_id``."""
    pack = packs.get_pack(db, pack_id)
    if pack.status not in packs.MADE:
        assert packs.mark_rendering(db, pack_id)
    job_id = pack.job_id if job_id is None else job_id
    assert packs.mark_ready(db, pack_id) if job_id is None else packs.mark_made(db, pack_id, job_id)


def publish(db, pack_id: int, set_name: str | None = None) -> None:
    """Walk a pack to ``published`` the way the engine and a bot do (from any state it can take)."""
    pack = packs.get_pack(db, pack_id)
    if pack.status not in packs.MADE:
        make_ready(db, pack_id)
    assert packs.mark_uploading(db, pack_id, set_name or pack.platform_set_name or f"set{pack_id}")
    assert packs.mark_published(db, pack_id)
