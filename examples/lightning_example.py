"""PyTorch Lightning with learndyn: the MonitorCallback measures the LightningModule after every optimizer
step and sends the metrics to the run store and to Lightning's own loggers.

    pip install "learndyn[lightning]"
    python examples/lightning_example.py [--tiny]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from learndyn.integrations.lightning import MonitorCallback
from learndyn.store import RunStore


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(512, 10)
    y = (x[:, :3]).argmax(dim=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    store = RunStore(args.out / "runs" / "examples.duckdb")
    with store.start_run("lightning-example", {"lr": 0.05}, seed=0) as run:
        callback = MonitorCallback(F.cross_entropy, probes=["parameters", "noise"], recorder=run)
        trainer = pl.Trainer(max_steps=8 if args.tiny else 500, callbacks=[callback], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                             default_root_dir=args.out)
        trainer.fit(Classifier(), loader)
    print(f"run {run.id[:8]}: {len(store.metrics(run.id))} metric rows; try `learndyn show {run.id[:8]}`")


if __name__ == "__main__":
    main()
