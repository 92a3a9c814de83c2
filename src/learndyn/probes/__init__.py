"""learndyn.probes."""
