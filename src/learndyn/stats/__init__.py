"""learndyn.stats."""
