"""An HTML report page: escaped text, tables, folded sections and plotly figures rendered on demand.

Everything a caller passes as text (run names, config keys and values, metric names, summary keys) is
HTML-escaped here; only the page's own markup is raw. Figures are stored as JSON in
``<script type="application/json">`` elements (plotly's encoder writes ``<``, ``>`` and ``/`` as ``\\uXXXX``
escapes, so no string can close the element) and drawn by a small script: at load for figures in the open
page, when their ``<details>`` is opened for folded ones. The plotly template shared by every figure is
written once, not once per figure.

plotly.js is loaded once per page: ``plotlyjs="inline"`` embeds it (a self-contained file, ~4.8 MB);
``"shared"`` writes ``plotly-<version>.min.js`` next to the report (once; reports in the same folder share
it) and loads it from there, so the page itself stays small.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import plotly.io as pio

from learndyn.report.data import format_value
from learndyn.validation import check_choice

PLOTLYJS_MODES = ("inline", "shared")
TEMPLATE = "plotly_white"

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; font-size: 0.9rem; }
nav { margin: 1rem 0; font-size: 0.9rem; } nav a { margin-right: 1rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.ld-verdict { font-size: 0.95rem; } table.ld-verdict th { background: #e8eef7; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.status-completed { color: #1a7f37; } .status-failed, .status-diverged { color: #c62828; }
.status-interrupted, .status-running { color: #b26a00; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; border-radius: 2px; }
.ld-figure { margin: 0.5rem 0 1.5rem; min-height: 2rem; } .note { color: #666; font-style: italic; }
.error { color: #c62828; white-space: pre-wrap; }
details { margin: 0.5rem 0; } details > summary { cursor: pointer; font-weight: 600; padding: 0.3rem 0; }
details details { margin-left: 1rem; }
"""

# Collects script errors on the page (read by the browser test; harmless otherwise).
ERROR_TRAP = (
    "window.__ldErrors = []; window.addEventListener('error', function (e) "
    "{ window.__ldErrors.push(String(e.message)); });"
)

# Draws a figure from its JSON the first time it is visible: at load outside <details>, on opening inside.
RENDER = """
(function () {
  var template = JSON.parse(document.getElementById('ld-template').textContent);
  function draw(div) {
    if (div.dataset.drawn) return;
    div.dataset.drawn = '1';
    var spec = JSON.parse(document.getElementById(div.dataset.fig).textContent);
    spec.layout = spec.layout || {};
    spec.layout.template = template;
    Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true});
  }
  function drawVisible(root) {
    root.querySelectorAll('.ld-figure').forEach(function (div) {
      for (var p = div.parentElement; p && p !== root; p = p.parentElement) {
        if (p.tagName === 'DETAILS' && !p.open) return;
      }
      draw(div);
    });
  }
  document.addEventListener('DOMContentLoaded', function () {
    drawVisible(document.body);
    document.querySelectorAll('details').forEach(function (d) {
      d.addEventListener('toggle', function () { if (d.open) drawVisible(d); });
    });
  });
})();
"""


def esc(value: Any) -> str:
    """``value`` formatted (:func:`~learndyn.report.data.format_value`) and HTML-escaped."""
    return html.escape(format_value(value), quote=True)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def figure_json(fig: go.Figure) -> str:
    """The figure as JSON for a ``<script type="application/json">`` element, without its template."""
    spec = fig.to_plotly_json()
    spec.get("layout", {}).pop("template", None)
    text = pio.json.to_json_plotly(spec)
    return text.replace("<", "\\u003c").replace(">", "\\u003e")  # never closes the script element


class Page:
    """The body of a report page, built in order: headings, tables, notes, figures, folded sections."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.nav: list[tuple[str, str]] = []
        self.n_figures = 0
        self._open_folds = 0

    def heading(self, anchor: str | None, title: str, level: int = 2, *, nav: bool = False) -> None:
        if nav and anchor:
            self.nav.append((anchor, title))
        ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
        self.parts.append(f"<h{level}{ident}>{html.escape(title)}</h{level}>")

    def note(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        cls: str | None = None,
        cell_classes: Sequence[Sequence[str | None]] | None = None,
    ) -> None:
        """A table of escaped cells (numbers right-aligned); ``cell_classes[i][j]`` adds a CSS class."""
        klass = f' class="{cls}"' if cls else ""
        out = [f'<div class="scroll"><table{klass}><tr>']
        out += [f"<th>{html.escape(str(h))}</th>" for h in headers]
        out.append("</tr>")
        for i, row in enumerate(rows):
            out.append("<tr>")
            for j, value in enumerate(row):
                classes = ["num"] if is_number(value) else []
                if cell_classes is not None and cell_classes[i][j]:
                    classes.append(str(cell_classes[i][j]))
                attr = f' class="{" ".join(classes)}"' if classes else ""
                out.append(f"<td{attr}>{'' if value is None else esc(value)}</td>")
            out.append("</tr>")
        out.append("</table></div>")
        self.parts.append("".join(out))

    def raw(self, markup: str) -> None:
        """Markup the caller built and escaped itself."""
        self.parts.append(markup)

    def figure(self, fig: go.Figure) -> None:
        """A plotly figure, drawn when it is first visible."""
        self.n_figures += 1
        n = self.n_figures
        height = fig.layout.height or 450
        self.parts.append(
            f'<script type="application/json" id="ld-fig-{n}">{figure_json(fig)}</script>'
            f'<div class="ld-figure" id="ld-div-{n}" data-fig="ld-fig-{n}" style="height:{int(height)}px">'
            "</div>"
        )

    @contextmanager
    def fold(self, title: str, *, anchor: str | None = None, open_: bool = False) -> Iterator[None]:
        """Everything added inside goes into a ``<details>`` element (figures drawn when opened)."""
        ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
        opened = " open" if open_ else ""
        self.parts.append(f"<details{ident}{opened}><summary>{html.escape(title)}</summary>")
        try:
            yield
        finally:
            self.parts.append("</details>")


def plotly_script(mode: str, out_dir: Path) -> str:
    """The ``<script>`` that loads plotly.js for a report written into ``out_dir`` (see the module doc)."""
    check_choice("plotlyjs", mode, PLOTLYJS_MODES, owner="report")
    js = plotly.offline.get_plotlyjs()
    if mode == "inline":
        return f'<script type="text/javascript">{js}</script>'
    name = f"plotly-{plotly.__version__}.min.js"
    target = out_dir / name
    if not target.exists() or target.stat().st_size != len(js.encode("utf-8")):
        target.write_text(js, encoding="utf-8")
    return f'<script type="text/javascript" src="{html.escape(name, quote=True)}"></script>'


def render(page: Page, title: str, meta: str, plotly_tag: str) -> str:
    """The whole HTML document."""
    template = pio.json.to_json_plotly(pio.templates[TEMPLATE].to_plotly_json())
    template = template.replace("<", "\\u003c").replace(">", "\\u003e")
    nav = " ".join(
        f'<a href="#{html.escape(a, quote=True)}">{html.escape(t)}</a>' for a, t in page.nav
    )
    body = "\n".join(page.parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} — learndyn report</title>
<style>{CSS}</style>
<script>{ERROR_TRAP}</script>
{plotly_tag}
<script type="application/json" id="ld-template">{template}</script>
<script>{RENDER}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(meta)}</p>
<nav>{nav}</nav>
{body}
</body>
</html>
"""


def dumps(value: Any) -> str:
    """JSON for embedding in a page (``<`` and ``>`` escaped)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
