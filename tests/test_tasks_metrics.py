"""The optional final-metrics extension of the Task interface (``metrics``, ``metric_name``, direction)."""

import pytest
import torch
from torch import nn

from learndyn.tasks import Task, get_task, task_names
from learndyn.validation import LearndynValueError


def _task(**extra) -> Task:
    return Task(name="toy", description="toy", build_model=lambda: nn.Linear(2, 1),
                sample=lambda g: (torch.zeros(1, 2), torch.zeros(1, 1)), loss_fn=nn.functional.mse_loss,
                evaluate=lambda m: 1.0, target_loss=0.1, steps=1, **extra)


def test_tasks_without_metrics_keep_working_and_report_none():
    task = _task()
    assert task.metrics is None and task.metric_name is None and task.higher_is_better
    assert task.final_metrics(task.make_model(0)) == {}
    assert get_task("digits").final_metrics(get_task("digits").make_model(0)) == {}


def test_metrics_and_metric_name_go_together():
    with pytest.raises(LearndynValueError, match=r"Task\[toy\]: metrics and metric_name go together"):
        _task(metrics=lambda m: {"acc": 1.0})
    with pytest.raises(LearndynValueError, match="go together"):
        _task(metric_name="acc")


def test_final_metrics_run_in_eval_mode_without_grad_and_restore_the_mode():
    seen = {}

    def metrics(model):
        seen["training"], seen["grad"] = model.training, torch.is_grad_enabled()
        return {"acc": torch.tensor(0.5), "loss": 2}

    task = _task(metrics=metrics, metric_name="acc")
    model = task.make_model(0).train()
    assert task.final_metrics(model) == {"acc": 0.5, "loss": 2.0}
    assert seen == {"training": False, "grad": False} and model.training


def test_missing_headline_metric_is_an_error():
    task = _task(metrics=lambda m: {"loss": 1.0}, metric_name="acc")
    with pytest.raises(LearndynValueError, match=r"metrics returned no 'acc'; allowed: \['loss'\]"):
        task.final_metrics(task.make_model(0))


@pytest.mark.parametrize("name, metric, higher", [("mnist1d-mlp", "test_accuracy", True),
                                                  ("mnist1d-cnn", "test_accuracy", True),
                                                  ("char-transformer", "val_bits_per_char", False)])
def test_real_tasks_declare_their_headline_metric(name, metric, higher):
    assert name in task_names()
    task = get_task(name)
    assert task.metric_name == metric and task.higher_is_better is higher


def test_compare_reports_each_runs_final_metric_and_the_median_over_seeds():
    from learndyn.tasks.compare import compare

    def metrics(model):  # a deterministic function of the trained weights, so the median can be checked
        return {"w": float(model.weight.sum()), "other": 0.0}

    task = _task(metrics=metrics, metric_name="w")
    result = compare([task], ["sgd"], seeds=(0, 1, 2), steps=3, lr=0.1)
    values = sorted(r.metrics["w"] for r in result.runs)
    assert all(r.metric_name == "w" and set(r.metrics) == {"w", "other"} for r in result.runs)
    (row,) = result.rows()
    assert row["metric_name"] == "w" and row["metric"] == pytest.approx(values[1])
    plain = compare([_task()], ["sgd"], seeds=(0,), steps=2, lr=0.1)
    assert plain.runs[0].metrics == {} and plain.rows()[0]["metric"] is None
