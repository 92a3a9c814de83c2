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
``covariant``       covariant GD's update covariance ``C^{1−2α}`` (white at α = ½), its effective dimension.
``deep_linear``     Saxe et al. (2014): mode strengths, learning times and loss plateaus of deep linear nets.
``ntk``             linearised (NTK) training under full-batch MSE gradient descent / flow.
``probabilistic_stability``  Ziyin et al. (2023): SGD's Lyapunov rate E log|1 − ηh| near a critical point.
``sgd_stationary``  stationary covariance of minibatch SGD on Gaussian linear regression; stability.
``symmetry``        rescaling-symmetry balance: conservation, weight decay, SGD's law of balance; the
                    soft-thresholded (low-rank) spectrum of weight-decayed linear networks.
``symmetry_hessian``  the second-order Noether identity Hξ = −Aᵀ∇L; zero modes explained by symmetries.
``weight_decay_transition``  Ziyin et al. (2022): minima of weight-decayed deep scalar linear nets; γ*.
``ssl``             Simon et al. (2023): stepwise eigenvalue learning in linear Barlow Twins.
"""

from learndyn.theory.covariant import participation_ratio, update_covariance
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
from learndyn.theory.weight_decay_transition import (
    critical_weight_decay,
    flow_limit_product,
    global_minimum_product,
    spinodal_weight_decay,
)

__all__ = [
    "LinearTeacher",
    "NTKPrediction",
    "aligned_init",
    "balance_flow",
    "balance_gd",
    "balance_product_variance",
    "critical_weight_decay",
    "decay_errors",
    "decoupled_init",
    "deep_linear_loss",
    "embedding_eigenvalues",
    "explained_zero_modes",
    "flow_limit_product",
    "global_minimum_product",
    "gradient_flow_time",
    "langevin_stationary_covariance",
    "learned_dimensions",
    "learning_time",
    "lyapunov_rate",
    "make_teacher",
    "measure_mode_strengths",
    "minibatch_curvatures",
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
    "product_saddle_rates",
    "projected_init",
    "scalar_balance_sgd",
    "scalar_balance_step",
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
