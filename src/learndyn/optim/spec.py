"""The one optimizer factory: short labels → :class:`OptimizerSpec` → a :class:`torch.optim.Optimizer`.

Label grammar (:meth:`OptimizerSpec.parse`):

- ``sgd`` -- :class:`torch.optim.SGD`; ``momentum`` -- SGD with heavy-ball momentum 0.9;
- ``adam`` -- :class:`torch.optim.Adam`; ``adamw`` -- :class:`torch.optim.AdamW`;
- the peers of :data:`~learndyn.optim.peers.PEERS` -- ``muon`` (torch's Muon + AdamW), ``po-soap``,
  ``po-shampoo``, ``po-scalable-shampoo``, ``po-kron`` (pytorch_optimizer) and ``hb-soap`` (heavyball);
- ``cgd-<structure>[-a<alpha>][-k<k>]`` -- :class:`~learndyn.optim.CovariantGD` with a structure of
  :data:`~learndyn.optim.structures.STRUCTURES`, ``g = (εI + Ŝ)^α`` (default α = ½) and roots refreshed every
  ``k`` steps (default 1 for ``diag``, 10 otherwise). E.g. ``cgd-kron-a0.75-k5``.

Further keyword options go to the optimizer's constructor: ``build_optimizer(params, "sgd", 0.1,
momentum=0.5)``, ``OptimizerSpec.parse("cgd-diag").build(params, 1e-3, alpha=1.0, weight_decay=0.1)``; for
``cgd`` the options ``structure``, ``alpha`` and ``precondition_every`` replace the label's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from learndyn.optim.covariant import CovariantGD
from learndyn.optim.peers import PEERS, build_peer
from learndyn.optim.structures import STRUCTURES
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

FAMILIES = ("sgd", "momentum", "adam", "adamw", "cgd", *PEERS)
"""Optimizer families; every one but ``cgd`` is a label by itself (the peers: :data:`PEERS`)."""

_LABEL = re.compile(r"^cgd-(?P<structure>[a-z]+)(?:-a(?P<alpha>[0-9.]+))?(?:-k(?P<every>[0-9]+))?$")
_CGD_FIELDS = ("structure", "alpha", "precondition_every")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer configuration, without its learning rate.

    ``family``: ``sgd`` (plain), ``momentum`` (SGD, heavy-ball momentum 0.9), ``adam``, ``adamw`` or ``cgd``
    (:class:`~learndyn.optim.CovariantGD`, ``q <- q - lr (eps I + S)^{-alpha} F``) or a peer's label
    (:data:`~learndyn.optim.peers.PEERS`); ``structure``, ``alpha``
    and ``precondition_every`` apply to ``cgd`` only; ``options`` are further keyword arguments to the
    optimizer's constructor.
    """

    label: str
    family: str
    structure: str | None = None
    alpha: float | None = None
    precondition_every: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, label: str) -> OptimizerSpec:
        """Build a spec from a label: ``sgd``, ``momentum``, ``adam``, ``adamw``, a peer of :data:`PEERS`,
        ``cgd-<structure>[-a<alpha>][-k<k>]``. Defaults for ``cgd``: ``alpha = 0.5``; ``k = 1`` for ``diag``,
        else ``10``.
        """
        if not isinstance(label, str):
            raise LearndynValueError(f"optimizer={label!r} has type {type(label).__name__}; allowed: a label")
        if label in FAMILIES and label != "cgd":
            return cls(label=label, family=label)
        match = _LABEL.match(label)
        if match is None:
            raise LearndynValueError(
                f"optimizer={label!r} is not a known label; allowed: 'sgd', 'momentum', 'adam', 'adamw', "
                f"{', '.join(repr(p) for p in PEERS)}, "
                "'cgd-<structure>[-a<alpha>][-k<every>]' (e.g. 'cgd-kron-a0.75')"
            )
        structure = check_choice("structure", match["structure"], STRUCTURES, owner=f"optimizer {label!r}")
        try:
            alpha = 0.5 if match["alpha"] is None else float(match["alpha"])
        except ValueError:
            raise LearndynValueError(
                f"optimizer={label!r} has a bad alpha; allowed: -a<number> with 0 <= alpha <= 1"
            ) from None
        alpha = check_real("alpha", alpha, low=0, high=1, owner=f"optimizer {label!r}")
        every = int(match["every"]) if match["every"] else (1 if structure == "diag" else 10)
        every = check_int("precondition_every", every, low=1, owner=f"optimizer {label!r}")
        return cls(label=label, family="cgd", structure=structure, alpha=alpha, precondition_every=every)

    @classmethod
    def covariant(
        cls, structure: str, alpha: float = 0.5, precondition_every: int = 1, **options: Any
    ) -> OptimizerSpec:
        """A ``cgd`` spec with :class:`~learndyn.optim.CovariantGD`'s own defaults (``precondition_every=1``,
        unlike the labels' 10 for matrix structures); labelled ``cgd-<structure>-a<alpha>-k<k>``."""
        check_choice("structure", structure, STRUCTURES, owner="OptimizerSpec.covariant")
        label = f"cgd-{structure}-a{alpha:g}-k{precondition_every}"
        return cls(label, "cgd", structure, alpha, precondition_every, dict(options))

    def with_options(self, **options: Any) -> OptimizerSpec:
        """This spec with more (or replaced) constructor options; for ``cgd`` the options ``structure``,
        ``alpha`` and ``precondition_every`` replace the spec's fields."""
        if self.family == "cgd":
            fields = {k: options.pop(k) for k in _CGD_FIELDS if k in options}
            if "structure" in fields:
                check_choice("structure", fields["structure"], STRUCTURES, owner=f"optimizer {self.label!r}")
        else:
            fields = {}
        return replace(self, **fields, options={**self.options, **options})

    def build(self, params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Optimizer:
        """The :class:`torch.optim.Optimizer` for ``params`` at learning rate ``lr`` (``options`` as in
        :meth:`with_options`).

        Raises ``ValueError`` (from :class:`CovariantGD`) when a structure does not fit the model, and
        ``ModuleNotFoundError`` when a peer's package is not installed.
        """
        spec = self.with_options(**options) if options else self
        opts = dict(spec.options)
        if spec.family == "sgd":
            return torch.optim.SGD(params, lr=lr, **opts)
        if spec.family == "momentum":
            return torch.optim.SGD(params, lr=lr, **{"momentum": 0.9, **opts})
        if spec.family == "adam":
            return torch.optim.Adam(params, lr=lr, **opts)
        if spec.family == "adamw":
            return torch.optim.AdamW(params, lr=lr, **opts)
        if spec.family in PEERS:
            return build_peer(spec.family, params, lr, **opts)
        return CovariantGD(
            params,
            lr=lr,
            alpha=spec.alpha,
            structure=spec.structure,
            precondition_every=spec.precondition_every,
            **opts,
        )


def as_spec(optimizer: str | OptimizerSpec) -> OptimizerSpec:
    """``optimizer`` if it is already a spec, else :meth:`OptimizerSpec.parse` of the label."""
    return optimizer if isinstance(optimizer, OptimizerSpec) else OptimizerSpec.parse(optimizer)


def build_optimizer(
    params: Iterable[Any], optimizer: str | OptimizerSpec, lr: float, **options: Any
) -> torch.optim.Optimizer:
    """The optimizer named by a label or spec, at learning rate ``lr``, with constructor ``options``."""
    return as_spec(optimizer).build(params, lr, **options)
