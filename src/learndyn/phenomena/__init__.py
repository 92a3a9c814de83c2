"""learndyn.phenomena."""
