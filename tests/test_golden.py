"""Every recipe and conditioning mode renders to its recorded frames and audio (`tests/golden.py`): a change to
the render path that alters a single bit of any output fails here."""

from __future__ import annotations

import json

from tests.golden import GOLDEN, render_pinned


def test_every_recipe_and_conditioning_mode_renders_its_golden_hashes():
    expected = json.loads(GOLDEN.read_text())
    rendered = render_pinned()
    changed = sorted(case for case in expected.keys() | rendered.keys() if expected.get(case) != rendered.get(case))
    assert not changed, f"renders that differ from tests/golden_renders.json: {changed}"
