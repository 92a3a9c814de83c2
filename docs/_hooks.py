"""mkdocs hooks: the Phenomena section lists every page in docs/phenomena/ (new pages appear without editing
mkdocs.yml), docs/probes.md joins "Probes and metrics" when it exists, and metrics.md gets the glossary
table generated from learndyn.glossary (one source of truth)."""

from __future__ import annotations

from pathlib import Path


def _section(nav: list, title: str) -> list | None:
    for item in nav:
        if isinstance(item, dict) and title in item:
            return item[title]
    return None


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    phenomena = _section(config["nav"], "Phenomena")
    if phenomena is not None:
        pages = sorted(p.relative_to(docs).as_posix() for p in (docs / "phenomena").glob("*.md"))
        phenomena[:] = ["phenomena/index.md"] + [p for p in pages if p != "phenomena/index.md"]
    probes = _section(config["nav"], "Probes and metrics")
    if probes is not None and (docs / "probes.md").exists() and "probes.md" not in str(probes):
        probes.insert(0, {"Probes": "probes.md"})
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if page.file.src_uri != "metrics.md" or "<!-- glossary -->" not in markdown:
        return markdown
    from learndyn.glossary import GLOSSARY

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    rows = ["| metric | unit | meaning | formula | how to read it | healthy |", "|---|---|---|---|---|---|"]
    for m in GLOSSARY:
        kind = " (array)" if m.kind == "array" else ""
        rows.append(
            f"| `{m.pattern}`{kind} | {cell(m.unit)} | {cell(m.meaning)} | {cell(m.formula)} | "
            f"{cell(m.read)} | {cell(m.healthy)} |"
        )
    return markdown.replace("<!-- glossary -->", "\n".join(rows))
