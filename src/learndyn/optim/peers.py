"""The optimizers people pick today, behind learndyn's optimizer labels, so one harness runs them all.

Each peer is built from its maintainer's implementation with that package's defaults, except where a default
would make the comparison meaningless at our budgets (noted per entry):

- ``muon`` -- :class:`torch.optim.Muon` (Jordan et al. 2024: momentum, then the update orthogonalised by a
  quintic Newton--Schulz iteration, ``O ≈ U Vᵀ`` for ``M = U Σ Vᵀ``) on every 2-D parameter, and
  :class:`torch.optim.AdamW` on the rest (vectors, convolution kernels, embeddings of other rank), as its
  authors recommend. ``adjust_lr_fn="match_rms_adamw"`` scales Muon's step to AdamW's update RMS
  (``lr · 0.2 · √max(m, n)``), so one learning rate serves both parts and the same grid as AdamW applies;
  Muon's weight decay is AdamW's default ``0.01`` (torch's Muon default is ``0.1``), so the two parts decay
  alike.
- ``po-soap``, ``po-shampoo``, ``po-scalable-shampoo``, ``po-kron`` -- pytorch_optimizer's SOAP (Vyas et al.
  2024: Adam in the eigenbasis of Shampoo's factors; preconditioner every 10 steps, its default), Shampoo
  (Gupta et al. 2018; ``preconditioning_compute_steps=10`` instead of 1, our kron's schedule), ScalableShampoo
  (Anil et al. 2020, blocks of 128, roots every 10 steps from step 1 -- its defaults, roots every 1000 steps
  from step 25, would never precondition in a few thousand steps) and Kron (Li's PSGD with Kronecker factors).
- ``hb-soap`` -- heavyball's SOAP, run eagerly (``heavyball.utils.compile_mode = None``; compiling on a CPU
  costs minutes per shape and is not what a step-count comparison measures).

The packages are optional (``pip install -c constraints.txt "learndyn[bench]"``, pinned there); a missing
one raises :class:`ModuleNotFoundError` naming the extra (:func:`build_peer` checks with
:func:`learndyn.optional.require`). heavyball's PSGDKron is left out: uncompiled, it asked for an 824 GB
buffer at width 128 (heavyball 3.2.1, torch 2.13).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from learndyn.optional import require

__all__ = ["PEERS", "Peer", "Combined", "build_peer", "muon_with_adamw"]

MUON_WEIGHT_DECAY = 0.01
"""Weight decay of the Muon part of ``muon``: AdamW's default, so both parts decay alike."""


class Combined(torch.optim.Optimizer):
    """Several optimizers over disjoint parameter sets, stepped as one :class:`torch.optim.Optimizer`.

    ``param_groups`` is the concatenation of the parts' groups (the same dicts: setting ``lr`` there sets it
    in the part), ``state`` the union of their states; ``state_dict`` is ``{"parts": [each part's]}``.
    """

    def __init__(self, parts: Iterable[torch.optim.Optimizer]) -> None:
        self.parts = tuple(parts)
        if not self.parts:
            raise ValueError("Combined got no optimizers; allowed: one or more torch.optim.Optimizer")
        self.defaults = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for part in self.parts for group in part.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[torch.Tensor, Any]:
        return {key: value for part in self.parts for key, value in part.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        parts = state_dict.get("parts") if isinstance(state_dict, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError(
                f"Combined.load_state_dict got {type(state_dict).__name__} without "
                f"{len(self.parts)} 'parts'; allowed: what Combined.state_dict of the same parts saved"
            )
        for part, saved in zip(self.parts, parts, strict=True):
            part.load_state_dict(saved)

    def __repr__(self) -> str:
        return f"Combined({', '.join(type(p).__name__ for p in self.parts)})"


def muon_with_adamw(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Optimizer:
    """``muon``: :class:`torch.optim.Muon` on the 2-D parameters, :class:`torch.optim.AdamW` on the rest.

    ``options`` go to Muon (e.g. ``momentum``, ``ns_steps``); ``adamw_options`` (a dict) to AdamW.
    Only one part is built when every parameter falls on one side.
    """
    params = [p for p in _tensors(params) if p.requires_grad]
    adamw_options = dict(options.pop("adamw_options", {}))
    muon_options = {"adjust_lr_fn": "match_rms_adamw", "weight_decay": MUON_WEIGHT_DECAY, **options}
    matrices = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    parts: list[torch.optim.Optimizer] = []
    if matrices:
        parts.append(torch.optim.Muon(matrices, lr=lr, **muon_options))
    if rest:
        parts.append(torch.optim.AdamW(rest, lr=lr, **adamw_options))
    return parts[0] if len(parts) == 1 else Combined(parts)


def _tensors(params: Iterable[Any]) -> Iterator[torch.Tensor]:
    for item in params:
        if isinstance(item, dict):
            raise ValueError("muon takes a flat iterable of parameters; allowed: tensors, not param groups")
        yield item


def _pytorch_optimizer(cls: str, **fixed: Any) -> Callable[..., torch.optim.Optimizer]:
    def build(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Optimizer:
        import pytorch_optimizer

        return getattr(pytorch_optimizer, cls)(params, lr=lr, **{**fixed, **options})

    return build


def _heavyball_soap(params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Optimizer:
    import heavyball

    heavyball.utils.compile_mode = None  # eager, see the module doc
    return heavyball.SOAP(params, lr=lr, **options)


@dataclass(frozen=True)
class Peer:
    """One peer optimizer: its label, the package it comes from (``torch`` or one of the ``bench`` extra) and
    how to build it at a learning rate."""

    label: str
    package: str
    build: Callable[..., torch.optim.Optimizer]
    description: str


PEERS: dict[str, Peer] = {
    peer.label: peer
    for peer in (
        Peer("muon", "torch", muon_with_adamw, "torch.optim.Muon on 2-D parameters + AdamW on the rest"),
        Peer("po-soap", "pytorch_optimizer", _pytorch_optimizer("SOAP"), "SOAP (pytorch_optimizer)"),
        Peer(
            "po-shampoo",
            "pytorch_optimizer",
            _pytorch_optimizer("Shampoo", preconditioning_compute_steps=10),
            "Shampoo, roots every 10 steps (pytorch_optimizer)",
        ),
        Peer(
            "po-scalable-shampoo",
            "pytorch_optimizer",
            _pytorch_optimizer(
                "ScalableShampoo",
                block_size=128,
                preconditioning_compute_steps=10,
                start_preconditioning_step=1,
            ),
            "ScalableShampoo, blocks of 128, roots every 10 steps (pytorch_optimizer)",
        ),
        Peer("po-kron", "pytorch_optimizer", _pytorch_optimizer("Kron"), "PSGD-Kron (pytorch_optimizer)"),
        Peer("hb-soap", "heavyball", _heavyball_soap, "SOAP (heavyball, eager)"),
    )
}
"""Peer optimizers by label."""


def build_peer(label: str, params: Iterable[Any], lr: float, **options: Any) -> torch.optim.Optimizer:
    """The peer optimizer ``label`` (a key of :data:`PEERS`) over ``params`` at learning rate ``lr``."""
    if label not in PEERS:
        raise ValueError(f"optimizer={label!r} is not a peer; allowed: {', '.join(PEERS)}")
    peer = PEERS[label]
    if peer.package != "torch":
        require(peer.package, "bench", needed_by=f"optimizer={label!r}")
    return peer.build(params, lr, **options)
