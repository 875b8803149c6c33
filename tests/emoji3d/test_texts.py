"""User-facing texts: every error's sentence carries its reason."""
from __future__ import annotations

import re

from emoji3d.errors import UserFacingError
from emoji3d.texts import ERRORS, explain, message


def test_every_detail_placeholder_is_filled_from_the_error():
    with_detail = [key for key, template in ERRORS.items() if "{detail}" in template]
    assert with_detail
    for key in with_detail:
        err = UserFacingError("eg3d_ffhq/config.json not found")
        err.key = key
        sentence = explain(err)
        assert "eg3d_ffhq/config.json not found" in sentence, key
        assert not re.search(r":\s*\.?$", sentence), sentence  # never "...used:." with the reason lost


def test_a_missing_parameter_never_leaves_a_dangling_colon():
    assert message("style_invalid") == "That style can't be used."
