"""REPORT.html: the markdown report rendered with every figure embedded as a base64 data: URI, so
the page is one self-contained file that renders wherever it is opened (an MLflow artifact store
serves it without the figures beside it)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:13px;margin-bottom:.5em}td,th{border:1px solid #ccc;padding:3px 6px}"
         "img{max-width:100%;display:block;margin:1em 0}"
         "code{font-size:11px}")
_IMG = re.compile(r'<img\b[^>]*?\bsrc="([^"]+)"[^>]*>')


def embed_images(body: str, base_dir: Path) -> str:
    """Each <img src> that names a local file becomes a data: URI; one that cannot be read becomes a
    visible note instead of a broken image."""
    def replace(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        if src.startswith(("data:", "http://", "https://")):
            return m.group(0)
        path = Path(base_dir) / src
        if not path.is_file():
            return f"<p><em>figure {html.escape(src)} is missing</em></p>"
        mime = MIME.get(path.suffix.lower(), "application/octet-stream")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return m.group(0).replace(f'src="{m.group(1)}"', f'src="data:{mime};base64,{data}"')

    return _IMG.sub(replace, body)


def to_html(markdown_text: str, title: str, base_dir: Path | None = None) -> str:
    """The report as one HTML page; images relative to `base_dir` (the results folder) embedded."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    if base_dir is not None:
        body = embed_images(body, base_dir)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
