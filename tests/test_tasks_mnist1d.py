"""MNIST-1D: the locally generated data equals the authors' published set, no network, the authors' models."""

import random
import socket

import numpy as np
import pytest
import torch

from learndyn.tasks import get_task, make_generator
from learndyn.tasks.mnist1d import Mnist1dCNN, Mnist1dMLP, accuracy, mnist1d, mnist1d_data
from learndyn.training import train_loop
from learndyn.validation import LearndynValueError

# From the authors' published mnist1d_data.pkl (github.com/greydanus/mnist1d); the local generator reproduces
# it (all 5000 x 40 values agree to 1e-15).
PUBLISHED_Y_HEAD = [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9, 4, 3, 4, 5]
PUBLISHED_Y_TEST_HEAD = [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7, 7, 1, 4, 6]
PUBLISHED_X0_HEAD = [-0.3320056674, -0.4719103657, -0.7786970763, -1.0097408265]
PUBLISHED_X_TEST_LAST_TAIL = [0.4472328851, 0.6598756471, 0.8777343498, 1.1931518368]
PUBLISHED_ABS_SUM_TRAIN = 118338.29510719894


def test_data_shapes_classes_and_standardisation():
    data = mnist1d_data()
    assert data.x.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    counts = torch.bincount(torch.cat([data.y, data.y_test]), minlength=10)
    assert counts.tolist() == [500] * 10  # 500 signals per digit before the split
    every = torch.cat([data.x, data.x_test]).double()
    assert abs(float(every.mean())) < 1e-6 and abs(float(every.std(unbiased=False)) - 1) < 1e-6


def test_data_equal_the_published_dataset():
    data = mnist1d_data()
    assert data.y[:16].tolist() == PUBLISHED_Y_HEAD
    assert data.y_test[:16].tolist() == PUBLISHED_Y_TEST_HEAD
    torch.testing.assert_close(data.x[0, :4].double(), torch.tensor(PUBLISHED_X0_HEAD, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    tail = torch.tensor(PUBLISHED_X_TEST_LAST_TAIL, dtype=torch.float64)
    torch.testing.assert_close(data.x_test[-1, -4:].double(), tail, rtol=0, atol=1e-6)
    assert float(data.x.double().abs().sum()) == pytest.approx(PUBLISHED_ABS_SUM_TRAIN, rel=1e-6)


def test_generation_is_deterministic_offline_and_leaves_global_rngs_alone(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D generation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    np_before, py_before = np.random.get_state(), random.getstate()  # noqa: NPY002
    fresh = mnist1d_data.__wrapped__()  # bypass the cache: really generate
    np_after = np.random.get_state()  # noqa: NPY002
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:] and random.getstate() == py_before
    cached = mnist1d_data()
    for name in ("x", "y", "x_test", "y_test"):
        assert torch.equal(getattr(fresh, name), getattr(cached, name))


def test_models_match_the_authors_architectures():
    mlp, cnn = Mnist1dMLP(), Mnist1dCNN()
    # the authors' notebook prints "MLPBase model with 15210 parameters", "ConvBase ... 5210 parameters"
    assert sum(p.numel() for p in mlp.parameters()) == 15210
    assert sum(p.numel() for p in cnn.parameters()) == 5210
    x = torch.randn(7, 40)
    assert mlp(x).shape == (7, 10) and cnn(x).shape == (7, 10)
    h = cnn.conv1(x.unsqueeze(1))
    assert h.shape == (7, 25, 19)
    h = cnn.conv2(h)
    assert h.shape == (7, 25, 10)
    assert cnn.conv3(h).shape == (7, 25, 5)
    # the MLP's second layer is residual: with W2 = 0, b2 = 0 the logits are W3 relu(W1 x + b1) + b3
    with torch.no_grad():
        mlp.linear2.weight.zero_()
        mlp.linear2.bias.zero_()
    torch.testing.assert_close(mlp(x), mlp.linear3(mlp.linear1(x).relu()))


def test_task_metrics_are_test_accuracy_and_losses():
    task = get_task("mnist1d-cnn")
    assert task.metric_name == "test_accuracy" and task.higher_is_better
    model = task.make_model(0)
    values = task.final_metrics(model)
    assert set(values) == {"test_accuracy", "test_loss", "train_accuracy"}
    data = mnist1d_data()
    with torch.no_grad():
        logits = model(data.x_test)
    by_hand = sum(int(logits[i].argmax()) == int(data.y_test[i]) for i in range(1000)) / 1000
    assert values["test_accuracy"] == pytest.approx(by_hand, abs=1e-9)
    assert accuracy(torch.eye(3), torch.tensor([0, 1, 0])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("model, steps, floor", [("mlp", 300, 0.45), ("cnn", 300, 0.6)])
def test_short_adamw_run_learns_well_above_chance(model, steps, floor):
    task = get_task(f"mnist1d-{model}")
    net = task.make_model(0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    result = train_loop(net, opt, task.sample, task.loss_fn, steps, generator=make_generator(0))
    assert result.status == "completed"
    values = task.final_metrics(net)
    assert values["test_accuracy"] > floor  # chance is 0.1
    assert task.evaluate(net) < 0.6 * task.evaluate(task.make_model(0))


def test_factory_validates():
    with pytest.raises(LearndynValueError, match=r"mnist1d.model='gru' is not allowed; allowed: 'mlp', 'cn"):
        mnist1d("gru")
    with pytest.raises(LearndynValueError, match=r"mnist1d.batch_size=0"):
        mnist1d("mlp", batch_size=0)
