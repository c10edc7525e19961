# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The README's picture of a report page: the top of the page as headless Chromium draws it, scaled down.

    python tools/screenshot_page.py bayes_pfl_demo/results/4_shot/BayesPFL/target/v0/report.html docs/images/report.png

It needs the ``test`` extra (playwright) and Debian's ``chromium`` (or ``$CHROMIUM``).
"""

import io
import os
import shutil
from pathlib import Path

from jsonargparse import CLI
from PIL import Image
from playwright.sync_api import sync_playwright


def screenshot_page(page: Path, output: Path, height: int = 1600, width: int = 896) -> None:
    """Save the top ``height`` pixels of ``page`` at 1280 pixels wide, scaled to ``width``.

    Args:
        page: The HTML page, opened from its file as a person opens a copied results folder.
        output: The PNG to write.
        height: How much of the page to keep, in browser pixels.
        width: The picture's width (the README shows it at this size).
    """
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        msg = "Chromium is missing: run `apt-get install chromium`, or point $CHROMIUM at a Chromium executable."
        raise SystemExit(msg)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])  # root in CI
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": height})
            tab.goto(page.resolve().as_uri(), wait_until="load")
            picture = Image.open(io.BytesIO(tab.screenshot()))
        finally:
            browser.close()
    scaled = picture.convert("RGB").resize((width, round(height * width / 1280)), Image.Resampling.LANCZOS)
    output.parent.mkdir(parents=True, exist_ok=True)
    scaled.save(output, optimize=True)  # in full colour: a palette shifts the plots' colours
    print(f"Wrote {output} ({output.stat().st_size // 1024} KB, {scaled.width} x {scaled.height}) from {page}")


if __name__ == "__main__":
    CLI(screenshot_page, as_positional=True)
