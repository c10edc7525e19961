# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""One HTML page of sections, with no script and no address outside its folder, so that a copied folder opens."""

import html
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.8em; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
figure { display: inline-block; margin: 0.5em; max-width: 500px; vertical-align: top; font-size: 0.8em; }
figure img { display: block; }
.plot { max-width: 100%; }
code { word-break: break-all; }
"""


@dataclass
class Page:
    """The parts of a page, in order."""

    title: str
    sections: list[str] = field(default_factory=list)

    def add(self, heading: str, body: str, note: str = "") -> None:
        """A section with a heading, a line that says what it shows, and its body."""
        explanation = f"<p>{html.escape(note)}</p>" if note else ""
        self.sections.append(f"<h2>{html.escape(heading)}</h2>{explanation}{body}")

    def write(self, path: Path) -> None:
        """The page as one HTML file."""
        body = "".join(self.sections)
        title = html.escape(self.title)
        path.write_text(
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>",
            encoding="utf-8",
        )
