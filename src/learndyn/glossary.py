"""The metric glossary: what every metric name a probe (or the training loop) emits means.

Each entry of :data:`GLOSSARY` documents one metric name or one family of names: a *pattern* in which
``<placeholder>`` stands for one name component (a module, a parameter tensor, a symmetry tag, ...), e.g.
``repr/<layer>/erank`` covers ``repr/0/erank`` and ``repr/encoder.fc/erank``. The glossary feeds
``learndyn metrics [NAME]``, the docs' metric glossary page and the axis titles of reports.

Units use ``θ`` for a parameter unit, ``L`` for a loss unit and ``f`` for a network-output unit; "1" is
dimensionless. A learning rate has units ``θ²/L`` (``Δθ = −lr ∇L``).

Adding a metric is one :class:`Metric` entry in :data:`GLOSSARY` (``tests/test_glossary.py`` runs every
probe on small models and fails on a name without an entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["GLOSSARY", "Metric", "axis_title", "lookup", "search"]


@dataclass(frozen=True)
class Metric:
    """One glossary entry.

    ``pattern``: the metric name, ``<x>`` for one variable name component; ``source``: the probe (its
    ``Monitor`` name) or ``training``/``experiment``; ``unit``: see the module docstring; ``meaning``: one
    sentence; ``formula``: how it is computed; ``read``: how to read it; ``healthy``: what a healthy run
    shows;
    ``kind``: ``scalar`` (a series) or ``array`` (a spectrum, a matrix).
    """

    pattern: str
    source: str
    unit: str
    meaning: str
    formula: str
    read: str
    healthy: str
    kind: str = "scalar"
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = re.split(r"(<[^>]+>)", self.pattern)
        body = "".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts)
        object.__setattr__(self, "regex", re.compile(f"^{body}$"))

    @property
    def placeholders(self) -> int:
        return self.pattern.count("<")


M = Metric
_SYM = "symmetry/<kind>/<tag>"
GLOSSARY: tuple[Metric, ...] = (
    # ------------------------------------------------------------------------------------------ training
    M("loss", "training", "L", "the mini-batch training loss of the parameters after `step` updates",
      "L(θ_s; batch_s), mean over the batch", "noisy; look at its trend on a log axis",
      "decreases, possibly in plateaus and drops"),
    M("<split>/loss", "training", "L", "a loss evaluated by the experiment (e.g. test/loss, train/loss)",
      "mean loss over the evaluation set", "full-data, so smoother than `loss`",
      "test/loss follows train/loss; a growing gap is overfitting"),
    M("<split>/accuracy", "training", "1", "fraction of correctly classified samples on a split",
      "mean(argmax f(x) = y)", "0 to 1", "rises; grokking shows train first, test much later"),
    M("diverged_at", "training", "step", "the step at which training turned non-finite",
      "first s with a non-finite loss or gradient", "present only for diverged runs", "absent"),
    M("sim/<quantity>", "experiment", "varies", "a simulated quantity an experiment compares with theory",
      "see the phenomenon's page", "drawn solid, beside theory/<quantity>", "follows theory/<quantity>"),
    M("theory/<quantity>", "experiment", "varies", "the closed-form prediction of sim/<quantity>",
      "see the phenomenon's page", "drawn dashed", "sim/<quantity> lies on it within the tolerance"),
    M("loss/<task>/<optimizer>", "experiment", "L", "full-data loss of one optimizer on one task",
      "median over seeds, every eval_every steps", "lower and earlier is better",
      "reaches target/<task>"),
    M("target/<task>", "experiment", "L", "the loss a task counts as solved", "fixed per task",
      "steps to target = first step with loss ≤ target", "reached by the good optimizers"),
    M("loss_min/<task>/<optimizer>", "experiment", "L", "the lowest seed's loss (cgd-paper: band bottom)",
      "min over seeds at the tuned lr", "with loss_max/…, the spread over seeds", "close to the median"),
    M("loss_max/<task>/<optimizer>", "experiment", "L", "the highest seed's loss (cgd-paper: the band's top)",
      "max over seeds at the tuned lr", "with loss_min/…, the spread over seeds", "close to the median"),
    M("pr/<task>/<optimizer>", "experiment", "1", "participation ratio of the update covariance (cgd-paper)",
      "(tr C)²/‖C‖_F² = (Σλ)²/Σλ², C ← βC + (1−β) Δq Δqᵀ", "effective number of directions the updates use",
      "the CGD paper claims it falls for full CGD"),
    M("metric_pr/<task>/<optimizer>", "experiment", "1", "participation ratio of full CGD's statistic S "
      "(cgd-paper)", "(tr S)²/‖S‖_F²", "effective number of directions the metric sees",
      "the CGD paper's shrinking subspace: it would fall"),
    M("eig<k>/<task>/<optimizer>", "experiment", "1", "k-th largest eigenvalue of the update covariance over "
      "its trace (cgd-paper, full CGD)", "λ_k(C)/tr C", "near 1 for λ1: one direction dominates",
      "rises if the updates concentrate"),
    M("traj/<optimizer>/<start>/<coordinate>", "experiment", "θ", "a Rosenbrock trajectory point (cgd-paper)",
      "x or y of one start, seed 0, tuned lr", "drawn in the plane over the contours", "ends at (1, 1)"),
    # ----------------------------------------------------------------------------------------- noise
    M("noise/trace", "noise", "(L/θ)²", "total variance of one sample's gradient around the batch mean",
      "tr C, C = (1/B) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ", "the size of the gradient noise",
      "finite; usually falls with the loss"),
    M("noise/spectrum", "noise", "(L/θ)²", "top-k eigenvalues of the per-sample gradient covariance C",
      "eig(H K H / B), K the per-sample gradient Gram matrix", "a fast decay: noise in few directions",
      "a few large eigenvalues over a tail", kind="array"),
    M("noise/effective_rank", "noise", "1", "how many directions the gradient noise spreads over",
      "(tr C)² / ‖C‖_F²", "1 … B−1", "small (≪ B) and stable"),
    M("noise/grad_norm_sq", "noise", "(L/θ)²", "squared norm of the mini-batch gradient", "|ḡ|²",
      "the signal the noise is compared with", "falls as training converges"),
    M("noise/snr", "noise", "1", "signal-to-noise ratio of the mini-batch gradient",
      "|ḡ|² / (tr C / B)", "≫ 1: mostly signal (GD-like); ≲ 1: mostly noise (SGD diffuses)",
      "high early, falling towards ~1 near a minimum"),
    M("noise/snr/<module>", "noise", "1", "the SNR restricted to one module's parameters",
      "|ḡ_m|² / (tr C_m / B)", "which layer is signal- or noise-dominated", "like noise/snr"),
    M("noise/temperature", "noise", "L", "the SGD temperature of the Langevin picture",
      "lr · tr C / (2B)", "larger: SGD explores more around a minimum",
      "comparable to the loss scale; falls with lr or B"),
    M("noise/metric_alignment", "noise", "1", "cosine between diag C and CovariantGD's tracked diag S",
      "⟨diag C, diag S⟩ / (‖diag C‖ ‖diag S‖)", "1: the metric follows the gradient noise's shape",
      "close to 1 (only with CovariantGD)"),
    # ------------------------------------------------------------------------------------- curvature
    M("curvature/top_eigenvalues", "curvature", "L/θ²", "top Hessian eigenvalues (Lanczos), descending",
      "Ritz values of the Lanczos tridiagonal T = Q H Qᵀ", "the stiffest directions of the loss",
      "λ_max below 2/lr", kind="array"),
    M("curvature/lambda_max", "curvature", "L/θ²", "the largest Hessian eigenvalue (sharpness)",
      "top Ritz value of Lanczos on H = ∇²L", "rises early (progressive sharpening), then saturates",
      "lr · λ_max < 2"),
    M("curvature/lambda_min", "curvature", "L/θ²", "the smallest Ritz value of Lanczos",
      "exact only once Lanczos has converged", "negative: a saddle direction", "≥ 0 near a minimum"),
    M("curvature/trace", "curvature", "L/θ²", "Hessian trace (Hutchinson estimate)",
      "mean over Rademacher v of vᵀ H v", "total curvature; see trace_stderr", "positive, finite"),
    M("curvature/trace_stderr", "curvature", "L/θ²", "standard error of the Hutchinson trace",
      "std(vᵀHv) / √n", "trust curvature/trace to about ±2 of these", "small against curvature/trace"),
    M("curvature/ggn_trace", "curvature", "L/θ²", "exact trace of the Gauss-Newton matrix",
      "tr G, G = (1/B) Σ_i J_iᵀ H_i J_i, by structured backpropagation (no sampling)",
      "the positive semi-definite part of the curvature; equals tr ∇²L for ReLU-type networks",
      "positive, finite; tracks curvature/trace"),
    M("curvature/ggn_trace/<module>", "curvature", "L/θ²", "one module's share of the Gauss-Newton trace",
      "tr G restricted to the module's parameters", "where the curvature sits, layer by layer",
      "no single layer taking nearly all of it"),
    M("curvature/sharpness", "curvature", "1", "learning rate times the top Hessian eigenvalue",
      "lr · λ_max", "gradient descent on the local quadratic is stable while < 2",
      "below 2; hovering at 2 is the edge of stability"),
    M("curvature/stability_ratio", "curvature", "1", "sharpness over the stability limit",
      "lr · λ_max / 2", "≥ 1: past the edge of stability", "< 1, or ≈ 1 at the edge of stability"),
    # ---------------------------------------------------------------------------------------- kernel
    M("kernel/top_eigenvalues", "kernel", "(f/θ)²", "top eigenvalues of the empirical NTK on the probe batch",
      "eig Θ, Θ_ij = Σ_a ⟨∂f_a(x_i)/∂θ, ∂f_a(x_j)/∂θ⟩", "large eigenvalues: directions learned fast",
      "a few large ones aligned with the target", kind="array"),
    M("kernel/trace", "kernel", "(f/θ)²", "trace of the empirical NTK", "tr Θ", "overall kernel scale",
      "stable in the lazy regime, changing in the rich one"),
    M("kernel/effective_rank", "kernel", "1", "how many directions the NTK spreads over",
      "(tr Θ)² / ‖Θ‖_F²", "1 … n", "falls as features specialise (rich regime)"),
    M("kernel/target_alignment", "kernel", "1", "alignment of the NTK with the targets",
      "⟨Θ, Y Yᵀ⟩_F / (‖Θ‖_F ‖Y Yᵀ‖_F)", "0 … 1; higher: the kernel fits these targets easily",
      "rises during feature learning"),
    M("kernel/velocity", "kernel", "1", "relative change of the NTK since the previous measurement",
      "‖Θ_t − Θ_prev‖_F / ‖Θ_prev‖_F", "how fast the kernel moves", "small and falling late in training"),
    M("kernel/velocity_per_step", "kernel", "1/step", "kernel velocity divided by the steps elapsed",
      "velocity / (t − t_prev)", "comparable across probe schedules", "small and falling"),
    M("kernel/distance_from_init", "kernel", "1", "relative distance of the NTK from its initial value",
      "‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F", "small and flat: lazy regime; growing: rich (feature-learning) regime",
      "depends on the regime you want"),
    M("kernel/matrix", "kernel", "(f/θ)²", "the empirical NTK itself (only with log_kernel=True)",
      "Θ on the probe batch", "block structure by class shows feature learning", "symmetric, PSD",
      kind="array"),
    # -------------------------------------------------------------------------------------- symmetry
    M(f"{_SYM}/norm", "symmetry", "θ²", "size of a conserved quantity (kind: rescale, linear, translation, "
      "scale; tag: the layers)", "‖q‖ (Frobenius for the linear-pair matrix Q)", "its scale",
      "stable under gradient flow"),
    M(f"{_SYM}/drift", "symmetry", "θ²", "how far a conserved quantity moved from its initial value",
      "‖q_t − q_0‖", "0 under exact gradient flow; grows with lr², weight decay, adaptive optimizers",
      "small against norm"),
    M(f"{_SYM}/rel_drift", "symmetry", "1", "drift over the scale of the quantity's ingredients",
      "drift / (‖M₁‖² + ‖M₂‖²) for pairs, Σs for scale, √C‖[W b]‖ for translation",
      "comparable across layers", "≪ 1 with SGD and small lr"),
    M(f"{_SYM}/value", "symmetry", "θ²", "the conserved quantity itself (q, Q, v or s)",
      "see the symmetry probe's docstring", "compare first and last values", "unchanged", kind="array"),
    M("symmetry/translation/<tag>/law_error", "symmetry", "1",
      "how far the softmax translation charge is from its exact SGD(momentum, weight decay) law",
      "‖v_k − v_k^law‖/‖v₀‖, v^law from learndyn.theory.momentum_symmetry (a 2×2 recursion; rate "
      "λ/(1 − μ), not λ, with momentum μ)", "≈ 1e-12 for a true translation symmetry; large: the symmetry "
      "is broken or the optimizer is not plain torch SGD", "round-off"),
    M("symmetry/scale/<tag>/total", "symmetry", "θ²", "total squared norm of the weights into a norm layer",
      "Σ_c ‖w_c‖²", "grows as ‖w‖² + η²‖∇_w L‖² with finite steps", "slowly growing, or decaying with wd"),
    M("symmetry/count", "symmetry", "1", "number of symmetries tracked", "detected + declared",
      "0: none found in this architecture", "constant"),
    M("symmetry/max_rel_drift", "symmetry", "1", "largest relative drift over the tracked symmetries",
      "max rel_drift", "one number to watch", "≪ 1"),
    # -------------------------------------------------------------------------------- hessian_symmetry
    M("hessian_symmetry/<kind>/<tag>/residual", "hessian_symmetry", "1",
      "relative residual of the second-order Noether identity Hξ = −Aᵀ∇L over a symmetry's generators",
      "max ‖Hξ + Aᵀ∇L‖ / (s‖ξ‖ + ‖Aᵀ∇L‖), s = ‖Hr‖ for a random unit r",
      "rounding level for an exact symmetry; larger where the symmetry is broken (norm eps)", "~1e-15"),
    M("hessian_symmetry/<kind>/<tag>/scalar_residual", "hessian_symmetry", "1",
      "relative residual of ξᵀHξ = −(Aξ)·∇L", "max |ξᵀHξ + (Aξ)·∇L| / (s‖ξ‖² + |(Aξ)·∇L|)",
      "as residual, for the curvature along the symmetry direction", "~1e-15"),
    M("hessian_symmetry/<kind>/<tag>/curvature", "hessian_symmetry", "1",
      "curvature along the symmetry directions relative to the Hessian's scale", "max |ξᵀHξ| / (s‖ξ‖²)",
      "→ 0 at a critical point (symmetry directions become zero modes); 0 always for translations",
      "falls with ‖∇L‖"),
    M("hessian_symmetry/<kind>/<tag>/generators", "hessian_symmetry", "1", "generators checked",
      "units (rescale), units² (linear pair), groups (scale), fan-in + 1 (translation)", "constant",
      "constant"),
    M("hessian_symmetry/max_residual", "hessian_symmetry", "1", "largest residual of all symmetries",
      "max of residual and scalar_residual", "one number to watch", "~1e-15"),
    M("hessian_symmetry/grad_norm", "hessian_symmetry", "loss/θ", "gradient norm of the batch loss", "‖∇L‖",
      "how far from a critical point the identity is probed", "decreasing"),
    M("hessian_symmetry/zero_modes", "hessian_symmetry", "1", "near-zero eigenvalues of the full Hessian",
      "#{λ : |λ| ≤ rtol·max|λ|}", "flat directions of the loss", "≥ explained"),
    M("hessian_symmetry/symmetry_rank", "hessian_symmetry", "1", "dimension spanned by all generators ξ",
      "rank of the matrix of ξ", "the symmetry orbit's dimension", "constant"),
    M("hessian_symmetry/explained", "hessian_symmetry", "1",
      "near-zero Hessian directions that are symmetry directions",
      "dim(span ξ ∩ near-null eigenspace), principal-angle cosines ≥ 1 − 1e-3",
      "= symmetry_rank at a minimum; the rest of zero_modes come from elsewhere (dead units, overfitting)",
      "→ symmetry_rank as ‖∇L‖ → 0"),
    # -------------------------------------------------------------------------------- representation
    M("repr/<layer>/erank", "representation", "1", "effective rank of a layer's outputs on the batch",
      "exp(entropy of σ_k/Σσ) over the singular values σ_k of H (B × d)", "how many directions are used",
      "well above 1; a collapse to ~1 is a failure"),
    M("repr/<layer>/erank_frac", "representation", "1", "effective rank over its maximum",
      "erank / min(B, d)", "0 … 1", "not falling towards 0"),
    M("repr/<layer>/pr", "representation", "1", "participation ratio of the layer's outputs",
      "(Σλ)² / Σλ², λ_k = σ_k²", "like erank, more sensitive to the top directions", "well above 1"),
    M("repr/<layer>/norm", "representation", "f", "RMS sample norm of the layer's outputs",
      "(mean_i ‖h_i‖²)^½", "activation scale", "neither exploding nor vanishing"),
    M("repr/<layer>/dead_frac", "representation", "1", "fraction of units never positive on the batch",
      "mean_j [max_i h_ij ≤ 0]", "dead ReLUs", "small (< 0.5)"),
    M("repr/<layer>/rank_collapse", "representation", "1", "flag: effective rank collapsed",
      "erank < rank_frac · min(B, d)", "1 is an alarm", "0"),
    M("repr/<layer>/dead_collapse", "representation", "1", "flag: too many dead units",
      "dead_frac ≥ dead_frac_max", "1 is an alarm", "0"),
    M("repr/<layer>/norm_collapse", "representation", "1", "flag: activations vanished",
      "norm ≤ norm_frac · norm₀ or norm = 0", "1 is an alarm", "0"),
    M("repr/<layer>/sv", "representation", "f", "singular values of the layer's outputs (spectrum=True)",
      "σ_k of H, descending", "the shape of the representation", "no collapse to one value",
      kind="array"),
    M("repr/collapse", "representation", "1", "flag: any layer raised any collapse flag",
      "max over layers and flags", "1 is an alarm", "0"),
    # ------------------------------------------------------------------------------------ parameters
    M("params/norm", "parameters", "θ", "norm of all trainable parameters", "‖θ_t‖",
      "grows in the rich regime, shrinks with weight decay", "finite, slowly varying"),
    M("params/dist_init", "parameters", "θ", "distance from the initial parameters", "‖θ_t − θ_0‖",
      "how far training moved the weights", "grows then saturates"),
    M("params/dist_init_rel", "parameters", "1", "distance from init over the initial norm",
      "‖θ_t − θ_0‖ / ‖θ_0‖ (inf when θ_0 = 0)", "≪ 1: lazy regime; ~1: rich regime",
      "finite; inf only for a zero-initialised tensor"),
    M("params/update", "parameters", "θ", "parameter change since the previous measurement",
      "‖θ_t − θ_prev‖ (from the second measurement on)", "the effective step size",
      "falls as training converges"),
    M("params/update_rel", "parameters", "1", "relative parameter change since the previous measurement",
      "‖θ_t − θ_prev‖ / ‖θ_prev‖", "per-measurement relative movement", "≪ 1"),
    M("params/<tensor>/norm", "parameters", "θ", "norm of one parameter tensor", "‖θ_t[tensor]‖",
      "which layer grows", "finite"),
    M("params/<tensor>/dist_init", "parameters", "θ", "one tensor's distance from init",
      "‖θ_t − θ_0‖ on the tensor", "which layer moves", "grows then saturates"),
    M("params/<tensor>/dist_init_rel", "parameters", "1", "one tensor's distance from init, relative",
      "‖θ_t − θ_0‖ / ‖θ_0‖ on the tensor (inf for a zero-initialised bias)", "≪ 1: lazy; ~1: rich",
      "finite except zero-initialised tensors"),
    M("params/<tensor>/update", "parameters", "θ", "one tensor's change since the previous measurement",
      "‖θ_t − θ_prev‖ on the tensor", "per-layer step size", "falls as training converges"),
    # ---------------------------------------------------------------------------------------- stages
    M("stage/index", "stages", "1", "index of the current learning stage (plateau between drops)",
      "number of drops detected so far", "a staircase", "increases at each sudden drop of the loss"),
    M("stage/in_plateau", "stages", "1", "whether the loss is on a plateau now",
      "rate < plateau_tol (hysteresis)",
      "1 on a plateau, 0 while descending", "alternates in saddle-to-saddle dynamics"),
    M("stage/value", "stages", "L", "the value fed to the stage detector (the batch loss)",
      "L(θ_t; batch)", "the series the stages are detected on", "decreases"),
    M("stage/rate", "stages", "1", "decrease of log loss across the detector's window",
      "−slope · span of a least-squares line through the window", "0.1 ≈ fell by 10% within the window",
      "≈ 0 on plateaus, large during drops"),
    M("stage/drops", "stages", "1", "drops reported by this measurement", "count", "1 at a stage boundary",
      "0 mostly"),
    M("stage/drop_step", "stages", "step", "the boundary step of the latest drop", "step of steepest descent",
      "where the stage changed", "matches the visible drops of the loss"),
    M("stage/<metric>/<stat>", "stages", "varies", "the stage statistics (index, in_plateau, value, rate, "
      "drops, drop_step) of another logged metric", "as for the loss", "as for the loss", "as for the loss"),
    # --------------------------------------------------------------------------------------- updates
    M("updates/pr", "updates", "1", "effective number of directions the optimizer's updates explore",
      "(Σλ)²/Σλ² of the covariance of the last `window` updates (θ_k − θ_{k+1})/lr",
      "r for updates whitened on a rank-r subspace", "CovariantGD at α = ½ raises it over SGD"),
    M("updates/cov_eigs", "updates", "(L/θ)²", "eigenvalues of the update covariance, descending",
      "eig of the window's update covariance", "flat: whitened updates", "see updates/pr", kind="array"),
)
"""Every documented metric. One entry per metric name or family (see :class:`Metric`)."""
del M


def lookup(name: str) -> Metric | None:
    """The glossary entry of metric ``name``: an exact pattern first, else the most specific match."""
    matches = [m for m in GLOSSARY if m.regex.match(name)]
    if not matches:
        return None
    return min(matches, key=lambda m: (m.placeholders, -len(m.pattern)))


def search(text: str) -> list[Metric]:
    """Entries whose pattern matches ``text``, or whose pattern, source or meaning contains it."""
    found = lookup(text)
    if found is not None:
        return [found]
    low = text.lower()
    return [m for m in GLOSSARY if low in m.pattern.lower() or low == m.source or low in m.meaning.lower()]


def axis_title(name: str) -> str:
    """An axis title for metric ``name``: the name and, when the glossary knows it, its unit."""
    entry = lookup(name)
    if entry is None or entry.unit in ("varies", "1", ""):
        return name
    return f"{name} [{entry.unit}]"
