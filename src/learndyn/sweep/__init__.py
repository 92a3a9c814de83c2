"""learndyn.sweep."""
