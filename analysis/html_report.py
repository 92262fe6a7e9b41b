"""summary/report.html: report.md as one web page, every figure embedded (base64 PNG).

report.md stays the source; markdown-it-py (CommonMark with tables) renders it, and each figure
the report drew is inlined as a `data:` URI, so the page opens in any browser alone: mailed,
attached to a ticket or copied off a cluster without figures/. Nothing else is ever read into
the page: an image that names any other file (Markdown syntax in a recorded command or a path,
say `![e](/proc/self/environ)`) becomes its alt text, so no local file reaches a page meant to
be sent around.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Collection
from pathlib import Path

from markdown_it import MarkdownIt

from study.core.files import write_text_atomic
from study.core.names import FIGURES_DIR, REPORT_HTML, REPORT_MD

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.45; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f4f4f4; padding: 0.1rem 0.25rem; border-radius: 3px; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; }
h1, h2, h3 { line-height: 1.2; }
"""


def _inline_images(tokens: list, folder: Path, figures: Collection[str]) -> list[str]:
    """Replace each image of a drawn figure (`figures/NAME` with NAME in `figures`) by a data:
    URI and every other image by its alt text; return the drawn figures that were missing."""
    missing = []
    drawn = {f"{FIGURES_DIR}/{name}" for name in figures}
    for token in tokens:
        children = []
        for child in token.children or []:
            if child.type != "image":
                children.append(child)
                continue
            src = child.attrGet("src") or ""
            path = folder / src
            if src not in drawn:
                child.type, child.tag, child.content = "text", "", _alt(child)
                child.children, child.attrs = None, {}
            elif path.is_file() and not path.is_symlink():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                child.attrSet("src", f"data:image/png;base64,{data}")
            else:
                missing.append(src)
            children.append(child)
        if token.children is not None:
            token.children = children
    return missing


def _alt(image: object) -> str:
    """An image's alt text (markdown-it keeps it as the image's children)."""
    return "".join(c.content for c in getattr(image, "children", None) or [])


def render_html(markdown: str, folder: Path, figures: Collection[str],
                title: str = "Study report") -> str:
    """Return the page for `markdown`, the drawn `figures` (PNG file names in
    `folder`/figures/) embedded."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    missing = _inline_images(tokens, folder, figures)
    body = md.renderer.render(tokens, md.options, {})
    if missing:
        body += ("<p><strong>Figures not found when this page was written:</strong> "
                 + ", ".join(html.escape(m) for m in missing) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def write_html_report(out: Path, figures: Collection[str]) -> Path:
    """Write out/report.html from out/report.md and the `figures` the report drew (file names
    in out/figures/); return its path."""
    out = Path(out)
    markdown = (out / REPORT_MD).read_text()
    first = markdown.splitlines()[0] if markdown else ""
    title = first.lstrip("# ").strip() or "Study report"
    path = out / REPORT_HTML
    write_text_atomic(path, render_html(markdown, out, figures, title))
    return path
