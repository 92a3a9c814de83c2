"""learndyn.report."""
