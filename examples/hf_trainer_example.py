"""Hugging Face Trainer with learndyn: the MonitorTrainerCallback measures a (tiny, randomly initialised)
BERT classifier on a fixed probe batch after every optimizer step. Nothing is downloaded: the model is built
from a config, the data is random tokens.

    pip install "learndyn[transformers]"
    HF_HUB_OFFLINE=1 python examples/hf_trainer_example.py [--tiny]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402

from learndyn.integrations.huggingface import MonitorTrainerCallback  # noqa: E402
from learndyn.store import RunStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                                     num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, 64, (256, 16))
    labels = (ids[:, 0] < 32).long()  # the class is in the first token
    dataset = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels, strict=True)]
    store = RunStore(args.out / "runs" / "examples.duckdb")
    with store.start_run("hf-trainer-example", {"hidden_size": 32}, seed=0) as run:
        callback = MonitorTrainerCallback(probe_batch=(ids[:16], labels[:16]),
                                          probes=["parameters", "stages"], recorder=run)
        training = transformers.TrainingArguments(
            output_dir=str(args.out / "hf-out"), max_steps=4 if args.tiny else 300,
            per_device_train_batch_size=16,
            learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
            disable_tqdm=True,
        )
        transformers.Trainer(model=model, args=training, train_dataset=dataset, callbacks=[callback]).train()
    final = store.metrics(run.id, "params/dist_init")["value"].iloc[-1]
    print(f"run {run.id[:8]}: distance from init {final:.4f}; try `learndyn report {run.id[:8]}`")


if __name__ == "__main__":
    main()
