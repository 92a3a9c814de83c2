"""learndyn.optim."""
