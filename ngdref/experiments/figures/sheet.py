"""The contact sheet of ``ngdref reproduce all``: one HTML page showing every figure with its caption
and claims table (``DIR/index.html``, relative links, written atomically)."""

from __future__ import annotations

import html
import os
from pathlib import Path

from ...io import write_atomic

SHEET = "index.html"

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
figure{margin:0 0 3em 0;border-top:1px solid #ccc;padding-top:1em}img{max-width:100%}
table{border-collapse:collapse;font-size:0.9em;margin-top:0.8em}td,th{border:1px solid #ccc;padding:0.3em 0.5em;
vertical-align:top;text-align:left}.yes{color:#070}.no{color:#b00}.files{font-size:0.9em}nav li{margin:0.2em 0}"""


def _rel(path: str | Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()


def _caption_body(path: str | Path) -> list[str]:
    """The caption file's text paragraphs (its heading, claims table and Markdown marks left out)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    out = []
    for para in text.split("\n\n"):
        para = para.strip()
        if not para or para.startswith(("# ", "| ")):
            continue
        out.append(para.replace("**", "").replace("`", ""))
    return out


def contact_sheet(records: list[dict], root: str | Path, title: str = "ngdref reproduce all") -> str:
    """The HTML page for ``records`` (what :func:`~.run.run_figure` returned), links relative to ``root``."""
    root = Path(root)
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>", "<nav><ul>"]
    for rec in records:
        marks = [c["holds"] for c in rec["claims"]]
        verdict = f"{sum(m is True for m in marks)}/{len(marks)} claims hold"
        parts.append(f'<li><a href="#{e(rec["figure"])}">{e(rec["title"])}</a> — {e(verdict)}</li>')
    parts.append("</ul></nav>")
    for rec in records:
        files = rec["files"]
        parts.append(f'<figure id="{e(rec["figure"])}"><h2>{e(rec["title"])}</h2>')
        if "png" in files:
            parts.append(f'<img src="{e(_rel(files["png"], root))}" alt="{e(rec["title"])}">')
        elif "svg" in files:
            parts.append(f'<img src="{e(_rel(files["svg"], root))}" alt="{e(rec["title"])}">')
        else:
            parts.append(f"<p><em>no image: {e(str(rec.get('plot')))}</em></p>")
        parts.append("<figcaption>")
        parts += [f"<p>{e(p)}</p>" for p in _caption_body(files.get("caption", ""))]
        parts.append("</figcaption>")
        parts.append("<table><tr><th>claim</th><th>measured</th><th>paper</th><th>holds</th></tr>")
        for c in rec["claims"]:
            mark = {True: '<span class="yes">✓</span>', False: '<span class="no">✗</span>'}.get(c["holds"], "—")
            parts.append(f"<tr><td>{e(c['claim'])}</td><td>{e(str(c['measured']))}</td><td>{e(c['paper'])}</td>"
                         f"<td>{mark}</td></tr>")
        parts.append("</table>")
        links = " · ".join(f'<a href="{e(_rel(path, root))}">{e(kind)}</a>' for kind, path in files.items())
        parts.append(f'<p class="files">files: {links}; wall time {rec["wall_seconds"]:.1f} s; '
                     f"command: <code>{e(str(rec.get('command_line')))}</code></p></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_contact_sheet(records: list[dict], root: str | Path) -> str:
    """Write :func:`contact_sheet` atomically to ``root/index.html``; return its path."""
    path = Path(root) / SHEET
    write_atomic(path, contact_sheet(records, root))
    return str(path)
