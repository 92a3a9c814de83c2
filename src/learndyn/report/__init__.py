"""learndyn.report: figures and reports that read the run store (never write it).

- :func:`build_html_report` — one interactive HTML file of runs or a sweep, verdict first (plotly.js inlined,
  or shared next to the report with ``plotlyjs="shared"``); :class:`Report` — the same as an object that
  displays itself in a notebook;
- :func:`save_png_figures` — matplotlib PNGs of a run for papers;
- :func:`register_figure` — add experiment-specific plotly figures to the report (an experiment's own
  figures are in its registry record: :class:`learndyn.phenomena.registry.Experiment`).

Imports are lazy: ``import learndyn.report`` does not load plotly or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from learndyn.report.hooks import register_figure, unregister_figure

if TYPE_CHECKING:
    from learndyn.report.html import Report, build_html_report
    from learndyn.report.png import save_png_figures

__all__ = ["Report", "build_html_report", "register_figure", "save_png_figures", "unregister_figure"]


def __getattr__(name: str) -> Any:
    if name in ("build_html_report", "Report"):
        from learndyn.report import html

        return getattr(html, name)
    if name == "save_png_figures":
        from learndyn.report.png import save_png_figures

        return save_png_figures
    raise AttributeError(f"module 'learndyn.report' has no attribute {name!r}")
