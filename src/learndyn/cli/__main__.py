"""``python -m learndyn.cli ...``: the same as the ``learndyn`` command."""

from learndyn.cli.main import app

app()
