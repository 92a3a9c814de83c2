"""``learndyn metrics [NAME]``: the metric glossary in the terminal (registered by :mod:`learndyn.cli.main`).

With a metric name (``noise/temperature``, ``repr/0/pr``) it prints that metric's entry; with a word
(``kernel``, ``temperature``) every entry that mentions it; with nothing, one line per entry.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from learndyn.cli.common import CliError, console

__all__ = ["metrics"]


def metrics(
    name: Annotated[
        str | None,
        typer.Argument(metavar="[NAME]", help="A metric name (noise/temperature) or a word (kernel).",
                       show_default=False),
    ] = None,
) -> None:
    """Explain metric names: meaning, formula, unit, how to read it and what is healthy."""
    from learndyn.glossary import GLOSSARY, lookup, search

    out = console()
    if name is None:
        table = Table(title=f"{len(GLOSSARY)} metric glossary entries (learndyn metrics NAME for one)",
                      title_justify="left")
        for col in ("metric", "unit", "meaning"):
            table.add_column(col, overflow="fold")
        for m in GLOSSARY:
            table.add_row(m.pattern, m.unit, m.meaning)
        out.print(table)
        return
    exact = lookup(name)
    found = [exact] if exact is not None else search(name)
    if not found:
        raise CliError(f"no glossary entry for {name!r}; `learndyn metrics` lists every metric")
    for m in found:
        table = Table(title=m.pattern if exact is None or m.pattern == name else f"{name}  ({m.pattern})",
                      title_justify="left", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for label, value in (
            ("meaning", m.meaning), ("formula", m.formula), ("unit", m.unit), ("kind", m.kind),
            ("how to read", m.read), ("healthy", m.healthy), ("emitted by", m.source),
        ):
            table.add_row(label, value)
        out.print(table)
