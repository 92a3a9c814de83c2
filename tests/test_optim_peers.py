"""The peer optimizers behind learndyn's labels equal their packages' own optimizers, built by hand."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn

from learndyn.optim import OptimizerSpec, build_optimizer
from learndyn.optim.peers import PEERS, Combined, muon_with_adamw
from learndyn.tasks import get_task
from learndyn.tasks.compare import train
from learndyn.validation import LearndynValueError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _run(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5, start: int = 0) -> None:
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _same(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_muon_is_torch_muon_on_matrices_and_adamw_on_the_rest() -> None:
    ours, ref = _model(), _model()
    _run(ours, build_optimizer(ours.parameters(), "muon", 0.01))
    matrices = [p for p in ref.parameters() if p.ndim == 2]
    vectors = [p for p in ref.parameters() if p.ndim != 2]
    muon = torch.optim.Muon(matrices, lr=0.01, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(vectors, lr=0.01)
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        muon.zero_grad()
        adamw.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        muon.step()
        adamw.step()
    _same(ours, ref)
    moved = _model()
    assert not torch.equal(next(ours.parameters()), next(moved.parameters()))


def test_combined_state_dict_round_trip_continues_bit_for_bit() -> None:
    a, b = _model(), _model()
    opt_a = muon_with_adamw(a.parameters(), 0.01)
    assert isinstance(opt_a, Combined) and len(opt_a.param_groups) == 2
    _run(a, opt_a, 3)
    b.load_state_dict(a.state_dict())
    opt_b = muon_with_adamw(b.parameters(), 0.01)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as saved: torch's state_dict shares tensors
    _run(a, opt_a, 3, start=3)
    _run(b, opt_b, 3, start=3)
    _same(a, b)
    assert len(opt_a.state) == 4  # every parameter has state, in one of the parts
    with pytest.raises(ValueError, match="parts"):
        opt_b.load_state_dict({"parts": []})


def test_combined_param_groups_are_the_parts_groups() -> None:
    opt = muon_with_adamw(_model().parameters(), 0.01)
    for group in opt.param_groups:
        group["lr"] = 0.5
    assert all(g["lr"] == 0.5 for part in opt.parts for g in part.param_groups)


def test_muon_alone_when_every_parameter_is_a_matrix() -> None:
    layer = nn.Linear(4, 4, bias=False)
    assert isinstance(muon_with_adamw(layer.parameters(), 0.01), torch.optim.Muon)


@pytest.mark.parametrize(
    ("label", "cls", "fixed"),
    [
        ("po-soap", "SOAP", {}),
        ("po-shampoo", "Shampoo", {"preconditioning_compute_steps": 10}),
        (
            "po-scalable-shampoo",
            "ScalableShampoo",
            {"block_size": 128, "preconditioning_compute_steps": 10, "start_preconditioning_step": 1},
        ),
        ("po-kron", "Kron", {}),
    ],
)
def test_pytorch_optimizer_peers_equal_the_package_built_by_hand(label: str, cls: str, fixed: dict) -> None:
    po = pytest.importorskip("pytorch_optimizer")
    ours, ref = _model(), _model()
    # PSGD-Kron draws random probes from torch's global generator and decides whether to rebalance its
    # factors from numpy's (np.random.random(), left as earlier tests in this worker set it): same seeds
    # for both runs, numpy's state restored after
    numpy_state = np.random.get_state()  # noqa: NPY002 (the package uses the legacy global generator)
    try:
        for model, opt in ((ours, lambda: build_optimizer(ours.parameters(), label, 3e-3)),
                           (ref, lambda: getattr(po, cls)(ref.parameters(), lr=3e-3, **fixed))):
            torch.manual_seed(1)
            np.random.seed(1)  # noqa: NPY002
            _run(model, opt())
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
    _same(ours, ref)


def test_heavyball_soap_equals_the_package_built_by_hand() -> None:
    heavyball = pytest.importorskip("heavyball")
    ours, ref = _model(), _model()
    _run(ours, build_optimizer(ours.parameters(), "hb-soap", 3e-3))
    heavyball.utils.compile_mode = None
    _run(ref, heavyball.SOAP(ref.parameters(), lr=3e-3))
    _same(ours, ref)


def test_every_peer_parses_as_its_own_family() -> None:
    for label in PEERS:
        spec = OptimizerSpec.parse(label)
        assert (spec.family, spec.structure) == (label, None)
    with pytest.raises(LearndynValueError, match="'muon'.*'hb-soap'"):
        OptimizerSpec.parse("muonn")


def test_a_missing_package_names_the_extra_and_the_harness_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_peers(name: str, *args: object) -> object:
        if name in ("pytorch_optimizer", "heavyball"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_peers)
    with pytest.raises(ModuleNotFoundError, match=r"learndyn\[bench\]"):
        build_optimizer(_model().parameters(), "po-soap", 1e-3)
    run = train(get_task("rosenbrock-2d"), "hb-soap", 1e-3, steps=2)
    assert run.status == "unsupported" and "heavyball" in run.message


def test_runs_time_with_the_cpu_clock_and_refuse_an_unknown_clock() -> None:
    task = get_task("rosenbrock-2d")
    run = train(task, "adam", 1e-2, steps=20, eval_every=5, clock="cpu")
    assert run.status == "ok" and run.wall_time > 0
    with pytest.raises(LearndynValueError, match="clock"):
        train(task, "adam", 1e-2, steps=2, clock="gpu")
