"""The ``learndyn`` command line."""

from __future__ import annotations

import typer

from learndyn import __version__

app = typer.Typer(help="learndyn: drive, measure and explain neural-network learning dynamics.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """learndyn: drive, measure and explain neural-network learning dynamics."""


@app.command()
def version() -> None:
    """Print the installed learndyn version."""
    typer.echo(__version__)
