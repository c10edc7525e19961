# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The README's picture of a report page: the top of the page as headless Chromium draws it, scaled down.

    python -m tools.screenshot_page bayes_pfl_demo/results/4_shot/BayesPFL/target/v0/report.html docs/images/report.png

Run from the repository root: it opens the page as the browser tests do (``tests/browser.py``), so it needs the
``test`` extra (playwright) and Debian's ``chromium`` (or ``$CHROMIUM``).
"""

import io
from pathlib import Path

from jsonargparse import CLI
from PIL import Image

from tests.browser import chromium_tab


def screenshot_page(page: Path, output: Path, height: int = 1600, width: int = 896) -> None:
    """Save the top ``height`` pixels of ``page`` at 1280 pixels wide, scaled to ``width``.

    Args:
        page: The HTML page, opened from its file as a person opens a copied results folder.
        output: The PNG to write.
        height: How much of the page to keep, in browser pixels.
        width: The picture's width (the README shows it at this size).
    """
    if not page.is_file():
        msg = f"{page} is not a file: give the report.html whose path a run printed (the demo prints it last)."
        raise SystemExit(msg)
    with chromium_tab(height) as tab:
        tab.goto(page.resolve().as_uri(), wait_until="load")
        picture = Image.open(io.BytesIO(tab.screenshot()))
    scaled = picture.convert("RGB").resize((width, round(height * width / 1280)), Image.Resampling.LANCZOS)
    output.parent.mkdir(parents=True, exist_ok=True)
    scaled.save(output, optimize=True)  # in full colour: a palette shifts the plots' colours
    print(f"Wrote {output} ({output.stat().st_size // 1024} KB, {scaled.width} x {scaled.height}) from {page}")


if __name__ == "__main__":
    CLI(screenshot_page, as_positional=True)
