"""Integrations, each against the real library, offline: TensorBoard event files read back, a W&B offline
run, an MLflow local file store, a Lightning Trainer and a Hugging Face Trainer running the Monitor. Each test
skips (saying why) when its optional library is not installed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.store import MemoryRecorder


def _log_some(recorder) -> None:
    for step in range(3):
        recorder.log(step, {"loss": 1.0 / (step + 1), "noise/temperature": 0.1 * step})
    recorder.log_array(2, "curvature/top_eigenvalues", np.array([3.0, 2.0, 1.0]))
    recorder.flush()


def test_multi_recorder_fans_out():
    from learndyn.integrations.recorders import MultiRecorder

    a, b = MemoryRecorder(), MemoryRecorder()
    multi = MultiRecorder(a, b)
    _log_some(multi)
    assert a.scalars == b.scalars and len(a.scalars["loss"]) == 3 and "curvature/top_eigenvalues" in b.arrays
    assert multi.series("loss")[1][-1] == pytest.approx(1 / 3)  # other attributes: the first recorder's
    with pytest.raises(ValueError, match="at least one"):
        MultiRecorder()


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="not installed: pip install 'learndyn[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from learndyn.integrations.recorders import TensorBoardRecorder

    recorder = TensorBoardRecorder(tmp_path / "tb")
    _log_some(recorder)
    recorder.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "noise/temperature"}
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert events.Tags()["histograms"] == ["curvature/top_eigenvalues"]


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'learndyn[wandb]')")
    from learndyn.integrations.recorders import WandbRecorder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recorder = WandbRecorder(project="learndyn-test", dir=str(tmp_path))
    _log_some(recorder)
    recorder.close()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30  # the wandb-core service may still be writing the file
    while b"curvature/top_eigenvalues" not in path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    data = path.read_bytes()  # the offline run's records (protobuf): the metric names are in it
    assert b"noise/temperature" in data and b"curvature/top_eigenvalues" in data


def test_mlflow_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'learndyn[mlflow]')")
    from mlflow.tracking import MlflowClient

    from learndyn.integrations.recorders import MLflowRecorder

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, no server or database
    uri = (tmp_path / "mlruns").as_uri()
    recorder = MLflowRecorder(uri, experiment="learndyn-test", run_name="demo")
    _log_some(recorder)
    recorder.close()
    client = MlflowClient(uri)
    history = client.get_metric_history(recorder.run_id, "noise/temperature")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.1), (2, pytest.approx(0.2))]
    assert client.get_run(recorder.run_id).info.status == "FINISHED"
    (artifact,) = client.list_artifacts(recorder.run_id, "arrays/curvature/top_eigenvalues")
    assert artifact.path.endswith("step-2.json")


def test_lightning_callback_runs_the_monitor(tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="not installed: pip install 'learndyn[lightning]'")
    from learndyn.integrations.lightning import MonitorCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    callback = MonitorCallback(F.cross_entropy, probes=["parameters", "noise"])
    trainer = pl.Trainer(max_steps=6, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(Module(), loader)
    steps, values = callback.recorder.series("noise/snr")
    assert list(steps) == [0, 1, 2, 3, 4, 5] and np.isfinite(values).all()  # every update, after it
    assert list(callback.recorder.series("params/norm")[0]) == [0, 1, 2, 3, 4, 5]


def test_huggingface_trainer_callback_runs_the_monitor(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers", reason="transformers not installed "
                                       "(pip install 'learndyn[transformers]')")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from learndyn.integrations.huggingface import MonitorTrainerCallback

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    config = transformers.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                                     num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)  # tiny, randomly initialised: no download
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 32, (32, 8), generator=g), torch.randint(0, 2, (32,), generator=g)
    dataset = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels, strict=True)]
    callback = MonitorTrainerCallback(probe_batch=(ids[:8], labels[:8]), probes=["parameters", "stages"])
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4,
                                          per_device_train_batch_size=8, report_to=[], save_strategy="no",
                                          logging_strategy="no", use_cpu=True, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()
    assert list(callback.recorder.series("params/dist_init")[0]) == [0, 1, 2, 3]
    assert callback.recorder.series("params/dist_init")[1][-1] > 0
    assert list(callback.recorder.series("stage/value")[0]) == [0, 1, 2, 3]
