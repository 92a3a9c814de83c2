"""The metric structures of :class:`~learndyn.optim.CovariantGD`, one module each, in one table.

:data:`STRUCTURES` maps each ``structure=`` name to its :class:`~learndyn.optim.structures.base.Structure`;
the optimizer, the memory guard, the optimizer labels (:mod:`learndyn.optim.spec`) and the experiments read
the names from here. Adding a structure is one module plus one line below.

- ``diag`` (:mod:`.diag`): elementwise; Adam, AdaBelief, RMSprop and SGD as limits.
- ``kron`` (:mod:`.kron`): Kronecker factors per matrix-shaped parameter (Shampoo).
- ``block``, ``full`` (:mod:`.dense`): a dense matrix per parameter tensor / per parameter group.
- ``lowrank`` (:mod:`.lowrank`): top eigenpairs plus a diagonal remainder per parameter group.
"""

from learndyn.optim.structures.base import GroupStep, Structure
from learndyn.optim.structures.dense import BLOCK, FULL
from learndyn.optim.structures.diag import DIAG
from learndyn.optim.structures.kron import KRON
from learndyn.optim.structures.lowrank import LOWRANK

STRUCTURES: dict[str, Structure] = {s.name: s for s in (DIAG, KRON, BLOCK, FULL, LOWRANK)}
"""Every metric structure by name, in the order the docs and messages list them."""

__all__ = ["STRUCTURES", "GroupStep", "Structure"]
