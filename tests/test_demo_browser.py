"""The demo in a real browser: headless Chromium (Debian's package) uploads, submits, screenshots.

Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (apt: chromium chromium-driver) and the
`selenium` package; nothing is downloaded at run time. Set FASTV_DEMO_SCREENSHOT=PATH to keep
the screenshot (it is always written under pytest's tmp dir).
"""

from __future__ import annotations

import itertools
import os
import shutil

import pytest
from PIL import Image
from test_demo import PROMPT, SCENE, demo, server, tiny_dir  # noqa: F401  (shared fixtures)

from fastv.demo.browser import CHROMEDRIVER, CHROMIUM

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install chromium chromium-driver"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]


def test_browser_upload_submit_screenshot(server, tmp_path):  # noqa: F811
    assert CHROMEDRIVER.exists(), f"{CHROMEDRIVER} is missing: apt-get install chromium-driver"
    from fastv.demo.browser import compare_in_page, overlaps
    from fastv.demo.settings import Settings

    url, demo = server  # noqa: F811
    run = compare_in_page(url, SCENE, PROMPT, tmp_path / "demo.png", drag_ratio=60)
    if os.environ.get("FASTV_DEMO_SCREENSHOT"):
        shutil.copy(run.screenshot, os.environ["FASTV_DEMO_SCREENSHOT"])

    full_runs = demo.calls["full"]
    expected = demo.compare(SCENE, PROMPT, Settings(k=2, ratio=0.5))
    assert run.full_answer == (expected.full_answer or "(empty answer)")
    assert run.fastv_answer == (expected.fastv_answer or "(empty answer)")
    assert run.kept.startswith("8 / 16")
    assert "Cannot compare" not in run.message
    assert run.masked_src, "the greyed-out picture did not appear"
    assert Image.open(run.screenshot).size == (1280, 800)
    # Dragging R reran FastV alone: the full model's answer came from the cache.
    assert run.kept_after_drag and not run.kept_after_drag.startswith("8 / 16")
    assert demo.calls["full"] == full_runs
    # Readable at 1280x800: the main parts sit inside the page width and never overlap.
    for name, box in run.boxes.items():
        assert box[2] > 0 and box[3] > 0, f"{name} is not shown"
        assert box[0] >= 0 and box[0] + box[2] <= 1280, f"{name} runs off the page"
    for (a, box_a), (b, box_b) in itertools.combinations(run.boxes.items(), 2):
        assert not overlaps(box_a, box_b), f"{a} overlaps {b}"
    # The answers and both pictures are visible without scrolling.
    for name in ("full-answer", "fastv-answer", "kept", "masked", "chart"):
        x, y, w, h = run.boxes[name]
        assert y + h <= 800, f"{name} is below the fold"


def test_browser_example_runs_in_one_click(server):  # noqa: F811
    from fastv.demo.app import examples
    from fastv.demo.browser import run_example

    url, demo = server  # noqa: F811
    image, prompt = examples()[3]
    before = demo.calls["fastv"]
    shown_prompt, fastv_answer = run_example(url, index=3)
    assert shown_prompt == prompt
    assert fastv_answer
    assert demo.calls["fastv"] > before or (image, prompt) == (str(SCENE), PROMPT)
