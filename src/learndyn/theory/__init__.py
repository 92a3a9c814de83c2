"""learndyn.theory."""
