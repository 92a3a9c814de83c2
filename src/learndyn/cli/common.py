"""What every ``learndyn`` command shares: one-line errors, consoles, tables, the store, common options.

Bad input is a :class:`CliError` (or a :class:`~learndyn.validation.LearndynValueError`, or a store error):
:func:`friendly` turns it into one line on stderr and exit code 2, never a traceback. Nothing here imports
torch or the experiments; commands import what they need when they run.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from learndyn.validation import error_text

F = TypeVar("F", bound=Callable[..., Any])

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Run store file (default: $LEARNDYN_STORE or runs/learndyn.duckdb)."),
]

OpenOption = Annotated[
    bool,
    typer.Option("--open", help="Open the written HTML report in the default web browser."),
]

PLOTLYJS_MODES = ("inline", "shared")
PlotlyjsOption = Annotated[
    str,
    typer.Option(
        "--plotlyjs",
        help="inline: plotly.js inside the report (opens anywhere); shared: one plotly-<version>.min.js file "
        "next to the report, shared by every report in that folder (small pages).",
    ),
]

CheckpointOption = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        help="Training updates between checkpoints (0: none; default $LEARNDYN_CHECKPOINT_EVERY or 100).",
        show_default=False,
    ),
]


class CliError(Exception):
    """Bad input: printed as one line on stderr, exit code 2."""


# ------------------------------------------------------------------------------------------------ output
def console() -> Console:
    """The stdout console. Piped output (files, CI logs) gets wide tables instead of rich's 80 columns."""
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, soft_wrap=False, width=wide)


def error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    from rich.markup import escape

    error_console().print(f"[bold red]error:[/] {escape(message)}", markup=True)  # user text is never markup


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as one error line and exit with ``code``."""
    print_error(message)
    raise typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn bad-input exceptions into one line on stderr and exit code 2."""
    from learndyn.validation import LearndynValueError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from learndyn.store.runstore import StoreError

        try:
            return fn(*args, **kwargs)
        except (CliError, StoreError, LearndynValueError) as exc:
            fail(error_text(exc))
        except OSError as exc:  # a path given on the command line that cannot be read or written
            name = f": {exc.filename}" if exc.filename else ""
            fail(f"{exc.strerror or error_text(exc)}{name}")

    return wrapper  # type: ignore[return-value]


def fmt(value: Any) -> str:
    from learndyn.report.data import format_value

    return format_value(value)


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """A table with one row per dict (columns: every key, in order of appearance; numbers right-aligned)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        numeric = all(
            isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
            for r in rows
            if r.get(c) is not None
        )
        table.add_column(str(c), justify="right" if numeric else "left", overflow="fold", no_wrap=numeric)
    for row in rows:
        table.add_row(*(fmt(row.get(c, "")) if row.get(c) is not None else "" for c in columns))
    return table


def kv_table(
    items: Iterable[tuple[str, Any]], title: str, headers: tuple[str, str] = ("key", "value")
) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(headers[0], overflow="fold")
    table.add_column(headers[1], overflow="fold")
    for k, v in items:
        table.add_row(str(k), fmt(v))
    return table


# ------------------------------------------------------------------------------------------ store, files
def store_path(store: Path | None) -> Path:
    """``--store``, or the default store path."""
    from learndyn.store.runstore import default_store_path

    return store if store is not None else default_store_path()


def open_store(path: Path | None, *, create: bool):
    from learndyn.store.runstore import RunStore

    return RunStore(store_path(path), create=create)


def resolve_checkpoint_every(value: int | None) -> int:
    """``--checkpoint-every``, or the default (``$LEARNDYN_CHECKPOINT_EVERY``, else 100)."""
    from learndyn.checkpoint import default_checkpoint_every
    from learndyn.validation import check_int

    if value is None:
        return default_checkpoint_every()
    return check_int("--checkpoint-every", value, low=0)


def check_output_path(path: Path | None, option: str) -> None:
    """Refuse an output file that cannot be written, before anything runs."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"{option} {path} is a directory; allowed: a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{option} {path}: {parent} is not writable")


def open_in_browser(path: Path) -> None:
    """Open ``path`` in the default browser; on a machine without one, say where the file is instead."""
    import webbrowser

    uri = Path(path).resolve().as_uri()
    try:
        opened = webbrowser.open(uri)
    except webbrowser.Error:
        opened = False
    if not opened:
        console().print(f"no web browser found here; open {uri} yourself")
