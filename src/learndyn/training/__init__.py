"""learndyn.training: the training loops every experiment uses.

- :func:`train_loop` (:mod:`.loop`) -- one ``nn.Module`` and a ``torch.optim.Optimizer`` on seeded
  minibatches, with logging, evaluations, a :class:`~learndyn.probes.Monitor`, divergence detection and
  exact resume from checkpoints;
- :func:`train_ensemble` (:mod:`.ensemble`) -- ``B`` models of one architecture in one vectorised pass
  (``torch.func``) with a stacked optimizer, member by member the semantics of ``train_loop``;
- :mod:`.losses` -- losses in the convention of :mod:`learndyn.theory`.
"""

from learndyn.training.ensemble import EnsembleTrace, StackedStep, train_ensemble
from learndyn.training.loop import Batch, LoopResult, loop_state, restore_loop_state, train_loop

__all__ = [
    "Batch",
    "EnsembleTrace",
    "LoopResult",
    "StackedStep",
    "loop_state",
    "restore_loop_state",
    "train_ensemble",
    "train_loop",
]
