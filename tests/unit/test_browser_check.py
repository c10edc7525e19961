# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The browser check itself: it sees a picture that does not load, an empty page and a request to the network."""

from PIL import Image

from ..browser import render


def test_the_browser_check_sees_broken_pictures_blank_pages_and_requests_outside(tmp_path):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "drawn.png")
    (tmp_path / "page.html").write_text(
        '<html><body><h1>A page</h1><h2>Gallery</h2><div class="gallery"><img src="drawn.png" alt="a">'
        '<img src="missing.png" alt="b"></div><img src="http://example.invalid/x.png" alt="c"></body></html>'
    )
    (tmp_path / "blank.html").write_text("<html><body></body></html>")

    page = render(tmp_path / "page.html", tmp_path / "page.png")
    blank = render(tmp_path / "blank.html", tmp_path / "blank.png")

    assert page.broken == ["missing.png", "http://example.invalid/x.png"]
    assert page.galleries == {"Gallery": ["a", "b"]}
    assert page.requests == ["http://example.invalid/x.png"]
    assert not page.blank
    assert blank.blank
