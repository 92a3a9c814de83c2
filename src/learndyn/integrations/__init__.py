"""Bridges to the tools researchers already use (each an optional extra; nothing here is imported eagerly).

- :mod:`.recorders` -- :class:`~.recorders.TensorBoardRecorder`, :class:`~.recorders.WandbRecorder`,
  :class:`~.recorders.MLflowRecorder` (anything a ``Monitor`` or ``train_loop`` logs goes there too) and
  :class:`~.recorders.MultiRecorder` (the run store and a dashboard at once);
- :mod:`.lightning` -- :class:`~.lightning.MonitorCallback`, a PyTorch Lightning ``Callback`` running the
  ``Monitor`` after every optimizer step;
- :mod:`.huggingface` -- :class:`~.huggingface.MonitorTrainerCallback`, a Hugging Face ``TrainerCallback``
  doing the same for ``transformers.Trainer``.

Install with ``pip install "learndyn[tensorboard]"`` (or ``wandb``, ``mlflow``, ``lightning``,
``transformers``, or ``integrations`` for all).
"""
