"""The Monitor: runs probes after optimizer steps and sends their metrics to a recorder.

::

    with Monitor(model, F.cross_entropy, probes="standard", recorder=run, optimizer=opt) as monitor:
        for step, (x, y) in enumerate(loader):
            opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
            monitor.after_step(step, (x, y))

At a step where some probes are due (``step % probe.every == 0``) the Monitor builds one
:class:`~learndyn.probes.base.ProbeContext` for the batch, so intermediates (per-sample gradient Grams, the
Hessian-vector product, the batch loss) are computed once and shared; probes measure the state *after* the
optimizer step on the batch that produced it. Scalars go to ``recorder.log(step, {...})`` in one call,
arrays to ``recorder.log_array(step, name, array)``.

A Monitor never changes the training trajectory. Around the probes it

- forks the global RNG (CPU and the CUDA devices the model lives on), so the loop's next random draws are
  the same as without it;
- keeps every ``param.grad`` (same tensor object, same values) and ``param.requires_grad``: during the probes
  ``param.grad`` is ``None`` (hidden, so no probe can accumulate into it), and is put back afterwards;
- sets the model to eval mode (``mode="eval"``, default: dropout off, BatchNorm uses running statistics, so
  per-sample gradients are well defined) or train mode (``"train"``) or leaves it (``"keep"``), and restores
  each module's own ``training`` flag afterwards; buffers (BatchNorm running statistics) are restored too;
- keeps no autograd graph: the context and everything cached in it is dropped after the step.

Any batch and any loss: by default a batch is an ``(inputs, targets)`` pair and ``loss_fn(model(inputs),
targets)`` the mean loss. For dict batches (Hugging Face style), several inputs or a custom loss, pass a
:class:`~learndyn.stats.batch.BatchAdapter` instead of ``loss_fn``::

    adapter = BatchAdapter(loss=lambda m, b: m(**b).loss, inputs_of=lambda b: b["input_ids"],
                           outputs=lambda m, b: m(**b).logits)
    monitor = Monitor(model, adapter=adapter, probes="full")
    monitor.after_step(step, batch)          # the dict the loop trained on

The loss must be the mean over samples of per-sample losses: the noise and Gauss-Newton measurements check
this on their first batch and name a summed loss (``reduction="sum"``) as such.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learndyn.probes.base import GRADIENT_GRAPH_WANTED, LossFn, Probe, ProbeContext
from learndyn.probes.presets import PRESETS, PROBES, make_probe, preset_probes
from learndyn.probes.representation import WANTED
from learndyn.stats.batch import Batch, BatchAdapter, detach
from learndyn.store.recorder import NullRecorder, Recorder
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

MODES = ("eval", "train", "keep")


def resolve_probes(probes: str | Sequence[Probe | str]) -> list[Probe]:
    """A preset name, or a list of probes and probe names, as a list of probe instances.

    Raises ``ValueError`` naming the allowed values for an unknown preset or probe name, and for two
    probes with the same metric prefix.
    """
    if isinstance(probes, str):
        check_choice("probes", probes, PRESETS, owner="Monitor")
        out = preset_probes(probes)
    else:
        out = []
        for p in probes:
            if isinstance(p, str):
                check_choice("probes", p, PROBES, owner="Monitor")
                out.append(make_probe(p))
            elif isinstance(p, Probe):
                out.append(p)
            else:
                allowed = ", ".join(repr(n) for n in (*PRESETS, *PROBES))
                raise LearndynValueError(
                    f"Monitor.probes entry {p!r} is not allowed; allowed: a Probe or one of {allowed}"
                )
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LearndynValueError(
            f"Monitor.probes has two probes named {dup[0]!r}; allowed: one probe per name"
        )
    return out


@contextlib.contextmanager
def _modes_and_buffers_kept(model: nn.Module) -> Iterator[None]:
    """Every module's ``training`` flag and every buffer (BatchNorm statistics) as found, afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _to_metric(value: Any) -> float | np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return float(value) if value.dim() == 0 else value.numpy()
    if isinstance(value, np.ndarray):
        return float(value) if value.ndim == 0 else value
    return float(value)


class Monitor:
    """Run probes during training without changing it (see the module docstring).

    Args:
        model: the trained module.
        loss_fn: ``loss_fn(outputs, targets)`` with mean reduction over the batch, for ``(inputs, targets)``
            batches; or ``None`` with ``adapter``.
        probes: a preset name (``"light"``, ``"standard"``, ``"full"``, see :mod:`~learndyn.probes.presets`)
            or a list of :class:`Probe` instances and probe names (``"noise"``, ``"curvature"``, ...).
        recorder: where metrics go (default: nowhere; results are still returned by :meth:`after_step`).
        lr: learning rate for temperature and sharpness; default: ``optimizer.param_groups[0]["lr"]`` read at
            every step (so schedulers are followed), else unknown.
        optimizer: the optimizer (probes may read its state, e.g. CovariantGD's metric).
        mode: model mode while probing, ``"eval"`` (default), ``"train"`` or ``"keep"``.
        adapter: a :class:`~learndyn.stats.batch.BatchAdapter` saying how to read other batches and losses
            (instead of ``loss_fn``).

    ``init_params`` (a detached copy of the trainable parameters when the Monitor is made) is given to every
    probe as the initial point; ``timings[name]`` accumulates each probe's wall time in seconds.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None = None,
        probes: str | Sequence[Probe | str] = "standard",
        recorder: Recorder | None = None,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        mode: str = "eval",
        *,
        adapter: BatchAdapter | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise LearndynValueError(f"Monitor.model={model!r} is not allowed; allowed: a torch.nn.Module")
        if (loss_fn is None) == (adapter is None):
            raise LearndynValueError(
                "Monitor needs one loss; allowed: loss_fn (for (inputs, targets) batches) or "
                "adapter=BatchAdapter(...), not both"
            )
        if adapter is not None and not isinstance(adapter, BatchAdapter):
            raise LearndynValueError(f"Monitor.adapter={adapter!r} is not allowed; allowed: a BatchAdapter")
        self.model = model
        self.adapter = adapter if adapter is not None else BatchAdapter(loss_fn)
        self.loss_fn = loss_fn if loss_fn is not None else self._legacy_loss_fn(self.adapter)
        self.probes = resolve_probes(probes)
        self.recorder: Recorder = recorder if recorder is not None else NullRecorder()
        self._lr = None if lr is None else check_real("lr", lr, low=0.0, low_open=True, owner="Monitor")
        self.optimizer = optimizer
        self.mode = check_choice("mode", mode, MODES, owner="Monitor")
        self.init_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.timings: dict[str, float] = defaultdict(float)
        self.closed = False

    @property
    def lr(self) -> float | None:
        if self._lr is not None:
            return self._lr
        if self.optimizer is not None and self.optimizer.param_groups:
            lr = self.optimizer.param_groups[0].get("lr")
            return float(lr) if isinstance(lr, int | float | Tensor) else None
        return None

    def due(self, step: int) -> list[Probe]:
        """The probes that run at ``step``."""
        return [p for p in self.probes if p.should_run(step)]

    @staticmethod
    def _legacy_loss_fn(adapter: BatchAdapter) -> LossFn | None:
        """``ctx.loss_fn`` for probes that call ``loss_fn(model(inputs), targets)`` themselves."""
        if adapter.loss_fn is not None:
            return adapter.loss_fn
        return adapter.loss_of_outputs if adapter.has_split else None

    def after_step(
        self, step: int, batch: Batch, metrics: Mapping[str, float] | None = None
    ) -> dict[str, float | np.ndarray]:
        """Run the probes due at ``step`` on ``batch``; log and return their metrics.

        ``batch`` is ``(inputs, targets)``, or whatever the Monitor's ``adapter`` reads.

        ``metrics`` (optional) are values the training loop already has, e.g. ``{"loss": loss.item()}``; they
        are offered to the probes as ``ctx.cache["metrics"]`` (a StageProbe on a logged metric reads them)
        and are not logged by the Monitor.
        """
        if self.closed:
            raise RuntimeError("Monitor.after_step called after close()")
        step = check_int("step", step, low=0, owner="Monitor")
        due = self.due(step)
        if not due:
            return {}
        adapter = self.adapter
        adapter.check_batch(batch)
        batch = detach(batch)
        inputs = (
            adapter.inputs(batch) if not adapter.default_pair or isinstance(batch, tuple | list) else None
        )
        if not isinstance(inputs, Tensor) and any("activations" in p.needs for p in due):
            names = ", ".join(type(p).__name__ for p in due if "activations" in p.needs)
            raise LearndynValueError(
                f"{names} calls model(inputs) with one tensor but the batch's inputs are a "
                f"{type(inputs).__name__}; allowed: BatchAdapter(inputs_of=...) returning a tensor"
            )
        results: dict[str, float | np.ndarray] = {}
        with self._untouched():
            ctx = ProbeContext(
                model=self.model,
                loss_fn=self.loss_fn,
                inputs=inputs,
                targets=adapter.targets(batch),
                step=step,
                lr=self.lr,
                optimizer=self.optimizer,
                init_params=self.init_params,
                batch=batch,
                adapter=adapter,
            )
            if not adapter.default_pair:
                for mode in ("eval", "train"):
                    ctx.providers[f"batch_loss/{mode}"] = self._batch_loss(batch, mode)
            if metrics is not None:
                ctx.cache["metrics"] = dict(metrics)
            wanted: dict[str, list[str]] = {}
            for p in due:  # activations a forward pass made anyway can record (representation.WANTED)
                if callable(getattr(p, "wanted_activations", None)):
                    wanted.update(p.wanted_activations(ctx))
            if wanted:
                ctx.cache[WANTED] = wanted
            # a gradient pass made anyway (the noise probe's) keeps its graph for a Hessian-vector product
            graph_wanted = [p for p in due if callable(getattr(p, "wants_gradient_graph", None))]
            if any(p.wants_gradient_graph(ctx) for p in graph_wanted):
                ctx.cache[GRADIENT_GRAPH_WANTED] = True
            per_probe: dict[int, dict[str, float | np.ndarray]] = {}
            try:
                # probes that only read the batch loss run last: a gradient pass computes it on the way
                for k in sorted(range(len(due)), key=lambda k: due[k].needs == frozenset({"batch_loss"})):
                    t0 = time.perf_counter()
                    measured = due[k].measure(ctx)
                    self.timings[due[k].name] += time.perf_counter() - t0
                    per_probe[k] = {key: _to_metric(v) for key, v in measured.items()}
                for k in sorted(per_probe):  # metrics in the probes' order
                    results.update(per_probe[k])
            finally:
                ctx.cache.clear()
                del ctx
        scalars = {k: v for k, v in results.items() if not isinstance(v, np.ndarray)}
        if scalars:
            self.recorder.log(step, scalars)
        for name, value in results.items():
            if isinstance(value, np.ndarray):
                self.recorder.log_array(step, name, value)
        return results

    def _batch_loss(self, batch: Batch, mode: str) -> Callable[[], float]:
        """The adapter's batch loss in ``mode`` without a trace (what ``stages.batch_loss`` computes)."""

        def compute() -> float:
            with _modes_and_buffers_kept(self.model), torch.no_grad():
                self.model.train(mode == "train")
                return float(self.adapter.loss(self.model, batch))

        return compute

    @contextlib.contextmanager
    def _untouched(self) -> Iterator[None]:
        """RNG, grads, requires_grad, module modes and buffers as found; grad mode on inside."""
        model = self.model
        params = list(model.parameters())
        grads = [p.grad for p in params]
        flags = [(p, p.requires_grad) for p in params]
        devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        try:
            with _modes_and_buffers_kept(model), torch.random.fork_rng(devices=devices), torch.enable_grad():
                for p in params:
                    p.grad = None
                if self.mode != "keep":
                    model.train(self.mode == "train")
                yield
        finally:
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            for p, flag in flags:
                p.requires_grad_(flag)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue measuring exactly: the initial parameters and each probe's
        memory (``Probe.state_dict``). ``train_loop`` saves it with every checkpoint."""
        return {
            "init_params": {n: t.detach().cpu().clone() for n, t in self.init_params.items()},
            "probes": [(type(p).__name__, p.state_dict()) for p in self.probes],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` of a Monitor with the same probes (same classes, same order)."""
        saved = [name for name, _ in state["probes"]]
        have = [type(p).__name__ for p in self.probes]
        if saved != have:
            raise ValueError(f"Monitor.load_state_dict: saved probes {saved}; allowed: this Monitor's {have}")
        if set(state["init_params"]) != set(self.init_params):
            raise ValueError(
                f"Monitor.load_state_dict: saved init_params for {sorted(state['init_params'])}; "
                f"allowed: this model's trainable parameters {sorted(self.init_params)}"
            )
        self.init_params = {
            n: t.to(device=self.init_params[n].device, dtype=self.init_params[n].dtype).clone()
            for n, t in state["init_params"].items()
        }
        for probe, (_, probe_state) in zip(self.probes, state["probes"], strict=True):
            probe.load_state_dict(probe_state)

    def reset(self) -> None:
        """Reset every probe's state (previous kernel, reference quantities, ...)."""
        for p in self.probes:
            p.reset()

    def close(self) -> None:
        """Flush the recorder. Idempotent."""
        if not self.closed:
            self.recorder.flush()
            self.closed = True

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(probes={self.probes!r}, mode={self.mode!r})"
