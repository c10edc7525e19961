# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What a person sees of a page: open it in headless Chromium (Debian's ``chromium``) and read the DOM after load."""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

# Each image as the browser has it once the page has loaded, and each gallery's pictures (their alt: the path).
READ_PAGE = """() => {
    const images = [...document.images].map(image => ({
        src: image.getAttribute("src").slice(0, 80), loaded: image.complete && image.naturalWidth > 0,
    }));
    const galleries = {};
    for (const heading of document.querySelectorAll("h2")) {
        for (let next = heading.nextElementSibling; next && next.tagName !== "H2"; next = next.nextElementSibling) {
            if (next.classList.contains("gallery")) {
                galleries[heading.textContent] = [...next.querySelectorAll("img")].map(image => image.alt);
            }
        }
    }
    return {images, galleries};
}"""


@dataclass
class Rendered:
    """A page as rendered: its screenshot, its images and whether each loaded, its galleries, what it asked for."""

    screenshot: np.ndarray
    images: list[dict]
    galleries: dict[str, list[str]]
    requests: list[str]

    @property
    def broken(self) -> list[str]:
        """The images that did not load."""
        return [image["src"] for image in self.images if not image["loaded"]]

    @property
    def blank(self) -> bool:
        """Whether the screenshot is one flat colour (or nearly): nothing was drawn."""
        grey = self.screenshot.mean(axis=-1)
        return len(np.unique(grey.round())) < 16 or grey.std() < 5


def chromium() -> str:
    """The Chromium executable (``$CHROMIUM``, else ``chromium`` on the path), or an error saying how to get it."""
    executable = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if executable is None:
        msg = (
            "Opening a page needs Chromium: install Debian's package (`apt-get install chromium`, which .ci/run "
            "does when it is missing) or point $CHROMIUM at a Chromium executable."
        )
        raise RuntimeError(msg)
    return executable


@contextmanager
def chromium_tab(height: int = 900) -> Iterator[Page]:
    """A 1280-pixel-wide tab of headless Chromium, closed with its browser afterwards."""
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": height})
        finally:
            browser.close()


def render(page: Path, screenshot: Path) -> Rendered:
    """Open ``page`` from its file, as a person opens a copied results folder, and save the whole page's screenshot."""
    requests: list[str] = []
    with chromium_tab() as tab:
        tab.on("request", lambda request: requests.append(request.url))
        tab.goto(page.resolve().as_uri(), wait_until="load")
        facts = tab.evaluate(READ_PAGE)
        tab.screenshot(path=screenshot, full_page=True)
    outside = [url for url in requests if not url.startswith(("file:", "data:"))]
    with Image.open(screenshot) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    return Rendered(pixels, facts["images"], facts["galleries"], outside)
