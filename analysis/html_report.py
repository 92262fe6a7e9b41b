"""summary/report.html: report.md as one web page, every figure embedded (base64 PNG).

report.md stays the source; markdown-it-py (CommonMark with tables) renders it, and each image
that points at a file beside it is inlined as a `data:` URI, so the page opens in any browser
alone: mailed, attached to a ticket or copied off a cluster without figures/.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from pathlib import Path

from markdown_it import MarkdownIt

from study.core.files import write_text_atomic
from study.core.names import REPORT_HTML, REPORT_MD

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


def _inline_images(tokens: list, folder: Path) -> list[str]:
    """Replace each local image's src with a data: URI; return the images that were missing."""
    missing = []
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            src = child.attrGet("src") or ""
            if ":" in src.split("/")[0]:  # a URL (http:, data:): left as it is
                continue
            path = (folder / src).resolve()
            if not path.is_file():
                missing.append(src)
                continue
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            child.attrSet("src", f"data:{kind};base64,{data}")
    return missing


def render_html(markdown: str, folder: Path, title: str = "Study report") -> str:
    """Return the page for `markdown`, images relative to `folder` embedded."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    missing = _inline_images(tokens, folder)
    body = md.renderer.render(tokens, md.options, {})
    if missing:
        body += ("<p><strong>Figures not found when this page was written:</strong> "
                 + ", ".join(html.escape(m) for m in missing) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def write_html_report(out: Path) -> Path:
    """Write out/report.html from out/report.md and the figures it links; return its path."""
    out = Path(out)
    markdown = (out / REPORT_MD).read_text()
    first = markdown.splitlines()[0] if markdown else ""
    title = first.lstrip("# ").strip() or "Study report"
    path = out / REPORT_HTML
    write_text_atomic(path, render_html(markdown, out, title))
    return path
