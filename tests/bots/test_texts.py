"""Every error key the code can raise has a sentence, and texts never raise."""
from __future__ import annotations

import pathlib
import re

from emoji3d import texts

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = re.compile(r'^\s+key\s*=\s*"([a-z0-9_]+)"', re.M)


def raised_keys() -> set[str]:
    keys: set[str] = set()
    for pkg in ("bots", "emoji3d", "storage", "engine"):
        for path in (ROOT / pkg).rglob("*.py"):
            keys.update(KEY.findall(path.read_text(encoding="utf-8")))
    return keys


def test_every_error_key_has_a_text():
    keys = raised_keys()
    assert {"consent_required", "job_active", "quota_exceeded", "telegram_not_started"} <= keys
    assert sorted(keys - set(texts.ERRORS)) == []


def test_texts_fill_or_degrade_without_raising():
    assert texts.message("quota_exceeded", limit=3).startswith("You've made 3 packs")
    assert "{" not in texts.message("quota_exceeded")  # a missing parameter degrades, never raises
    assert texts.message("no_such_key") == texts.ERRORS["internal"]
    for key, template in texts.BOT.items():
        names = set(re.findall(r"{(\w+)", template))
        assert "{" not in texts.text(key, **{n: 1 for n in names}), key


def test_every_engine_stage_has_a_name():
    """Each stage the engine reports (engine.tasks.STAGE_WEIGHTS) reads as words,
    never as the generic "working"."""
    from bots.core import ProgressView, progress_text
    from engine.tasks import STAGE_WEIGHTS

    generic = texts.text("stage_unknown")
    unnamed = [s for s in STAGE_WEIGHTS
               if generic in progress_text(ProgressView("progress", {"percent": 96}, stage_key=f"stage_{s}"))]
    assert unnamed == []
    assert "encode" in STAGE_WEIGHTS  # the stage that read "working (96%)"


def test_an_expired_selfie_says_when_it_was_deleted_in_words():
    """``[privacy] selfie_retention_hours = 0`` keeps nothing for later: never "after 0 hours"."""
    from bots.core import ProgressView, progress_text
    from emoji3d.errors import SelfieGone

    briefly = texts.message("selfie_expired", hours=0)
    assert "0 hours" not in briefly and texts.text("selfie_gone_briefly") in briefly
    assert texts.explain(SelfieGone("gone", hours=0)) == briefly
    assert "deleted 24 hours after upload, as promised" in texts.explain(SelfieGone("gone", hours=24))
    assert "deleted an hour after upload" in texts.message("selfie_expired", hours=1)
    assert texts.message("selfie_expired").startswith("Your selfie was deleted")  # no retention known: degrades
    assert "{" not in texts.message("selfie_expired") and "{" not in texts.message("selfie_expired", hours="soon")
    # a job that failed on it: the job row keeps only the key, the bot adds the configured retention
    for hours, words in ((0, texts.text("selfie_gone_briefly")), (48, "48 hours after upload")):
        shown = progress_text(ProgressView("remake_failed", {"error_key": "selfie_expired", "hours": hours}))
        assert words in shown and "0 hours" not in shown.replace("48 hours", ""), shown
