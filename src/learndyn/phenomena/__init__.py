"""learndyn.phenomena: reproducible experiments, each theory beside simulation, and their registry.

Importing the package registers every built-in experiment in :mod:`learndyn.phenomena.registry` (which the
CLI, sweeps and reports read); a new phenomenon is one module ending in ``register(Experiment(...))`` plus
its import line here. See ``docs/architecture.md``.
"""

import learndyn.phenomena.cgd_paper  # noqa: F401  (registers "cgd-paper")
import learndyn.phenomena.deep_linear  # noqa: F401  (registers "deep-linear")
import learndyn.phenomena.grokking  # noqa: F401  (registers "grokking")
import learndyn.phenomena.grokking_transformer  # noqa: F401  (registers "grokking-transformer")
import learndyn.phenomena.mlp_teacher  # noqa: F401  (registers "mlp-teacher" and its sweep ensemble)
import learndyn.phenomena.noncontrastive_ssl  # noqa: F401  (registers "noncontrastive-ssl")
import learndyn.phenomena.ntk_lazy  # noqa: F401  (registers "ntk-lazy")
import learndyn.phenomena.optimizer_comparison  # noqa: F401  (registers "optimizer-comparison")
import learndyn.phenomena.probabilistic_stability  # noqa: F401  (registers "probabilistic-stability")
import learndyn.phenomena.regimes  # noqa: F401  (registers "regimes")
import learndyn.phenomena.sgd_stationary  # noqa: F401  (registers "sgd-stationary")
import learndyn.phenomena.ssl_stepwise  # noqa: F401  (registers "ssl-stepwise")
import learndyn.phenomena.symmetry  # noqa: F401  (registers "symmetry")
import learndyn.phenomena.symmetry_hessian  # noqa: F401  (registers "symmetry-hessian")
import learndyn.phenomena.two_layer_linear  # noqa: F401  (registers "two-layer-linear")
import learndyn.phenomena.weight_decay_transition  # noqa: F401  (registers "weight-decay-transition")
