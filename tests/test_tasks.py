"""The benchmark tasks: determinism, the losses against closed forms, validation."""

import math

import pytest
import torch
from torch import nn

from learndyn.tasks import digits, get_task, make_generator, rosenbrock, task_names
from learndyn.tasks.deep_linear import DeepLinear, deep_linear
from learndyn.tasks.digits import digits_data
from learndyn.tasks.multiplication import multiplication
from learndyn.tasks.rosenbrock import rosenbrock_value
from learndyn.validation import LearndynValueError

ALL = task_names()


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", ALL)
def test_model_init_is_a_function_of_the_seed_and_leaves_global_rng_alone(name):
    task = get_task(name)
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(3), task.make_model(3), task.make_model(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_flat(a), _flat(b))
    assert not torch.equal(_flat(a), _flat(c))


@pytest.mark.parametrize("name", ALL)
def test_batches_are_a_function_of_the_generator_seed(name):
    task = get_task(name)
    x1, y1 = task.sample(make_generator(7))
    x2, y2 = task.sample(make_generator(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape[0] == y1.shape[0]


@pytest.mark.parametrize("name", ALL)
def test_loss_is_a_differentiable_scalar_and_evaluate_a_finite_float(name):
    task = get_task(name)
    model = task.make_model(0)
    loss = task.loss(model, task.sample(make_generator(0)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    value = task.evaluate(model)
    assert isinstance(value, float) and math.isfinite(value)
    assert value > task.target_loss > 0
    assert task.steps >= 1


def test_get_task_rejects_unknown_names_listing_the_allowed():
    with pytest.raises(LearndynValueError, match=r"task='mnist' is not allowed; allowed: 'rosenbrock-2d'"):
        get_task("mnist")


@pytest.mark.parametrize(
    "factory, kwargs, match",
    [(rosenbrock, {"dim": 1}, r"rosenbrock.dim=1 is out of range"),
     (rosenbrock, {"noise": -1.0}, r"rosenbrock.noise=-1.0 is out of range"),
     (multiplication, {"width": 0}, r"multiplication.width=0"),
     (digits, {"target_loss": 0.0}, r"digits.target_loss=0.0"),
     (deep_linear, {"input_condition": 0.5}, r"deep_linear.input_condition=0.5")],
)
def test_factories_validate_with_one_line_messages(factory, kwargs, match):
    with pytest.raises(LearndynValueError, match=match) as info:
        factory(**kwargs)
    assert "\n" not in str(info.value)


# --- Rosenbrock -------------------------------------------------------------------------------------


def test_rosenbrock_minimum_and_classical_value():
    assert float(rosenbrock_value(torch.ones(5))) == 0.0
    # f(-1.2, 1) = 100 (1 - 1.44)^2 + 2.2^2 = 24.2
    assert float(rosenbrock_value(torch.tensor([-1.2, 1.0]))) == pytest.approx(24.2)


def test_rosenbrock_gradient_matches_the_closed_form():
    task = rosenbrock(3, init_scale=0.5)
    model = task.make_model(1)
    task.loss(model, task.sample(make_generator(0))).backward()
    x = model.x.detach()
    a = 100.0
    grad = torch.zeros(3)
    grad[:-1] += -4 * a * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    grad[1:] += 2 * a * (x[1:] - x[:-1] ** 2)
    torch.testing.assert_close(model.x.grad, grad)


def test_rosenbrock_noise_is_additive_on_the_gradient():
    noisy = rosenbrock(2, noise=0.5, batch_size=4)
    clean = rosenbrock(2)
    model = noisy.make_model(0)
    xi, targets = noisy.sample(make_generator(1))
    assert xi.shape == (4, 2)
    noisy.loss(model, (xi, targets)).backward()
    g_noisy = model.x.grad.clone()
    model.x.grad = None
    clean.loss(model, clean.sample(make_generator(1))).backward()
    torch.testing.assert_close(g_noisy - model.x.grad, xi.mean(0))
    assert noisy.evaluate(model) == clean.evaluate(model)  # evaluate is the exact, noise-free f


# --- multiplication, digits, deep linear --------------------------------------------------------------


class _Exact(nn.Module):
    def forward(self, x):
        return x[:, :1] * x[:, 1:]


def test_multiplication_targets_and_population_loss():
    task = multiplication(grid=64)
    x, y = task.sample(make_generator(0))
    assert x.abs().max() <= 1 and torch.equal(y, x[:, :1] * x[:, 1:])
    assert task.evaluate(_Exact()) == 0.0
    zero = nn.Linear(2, 1)
    nn.init.zeros_(zero.weight)
    nn.init.zeros_(zero.bias)
    # E[(xy)^2] = (1/3)^2 = 1/9; the midpoint rule is accurate to O(grid^-2)
    assert task.evaluate(zero) == pytest.approx(1 / 9, rel=1e-3)


def test_digits_data_shapes_and_range():
    x, y = digits_data()
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10))


def test_deep_linear_population_loss_is_exact():
    task = deep_linear(d_in=6, width=5, d_out=3, depth=2, input_condition=10.0, label_noise=0.1,
                       batch_size=200_000)
    model = task.make_model(0)
    with torch.no_grad():
        mc = float(task.loss(model, task.sample(make_generator(0))))
    assert mc == pytest.approx(task.evaluate(model), rel=0.02)


def test_deep_linear_teacher_has_zero_excess_loss():
    task = deep_linear(d_in=4, d_out=2, depth=1, data_seed=5)
    model = task.make_model(0)
    assert isinstance(model, DeepLinear) and len(model) == 1
    x, y = task.sample(make_generator(0))
    teacher = torch.linalg.lstsq(x, y).solution.T  # noise-free: recovers W* exactly
    with torch.no_grad():
        model[0].weight.copy_(teacher)
    assert task.evaluate(model) < 1e-10
    # the target is a fraction of the zero-map loss
    with torch.no_grad():
        model[0].weight.zero_()
    assert task.target_loss == pytest.approx(1e-5 * task.evaluate(model))
