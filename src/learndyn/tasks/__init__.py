"""learndyn.tasks."""
