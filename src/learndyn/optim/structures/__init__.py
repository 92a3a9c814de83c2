"""The metric structures of :class:`~learndyn.optim.CovariantGD`, one module each, in one table.

:data:`STRUCTURES` maps each ``structure=`` name to its :class:`~learndyn.optim.structures.base.Structure`;
the optimizer, the memory guard, the optimizer labels (:mod:`learndyn.optim.spec`) and the experiments read
the names from here. Adding a structure is one module plus one line below.

- ``diag`` (:mod:`.diag`): elementwise; Adam, AdaBelief, RMSprop and SGD as limits.
- ``kron`` (:mod:`.kron`): Kronecker factors per matrix-shaped parameter (Shampoo).
- ``block``, ``full`` (:mod:`.dense`): a dense matrix per parameter tensor / per parameter group.
- ``lowrank`` (:mod:`.lowrank`): top eigenpairs plus a diagonal remainder per parameter group.

Writing a structure (:class:`~learndyn.optim.structures.base.Structure`): set ``name`` (and ``scope``,
``exact``, ``root_power``); implement ``elements`` (the memory guard), ``directions(ctx)`` (update the
statistics kept under your own keys in ``ctx.states``, refresh cached roots when
:func:`~learndyn.optim.structures.base.root_due`, return ``g⁻¹F`` per parameter) and ``diagonal`` (for the
probes); optionally ``covers`` (what to leave to ``diag``), ``validate`` (extra option checks), ``step``
(a fused update) and ``upgrade_state`` (old state dicts). A combination such as grafting can call two
structures' ``directions`` on the same :class:`GroupStep`; a structure with several blocks per parameter
or an eigenbasis refreshed on the root schedule keeps them as more per-parameter keys.
"""

from learndyn.optim.structures.base import GroupStep, Structure
from learndyn.optim.structures.dense import BLOCK, FULL
from learndyn.optim.structures.diag import DIAG
from learndyn.optim.structures.kron import KRON
from learndyn.optim.structures.lowrank import LOWRANK

STRUCTURES: dict[str, Structure] = {s.name: s for s in (DIAG, KRON, BLOCK, FULL, LOWRANK)}
"""Every metric structure by name, in the order the docs and messages list them."""

__all__ = ["STRUCTURES", "GroupStep", "Structure"]
