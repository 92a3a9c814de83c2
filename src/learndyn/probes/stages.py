"""Online detection of learning stages: plateaus and the sudden drops between them.

Saddle-to-saddle dynamics (deep linear networks from small initialisation, grokking, induction heads)
give staircase loss curves: long plateaus separated by fast drops. :class:`StageDetector` finds them online,
from one scalar per update:

1. Transform: ``y = log v`` (``log=True``: a staircase is a staircase in relative terms), negated for
   ``direction="increase"`` so that a jump up (accuracy) reads like a drop.
2. Smooth and differentiate in one step: a least-squares line through the points ``(step_i, y_i)`` of a
   sliding window -- the last ``window`` updates, or with ``horizon=f`` the updates in the last fraction
   ``f`` of the elapsed steps (at least ``window`` of them; log-time resolution for stages that lengthen
   as training goes on). The **rate** ``r = −slope · span`` is the (log) decrease across the window:
   ``r = 0.1`` ≈ the metric fell by 10% within it. The window's mean ``ȳ`` is the smoothed level at its
   centre step. White noise of standard deviation ``s`` on ``y`` gives the rate a standard error
   ``se = s · span / √Σ(t − t̄)²`` (``≈ s √(12/n)`` for ``n`` equally spaced points); ``s`` is estimated
   from each point's deviation from the chord through its neighbours, which a smooth trend does not bias.
3. Hysteresis: a **plateau** starts when ``r < plateau_tol``; it ends only when ``r > drop_tol``
   (``> plateau_tol``), ``r > z · se`` (significant) and ``r > contrast · r̃``, where ``r̃`` is the median
   rate of the plateau in windows not overlapping the current one (sudden: a steady decay whose rate
   merely fluctuates is not a drop). A plateau must have lasted ``window`` such rates before it can end.
4. A **drop** (stage boundary) is a descent that leaves a plateau and takes the smoothed level at least
   ``min_drop`` below the plateau's level. It is reported once the rate has peaked (fallen below half its
   maximum) or a new plateau starts, at the step of steepest descent (the centre of the window with the
   largest rate), and the stage index increases by one.

A descent that does not start from a plateau (the initial transient, a smooth exponential decay with a
fixed window) is no stage boundary. Drops closer together than about two windows merge into one. Choose the
window so that a drop spans a few windows' worth of rate above ``drop_tol`` and the noise keeps
``se ≲ drop_tol / 3``. Non-finite values, and values ``≤ 0`` with ``log=True``, are ignored. In log-time
(``horizon``) an exponential decay ``e^{−t/τ}`` steepens as ``t`` grows and may be reported as one drop near
``t ≈ τ``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from learndyn.checkpoint import checkpoint_type
from learndyn.probes.base import Measurement, Probe, ProbeContext
from learndyn.probes.representation import preserved_state
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

EVENT_KINDS = ("plateau_start", "plateau_end", "drop")
DIRECTIONS = ("decrease", "increase")
MODES = ("eval", "train")


@checkpoint_type
@dataclass(frozen=True)
class StageEvent:
    """A detected change.

    ``step``: best estimate of when it happened (the centre of the window the decision rests on; for a drop
    the point of steepest descent). ``value``: the smoothed metric there. ``stage``: the stage index after
    the event (0 before the first drop). ``detected_at``: the step of the update that reported it.
    """

    step: int
    kind: str
    value: float
    stage: int
    detected_at: int


@checkpoint_type
class StageDetector:
    """Online plateau / drop detector for one scalar series (see the module doc for the method).

    Args:
        window: number of updates in the least-squares window (≥ 3; with ``horizon``, the least number);
            a fraction of the number of updates a drop takes is a good choice.
        horizon: if given (0 < horizon ≤ 1), the window covers the last ``horizon`` fraction of the steps
            elapsed since the first update (log-time windows).
        plateau_tol: a plateau starts when the (log) decrease across the window falls below this.
        drop_tol: a plateau can end when the decrease across the window exceeds this (> ``plateau_tol``).
        min_drop: the least total (log) decrease below the plateau level that counts as a drop.
        z: a plateau ends only on a rate at least ``z`` standard errors above zero (0 disables).
        contrast: ... and at least ``contrast`` times the plateau's own median rate (≥ 1).
        log: work with ``log(value)`` (values must be positive) rather than the value itself.
        direction: ``"decrease"`` (losses) or ``"increase"`` (accuracies: jumps up are the "drops").

    ``update(step, value)`` returns the events it detects; ``finish()`` reports a drop still pending at the
    end of the series. ``stage``, ``in_plateau``, ``rate`` and ``events`` give the current state.
    """

    def __init__(
        self,
        window: int = 20,
        *,
        horizon: float | None = None,
        plateau_tol: float = 0.05,
        drop_tol: float = 0.2,
        min_drop: float = 0.3,
        z: float = 3.0,
        contrast: float = 3.0,
        log: bool = True,
        direction: str = "decrease",
    ) -> None:
        owner = type(self).__name__
        self.window = check_int("window", window, low=3, owner=owner)
        self.horizon = (
            None
            if horizon is None
            else check_real("horizon", horizon, low=0, high=1, low_open=True, owner=owner)
        )
        self.plateau_tol = check_real("plateau_tol", plateau_tol, low=0, low_open=True, owner=owner)
        self.drop_tol = check_real("drop_tol", drop_tol, low=0, low_open=True, owner=owner)
        if self.drop_tol <= self.plateau_tol:
            raise LearndynValueError(
                f"{owner}.drop_tol={drop_tol!r} is out of range; "
                f"allowed: drop_tol > plateau_tol={plateau_tol!r}"
            )
        self.min_drop = check_real("min_drop", min_drop, low=0, low_open=True, owner=owner)
        self.z = check_real("z", z, low=0, owner=owner)
        self.contrast = check_real("contrast", contrast, low=1, owner=owner)
        if not isinstance(log, bool):
            raise LearndynValueError(f"{owner}.log={log!r} is not allowed; allowed: True, False")
        self.log = log
        self.direction = check_choice("direction", direction, DIRECTIONS, owner=owner)
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self._fit = _LineFit()
        self._t0: int | None = None
        self._plateau_rates: deque[float] = deque()
        self._last_step: int | None = None
        self.state = "warmup"  # warmup -> undetermined <-> plateau <-> moving
        self.stage = 0
        self.rate: float | None = None
        self.events: list[StageEvent] = []
        self._plateau_level = 0.0
        self._peak: tuple[float, int, float] | None = None  # (rate, centre step, level)
        self._pending = False  # the current descent has not been reported as a drop yet
        self._level = 0.0

    @property
    def in_plateau(self) -> bool:
        return self.state == "plateau"

    @property
    def last_step(self) -> int | None:
        """The step of the last value accepted (``None`` before any)."""
        return self._last_step

    def _transform(self, value: float) -> float | None:
        if not math.isfinite(value) or (self.log and value <= 0):
            return None
        y = math.log(value) if self.log else value
        return -y if self.direction == "increase" else y

    def _untransform(self, y: float) -> float:
        y = -y if self.direction == "increase" else y
        return math.exp(y) if self.log else y

    def _event(self, kind: str, step: int, level: float, now: int) -> StageEvent:
        ev = StageEvent(int(step), kind, self._untransform(level), self.stage, int(now))
        self.events.append(ev)
        return ev

    def _drop(self, now: int) -> StageEvent:
        assert self._peak is not None
        self.stage += 1
        self._pending = False
        _, step, level = self._peak
        return self._event("drop", step, level, now)

    def update(self, step: int, value: Any) -> list[StageEvent]:
        """Feed the value logged at ``step`` (strictly increasing); return the events detected now."""
        step = check_int("step", int(step) if isinstance(step, np.integer) else step, owner="StageDetector")
        if self._last_step is not None and step <= self._last_step:
            raise LearndynValueError(
                f"StageDetector.step={step} is out of range; allowed: step > previous step {self._last_step}"
            )
        y = self._transform(float(value))
        if y is None:
            return []
        self._last_step = step
        if self._t0 is None:
            self._t0 = step
        tr = float(step - self._t0)
        fit = self._fit
        fit.push(tr, y)
        oldest = -math.inf if self.horizon is None else (1.0 - self.horizon) * tr
        while len(fit) > self.window and (self.horizon is None or fit.oldest < oldest):
            fit.pop()
        if len(fit) < self.window:
            return []
        level, slope, t_mean, span, sxx = fit.fit()
        rate = -slope * span
        # standard error of the rate under white noise at the level estimated in this window
        rate_se = span * math.sqrt(fit.noise_var() / sxx)
        centre = round(t_mean) + self._t0
        self.rate, self._level = rate, level
        events: list[StageEvent] = []
        if self.state in ("warmup", "undetermined"):
            self.state = "undetermined"
            if rate < self.plateau_tol:
                events.append(self._enter_plateau(centre, level, rate, step))
        elif self.state == "plateau":
            # The plateau's own (slow) rate, from windows that do not overlap the current one: an exit must be
            # sudden relative to it, and significant relative to the noise.
            older = list(self._plateau_rates)[: max(len(self._plateau_rates) - len(fit), 0)]
            baseline = max(float(np.median(older)), 0.0) if older else 0.0
            settled = len(older) >= self.window
            if settled and rate > max(self.drop_tol, self.z * rate_se, self.contrast * baseline):
                self.state, self._peak, self._pending = "moving", (rate, centre, level), True
                events.append(self._event("plateau_end", centre, level, step))
            else:
                self._plateau_level = level
                self._plateau_rates.append(rate)
                while len(self._plateau_rates) > 4 * len(fit) + self.window:
                    self._plateau_rates.popleft()
        else:  # moving
            assert self._peak is not None
            if rate > self._peak[0]:
                self._peak = (rate, centre, level)
            deep = self._plateau_level - level >= self.min_drop
            if self._pending and deep and (rate < 0.5 * self._peak[0] or rate < self.plateau_tol):
                events.append(self._drop(step))
            if rate < self.plateau_tol:
                self._pending = False
                events.append(self._enter_plateau(centre, level, rate, step))
        return events

    def _enter_plateau(self, centre: int, level: float, rate: float, now: int) -> StageEvent:
        self.state, self._plateau_level = "plateau", level
        self._plateau_rates.clear()
        self._plateau_rates.append(rate)
        return self._event("plateau_start", centre, level, now)

    def finish(self) -> list[StageEvent]:
        """Report a drop still pending at the end of the series (a descent deep enough but not yet over)."""
        if self.state == "moving" and self._pending and self._plateau_level - self._level >= self.min_drop:
            return [self._drop(self._last_step if self._last_step is not None else 0)]
        return []

    def boundaries(self) -> list[int]:
        """Steps of the drops detected so far (the stage boundaries)."""
        return [e.step for e in self.events if e.kind == "drop"]

    def __repr__(self) -> str:
        return (
            f"StageDetector(window={self.window}, horizon={self.horizon}, plateau_tol={self.plateau_tol:g}, "
            f"drop_tol={self.drop_tol:g}, min_drop={self.min_drop:g}, z={self.z:g}, "
            f"contrast={self.contrast:g}, log={self.log}, direction={self.direction!r})"
        )


@checkpoint_type
class _LineFit:
    """Least-squares line through a sliding set of points ``(t, y)``: O(1) per point from running sums.

    Sums are kept relative to a reference ``t`` that is moved (and the sums recomputed exactly) each time
    the window has turned over, so rounding neither accumulates nor cancels catastrophically.
    """

    def __init__(self) -> None:
        self.pts: deque[tuple[float, float, float]] = deque()  # (t, y, noise² estimate or nan)
        self._ref = 0.0
        self._sums = [0.0] * 4  # Σt, Σy, Σt², Σty  (t relative to _ref)
        self._noise = [0.0, 0.0]  # Σ noise² estimates, their count
        self._pops = 0

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def oldest(self) -> float:
        return self.pts[0][0]

    def _add(self, t: float, y: float, sign: float) -> None:
        s = self._sums
        s[0] += sign * t
        s[1] += sign * y
        s[2] += sign * t * t
        s[3] += sign * t * y

    def push(self, t: float, y: float) -> None:
        if not self.pts:
            self._ref = t
        # noise from the previous point's deviation from the chord through its neighbours: with white noise
        # of variance s², r = y₁ − (y₀ + a(y₂ − y₀)) has variance s²(1 + a² + (1 − a)²), whatever the trend
        nsq = math.nan
        if len(self.pts) >= 2:
            (t0, y0, _), (t1, y1, _) = self.pts[-2], self.pts[-1]
            a = (t1 - t0) / (t - t0)
            nsq = (y1 - y0 - a * (y - y0)) ** 2 / (1 + a * a + (1 - a) ** 2)
            self._noise[0] += nsq
            self._noise[1] += 1
        self.pts.append((t, y, nsq))
        self._add(t - self._ref, y, 1.0)

    def pop(self) -> None:
        t, y, nsq = self.pts.popleft()
        self._add(t - self._ref, y, -1.0)
        if not math.isnan(nsq):
            self._noise[0] -= nsq
            self._noise[1] -= 1
        self._pops += 1
        if self._pops >= len(self.pts):
            self._pops, self._ref, self._sums = 0, self.pts[0][0], [0.0] * 4
            self._noise = [0.0, 0.0]
            for tt, yy, nn in self.pts:
                self._add(tt - self._ref, yy, 1.0)
                if not math.isnan(nn):
                    self._noise[0] += nn
                    self._noise[1] += 1

    def noise_var(self) -> float:
        """Noise variance of ``y`` estimated from second differences (insensitive to smooth trends)."""
        total, count = self._noise
        return max(total, 0.0) / count if count > 0 else 0.0

    def fit(self) -> tuple[float, float, float, float, float]:
        """``(mean y, slope, mean t, span of t, Σ(t − t̄)²)``."""
        n = len(self.pts)
        st, sy, stt, sty = self._sums
        tm, ym = st / n, sy / n
        sxx = stt - n * tm * tm
        slope = (sty - n * tm * ym) / sxx
        return ym, slope, tm + self._ref, self.pts[-1][0] - self.pts[0][0], sxx


def batch_loss(ctx: ProbeContext, mode: str = "eval") -> float:
    """The loss on ``ctx``'s batch under ``torch.no_grad`` in ``mode``, leaving no trace in the model.

    Computed once per step and shared (cache key ``batch_loss/<mode>``).
    """
    check_choice("mode", mode, MODES, owner="batch_loss")

    def compute() -> float:
        with preserved_state(ctx.model), torch.no_grad():
            ctx.model.train(mode == "train")
            return float(ctx.loss_fn(ctx.model(ctx.inputs), ctx.targets))

    return ctx.shared(f"batch_loss/{mode}", compute)


class StageProbe(Probe):
    """Runs a :class:`StageDetector` on the batch loss or on a metric logged by the training loop.

    Args:
        every: measure every ``every`` steps.
        metric: ``"loss"`` computes the batch loss from ``ctx`` (see :func:`batch_loss`); any other name is
            read from ``ctx.cache["metrics"][metric]`` (or ``ctx.cache[metric]``) when the Monitor puts it
            there, or fed directly with :meth:`observe`.
        detector: the detector to run (default ``StageDetector()``).
        mode: forward-pass mode for ``metric="loss"``.
        prefix: metric prefix (default ``"stage"`` for the loss, ``"stage/<metric>"`` otherwise).

    Metrics: ``<prefix>/index`` (stage index), ``<prefix>/in_plateau`` (0/1), ``<prefix>/value`` (the value
    fed), ``<prefix>/rate`` (decrease per window, once the window is full), ``<prefix>/drops`` (drops reported
    by this measurement) and ``<prefix>/drop_step`` (the boundary step of the latest of them). All events are
    kept in ``events``.
    """

    name = "stage"
    state_attrs = ("detector", "_new", "_value")
    needs = frozenset({"batch_loss"})

    def __init__(
        self,
        every: int = 1,
        *,
        metric: str = "loss",
        detector: StageDetector | None = None,
        mode: str = "eval",
        prefix: str | None = None,
    ) -> None:
        super().__init__(every)
        owner = type(self).__name__
        if not isinstance(metric, str) or not metric:
            raise LearndynValueError(
                f"{owner}.metric={metric!r} is not allowed; allowed: 'loss' or a metric name"
            )
        if detector is not None and not isinstance(detector, StageDetector):
            raise LearndynValueError(
                f"{owner}.detector={detector!r} is not allowed; allowed: a StageDetector"
            )
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise LearndynValueError(f"{owner}.prefix={prefix!r} is not allowed; allowed: a non-empty string")
        self.metric = metric
        self.detector = detector if detector is not None else StageDetector()
        self.mode = check_choice("mode", mode, MODES, owner=owner)
        self.prefix = prefix or ("stage" if metric == "loss" else f"stage/{metric}")
        self._new: list[StageEvent] = []
        self._value: float | None = None

    @property
    def events(self) -> list[StageEvent]:
        return self.detector.events

    def reset(self) -> None:
        self.detector.reset()
        self._new, self._value = [], None

    def observe(self, step: int, value: Any) -> list[StageEvent]:
        """Feed one value of the watched metric (for metrics the probe cannot compute itself)."""
        events = self.detector.update(step, value)
        self._new += events
        self._value = float(value)
        return events

    def _lookup(self, cache: Mapping[str, Any]) -> float | None:
        metrics = cache.get("metrics")
        if isinstance(metrics, Mapping) and self.metric in metrics:
            return float(metrics[self.metric])
        if self.metric in cache:
            return float(cache[self.metric])
        return None

    def measure(self, ctx: ProbeContext) -> Measurement:
        value = batch_loss(ctx, self.mode) if self.metric == "loss" else self._lookup(ctx.cache)
        last = self.detector.last_step
        if value is not None and (last is None or ctx.step > last):
            self.observe(ctx.step, value)
        p = self.prefix
        out: dict[str, float | np.ndarray] = {
            f"{p}/index": float(self.detector.stage),
            f"{p}/in_plateau": float(self.detector.in_plateau),
        }
        if self._value is not None:
            out[f"{p}/value"] = self._value
        if self.detector.rate is not None:
            out[f"{p}/rate"] = self.detector.rate
        drops = [e for e in self._new if e.kind == "drop"]
        out[f"{p}/drops"] = float(len(drops))
        if drops:
            out[f"{p}/drop_step"] = float(drops[-1].step)
        self._new = []
        return out

    def __repr__(self) -> str:
        return f"StageProbe(every={self.every}, metric={self.metric!r}, detector={self.detector!r})"


# --------------------------------------------------------------------------------------------- offline use
def detect_stages(steps: np.ndarray, values: np.ndarray, detector: StageDetector) -> list[StageEvent]:
    """Feed a whole series to ``detector`` (and :meth:`~StageDetector.finish` it); return its events."""
    for step, value in zip(steps, values, strict=True):
        detector.update(int(step), float(value))
    detector.finish()
    return list(detector.events)


def first_event(events: list[StageEvent], kind: str, after: float = -math.inf) -> float:
    """Step of the first event of ``kind`` that ends a plateau followed by a drop, at or after ``after``.

    ``kind="plateau_end"``: the start of the first completed descent (a plateau end followed by a drop);
    ``"drop"``: that drop's step (steepest descent); ``"plateau_start"``: the plateau the descent ends in.
    ``nan`` if there is none.
    """
    for i, event in enumerate(events):
        if event.kind != "plateau_end" or event.step < after:
            continue
        rest = events[i + 1 :]
        drop = next((e for e in rest if e.kind in ("drop", "plateau_end")), None)
        if drop is None or drop.kind != "drop":
            continue
        if kind == "plateau_end":
            return float(event.step)
        if kind == "drop":
            return float(drop.step)
        settle = next((e for e in rest if e.kind == "plateau_start" and e.step >= drop.step), None)
        return float(settle.step) if settle is not None else math.nan
    return math.nan
