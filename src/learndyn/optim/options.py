"""The options of :class:`~learndyn.optim.CovariantGD`: allowed values, checks, the memory guard.

Every check raises a one-line :class:`~learndyn.validation.LearndynValueError` naming the option, the bad
value and what is allowed. The structure names come from the table
:data:`learndyn.optim.structures.STRUCTURES`; structure-specific checks are the structures' own
(:meth:`~learndyn.optim.structures.base.Structure.validate`, ``root_power`` for the Newton root).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from learndyn.optim.graft import GRAFTS
from learndyn.optim.matfun import fractional_exponent
from learndyn.optim.structures import STRUCTURES
from learndyn.optim.structures.diag import DIAG
from learndyn.validation import LearndynValueError, check_choice, check_int, check_real

MOMENTS = ("second", "covariance")
EPS_MODES = ("inside", "outside")
ROOT_METHODS = ("eigh", "newton")
STALE_DAMPINGS = ("trace", "none")
ROOT_DTYPES = ("float64", "float32")
DEFAULT_MAX_BLOCK: int | None = 64
"""``'kron'``'s block size (``None``: unblocked); see docs/optimizers.md, "Cost of kron"."""
RELATIVE_EPS_STRUCTURES = ("kron", "block", "full")
"""Structures whose matrix roots ``eps_rel`` damps."""
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""2 GiB: the most the metric state of one parameter group may take before construction refuses."""
DEFAULT_PRECONDITION_WARMUP = 100
"""Steps at the start of training on which matrix roots are recomputed every step (see ``CovariantGD``)."""

OWNER = "CovariantGD"

TORCH_FLAGS = {
    "maximize": False,
    "foreach": None,
    "fused": None,
    "differentiable": False,
    "capturable": False,
}
"""torch.optim's standard flags and their defaults (see docs/optimizers.md, "torch.optim conventions")."""

LEGACY_DEFAULTS = {
    "max_block": None,
    "root_dtype": "float64",
    "eigh_every": 1,
    "graft": "none",
    "eps_rel": 0.0,
    "statistics_every": 1,
    "precondition_warmup": 0,
    "stale_damping": "none",
    **TORCH_FLAGS,
}
"""Options a state dict saved before they existed resumes with (the behaviour it was saved under)."""

_WARNED: set[str] = set()


def _warn_once(key: str, message: str, stacklevel: int = 4) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


def human_bytes(nbytes: float) -> str:
    """``1.5 GiB`` etc."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError  # pragma: no cover


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise LearndynValueError(f"{OWNER}.{name}={value!r} is not allowed; allowed: True, False")
    return value


def _check_torch_flags(o: dict[str, Any]) -> None:
    """``maximize`` is honoured; ``foreach``/``fused`` are accepted (CovariantGD always runs its multi-tensor
    kernels and has no fused ones: a one-time warning when asked otherwise); ``differentiable`` and
    ``capturable`` are refused when True."""
    _check_bool("maximize", o["maximize"])
    for name in ("foreach", "fused"):
        if o[name] is not None and not isinstance(o[name], bool):
            raise LearndynValueError(f"{OWNER}.{name}={o[name]!r} is not allowed; allowed: None, True, False")
    if o["foreach"] is False:
        _warn_once(
            "foreach",
            f"{OWNER}: foreach=False is ignored; the step always uses its multi-tensor (foreach) kernels, "
            "which give the same result",
        )
    if o["fused"]:
        _warn_once("fused", f"{OWNER}: fused=True is ignored; there are no fused kernels (same result)")
    for name, why in (
        ("differentiable", "the step is not differentiable (it caches matrix roots in place)"),
        ("capturable", "the step is not CUDA-graph capturable (its schedule runs on the host)"),
    ):
        if _check_bool(name, o[name]):
            raise LearndynValueError(f"{OWNER}.{name}=True is not supported: {why}; allowed: False")


def validate_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Check every ``CovariantGD`` option of one parameter group and return them normalised.

    Raises:
        LearndynValueError: one line naming the option, the bad value and what is allowed.
    """
    o = dict(opts)
    o["lr"] = check_real("lr", o["lr"], low=0.0, owner=OWNER)
    o["alpha"] = check_real("alpha", o["alpha"], low=0.0, high=1.0, owner=OWNER)
    check_choice("structure", o["structure"], STRUCTURES, owner=OWNER)
    check_choice("moment", o["moment"], MOMENTS, owner=OWNER)
    check_choice("eps_mode", o["eps_mode"], EPS_MODES, owner=OWNER)
    check_choice("root_method", o["root_method"], ROOT_METHODS, owner=OWNER)
    check_choice("stale_damping", o["stale_damping"], STALE_DAMPINGS, owner=OWNER)
    check_choice("graft", o["graft"], GRAFTS, owner=OWNER)
    betas = o["betas"]
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise LearndynValueError(
            f"{OWNER}.betas={betas!r} is not allowed; allowed: a pair (beta1, beta2) with 0 <= beta < 1"
        )
    o["betas"] = tuple(
        check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True, owner=OWNER)
        for i, b in enumerate(betas)
    )
    if o["moment"] == "covariance" and o["betas"][0] == 0.0:
        raise LearndynValueError(
            f"{OWNER}.betas[0]=0.0 is not allowed with moment='covariance' (the statistic of grad - m "
            "would be identically 0); allowed: 0 < betas[0] < 1, or moment='second'"
        )
    o["eps"] = check_real("eps", o["eps"], low=0.0, owner=OWNER)
    o["eps_root"] = check_real("eps_root", o["eps_root"], low=0.0, owner=OWNER)
    o["eps_rel"] = check_real("eps_rel", o["eps_rel"], low=0.0, owner=OWNER)
    if o["eps_rel"] and o["structure"] not in RELATIVE_EPS_STRUCTURES:
        raise LearndynValueError(
            f"{OWNER}.eps_rel={o['eps_rel']!r} is not allowed with structure={o['structure']!r} (it damps "
            f"matrix roots); allowed: eps_rel=0, or structure in {RELATIVE_EPS_STRUCTURES}"
        )
    o["weight_decay"] = check_real("weight_decay", o["weight_decay"], low=0.0, owner=OWNER)
    for name in ("first_moment", "bias_correction", "decoupled_weight_decay"):
        _check_bool(name, o[name])
    check_int("precondition_every", o["precondition_every"], low=1, owner=OWNER)
    check_int("statistics_every", o["statistics_every"], low=1, owner=OWNER)
    check_int("precondition_warmup", o["precondition_warmup"], low=0, owner=OWNER)
    check_int("rank", o["rank"], low=1, owner=OWNER)
    if o["max_factor_dim"] is not None:
        check_int("max_factor_dim", o["max_factor_dim"], low=1, owner=OWNER)
    if o.setdefault("max_block", None) is not None:
        check_int("max_block", o["max_block"], low=1, owner=OWNER)
    check_choice("root_dtype", o.setdefault("root_dtype", "float64"), ROOT_DTYPES, owner=OWNER)
    check_int("eigh_every", o.setdefault("eigh_every", 1), low=1, owner=OWNER)
    if o["memory_budget"] is not None:
        o["memory_budget"] = check_real("memory_budget", o["memory_budget"], low=0.0, owner=OWNER)
    _check_torch_flags(o)
    structure = STRUCTURES[o["structure"]]
    if o["root_method"] == "newton" and structure.root_power is not None and o["alpha"] > 0:
        if o["eps_mode"] != "inside":
            raise LearndynValueError(
                f"{OWNER}.eps_mode={o['eps_mode']!r} is not allowed with root_method='newton'; "
                "allowed: 'inside' (or root_method='eigh')"
            )
        if o["eps"] + o["eps_root"] == 0.0:
            raise LearndynValueError(
                f"{OWNER}.eps=0.0 is not allowed with root_method='newton'; allowed: eps > 0 "
                "(the iteration needs S + eps*I positive definite), or root_method='eigh'"
            )
        power = structure.root_power
        suffix = "" if power == 1.0 else f"/{round(1 / power)}"
        fractional_exponent(o["alpha"] * power, name=f"{OWNER}.alpha{suffix}")
    structure.validate(o)
    _warn_overrides(o)
    return o


def _warn_overrides(o: dict[str, Any]) -> None:
    """Warn once per process when one option silently overrides another (the run is valid, but an option
    the user set does not do what it says for part or all of it)."""
    if STRUCTURES[o["structure"]].root_power is None or o["alpha"] == 0:
        return  # no matrix roots: the schedules below have nothing to schedule
    every, warmup, stats = o["precondition_every"], o["precondition_warmup"], o["statistics_every"]
    if every > 1 and warmup > 1:
        _warn_once(
            "precondition_warmup",
            f"{OWNER}: precondition_warmup={warmup} overrides precondition_every={every} on steps "
            f"1..{warmup} (roots are recomputed on every one of them); set precondition_warmup=0 to follow "
            "precondition_every from the start",
            stacklevel=5,
        )
    if stats > every:
        _warn_once(
            "statistics_every",
            f"{OWNER}: statistics_every={stats} overrides precondition_every={every}: a root is only "
            f"recomputed when its statistics changed, i.e. at most every {stats} steps",
            stacklevel=5,
        )


def memory_requirement(structure: str, params: Sequence[Tensor], opts: dict[str, Any]) -> int:
    """Bytes of metric state (statistic + cached inverse root) a group of (real) ``params`` needs: the
    structure's for the parameters it covers, ``'diag'``'s for the rest."""
    s = STRUCTURES[structure]
    own = [p for p in params if s.covers(p)]
    rest = [p for p in params if not s.covers(p)]
    graft = DIAG.memory(params, opts) if opts.get("graft", "none") != "none" else 0
    return s.memory(own, opts) + DIAG.memory(rest, opts) + graft


def check_memory(structure: str, params: Sequence[Tensor], opts: dict[str, Any]) -> None:
    """Refuse a group whose metric state would exceed ``memory_budget`` (one line, with what to do)."""
    budget = opts["memory_budget"]
    need = memory_requirement(structure, params, opts)
    if budget is not None and need > budget:
        P = sum(p.numel() for p in params)
        raise LearndynValueError(
            f"{OWNER}.structure={structure!r} for {P:,} parameters needs {need:,} bytes "
            f"({human_bytes(need)}) of metric state, more than memory_budget={int(budget):,} bytes "
            f"({human_bytes(budget)}); allowed: a cheaper structure ('diag', 'kron', 'lowrank'), "
            "max_factor_dim or max_block for 'kron', or a larger memory_budget"
        )
