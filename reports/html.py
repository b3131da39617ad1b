"""HTML assembly: self-contained pages (plotly.js inlined once per page, no network access
needed to view them), tables, and atomic writes."""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.offline import get_plotlyjs

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1150px; color: #222;
       padding: 0 1rem; }
h1 { font-size: 1.45rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
p.summary { color: #444; margin-top: 0; }
div.warn { background: #fff6e0; border-left: 4px solid #e0a000; padding: .4rem .8rem; }
div.warn li, p.warn { color: #7a4b00; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ccc; padding: .2rem .55rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fde8e8; color: #a00; }
tr.pending td { color: #777; font-style: italic; }
tr.yes td { background: #e8f4ea; }
.figure { margin: 1rem 0 1.5rem; }
nav a { margin-right: .8rem; }
"""


def esc(x: object) -> str:
    """Text for HTML; None and NaN (a missing value in a table) are empty."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return html.escape(str(x))


def num(x: object, fmt: str = "{:.2f}") -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return esc(x)
    return "" if math.isnan(v) else fmt.format(v)


class Page:
    """A page under construction: figures share one inlined plotly.js."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{esc(title)}</h1>"]
        self._plotly_included = False
        self._figures = 0

    def add(self, raw_html: str) -> None:
        self.parts.append(raw_html)

    def heading(self, text: str, anchor: str = "") -> None:
        aid = f' id="{esc(anchor)}"' if anchor else ""
        self.parts.append(f"<h2{aid}>{esc(text)}</h2>")

    def para(self, text: str, cls: str = "") -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{esc(text)}</p>")

    def warnings(self, lines: Sequence[str], title: str = "") -> None:
        if not lines:
            return
        head = f"<strong>{esc(title)}</strong>" if title else ""
        items = "".join(f"<li>{esc(x)}</li>" for x in lines)
        self.parts.append(f'<div class="warn">{head}<ul>{items}</ul></div>')

    def figure(self, fig: dict) -> None:
        """A figure dict (see reports.figures), drawn by the page's one plotly.js (inlined
        before the first figure). Ids are numbered, so the same results give the same page."""
        layout = dict(fig["layout"])
        template = layout.pop("template", None)
        if not self._plotly_included:
            # plotly.js once, and the figures' shared template (their look) once.
            self.parts.append(
                f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
                f'<script type="text/javascript">var ablTemplate = {to_json(template)};</script>'
            )
            self._plotly_included = True
        self._figures += 1
        fid = f"figure-{self._figures}"
        height = int(layout.get("height", 450))
        config = {"displaylogo": False, "responsive": True}
        self.parts.append(
            f'<div class="figure"><div id="{fid}" style="height:{height}px; width:100%;"></div>'
            f'<script type="text/javascript">Plotly.newPlot("{fid}", {to_json(fig["data"])}, '
            f"Object.assign({{template: ablTemplate}}, {to_json(layout)}), {to_json(config)});"
            "</script></div>"
        )

    def table(
        self,
        df: pd.DataFrame,
        columns: Sequence[tuple[str, str, Callable[[object], str] | None]],
        row_class: Callable[[pd.Series], str] | None = None,
    ) -> None:
        """`columns`: (column, header, formatter); a formatter's output is taken as text
        (escaped), numbers right-aligned."""
        head = "".join(f"<th>{esc(h)}</th>" for _, h, _ in columns)
        body = []
        for _, r in df.iterrows():
            cls = row_class(r) if row_class else ""
            cells = []
            for col, _, fmt in columns:
                v = r.get(col)
                if fmt is None:
                    cells.append(f"<td>{esc(v)}</td>")
                else:
                    cells.append(f'<td class="num">{esc(fmt(v))}</td>')
            c = f' class="{cls}"' if cls else ""
            body.append(f"<tr{c}>{''.join(cells)}</tr>")
        self.parts.append(
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )

    def html(self) -> str:
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                f"<title>{esc(self.title)}</title>",
                f"<style>{CSS}</style>",
                "</head>",
                "<body>",
                *self.parts,
                "</body>",
                "</html>",
            ]
        )

    def write(self, path: Path) -> Path:
        write_atomic(path, self.html())
        return path


def _clean(o: object) -> object:
    """A figure as plain JSON values: numpy arrays as lists, NaN (a gap, to plotly.js) and
    other non-finite floats as null."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        if o.dtype.kind == "f":
            return np.where(np.isfinite(o), o, None).tolist()
        if o.dtype.kind == "O":
            return [_clean(v) for v in o.tolist()]
        return o.tolist()
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def to_json(o: object) -> str:
    """JSON for a <script>: no "</" that could close the script element early (escaped as
    JSON strings allow)."""
    text = json.dumps(_clean(o), separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the target folder + os.replace, so readers never see a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write names no file; say which page it was
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
