"""The probes on a CUDA device give what they give on the CPU (float64; skipped without CUDA)."""

import numpy as np
import pytest
import torch

from _gpt import GPT, gpt_batch, lm_loss
from learndyn.probes import Monitor
from learndyn.probes.base import ProbeContext
from learndyn.probes.curvature import CurvatureProbe
from learndyn.probes.kernel import KernelProbe
from learndyn.probes.noise import NoiseProbe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _measure(device):
    torch.manual_seed(0)
    model = GPT(vocab=16, d=32, layers=2, heads=2, context=8).double().eval().to(device)
    x, y = (t.to(device) for t in gpt_batch(B=3, T=8, vocab=16))
    ctx = ProbeContext(model, lm_loss, x, y, 0, lr=0.1)
    out = {}
    for probe in (
        NoiseProbe(k=2),
        NoiseProbe(k=2, route="vmap"),
        KernelProbe(n_samples=3, max_outputs=40),
        CurvatureProbe(lanczos_iters=10, hutchinson_samples=3, ggn=True, ggn_max_outputs=1),
    ):
        measured = probe.measure(ctx)
        out.update({f"{probe.name}/{getattr(probe, 'route', '')}/{k}": v for k, v in measured.items()})
    return out


def test_every_probe_on_cuda_equals_cpu():
    cpu, gpu = _measure("cpu"), _measure("cuda")
    assert set(cpu) == set(gpu)
    for key, value in cpu.items():
        np.testing.assert_allclose(
            np.asarray(gpu[key]), np.asarray(value), rtol=1e-8, atol=1e-10, err_msg=key
        )


def test_full_preset_on_cuda_float32():
    torch.manual_seed(0)
    model = GPT(vocab=16, d=32, layers=2, heads=2, context=8).cuda()
    x, y = (t.cuda() for t in gpt_batch(B=4, T=8, vocab=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = Monitor(model, lm_loss, "full", optimizer=opt)
    for p in mon.probes:
        p.every = 1
    for step in range(2):
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
        out = mon.after_step(step, (x, y))
    for key in ("noise/trace", "curvature/lambda_max", "curvature/trace", "kernel/trace"):
        assert np.isfinite(out[key]), key
