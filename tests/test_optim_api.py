"""CovariantGD as a torch optimizer: argument checks, memory guard, param groups, state_dict, schedulers."""

import copy
import io

import pytest
import torch
from torch import nn

from learndyn.optim import CovariantGD, functional, inverse_metric
from learndyn.validation import LearndynValueError

STRUCTURES = ["diag", "kron", "block", "full", "lowrank"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 3, generator=g, dtype=torch.float64),
            torch.randn(8, 2, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def _train(model, opt, batches, sched=None):
    out = []
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(out)


# ------------------------------------------------------------------------------------- bad arguments

BAD = [
    (dict(alpha=1.5), r"CovariantGD\.alpha=1\.5 is out of range; allowed: 0 <= alpha <= 1"),
    (dict(alpha=-0.1), r"alpha=-0\.1 is out of range; allowed: 0 <= alpha <= 1"),
    (dict(alpha="half"), r"alpha='half' has type str; allowed: a real number"),
    (
        dict(structure="dense"),
        r"structure='dense' is not allowed; allowed: 'diag', 'kron', 'block', 'full', 'lowrank'",
    ),
    (dict(moment="third"), r"moment='third' is not allowed; allowed: 'second', 'covariance'"),
    (dict(root_method="svd"), r"root_method='svd' is not allowed; allowed: 'eigh', 'newton'"),
    (dict(eps_mode="middle"), r"eps_mode='middle' is not allowed; allowed: 'inside', 'outside'"),
    (dict(lr=-1e-3), r"lr=-0\.001 is out of range; allowed: 0 <= lr"),
    (dict(eps=-1e-8), r"eps=-1e-08 is out of range; allowed: 0 <= eps"),
    (dict(eps_root=-1.0), r"eps_root=-1\.0 is out of range; allowed: 0 <= eps_root"),
    (dict(weight_decay=-0.1), r"weight_decay=-0\.1 is out of range; allowed: 0 <= weight_decay"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\]=1\.0 is out of range; allowed: 0 <= betas\[0\] < 1"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\]=1\.0 is out of range; allowed: 0 <= betas\[1\] < 1"),
    (dict(betas=(-0.1, 0.9)), r"betas\[0\]=-0\.1 is out of range"),
    (
        dict(betas=(0.9,)),
        r"betas=\(0\.9,\) is not allowed; allowed: a pair \(beta1, beta2\) with 0 <= beta < 1",
    ),
    (dict(rank=0), r"rank=0 is out of range; allowed: 1 <= rank"),
    (dict(rank=2.5), r"rank=2\.5 has type float; allowed: an integer"),
    (dict(precondition_every=0), r"precondition_every=0 is out of range; allowed: 1 <= precondition_every"),
    (
        dict(precondition_warmup=-1),
        r"CovariantGD\.precondition_warmup=-1 is out of range; allowed: 0 <= precondition_warmup",
    ),
    (
        dict(precondition_warmup=2.5),
        r"CovariantGD\.precondition_warmup=2\.5 has type float; allowed: an integer",
    ),
    (dict(precondition_warmup=None), r"CovariantGD\.precondition_warmup=None has type NoneType"),
    (
        dict(stale_damping="relative"),
        r"CovariantGD\.stale_damping='relative' is not allowed; allowed: 'trace', 'none'",
    ),
    (dict(stale_damping=True), r"CovariantGD\.stale_damping=True is not allowed; allowed: 'trace', 'none'"),
    (dict(max_factor_dim=0), r"max_factor_dim=0 is out of range; allowed: 1 <= max_factor_dim"),
    (dict(memory_budget=-1), r"memory_budget=-1\.0 is out of range; allowed: 0 <= memory_budget"),
    (dict(first_moment="yes"), r"first_moment='yes' is not allowed; allowed: True, False"),
    (dict(bias_correction=1), r"bias_correction=1 is not allowed; allowed: True, False"),
    (
        dict(structure="kron", root_method="newton", eps_mode="outside"),
        r"eps_mode='outside' is not allowed with root_method='newton'; allowed: 'inside'",
    ),
    (
        dict(structure="full", root_method="newton", eps=0.0),
        r"eps=0\.0 is not allowed with root_method='newton'",
    ),
    (
        dict(structure="full", root_method="newton", alpha=0.123456789),
        r"alpha=0\.123456789 is not allowed with root_method='newton'; allowed: a fraction a/b",
    ),
]


@pytest.mark.parametrize("kwargs, match", BAD, ids=[str(k) for k, _ in BAD])
def test_bad_argument_raises_one_line_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        CovariantGD(_model().parameters(), **kwargs)
    assert isinstance(info.value, LearndynValueError)
    assert "\n" not in str(info.value)


def test_bad_option_in_a_param_group():
    m = _model()
    with pytest.raises(ValueError, match=r"CovariantGD\.alpha=2\.0 is out of range"):
        CovariantGD([{"params": m[0].parameters()}, {"params": m[2].parameters(), "alpha": 2.0}])
    opt = CovariantGD(m[0].parameters())
    with pytest.raises(ValueError, match=r"structure='foo' is not allowed"):
        opt.add_param_group({"params": m[2].parameters(), "structure": "foo"})
    assert len(opt.param_groups) == 1


def test_newton_with_valid_fractions_is_accepted():
    CovariantGD(_model().parameters(), structure="kron", root_method="newton", alpha=0.5)  # α/2 = 1/4
    CovariantGD(_model().parameters(), structure="full", root_method="newton", alpha=1 / 3)
    CovariantGD(_model().parameters(), structure="diag", root_method="newton", alpha=0.123)  # no root taken


def test_integer_parameters_are_refused():
    with pytest.raises(ValueError, match=r"allowed: real floating-point parameters"):
        CovariantGD([torch.zeros(3, dtype=torch.int64)])


# ------------------------------------------------------------------------------------- memory guard


@pytest.mark.parametrize(
    "structure, numel, need", [("full", 100_000, "74.5 GiB"), ("block", 30_000, "6.7 GiB")]
)
def test_memory_guard_refuses_big_matrix_structures(structure, numel, need):
    p = nn.Parameter(torch.zeros(numel))
    with pytest.raises(ValueError) as info:
        CovariantGD([p], structure=structure)
    msg = str(info.value)
    assert "\n" not in msg
    assert (
        f"{numel:,} parameters" in msg
        and need in msg
        and "memory_budget=2,147,483,648 bytes (2.0 GiB)" in msg
    )
    assert f"structure='{structure}'" in msg and "allowed:" in msg
    CovariantGD([p], structure="diag")  # cheap structures pass
    CovariantGD([p], structure="lowrank", rank=4)
    CovariantGD([p], structure=structure, memory_budget=None)  # the guard can be lifted


def test_memory_guard_uses_the_budget_and_kron_suggests_max_factor_dim():
    p = nn.Parameter(torch.zeros(20, 20, dtype=torch.float64))
    CovariantGD([p], structure="full", memory_budget=2 * 400 * 400 * 8)
    with pytest.raises(ValueError, match=r"400 parameters needs 2,560,000 bytes \(2\.4 MiB\)"):
        CovariantGD([p], structure="full", memory_budget=2 * 400 * 400 * 8 - 1)
    big = nn.Parameter(torch.zeros(30_000, 10))
    with pytest.raises(ValueError, match=r"max_factor_dim or max_block"):
        CovariantGD([big], structure="kron", max_block=None)  # unblocked: a 30,000² factor
    CovariantGD([big], structure="kron", max_block=None, max_factor_dim=1024)
    CovariantGD([big], structure="kron")  # the default blocks of 64 fit


# ------------------------------------------------------------------------------- groups and protocol


def test_param_groups_behave_like_separate_optimizers():
    batches = _batches(10)
    m1 = _model()
    opt = CovariantGD(
        [
            {"params": m1[0].parameters(), "structure": "full", "alpha": 1.0},
            {"params": m1[2].parameters(), "structure": "kron", "lr": 0.01},
        ],
        lr=0.05,
        eps=1e-3,
    )
    a = _train(m1, opt, batches)
    m2 = _model()
    o1 = CovariantGD(m2[0].parameters(), lr=0.05, eps=1e-3, structure="full", alpha=1.0)
    o2 = CovariantGD(m2[2].parameters(), lr=0.01, eps=1e-3, structure="kron")

    class Both:
        def zero_grad(self):
            o1.zero_grad()
            o2.zero_grad()

        def step(self):
            o1.step()
            o2.step()

    b = _train(m2, Both(), batches)
    assert torch.equal(a, b)
    # 'full' is per group: the first group's matrix covers its 16 parameters only
    assert opt.state[m1[0].weight]["full_S"].shape == (16, 16)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_zero_grad_and_steps_without_gradients(structure):
    m = _model()
    opt = CovariantGD(m.parameters(), lr=0.1, structure=structure)
    before = [p.detach().clone() for p in m.parameters()]
    opt.step()  # no gradients yet: nothing moves, no state
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters(), strict=True))
    assert len(opt.state) == 0
    # gradients on the first layer only: the second layer does not move
    x, y = _batches(1)[0]
    nn.functional.mse_loss(m[0](x)[:, :2], y).backward()
    opt.step()
    assert not torch.equal(before[0], m[0].weight)
    assert torch.equal(before[2], m[2].weight) and torch.equal(before[3], m[2].bias)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_closure_returns_the_loss():
    m = _model()
    opt = CovariantGD(m.parameters(), lr=0.05, structure="kron")
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(m(x), y)
        loss.backward()
        return loss

    l0 = opt.step(closure)
    assert isinstance(l0, torch.Tensor) and l0.ndim == 0
    losses = [opt.step(closure).item() for _ in range(20)]
    assert losses[-1] < l0.item()


def test_lr_scheduler_drives_the_learning_rate():
    """StepLR halves lr every 2 steps; with α = 0 (SGD) and a constant gradient the step sizes follow."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = CovariantGD([p], lr=0.8, alpha=0.0, first_moment=False)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    steps = []
    for _ in range(6):
        before = p.detach().clone()
        p.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        sched.step()
        steps.append((before - p.detach())[0].item())
    assert steps == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.2], rel=1e-15)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lr_scheduler_works_with_every_structure(structure):
    m = _model()
    opt = CovariantGD(m.parameters(), lr=0.05, structure=structure, eps=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    traj = _train(m, opt, _batches(8), sched)
    assert torch.isfinite(traj).all()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------- state_dict

RESUME = [
    dict(structure="diag"),
    dict(structure="diag", moment="covariance", weight_decay=0.1),
    dict(structure="kron", precondition_every=3),
    dict(structure="kron", precondition_every=3, eps_mode="outside", max_factor_dim=3),
    dict(structure="kron", precondition_every=3, root_method="newton"),
    dict(structure="block", precondition_every=3),
    dict(structure="full", precondition_every=3, moment="covariance"),
    dict(structure="lowrank", precondition_every=3, rank=3),
    dict(structure="lowrank", precondition_every=2, rank=50, eps_mode="outside"),
    dict(structure="full", precondition_every=3, stale_damping="none"),
    dict(structure="block", precondition_every=3, eps_mode="outside"),
    dict(structure="kron", precondition_every=3, precondition_warmup=6),  # saved inside the warm-up
    dict(structure="full", precondition_every=3, precondition_warmup=6),
]


@pytest.mark.parametrize("kw", RESUME, ids=[str(k) for k in RESUME])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_resume_gives_the_identical_trajectory(kw, dtype):
    """Save mid-cycle (step 4 of precondition_every=3: a cached root is live), reload into a fresh optimizer
    through torch.save/torch.load, continue: bit-identical to never having stopped."""
    batches = [(x.to(dtype), y.to(dtype)) for x, y in _batches(10)]
    kw = {"precondition_warmup": 0, **kw}  # no warm-up unless asked: step 4 then uses a cached root
    m = _model().to(dtype)
    opt = CovariantGD(m.parameters(), lr=0.05, eps=1e-3, **kw)
    _train(m, opt, batches[:4])
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    straight = _train(m, opt, batches[4:])

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    m2 = _model().to(dtype)
    m2.load_state_dict(saved["model"])
    opt2 = CovariantGD(m2.parameters(), lr=0.05, eps=1e-3, **kw)
    opt2.load_state_dict(saved["opt"])
    resumed = _train(m2, opt2, batches[4:])
    assert torch.equal(straight, resumed)
    st = opt2.state[next(m2.parameters())]
    assert st["step"] == 10


def test_state_dict_holds_step_counters_and_cached_roots():
    m = _model()
    opt = CovariantGD(m.parameters(), structure="kron", precondition_every=5)
    _train(m, opt, _batches(2))
    sd = copy.deepcopy(opt.state_dict())
    st0 = sd["state"][0]
    assert st0["step"] == 2 and {"kron_L", "kron_R", "kron_Linv", "kron_Rinv", "exp_avg"} <= set(st0)
    assert st0["kron_root_count"] == 2 and st0["kron_root_trace"].shape == (2,)  # for stale_damping
    assert sd["param_groups"][0]["precondition_every"] == 5
    assert sd["param_groups"][0]["precondition_warmup"] == 100
    assert sd["param_groups"][0]["stale_damping"] == "trace"


@pytest.mark.parametrize("structure", ["full", "block"])
def test_state_dict_holds_the_bounded_roots(structure):
    """stale_damping='trace' caches the eigenbasis, its spectrum and where it was taken (tr S₀, u₀)."""
    m = _model()
    opt = CovariantGD(m.parameters(), structure=structure, precondition_every=5, precondition_warmup=0)
    _train(m, opt, _batches(3))
    st0 = copy.deepcopy(opt.state_dict())["state"][0]
    keys = {f"{structure}_{k}" for k in ("S", "U", "lam", "root_trace", "root_count")}
    assert keys <= set(st0) and f"{structure}_Minv" not in st0
    assert st0[f"{structure}_root_count"] == 1  # the root of step 1 is live on steps 2..5


# --------------------------------------------------------------------------------- probes' interface


@pytest.mark.parametrize("structure", STRUCTURES)
def test_second_moment_diagonal_shapes_and_errors(structure):
    m = _model()
    opt = CovariantGD(m.parameters(), structure=structure)
    for p in m.parameters():
        assert torch.equal(opt.second_moment_diagonal(p), torch.zeros_like(p))  # before the first step
    _train(m, opt, _batches(3))
    for p in m.parameters():
        d = opt.second_moment_diagonal(p)
        assert d.shape == p.shape and d.dtype == p.dtype and (d > 0).all()
    with pytest.raises(ValueError, match="not managed by this optimizer"):
        opt.second_moment_diagonal(nn.Parameter(torch.zeros(2)))


def test_functional_core_reproduces_one_block_step():
    """A probe can rebuild the optimizer's update from the functional pieces."""
    p = nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = CovariantGD([p], lr=0.1, structure="block", alpha=0.5, eps=1e-4, betas=(0.9, 0.99))
    g = torch.randn(5, dtype=torch.float64)
    p.grad = g.clone()
    before = p.detach().clone()
    opt.step()
    m = torch.zeros(5, dtype=torch.float64)
    functional.foreach_ema_([m], [g], 0.9)
    S = torch.zeros(5, 5, dtype=torch.float64)
    functional.ema_outer_(S, g, 0.99)
    Minv = inverse_metric(S / functional.bias_correction(0.99, 1), 0.5, 1e-4)
    F = m / functional.bias_correction(0.9, 1)
    torch.testing.assert_close(
        p.detach(), before - 0.1 * functional.matrix_direction(Minv, F), rtol=1e-14, atol=0
    )


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(5, 2, sparse=True)
    opt = CovariantGD(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_full_group_with_parameter_without_gradient_treats_it_as_zero():
    m = _model()
    opt = CovariantGD(m.parameters(), structure="full", lr=0.1, eps=1e-3)
    x, y = _batches(1)[0]
    nn.functional.mse_loss(m[0](x)[:, :2], y).backward()
    frozen = m[2].weight.detach().clone()
    opt.step()
    assert torch.equal(frozen, m[2].weight)
    assert opt.state[m[0].weight]["full_S"].shape == (26, 26)
