"""Closed-form predictions of learning dynamics: pure functions of parameters and a time grid.

numpy in, numpy out (float64); no training happens here. Each module is one result, with its equations,
assumptions and source paper in the module docstring, and a test that compares it with a simulation of the
actual dynamics at a stated tolerance (``tests/test_theory_*.py``).

Conventions shared by all modules
---------------------------------
* Time: ``t = lr · step`` (gradient-flow time; ``τ = 1/lr`` steps per unit), see :mod:`.timescale`.
  Functions that are exact for *discrete* GD/SGD take ``lr`` and integer ``steps`` instead.
* Squared losses carry ½ and a per-sample mean: ``L = 1/(2n) Σ_i ‖f(x_i) − y_i‖²``.
* Exact vs approximate: every docstring says which. Approximations (small ``lr``, small init, finite
  width, adiabatic elimination) are named, and their tests use honest tolerances.

Modules
-------
``balance_vector``  the noise-driven law of balance of a unit ``u·(wᵀx)`` with ``d > 1`` inputs.
``covariant``       covariant GD's update covariance ``C^{1−2α}`` (white at α = ½), its effective dimension;
                    the α-stationary law ``Σ_α ∝ H^{−α}`` and its exact finite-``η`` form with the EMA metric.
``deep_linear``     Saxe et al. (2014): mode strengths, learning times and loss plateaus of deep linear nets.
``lazy``            the lazy regime's parameter displacement ``√(yᵀΘ⁺y)/α`` for a centred model ``αh``.
``momentum_symmetry`` the translation charge under SGD with heavy-ball/Nesterov momentum and weight decay.
``noncontrastive`` BYOL/SimSiam with a linear predictor (Tian et al. 2021): the predictor balance law,
                    eigen-mode fixed points and collapse threshold, DirectPred.
``ntk``             linearised (NTK) training under full-batch MSE gradient descent / flow.
``probabilistic_stability``  Ziyin et al. (2023): SGD's Lyapunov rate E log|1 − ηh| near a critical point.
``sgd_stationary``  stationary covariance of minibatch SGD on Gaussian linear regression; stability.
``symmetry``        rescaling-symmetry balance: conservation, weight decay, SGD's law of balance; the
                    soft-thresholded (low-rank) spectrum of weight-decayed linear networks.
``symmetry_hessian``  the second-order Noether identity Hξ = −Aᵀ∇L; zero modes explained by symmetries.
``weight_decay_transition``  Ziyin et al. (2022): minima of weight-decayed deep scalar linear nets; γ*.
``ssl``             Simon et al. (2023): stepwise eigenvalue learning in linear Barlow Twins.
``two_layer_linear`` finite-width one-hidden-layer linear nets: conserved imbalance, exact reduced ODE at any
                    width, the aligned closed form (Kunin et al. 2024) between the rich and lazy limits.
"""

from learndyn.theory.covariant import (
    AlphaStationary,
    alpha_law_covariance,
    alpha_stationary,
    covariance_gain,
    metric_lyapunov_covariance,
    participation_ratio,
    update_covariance,
)
from learndyn.theory.deep_linear import (
    LinearTeacher,
    decoupled_init,
    deep_linear_loss,
    learning_time,
    make_teacher,
    measure_mode_strengths,
    mode_strength,
    time_to_strength,
    whitened_inputs,
)
from learndyn.theory.noncontrastive import (
    balance_matrix,
    collapse_threshold,
    commutator_norm,
    directpred_predictor,
    mode_flow,
    predictor_balance,
    predictor_fixed_point,
    predictor_saddle,
)
from learndyn.theory.ntk import (
    NTKPrediction,
    ntk_max_stable_lr,
    ntk_predictions_flow,
    ntk_predictions_gd,
    ntk_train_loss,
)
from learndyn.theory.probabilistic_stability import (
    lyapunov_rate,
    minibatch_curvatures,
    moment_rate,
    product_saddle_rates,
)
from learndyn.theory.sgd_stationary import (
    langevin_stationary_covariance,
    sgd_discrete_stationary_covariance,
    sgd_excess_loss_trajectory,
    sgd_gradient_covariance,
    sgd_max_stable_lr,
    sgd_noise_covariance,
    sgd_second_moment_trajectory,
    sgd_stationary_covariance,
    sgd_stationary_excess_loss,
    sgd_stationary_forms,
    sgd_temperature,
)
from learndyn.theory.ssl import (
    aligned_init,
    embedding_eigenvalues,
    learned_dimensions,
    projected_init,
    ssl_loss,
    ssl_step_times,
    view_correlation,
)
from learndyn.theory.symmetry import (
    balance_flow,
    balance_gd,
    balance_product_variance,
    decay_errors,
    neuron_balance,
    scalar_balance_sgd,
    scalar_balance_step,
    soft_threshold_spectrum,
)
from learndyn.theory.symmetry_hessian import (
    explained_zero_modes,
    noether_scalar_residual,
    noether_vector_residual,
)
from learndyn.theory.timescale import gradient_flow_time, steps_for_time
from learndyn.theory.two_layer_linear import (
    ReducedTrajectory,
    aligned_kernel,
    aligned_norms,
    aligned_strength,
    aligned_time,
    imbalance,
    lazy_prediction,
    lazy_rich_ratio,
    rank_one_init,
    reduced_flow,
    reduced_gd,
    reduced_state,
)
from learndyn.theory.weight_decay_transition import (
    critical_weight_decay,
    flow_limit_product,
    global_minimum_product,
    spinodal_weight_decay,
)

__all__ = [
    "AlphaStationary",
    "LinearTeacher",
    "NTKPrediction",
    "ReducedTrajectory",
    "aligned_init",
    "aligned_kernel",
    "aligned_norms",
    "aligned_strength",
    "aligned_time",
    "alpha_law_covariance",
    "alpha_stationary",
    "balance_flow",
    "balance_gd",
    "balance_matrix",
    "balance_product_variance",
    "collapse_threshold",
    "commutator_norm",
    "covariance_gain",
    "critical_weight_decay",
    "decay_errors",
    "decoupled_init",
    "deep_linear_loss",
    "directpred_predictor",
    "embedding_eigenvalues",
    "explained_zero_modes",
    "flow_limit_product",
    "global_minimum_product",
    "gradient_flow_time",
    "imbalance",
    "langevin_stationary_covariance",
    "lazy_prediction",
    "lazy_rich_ratio",
    "learned_dimensions",
    "learning_time",
    "lyapunov_rate",
    "make_teacher",
    "measure_mode_strengths",
    "metric_lyapunov_covariance",
    "minibatch_curvatures",
    "mode_flow",
    "mode_strength",
    "moment_rate",
    "neuron_balance",
    "noether_scalar_residual",
    "noether_vector_residual",
    "ntk_max_stable_lr",
    "ntk_predictions_flow",
    "ntk_predictions_gd",
    "ntk_train_loss",
    "participation_ratio",
    "predictor_balance",
    "predictor_fixed_point",
    "predictor_saddle",
    "product_saddle_rates",
    "projected_init",
    "rank_one_init",
    "reduced_flow",
    "reduced_gd",
    "reduced_state",
    "scalar_balance_sgd",
    "scalar_balance_step",
    "sgd_discrete_stationary_covariance",
    "sgd_excess_loss_trajectory",
    "sgd_gradient_covariance",
    "sgd_max_stable_lr",
    "sgd_noise_covariance",
    "sgd_second_moment_trajectory",
    "sgd_stationary_covariance",
    "sgd_stationary_excess_loss",
    "sgd_stationary_forms",
    "sgd_temperature",
    "soft_threshold_spectrum",
    "spinodal_weight_decay",
    "ssl_loss",
    "ssl_step_times",
    "steps_for_time",
    "time_to_strength",
    "update_covariance",
    "view_correlation",
    "whitened_inputs",
]
