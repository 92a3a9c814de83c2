"""Where a model has parameter symmetries: the :class:`Symmetry` record and :func:`detect_symmetries`.

The four families (rescaling, linear pairs, translation of softmax logits, scale before normalisation) and
their conserved quantities are described in :mod:`learndyn.probes.symmetry`, which measures them. Detection
traces the model with ``torch.fx`` and follows single-use data paths from each layer; when tracing fails it
falls back to the order of ``nn.Sequential`` containers. A path is accepted only if every step is known to
respect the symmetry (anything else -- tanh, GELU, a residual branch, a reused module, tied or frozen
weights -- breaks it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from learndyn.checkpoint import checkpoint_type
from learndyn.validation import LearndynValueError, check_choice, check_int

KINDS = ("rescale", "linear", "translation", "scale")

_DENSE = (nn.Linear,)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = _DENSE + _CONV
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_NORMS = _BATCHNORM + _INSTANCENORM + (nn.GroupNorm, nn.LayerNorm)
_CHANNEL_FIRST = _CONV + _BATCHNORM + _INSTANCENORM + (nn.GroupNorm,)

# Op categories along a data path: "act" unit-wise positively homogeneous (commutes with positive per-unit
# scaling), "id" identity, "maxpool"/"avgpool" per-channel pooling (avg also commutes with channel mixing),
# "flatten" (start_dim=1), "softmax" (over the class dimension), "layer", "norm", "output", "other".
_ACT_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_MAXPOOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_AVGPOOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_ACT_FUNCTIONS: set[Any] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    F.leaky_relu,
    F.leaky_relu_,
    F.prelu,
    torch.prelu,
    F.dropout,
    torch.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
}
_MAXPOOL_FUNCTIONS: set[Any] = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    torch.max_pool1d,
    torch.max_pool2d,
    torch.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_AVGPOOL_FUNCTIONS: set[Any] = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    torch.avg_pool1d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
}
_SOFTMAX_FUNCTIONS: set[Any] = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_MODULE_CATS: tuple[tuple[tuple[type[nn.Module], ...], str], ...] = (
    (_LAYERS, "layer"),
    (_NORMS, "norm"),
    (_ACT_MODULES, "act"),
    ((nn.Identity,), "id"),
    (_MAXPOOL_MODULES, "maxpool"),
    (_AVGPOOL_MODULES, "avgpool"),
)
"""Module types by op category, tried in order."""
_ACT_METHODS = {"relu", "relu_"}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}


@checkpoint_type
@dataclass(frozen=True)
class Symmetry:
    """One symmetry of a model, named by module paths (as in ``model.named_modules()``).

    ``kind``: ``"rescale"`` / ``"linear"`` (``producer`` → ``consumer`` pair), ``"translation"`` (``producer``
    is the final dense layer) or ``"scale"`` (``producer`` feeds the normalisation module ``consumer``;
    ``groups`` is the number of contiguous unit groups normalised together: ``None`` per unit (BatchNorm),
    ``1`` all units (LayerNorm), ``G`` for GroupNorm; derived from ``consumer`` when left ``None`` and
    ``consumer`` is a LayerNorm/GroupNorm).
    """

    kind: str
    producer: str
    consumer: str | None = None
    groups: int | None = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS, owner="Symmetry")
        if not isinstance(self.producer, str) or not self.producer:
            raise LearndynValueError(
                f"Symmetry.producer={self.producer!r} is not allowed; allowed: a non-empty module name"
            )
        if self.kind in ("rescale", "linear") and not (isinstance(self.consumer, str) and self.consumer):
            raise LearndynValueError(
                f"Symmetry.consumer={self.consumer!r} is not allowed; allowed: a module name "
                f"for kind={self.kind!r}"
            )
        if self.groups is not None:
            check_int("groups", self.groups, low=1, owner="Symmetry")

    @property
    def tag(self) -> str:
        """``producer-consumer`` for pairs, ``producer`` otherwise (module names never contain ``-``)."""
        return f"{self.producer}-{self.consumer}" if self.kind in ("rescale", "linear") else self.producer


def _units(module: nn.Module) -> int | None:
    """Number of units (features/channels) a layer or affine normalisation produces."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _CONV):
        return module.out_channels
    if isinstance(module, _BATCHNORM + _INSTANCENORM):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return None


# ----------------------------------------------------------------------------------------------- detection


@dataclass
class _Node:
    cat: str
    name: str | None = None  # module path for module nodes
    succ: list[tuple[int, bool]] | None = (
        None  # (user index, the user reads this node only as its main input)
    )


def _module_cat(module: nn.Module) -> str:
    for types, cat in _MODULE_CATS:
        if isinstance(module, types):
            return cat
    if isinstance(module, nn.Flatten):
        return "flatten" if module.start_dim == 1 and module.end_dim == -1 else "other"
    if isinstance(module, nn.Softmax | nn.LogSoftmax):
        return "softmax" if module.dim in (None, 1, -1) else "other"
    return "other"


def _arg(node: Any, pos: int, key: str, default: Any) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(key, default)


def _fx_cat(node: Any) -> str:
    if node.op == "output":
        return "output"
    if node.op == "call_function":
        fn = node.target
        if fn in _ACT_FUNCTIONS:
            return "act"
        if fn in _MAXPOOL_FUNCTIONS:
            return "maxpool"
        if fn in _AVGPOOL_FUNCTIONS:
            return "avgpool"
        if fn is torch.flatten:
            return (
                "flatten"
                if _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1
                else "other"
            )
        if fn in _SOFTMAX_FUNCTIONS:
            return "softmax" if _arg(node, 1, "dim", None) in (None, 1, -1) else "other"
        return "other"
    if node.op == "call_method":
        if node.target in _ACT_METHODS:
            return "act"
        if node.target == "flatten":
            return (
                "flatten"
                if _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1
                else "other"
            )
        if node.target in _SOFTMAX_METHODS:
            return "softmax" if _arg(node, 1, "dim", None) in (None, 1, -1) else "other"
    return "other"


def _fx_graph(model: nn.Module) -> list[_Node]:
    from torch import fx

    graph = fx.symbolic_trace(model).graph
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    calls = Counter(n.target for n in nodes if n.op == "call_module")
    out: list[_Node] = []
    for n in nodes:
        if n.op == "call_module":
            cat = _module_cat(model.get_submodule(n.target)) if calls[n.target] == 1 else "other"
            name = n.target
        else:
            cat, name = _fx_cat(n), None
        succ = []
        for u in n.users:
            rest: list[Any] = []
            fx.node.map_arg((u.args[1:], u.kwargs), rest.append)
            succ.append((index[u], bool(u.args) and u.args[0] is n and n not in rest))
        out.append(_Node(cat, name, succ))
    return out


def _sequential_graph(model: nn.Module) -> list[_Node]:
    """Chains from ``nn.Sequential`` containers (nested ones expanded) when fx tracing is not possible."""
    modules = dict(model.named_modules())

    def expand(prefix: str, seq: nn.Sequential) -> list[str]:
        names: list[str] = []
        for child, mod in seq.named_children():
            full = f"{prefix}.{child}" if prefix else child
            names += expand(full, mod) if isinstance(mod, nn.Sequential) else [full]
        return names

    out: list[_Node] = []
    for name, mod in modules.items():
        parent = name.rpartition(".")[0] if name else None
        if not isinstance(mod, nn.Sequential) or (
            parent is not None and isinstance(modules[parent], nn.Sequential)
        ):
            continue
        chain = expand(name, mod)
        start = len(out)
        for k, child in enumerate(chain):
            out.append(_Node(_module_cat(modules[child]), child, [(start + k + 1, True)]))
        out.append(_Node("output" if mod is model else "other", None, []))
    return out


def _shared_or_frozen(model: nn.Module) -> set[str]:
    """Modules that are used twice, share a parameter with another module, or hold frozen parameters."""
    owners: dict[int, set[str]] = {}
    uses: Counter[int] = Counter()
    bad: set[str] = set()
    for name, mod in model.named_modules(remove_duplicate=False):
        uses[id(mod)] += 1
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
            if not p.requires_grad:
                bad.add(name)
    for name, mod in model.named_modules(remove_duplicate=False):
        if uses[id(mod)] > 1:
            bad.add(name)
    for names in owners.values():
        if len(names) > 1:
            bad |= names
    return bad


def _walk(nodes: list[_Node], start: int) -> tuple[_Node | None, list[str]]:
    """Follow the single-use path from ``start`` through unit-wise ops; return the node it ends at."""
    ops: list[str] = []
    cur = start
    while True:
        succ = nodes[cur].succ or []
        if len(succ) != 1 or not succ[0][1]:
            return None, ops
        nxt = nodes[succ[0][0]]
        if nxt.cat in ("act", "id", "maxpool", "avgpool", "flatten"):
            ops.append(nxt.cat)
            cur = succ[0][0]
            continue
        return nxt, ops


def _pair_kind(prod: nn.Module, cons: nn.Module, ops: list[str]) -> str | None:
    """``"linear"``/``"rescale"`` if the path ``prod → ops → cons`` carries the symmetry, else ``None``."""
    units = _units(prod)
    chan_first = isinstance(prod, _CHANNEL_FIRST)
    pooled = any(o in ("maxpool", "avgpool") for o in ops)
    if units is None or (pooled and not chan_first):
        return None
    flat = "flatten" in ops
    if isinstance(cons, _CONV):
        if not chan_first or flat or cons.groups != 1 or cons.in_channels != units:
            return None
    elif isinstance(cons, nn.Linear):
        if flat and chan_first:
            if cons.in_features % units:
                return None
        elif not isinstance(prod, nn.Linear | nn.LayerNorm | nn.BatchNorm1d | nn.GroupNorm):
            return None
        elif cons.in_features != units:
            return None
    else:
        return None
    if isinstance(prod, _NORMS):
        return "rescale" if getattr(prod, "weight", None) is not None else None
    if set(ops) <= {"id", "avgpool", "flatten"} and getattr(prod, "groups", 1) == 1:
        return "linear"
    return "rescale"


def _norm_groups(prod: nn.Module, norm: nn.Module, ops: list[str]) -> tuple[bool, int | None]:
    """Whether ``prod → ops → norm`` is scale invariant, and the number of groups (None: per unit)."""
    units = _units(prod)
    if "flatten" in ops or units is None:
        return False, None
    if any(o in ("maxpool", "avgpool") for o in ops) and not isinstance(prod, _CONV):
        return False, None
    if isinstance(norm, _BATCHNORM + _INSTANCENORM):
        return norm.num_features == units, None
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels == units, norm.num_groups
    if isinstance(norm, nn.LayerNorm):
        shape = tuple(norm.normalized_shape)
        if isinstance(prod, nn.Linear):
            return shape == (units,), 1
        ndim = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(prod)] if type(prod) in _CONV else -1
        return len(shape) == ndim + 1 and shape[0] == units, 1
    return False, None


def detect_symmetries(model: nn.Module, *, softmax_output: bool = False) -> list[Symmetry]:
    """Symmetries of ``model`` found from its structure (see the module doc for the rules).

    ``softmax_output``: the model's output feeds a softmax outside the model (e.g. the loss is
    cross-entropy), so a final dense layer has the translation symmetry. Uses ``torch.fx`` tracing, or
    ``nn.Sequential`` order when the model cannot be traced. Never runs the model.
    """
    try:
        nodes = _fx_graph(model)
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to Sequential structure
        nodes = _sequential_graph(model)
    modules = dict(model.named_modules())
    excluded = _shared_or_frozen(model)
    found: list[Symmetry] = []
    for i, node in enumerate(nodes):
        if node.cat not in ("layer", "norm") or not node.name or node.name in excluded:
            continue
        prod = modules[node.name]
        end, ops = _walk(nodes, i)
        if end is None:
            continue
        end_mod = modules.get(end.name) if end.name else None
        if end.cat == "layer" and end.name not in excluded:
            kind = _pair_kind(prod, end_mod, ops)  # type: ignore[arg-type]
            if kind:
                found.append(Symmetry(kind, node.name, end.name))
        elif end.cat == "norm" and node.cat == "layer" and end.name not in excluded:
            ok, groups = _norm_groups(prod, end_mod, ops)  # type: ignore[arg-type]
            if ok:
                found.append(Symmetry("scale", node.name, end.name, groups))
        elif (
            isinstance(prod, nn.Linear)
            and set(ops) <= {"id"}
            and (end.cat == "softmax" or (end.cat == "output" and softmax_output))
        ):
            found.append(Symmetry("translation", node.name))
    return found
