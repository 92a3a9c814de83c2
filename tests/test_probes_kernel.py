"""KernelProbe against an explicit Jacobian built by one backward pass per output (float64)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.probes.base import ProbeContext
from learndyn.probes.kernel import KernelProbe, empirical_ntk, kernel_target_alignment, target_matrix
from learndyn.validation import LearndynValueError

pytestmark = pytest.mark.usefixtures("float64")


def _setup(n=6, conv=False):
    g = torch.Generator().manual_seed(7)
    if conv:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3))
        x = torch.randn(n, 1, 4, 3 + 1, generator=g)
    else:
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def explicit_ntk(model, x):
    """Full (n·O) × (n·O) kernel from a Jacobian built row by row."""
    params = list(model.parameters())
    out = model(x)
    rows = []
    for i in range(x.shape[0]):
        for a in range(out.shape[1]):
            gs = torch.autograd.grad(out[i, a], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in gs]))
    J = torch.stack(rows)
    return J @ J.T


def _trace_of(full, n):
    O = full.shape[0] // n
    return full.reshape(n, O, n, O).diagonal(dim1=1, dim2=3).sum(-1)


@pytest.mark.parametrize("method", ["jacobian", "ntvp"])
@pytest.mark.parametrize("conv", [False, True])
def test_ntk_matches_explicit_jacobian(method, conv):
    model, x, _ = _setup(conv=conv)
    ref = explicit_ntk(model, x)
    full = empirical_ntk(model, x, outputs="full", method=method, chunk_size=5)
    torch.testing.assert_close(full, ref, rtol=1e-10, atol=1e-12)
    trace = empirical_ntk(model, x, outputs="trace", method=method)
    torch.testing.assert_close(trace, _trace_of(ref, x.shape[0]), rtol=1e-10, atol=1e-12)


def test_alignment_definition():
    K = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    Y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert kernel_target_alignment(K, Y) == pytest.approx(5.0 / (float(K.norm()) * 2**0.5))
    y = torch.tensor([[1.0], [-1.0]])
    assert kernel_target_alignment(K, y, "full") == pytest.approx(3.0 / (float(K.norm()) * 2.0))
    assert kernel_target_alignment(K, torch.ones(2, 3), "full") is None
    torch.testing.assert_close(target_matrix(torch.tensor([2, 0]), 3, torch.float64), torch.eye(3)[[2, 0]])
    assert target_matrix(torch.tensor([0.5, 1.0]), 1, torch.float64).shape == (2, 1)


@pytest.mark.parametrize("outputs", ["trace", "full"])
def test_probe_metrics_velocity_and_distance_from_init(outputs):
    model, x, y = _setup()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = KernelProbe(n_samples=4, k=3, outputs=outputs, log_kernel=True)
    batch_x = torch.cat([x, torch.randn(3, 4)])
    batch_y = torch.cat([y, torch.zeros(3, dtype=y.dtype)])

    def ref_kernel():
        full = explicit_ntk(model, x[:4])
        return full if outputs == "full" else _trace_of(full, 4)

    K0 = ref_kernel()
    rng = torch.get_rng_state()
    out0 = probe.measure(ProbeContext(model, F.cross_entropy, batch_x, batch_y, step=0, init_params=init))
    assert torch.equal(rng, torch.get_rng_state())
    np.testing.assert_allclose(out0["kernel/matrix"], K0.numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        out0["kernel/top_eigenvalues"], torch.linalg.eigvalsh(K0).flip(0)[:3], rtol=1e-9
    )
    assert out0["kernel/trace"] == pytest.approx(float(K0.trace()))
    Y = F.one_hot(y[:4], 3).double()
    T = Y @ Y.T if outputs == "trace" else torch.outer(Y.reshape(-1), Y.reshape(-1))
    assert out0["kernel/target_alignment"] == pytest.approx(float((K0 * T).sum() / (K0.norm() * T.norm())))
    assert out0["kernel/distance_from_init"] == pytest.approx(0.0, abs=1e-12)
    assert "kernel/velocity" not in out0

    with torch.no_grad():  # move the parameters: the kernel changes
        for p in model.parameters():
            p.mul_(1.3)
    K1 = ref_kernel()
    # a different batch later does not change the captured probe batch
    out1 = probe.measure(ProbeContext(model, F.cross_entropy, torch.randn(7, 4), batch_y, step=5))
    rel = float((K1 - K0).norm() / K0.norm())
    assert out1["kernel/velocity"] == pytest.approx(rel, rel=1e-9)
    assert out1["kernel/velocity_per_step"] == pytest.approx(rel / 5, rel=1e-9)
    assert out1["kernel/distance_from_init"] == pytest.approx(rel, rel=1e-9)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9)
    K2 = ref_kernel()
    out2 = probe.measure(ProbeContext(model, F.cross_entropy, batch_x, batch_y, step=10))
    assert out2["kernel/velocity"] == pytest.approx(float((K2 - K1).norm() / K1.norm()), rel=1e-9)
    assert out2["kernel/distance_from_init"] == pytest.approx(float((K2 - K0).norm() / K0.norm()), rel=1e-9)


def test_init_kernel_from_init_params_and_given_probe_batch():
    model, x, y = _setup()
    K0 = _trace_of(explicit_ntk(model, x), x.shape[0])
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model[0].weight.add_(0.2)
    K1 = _trace_of(explicit_ntk(model, x), x.shape[0])
    probe = KernelProbe(probe_inputs=x, probe_targets=y)
    out = probe.measure(ProbeContext(model, F.cross_entropy, x[:2], y[:2], step=3, init_params=init))
    assert out["kernel/distance_from_init"] == pytest.approx(float((K1 - K0).norm() / K0.norm()), rel=1e-9)
    probe.reset()  # the given probe batch survives a reset; the history does not
    assert probe._x.shape[0] == x.shape[0] and probe._prev is None


def test_bad_arguments():
    with pytest.raises(LearndynValueError, match="'trace', 'full'"):
        KernelProbe(outputs="diag")
    with pytest.raises(LearndynValueError, match="'jacobian', 'ntvp'"):
        KernelProbe(method="magic")
    with pytest.raises(ValueError, match="both"):
        KernelProbe(probe_inputs=torch.zeros(2, 3))


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)],
        lambda: [nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)],
        lambda: [nn.Linear(5, 4), nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3)],
    ],
)
@pytest.mark.parametrize("outputs", ["trace", "full"])
def test_plain_mlp_kernel_from_written_out_factors_equals_the_jacobian_method(layers, outputs):
    from learndyn.stats.mlp_hvp import mlp_ntk, ntk_supported

    torch.manual_seed(4)
    model = nn.Sequential(*layers())
    x = torch.randn(9, 5)
    init = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    assert ntk_supported(model, x) and not ntk_supported(nn.Sequential(nn.Linear(5, 3), nn.GELU()), x)
    for params in (None, init):
        ref = empirical_ntk(model, x, params, outputs=outputs, method="jacobian")
        torch.testing.assert_close(mlp_ntk(model, x, params, outputs), ref, rtol=1e-10, atol=1e-12)
    # the probe takes this route for such a model, at the current and the initial parameters
    y = torch.randint(0, 3, (9,))
    probe = KernelProbe(n_samples=9, outputs=outputs, log_kernel=True)
    out = probe.measure(ProbeContext(model, F.cross_entropy, x, y, 0, init_params=init))
    np.testing.assert_allclose(
        out["kernel/matrix"], empirical_ntk(model, x, outputs=outputs).numpy(), rtol=1e-10
    )
    ref0 = empirical_ntk(model, x, init, outputs=outputs)
    assert out["kernel/distance_from_init"] == pytest.approx(
        float((torch.as_tensor(out["kernel/matrix"]) - ref0).norm() / ref0.norm()), rel=1e-9
    )
