"""The ``learndyn`` command line (``learndyn = "learndyn.cli:app"``): the top layer.

- :mod:`.main` -- the app: ``run`` (one experiment, or ``all`` phenomena with a closed form), ``resume``,
  ``version``, and the registration of every command;
- :mod:`.inspect` -- ``list``, ``show``, ``compare``, ``report``: reading runs from the store;
- :mod:`.sweep` -- ``sweep``: many runs of one experiment, resumable, local or on Ray;
- :mod:`.common` -- what they share: one-line errors, consoles, tables, the store, common options.
"""

from learndyn.cli.main import app

__all__ = ["app"]
