"""CLI polish: list says how many runs the store holds, sweep ids in full, sweeps listed and shown,
--version, report --plotlyjs shared."""

from __future__ import annotations

from _report_kinds import log_run


def test_list_show_sweeps_version_and_shared_report(cli, store, tmp_path):
    for a in (1, 2, 3):
        log_run(store, "grid-demo", {"a": a}, steps=3, sweep_id="a-long-sweep-identifier")
    listed = cli("list", "--limit", "2")
    assert listed.exit_code == 0 and "the newest 2 of 3 runs" in listed.output
    assert "a-long-sweep-identifier" in cli("list").output  # not cut to 8 characters
    sweeps = cli("list", "--sweeps")
    assert "a-long-sweep-identifier" in sweeps.output and "completed 3" in sweeps.output
    shown = cli("show", "a-long-sweep-identifier")
    assert shown.exit_code == 0 and "3 runs" in shown.output
    assert cli("--version").output.startswith("learndyn ")
    out = tmp_path / "r" / "sweep.html"
    report = cli("report", "a-long-sweep-identifier", "--out", str(out), "--plotlyjs", "shared")
    assert report.exit_code == 0 and out.stat().st_size < 1_500_000
    assert list(out.parent.glob("plotly-*.min.js"))
    bad = cli("report", "a-long-sweep-identifier", "--plotlyjs", "cdn")
    assert bad.exit_code == 2 and "allowed: inline, shared" in bad.output
