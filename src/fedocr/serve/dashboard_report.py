"""`fedocr fl report RUN --html OUT.html`: one run's dashboard page as a single standalone file.

The page is the dashboard's own (same HTML, script and styles), with uPlot, the styles and the
run's data inlined, so it opens from disk with no server and no network: for an auditor, or a
paper's supplementary material. The latest round's client table is included; the charts cover
every round.
"""
from __future__ import annotations

import base64
import json
import re
from html import escape as html_escape
from pathlib import Path

from fedocr.federated.runs.reader import RunReader
from fedocr.model.checkpoint import atomic_write
from fedocr.serve.app import STATIC
from fedocr.serve.dashboard import round_detail, run_detail
from fedocr.serve.dashboard_cache import RunCache


class ReportError(Exception):
    """The run cannot be reported (no such run, unreadable store): a one-line reason."""


def _inline(html: str) -> str:
    """Replace the page's <link rel=stylesheet>, icon and <script src> by the files' contents."""
    def style(match: re.Match[str]) -> str:
        return f"<style>\n{(STATIC / match.group(1).removeprefix('/static/')).read_text(encoding='utf-8')}\n</style>"

    def script(match: re.Match[str]) -> str:
        code = (STATIC / match.group(1).removeprefix("/static/")).read_text(encoding="utf-8")
        return "<script>\n" + code.replace("</script", "<\\/script") + "\n</script>"

    def icon(match: re.Match[str]) -> str:
        data = base64.b64encode((STATIC / match.group(1).removeprefix("/static/")).read_bytes()).decode()
        return f'<link rel="icon" href="data:image/svg+xml;base64,{data}" type="image/svg+xml">'

    html = re.sub(r'<link rel="stylesheet" href="([^"]+)">', style, html)
    html = re.sub(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', icon, html)
    return re.sub(r'<script src="([^"]+)" defer></script>', script, html)


def render_report(store: Path, run_ref: str) -> str:
    """The standalone HTML of run `run_ref` (an id, id prefix or name) in `store`."""
    with RunReader(store) as reader:
        run_id = reader.store.find(run_ref)
        if run_id is None:
            raise ReportError(f"no run {run_ref!r} in {store}")
        detail = run_detail(reader, run_id, RunCache())
        last = round_detail(reader, run_id, detail.rounds[-1].round) if detail.rounds else None
    data = {"detail": detail.model_dump(mode="json"), "round": last.model_dump(mode="json") if last else None}
    # Any "<" inside the JSON could end the <script> element early or open a comment (a node names
    # itself): as \u003c it is the same JSON string and no HTML at all.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    html = html.replace("<title>fedocr · federation dashboard</title>",
                        f"<title>fedocr · {html_escape(detail.run.name)} ({html_escape(run_id)})</title>")
    # Before the (inlined, so no longer deferred) scripts: dashboard.js reads it when it loads.
    html = html.replace('<meta charset="utf-8">', '<meta charset="utf-8">\n<script type="application/json" '
                        f'id="report-data">{payload}</script>', 1)
    return _inline(html)


def write_report(store: Path, run_ref: str, out: Path) -> Path:
    html = render_report(store, run_ref)
    atomic_write(out, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return out
