"""learndyn.store."""
