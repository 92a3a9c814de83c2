"""learndyn: drive, measure and explain the learning dynamics of neural networks.

Drive   -- :class:`learndyn.optim.CovariantGD`, the geometric optimizer family ``dq = -lr g^{-1} F``.
Measure -- probes in :mod:`learndyn.probes` run by a :class:`learndyn.probes.Monitor`.
Explain -- closed forms in :mod:`learndyn.theory` and reproducible experiments in :mod:`learndyn.phenomena`.
"""

__version__ = "0.1.0"
