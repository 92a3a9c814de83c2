"""What each report kind shows first, escaping of every user string, legends, single values, shared
plotly.js, curated PNGs and notebook display (the browser test renders the same reports)."""

from __future__ import annotations

import re

import pytest

from _report_kinds import XSS, build_store
from learndyn.report import Report, build_html_report, save_png_figures
from learndyn.report.data import run_labels
from learndyn.store import RunStore


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("kinds") / "s.duckdb")
    return store, build_store(store)


@pytest.fixture(scope="module")
def pages(kinds, tmp_path_factory):
    store, ids = kinds
    out = tmp_path_factory.mktemp("pages")
    return {kind: build_html_report(store, targets, out / f"{kind}.html", plotlyjs="shared").read_text()
            for kind, targets in ids.items()}


def _first_table(page: str) -> str:
    return re.search(r"<table[^>]*>.*?</table>", page, re.S).group(0)


def test_the_verdict_is_the_first_table(pages):
    assert 'class="ld-verdict"' in _first_table(pages["run"])  # a plain run: its status
    phen = _first_table(pages["phenomena"])
    assert "agreement" in phen and "tolerance" in phen and phen.count('class="pass">pass<') == 2
    assert phen.count('class="fail">FAIL<') == 1 and "2 of 3 pass" in pages["phenomena"]
    comparison = _first_table(pages["comparison"])
    assert all(h in comparison for h in ("winner", "runner-up", "margin", "rosenbrock-2d", "digits"))
    assert re.search(r"<td>cgd-diag</td>", comparison)  # the fastest-decaying curve wins
    sweep = _first_table(pages["sweep"])
    assert "best (mean ± std)" in sweep and "a=0.3, b=2" in sweep and "final_loss" in sweep
    assert pages["sweep"].index("ld-verdict") < pages["sweep"].index("Phase diagrams: grid")


@pytest.mark.parametrize("kind", ["run", "phenomena", "comparison", "sweep"])
def test_every_user_string_is_escaped(pages, kind):
    page = pages[kind]
    assert XSS not in page and "<img" not in page
    if kind == "run":  # the run name, config key, metric name and summary key all reach the page, escaped
        assert page.count(XSS.replace("<", "&lt;").replace(">", "&gt;")) >= 3
        assert "\\u003cimg src=x onerror=alert(1)\\u003e" in page  # inside figure JSON


def test_pages_are_small_with_shared_plotly_and_fold_automatic_plots(pages, kinds):
    for kind, page in pages.items():
        assert len(page.encode()) < 1_500_000, kind
        assert '<script type="text/javascript" src="plotly-' in page and page.count("<script") < 400
        assert page.count('"template"') == 0  # the shared template is written once, not per figure
    run = pages["run"]
    head, folded = run.split('id="all-metrics"', 1)
    assert head.count('class="ld-figure"') == 1  # the curated theory-vs-simulation overlay
    assert folded.count('class="ld-figure"') >= 5
    assert "target/only-once" in folded and "Single values (1)" in folded  # a table row, not a plot
    assert "target/only-once" not in head


def test_legends_name_only_what_differs():
    a = {"id": "a" * 32, "name": "deep-linear", "config": {"tolerance": 0.02, "lr": 1.0, "seed": 0}}
    b = {"id": "b" * 32, "name": "symmetry", "config": {"tolerance": 0.05, "activation": None}}
    c = {"id": "c" * 32, "name": "symmetry", "config": {"tolerance": 0.05, "activation": "relu"}}
    assert run_labels([a, b]) == ["deep-linear", "symmetry"]
    assert run_labels([a, b, c]) == ["deep-linear", "symmetry activation=None", "symmetry activation=relu"]
    assert run_labels([b, c]) == ["activation=None", "activation=relu"]


def test_inline_report_is_self_contained(kinds, tmp_path):
    store, ids = kinds
    page = build_html_report(store, ids["run"], tmp_path / "r.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and len(page) > 3_000_000
    assert not (tmp_path / "plotly").exists() and not list(tmp_path.glob("plotly-*.js"))


def test_notebook_display(kinds):
    store, ids = kinds
    report = Report(store, ids["phenomena"])
    shown = report._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "ld-verdict" in shown and XSS not in shown
    with store.start_run(XSS, {XSS: 1}) as run:
        run.log(0, {"loss": 1.0})
        run.flush()
        assert "running" in run._repr_html_()
    shown = run._repr_html_()
    assert "completed" in shown and XSS not in shown and "&lt;img" in shown and "loss" in shown


def test_curated_figures_as_png(kinds, tmp_path):
    store, ids = kinds
    paths = save_png_figures(store, ids["comparison"][0], tmp_path / "png")
    names = sorted(p.name for p in paths)
    assert names[0].startswith("figure-1-optimizer-comparison") and "loss.png" in names
    assert not any("target" in n for n in names)  # single values are not drawn
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
